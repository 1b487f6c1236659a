"""Benchmark: retrieval latency of the memory in PostgreSQL (and the same rows in SQLite) at scale.

Fills a store with --memories memories (default 100k): one heavy user owns --heavy-share of them
(default 0.5: the issue's hard case, 50k rows), the rest belong to --light-users users; texts are
drawn from the LoCoMo dev turns' words (so posting lists are as long as real ones), inserted in
batches as the writer inserts them. Then asks every LoCoMo dev question (categories 1-4) as the
heavy user and as a light user, and times store.search (40 candidates, common_share 0.1: what the
recall asks) and Recaller.block_for (search + neighbouring turns + rendering).

    .venv/bin/python bench/pg_recall.py --database-url postgresql://.../empty_db [--sqlite]

--database-url must name an EMPTY database (the benchmark migrates and fills it). --sqlite runs
the same rows in a temporary SQLite file too, for comparison. Reads ../shared/data/locomo-dev.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from memory_quality import DATA, load, percentile, questions  # noqa: E402
from memory_routing.memory.recall import Recaller, RecallTuning  # noqa: E402
from memory_routing.memory.records import NewMemory  # noqa: E402
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore  # noqa: E402

HEAVY = "heavy-user"


def vocabulary(samples: list[dict]) -> list[str]:
    return [w for s in samples for key, session in s["conversation"].items()
            if key.startswith("session_") and isinstance(session, list) for t in session for w in t["text"].split()]


def fill(store: MemoryStore, words: list[str], count: int, heavy_share: float, light_users: int) -> float:
    rng = random.Random(7)
    heavy_rows = int(count * heavy_share)
    started = time.perf_counter()
    batch: list[NewMemory] = []
    for i in range(count):
        user = HEAVY if i < heavy_rows else f"light-{i % light_users}"
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
        batch.append(NewMemory(user, f"conv-{i // 30}", "bench", "bench-model",
                               "user" if i % 2 == 0 else "assistant", f"{text} #{i}", 1_700_000_000.0 + i))
        if len(batch) == 500:
            store.add_many(batch)
            batch = []
    if batch:
        store.add_many(batch)
    return time.perf_counter() - started


def timed(store: MemoryStore, user: str, asked: list[str]) -> dict[str, float]:
    tuning = RecallTuning()
    recaller = Recaller(store, deadline_s=5.0, tuning=tuning)
    search_ms, block_ms = [], []
    for n, question in enumerate(asked):
        started = time.perf_counter()
        store.search(user, question, tuning.candidates, exclude_conversation_id="none",
                     common_share=tuning.common_share)
        search_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        recaller.block_for(user, f"bench-{n}", question)
        block_ms.append((time.perf_counter() - started) * 1000)
    return {"search_p50": round(percentile(search_ms, 0.5), 2), "search_p95": round(percentile(search_ms, 0.95), 2),
            "block_for_p50": round(percentile(block_ms, 0.5), 2), "block_for_p95": round(percentile(block_ms, 0.95), 2)}


def run(name: str, store: MemoryStore, words: list[str], asked: list[str], args: argparse.Namespace,
        settle=None) -> None:
    if args.filled and store.counts()["memories"]:
        print(f"{name}: {store.counts()} already stored", flush=True)
    else:
        seconds = fill(store, words, args.memories, args.heavy_share, args.light_users)
        if settle is not None:
            settle()
        print(f"{name}: {store.counts()} stored in {seconds:.1f}s", flush=True)
    for user in (HEAVY, "light-0"):
        store.search(user, "warm up the caches", 40)
        print(f"{name} {user}:", json.dumps(timed(store, user, asked)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--heavy-share", type=float, default=0.5)
    parser.add_argument("--light-users", type=int, default=50)
    parser.add_argument("--questions", type=int, default=300, help="questions asked per user (of 762)")
    parser.add_argument("--sqlite", action="store_true", help="the same rows in SQLite too")
    parser.add_argument("--filled", action="store_true", help="time the rows an earlier run left in the database")
    args = parser.parse_args()
    samples = load(args.data)
    words = vocabulary(samples)
    asked = [qa["question"] for _, qa in questions(samples)][: args.questions]

    from memory_routing.fleet.health import FleetHealth
    from memory_routing.fleet.postgres import FleetDatabase
    from memory_routing.memory.pg_store import PostgresMemoryStore

    database = FleetDatabase(args.database_url, health=FleetHealth())
    database.start()
    if not database.wait_ready(30):
        sys.exit(f"the database did not answer or migrate: {database.migration_error or 'not reachable'}")

    def vacuum() -> None:
        # What autovacuum does soon after a bulk load: statistics and the visibility map.
        with database.connection(timeout=5) as conn:
            conn.execute("VACUUM ANALYZE memories, memory_windows")

    store = PostgresMemoryStore(database)
    try:
        run("postgres", store, words, asked, args, vacuum)
    finally:
        store.close()
        database.close()
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            sqlite = SQLiteMemoryStore(Path(tmp) / "bench.sqlite3")
            try:
                run("sqlite", sqlite, words, asked, args)
            finally:
                sqlite.close()


if __name__ == "__main__":
    main()
