"""Benchmark: recall quality and latency of the embedded memory, in process, on LoCoMo dev conversations.

Stores each session's turns as the proxy would (speaker A's turns as user turns, speaker B's as the
assistant's answers, through the same text preparation: recall block stripped, <private> dropped,
secrets redacted), one memory user per conversation, one conversation id per session, created_at
the session's date. Then asks Recaller.block_for for each question of categories 1-4 in a fresh
conversation and counts an evidence turn as found when its text appears in the block.

    .venv/bin/python bench/memory_quality.py                 # the default tuning
    .venv/bin/python bench/memory_quality.py --variants      # every variant in VARIANTS
    .venv/bin/python bench/memory_quality.py --synthetic 100000   # + search p95 at 100k memories
    .venv/bin/python bench/memory_quality.py --store-size 100000 --filler-owner other --threads 2
        # Recaller p50/p95 with the store padded as make bench-memory pads it (--filler-owner same:
        # the padding belongs to the asking user), questions from --threads threads at once

Reads ../shared/data/locomo-dev.json from the project root (never copied into the repository).

Measured (2 shared cores, Python 3.13, SQLite 3.40.1), 762 questions, default tuning, budget 1,000:
recall_any 0.846, recall_all 0.726 (multi-hop 0.775/0.239, temporal 0.891/0.865, open-domain
0.500/0.261, single-hop 0.892/0.890); block median 3,978 chars, max 4,000; block_for p50 3 ms,
p95 4-9 ms. With 100k synthetic memories more in the file: block_for p95 7 ms for the LoCoMo
users, 17-21 ms for 20 users of 5,000 random-word memories each, 9 ms for one user owning
100k (store.search alone: p95 6, 17 and 8 ms); deleting one
memory ~400 ms (the FTS index is rewritten so the words leave the file).

Recall 2 (windows, dates, adaptive budget; 2 December 2026), 762 questions, budget 1,000:
recall_any 0.861, recall_all 0.730, block median 3,600 chars, max 4,000 (budget 2,000: 0.886,
median 3,600, max 8,000); with --wall-clock 0.846. Turns only (--windows 0 --period-weight 0
--floor-tokens 100000): 0.840. block_for p50 3 ms, p95 6-8 ms (turns only: 1.7 / 2.5 ms).

Padded as make bench-memory pads it (100k memories of another user in a small chat vocabulary
that LoCoMo shares, --store-size 100000), same session, machine busy: with FTS5's bm25()
recall_any 0.812 and 6.1 ms CPU per recall; ranked with the user's own statistics (the store
does so from 20k rows, see SQLiteMemoryStore.search) 0.836 and 3.5 ms, the same recall as with
no padding under that ranking (0.836; bm25() on the small file: 0.846, still used there).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory_routing.memory.recall import Recaller, RecallTuning  # noqa: E402
from memory_routing.memory.records import NewMemory  # noqa: E402
from memory_routing.memory.redact import prepare_text  # noqa: E402
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "locomo-dev.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}

# name -> (tuning, budget_tokens): the steps measured on the way to the default.
VARIANTS: dict[str, tuple[RecallTuning, int]] = {
    "single-top5": (RecallTuning(candidates=5, expand=5, before=0, after=0, common_share=None), 1000),
    "runs-1-1": (RecallTuning(expand=10, before=1, after=1, wide=1000, narrow_after=0, common_share=None), 1000),
    "runs-1-2": (RecallTuning(expand=20, before=1, after=2, wide=1000, narrow_after=0, common_share=None), 1000),
    "runs-narrow-tail": (RecallTuning(common_share=None), 1000),
    "default": (RecallTuning(), 1000),
    "default-budget-500": (RecallTuning(), 500),
    "default-budget-2000": (RecallTuning(), 2000),
}


def session_time(text: str) -> float:
    return datetime.strptime(text, "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC).timestamp()


def load(path: Path) -> list[dict]:
    if not path.exists():
        sys.exit(f"{path} is missing: the benchmark reads LoCoMo from ../shared/data/ (see its README)")
    return json.loads(path.read_text())


def fill(store: MemoryStore, samples: list[dict], wall_clock: float | None = None) -> dict[str, dict[str, str]]:
    """Stores every conversation; returns user -> dia_id -> stored text. With `wall_clock`, every
    session is dated then (seconds apart), as the replay through the proxy dates them."""
    texts: dict[str, dict[str, str]] = {}
    for sample in samples:
        user = f"locomo-{sample['sample_id']}"
        conversation = sample["conversation"]
        speaker_a = conversation["speaker_a"]
        texts[user] = {}
        n = 1
        while f"session_{n}" in conversation:
            at = session_time(conversation[f"session_{n}_date_time"]) if wall_clock is None else wall_clock + n * 100
            batch = []
            for i, turn in enumerate(conversation[f"session_{n}"]):
                role = "user" if turn["speaker"] == speaker_a else "assistant"
                text = prepare_text(turn["text"])
                texts[user][turn["dia_id"]] = text
                # Turns of a session are seconds apart, as a chat's would be.
                batch.append(NewMemory(user, f"session-{n}", "bench", "bench-model", role, text, at + i))
            store.add_many(batch)
            n += 1
    return texts


def questions(samples: list[dict]) -> list[tuple[str, dict]]:
    return [(f"locomo-{s['sample_id']}", qa) for s in samples for qa in s["qa"] if qa.get("category") in CATEGORIES]


def evidence_ids(qa: dict) -> list[str]:
    ids: list[str] = []
    for item in qa.get("evidence", []):
        ids += [part.strip() for part in str(item).replace(";", " ").split() if part.strip()]
    return ids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def evaluate(store: MemoryStore, texts: dict, qas: list, tuning: RecallTuning, budget: int) -> dict:
    recaller = Recaller(store, budget_tokens=budget, deadline_s=5.0, tuning=tuning)
    per_cat: dict[int, list[tuple[bool, bool]]] = defaultdict(list)
    sizes: list[int] = []
    latencies: list[float] = []
    for n, (user, qa) in enumerate(qas):
        started = time.perf_counter()
        block = recaller.block_for(user, f"question-{n}", qa["question"]) or ""
        latencies.append((time.perf_counter() - started) * 1000)
        sizes.append(len(block))
        wanted = [texts[user][d] for d in evidence_ids(qa) if d in texts[user] and texts[user][d]]
        found = [w in block for w in wanted]
        per_cat[qa["category"]].append((any(found), bool(found) and all(found)))
    result: dict[str, object] = {"questions": len(qas), "timeouts": recaller.timeouts}
    everything = [x for v in per_cat.values() for x in v]
    result["recall_any"] = sum(a for a, _ in everything) / len(everything)
    result["recall_all"] = sum(b for _, b in everything) / len(everything)
    for cat, name in CATEGORIES.items():
        rows = per_cat[cat]
        result[f"{cat}-{name}"] = {"n": len(rows), "any": round(sum(a for a, _ in rows) / len(rows), 3),
                                   "all": round(sum(b for _, b in rows) / len(rows), 3)}
    result["block_chars"] = {"median": statistics.median(sizes), "max": max(sizes)}
    result["latency_ms"] = {"p50": round(percentile(latencies, 0.5), 2), "p95": round(percentile(latencies, 0.95), 2)}
    return result


def add_synthetic(store: MemoryStore, texts: dict, count: int, users: int) -> None:
    """`count` made-up memories for `users` users, words drawn from the dev turns' vocabulary
    (so posting lists are as long as real ones), in batches as the writer would insert them."""
    rng = random.Random(13)
    words = [w for user_texts in texts.values() for t in user_texts.values() for w in t.split()]
    base = 1_700_000_000.0
    batch: list[NewMemory] = []
    for i in range(count):
        user = f"synthetic-{i % users}"
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
        batch.append(NewMemory(user, f"conv-{i // 40}", "bench", "bench-model",
                               "user" if i % 2 == 0 else "assistant", f"{text} #{i}", base + i))
        if len(batch) == 500:
            store.add_many(batch)
            batch = []
    if batch:
        store.add_many(batch)


def search_latency(store: MemoryStore, qas: list, user_of, tuning: RecallTuning, budget: int) -> dict:
    recaller = Recaller(store, budget_tokens=budget, deadline_s=5.0, tuning=tuning)
    search_ms, block_ms = [], []
    for n, (user, qa) in enumerate(qas):
        who = user_of(user, n)
        started = time.perf_counter()
        store.search(who, qa["question"], tuning.candidates, exclude_conversation_id="none")
        search_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        recaller.block_for(who, f"latency-{n}", qa["question"])
        block_ms.append((time.perf_counter() - started) * 1000)
    return {"search_p50": round(percentile(search_ms, 0.5), 2), "search_p95": round(percentile(search_ms, 0.95), 2),
            "block_for_p50": round(percentile(block_ms, 0.5), 2), "block_for_p95": round(percentile(block_ms, 0.95), 2)}


def add_filler(store: MemoryStore, count: int, owner: str) -> None:
    """`count` memories worded like bench/memory_replay.py's filler (a small chat vocabulary, so
    every filler word is in a large share of the rows), owned by `owner`."""
    rng = random.Random(13)
    words = ["trip", "garden", "concert", "recipe", "painting", "museum", "puppy", "marathon", "camping", "guitar", "novel",
             "workshop", "beach", "festival", "pottery", "hiking", "school", "volunteer", "yoga", "bakery", "family", "photo",
             "sunset", "lake", "mountain", "city", "friend", "sister", "brother", "weekend", "summer", "winter", "class",
             "project", "adoption", "support", "group", "career"]
    batch: list[NewMemory] = []
    for i in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
        batch.append(NewMemory(owner, f"filler-{i // 20}", "bench", "bench-model",
                               "user" if i % 2 == 0 else "assistant", f"zqfiller {text}", 1_700_000_000.0 + i))
        if len(batch) == 500:
            store.add_many(batch)
            batch = []
    if batch:
        store.add_many(batch)


def recall_latency(store: MemoryStore, qas: list, threads: int, rounds: int = 1) -> dict:
    """Recaller.block_for per question (fresh conversation, so nothing is cached), `threads` at once
    as the proxy's recall pool runs them; each call timed from its submission (queueing included,
    as the proxy's deadline counts it) and inside its thread."""
    from concurrent.futures import ThreadPoolExecutor

    recaller = Recaller(store, deadline_s=5.0)
    inside: list[float] = []

    def one(n: int, user: str, question: str, submitted: float) -> float:
        started = time.perf_counter()
        recaller.block_for(user, f"latency-{n}-{started}", question)
        ended = time.perf_counter()
        inside.append((ended - started) * 1000)
        return (ended - submitted) * 1000

    cpu = time.process_time()
    wall = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futures = []
        for _ in range(rounds):
            for n, (user, qa) in enumerate(qas):
                # Pairs submitted together: at most `threads` calls are in flight, none waits long in the queue.
                futures.append(pool.submit(one, n, user, qa["question"], time.perf_counter()))
                if len(futures) % threads == 0:
                    for f in futures[-threads:]:
                        f.result()
        total = [f.result() for f in futures]
    return {"calls": len(total), "threads": threads,
            "p50": round(percentile(total, 0.5), 2), "p95": round(percentile(total, 0.95), 2),
            "inside_p50": round(percentile(inside, 0.5), 2), "inside_p95": round(percentile(inside, 0.95), 2),
            "wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def open_store(args: argparse.Namespace, tmp: Path) -> MemoryStore:
    if args.store == "sqlite":
        return SQLiteMemoryStore(tmp / "bench.sqlite3")
    if not args.database_url:
        sys.exit("--store postgres needs --database-url (an empty database: the benchmark fills it)")
    from memory_routing.fleet.health import FleetHealth
    from memory_routing.fleet.postgres import FleetDatabase
    from memory_routing.memory.pg_store import PostgresMemoryStore

    database = FleetDatabase(args.database_url, health=FleetHealth())
    database.start()
    if not database.wait_ready(30):
        sys.exit(f"the database did not answer or migrate: {database.migration_error or 'not reachable'}")
    return PostgresMemoryStore(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--variants", action="store_true", help="run every variant in VARIANTS")
    parser.add_argument("--synthetic", type=int, default=0, help="then add this many synthetic memories and time searches")
    parser.add_argument("--synthetic-users", type=int, default=20)
    parser.add_argument("--store-size", type=int, default=0,
                        help="pad the store with this many filler memories, then time Recaller (no quality run)")
    parser.add_argument("--filler-owner", choices=("other", "same"), default="other",
                        help="other: one other user owns the padding (as make bench-memory); same: the first "
                             "LoCoMo user owns it, and only that user's questions are timed")
    parser.add_argument("--threads", type=int, default=1, help="recall calls at once (the proxy runs 2)")
    parser.add_argument("--rounds", type=int, default=1, help="ask every question this many times")
    for name in ("candidates", "expand", "before", "after", "wide", "narrow_after", "windows", "tokens_per_strong_hit",
                 "floor_tokens"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("window_weight", "period_weight", "min_best_score", "strong_score"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--min-relative-score", type=float)
    parser.add_argument("--window-score", choices=("sum", "max"))
    parser.add_argument("--common-share", type=float)
    parser.add_argument("--include-current", action="store_true")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--wall-clock", action="store_true",
                        help="date every turn now (as the replay through the proxy does), not at its session's date")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="postgres: the fleet's store, in the EMPTY database of --database-url")
    parser.add_argument("--database-url", help="postgresql://... (with --store postgres)")
    args = parser.parse_args()

    samples = load(args.data)
    qas = questions(samples)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args, Path(tmp))
        try:
            started = time.perf_counter()
            texts = fill(store, samples, time.time() if args.wall_clock else None)
            print(f"stored {store.counts()} in {time.perf_counter() - started:.1f}s; {len(qas)} questions", flush=True)
            tuning = RecallTuning()
            overrides = {k: getattr(args, k) for k in ("candidates", "expand", "before", "after", "min_relative_score",
                                                       "window_score", "wide", "common_share",
                                                       "narrow_after", "windows", "tokens_per_strong_hit", "window_weight",
                                                       "period_weight", "min_best_score", "floor_tokens",
                                                       "strong_score")
                         if getattr(args, k) is not None}
            tuning = replace(tuning, **overrides, exclude_current_conversation=not args.include_current)
            if args.store_size:
                owner = "locomo-filler" if args.filler_owner == "other" else qas[0][0]
                timed = qas if args.filler_owner == "other" else [q for q in qas if q[0] == owner]
                print("before padding:", recall_latency(store, timed, args.threads, args.rounds), flush=True)
                started = time.perf_counter()
                add_filler(store, args.store_size, owner)
                print(f"padded with {args.store_size} filler memories of {owner} in "
                      f"{time.perf_counter() - started:.1f}s: {store.counts()}", flush=True)
                print(f"padded, {len(timed)} questions:", recall_latency(store, timed, args.threads, args.rounds))
                cpu = time.process_time()
                quality = evaluate(store, texts, qas, tuning, args.budget)
                quality["cpu_ms_per_recall"] = round((time.process_time() - cpu) / len(qas) * 1000, 2)
                print("quality with the padding:", json.dumps(quality), flush=True)
                return
            runs = dict(VARIANTS) if args.variants else {"chosen": (tuning, args.budget)}
            for name, (variant, budget) in runs.items():
                print(name, variant, f"budget={budget}")
                print(json.dumps(evaluate(store, texts, qas, variant, budget), indent=None), flush=True)
            if args.synthetic:
                started = time.perf_counter()
                add_synthetic(store, texts, args.synthetic, args.synthetic_users)
                print(f"added {args.synthetic} synthetic memories in {time.perf_counter() - started:.1f}s: {store.counts()}")
                print("LoCoMo users, big store:", search_latency(store, qas, lambda u, n: u, tuning, args.budget))
                print(f"synthetic users ({args.synthetic // args.synthetic_users} memories each):",
                      search_latency(store, qas, lambda u, n: f"synthetic-{n % args.synthetic_users}", tuning, args.budget))
                print("quality with the big store:", json.dumps(evaluate(store, texts, qas, tuning, args.budget)))
                # Deleting rewrites the FTS index (optimize) so deleted words leave the file: time it.
                victim = store.list("synthetic-0", limit=1)[1][0].id
                started = time.perf_counter()
                store.delete(victim)
                print(f"delete one memory at this size: {(time.perf_counter() - started) * 1000:.0f} ms")
                started = time.perf_counter()
                n = store.forget_user(qas[0][0])
                print(f"forget a user ({n} memories): {(time.perf_counter() - started) * 1000:.0f} ms")
        finally:
            store.close()


if __name__ == "__main__":
    main()
