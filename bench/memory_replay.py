"""Memory benchmark: replays LoCoMo conversations through a real ``mitmdump -s addon.py``.

As a client would send them: each session's speaker-A turns as OpenAI chat/completions calls to the
gateway (the session's history so far in ``messages``, the new A turn last), a fake upstream
(bench/memory_upstream.py, its own process) answering each with speaker B's next turn; one memory
user per conversation (``x-memory-user-id: locomo-<sample_id>``), one conversation id per session
(``x-memory-conversation-id``, the header the addon reads). Once the store holds the sessions,
each question of categories 1-4 is asked in a fresh conversation with ``x-memory-mode: read`` and
the upstream shows what the proxy injected: the block between a line ``<memory-routing-recall>``
and a line ``</memory-routing-recall>`` in the last user message. An evidence turn is found when
its text (whitespace normalised) is inside that block.

Choices, as a client would make them:
- Each request carries a system message ``Current date: <the session's date>``, as chat apps and
  Claude Code put today's date in their system prompt. The proxy stores turns at the time it
  sees them (today), so dates in the injected block are the replay's, not LoCoMo's.
- A session that opens with speaker B sends a short opening user turn (``Hi!``) first, with B's
  opening turn as its answer, as a client whose user opens the chat would; the proxy stores it.
- The same turns are also imported (``POST /memory-routing/memories/import``) for a second memory
  user per conversation (``locomo-<sample_id>-dated``) with ``created_at`` the session's own date,
  and every question is asked of both: the report gives the figures with the replay's wall-clock
  dates and with the dialogues' own dates.
- A session that ends with speaker A gets an empty answer. Shared photos are sent as their text
  only (LoCoMo's ``blip_caption`` is not sent).

Reports recall_any / recall_all overall and per category, injected block size (median, max
characters), retrieval latency (response header ``x-memory-routing-recall-ms`` when the proxy
sends it) and the latency a model call gains from memory: the same call alternately with the
default mode and with ``x-memory-mode: off``. ``--store-size N`` first imports N synthetic
memories of another user (``POST /memory-routing/memories/import``, JSON Lines) and checks that
none of them is ever injected.

    make bench-memory    # or: .venv/bin/python bench/memory_replay.py [--conversations conv-26,conv-30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "locomo-dev.json"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "memory_upstream.py"

RECALL_OPEN = "<memory-routing-recall>"
RECALL_CLOSE = "</memory-routing-recall>"
USER_HEADER = "x-memory-user-id"
CONVERSATION_HEADER = "x-memory-conversation-id"
MODE_HEADER = "x-memory-mode"
RECALL_MS_HEADER = "x-memory-routing-recall-ms"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
MODEL = "bench-model"
UPSTREAM_KEY = "sk-memory-bench-upstream"
CLIENT_USER_AGENT = "OpenAI/Python 1.99.9"  # what the openai SDK sends
FILLER_USER = "locomo-filler"
FILLER_MARK = "zqfiller"  # a token no LoCoMo turn contains: finding it injected is a leak

START_TIMEOUT = 120.0
REQUEST_TIMEOUT = 60.0
STORE_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
IMPORT_CHUNK = 5000

# Targets from the issue, checked here rather than in timed tests.
TARGET_RECALL_ANY = 0.82  # the wall-clock replay
TARGET_RECALL_ANY_DATED = 0.84  # the dialogues' own dates
OPENING_USER_TEXT = "Hi!"  # the user turn a session opening with speaker B answers
DATED_SUFFIX = "-dated"
TARGET_MEDIAN_BLOCK = 4000
TARGET_MAX_BLOCK = 8000
TARGET_RECALL_P95_MS = 20.0
TARGET_ADDED_P95_MS = 25.0


class BenchFailure(Exception):
    """The run cannot go on; the message says why."""


# --- the data, as a client would send it (pure) ------------------------------------------------


@dataclass(frozen=True)
class Turn:
    dia_id: str
    speaker: str
    text: str


@dataclass(frozen=True)
class Exchange:
    """One model call: the history before it, the new human turn, and the answer to script."""

    history: tuple[dict[str, str], ...]
    user: Turn
    answer: Turn | None


@dataclass(frozen=True)
class Session:
    number: int
    date: str
    opening: tuple[Turn, ...]  # speaker B's turns before A's first: each the answer to an opening "Hi!"
    exchanges: tuple[Exchange, ...]


@dataclass(frozen=True)
class Question:
    index: int
    category: int
    text: str
    evidence: tuple[Turn, ...]


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...]
    missing_evidence: int  # evidence ids that name no turn in the data

    @property
    def user_id(self) -> str:
        return f"locomo-{self.sample_id}"

    @property
    def unstorable(self) -> frozenset[str]:
        return frozenset()  # opening turns are sent as answers (see build_session)

    def dated_memories(self) -> Iterator[dict[str, Any]]:
        """Every turn as an exported memory of user ``<user_id>-dated``, created_at the session's
        own date (its turns a second apart), for POST /memory-routing/memories/import."""
        for session in self.sessions:
            start = session_time(session.date)
            # The exchanges hold every turn (opening ones as answers); the scripted "Hi!" has no dia_id.
            turns = [t for e in session.exchanges for t in (e.user, e.answer) if t is not None and t.dia_id]
            for i, turn in enumerate(turns):
                yield {"user_id": self.user_id + DATED_SUFFIX, "conversation_id": f"locomo-{self.sample_id}-s{session.number}",
                       "client": "memory-bench", "model": MODEL,
                       "role": "user" if turn.speaker == self.speaker_a else "assistant",
                       "text": turn.text, "created_at": start + i}


def session_time(date: str) -> float:
    """LoCoMo's session date ("1:56 pm on 8 May, 2023") in epoch seconds (UTC)."""
    return datetime.strptime(date, "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC).timestamp()


def session_numbers(conversation: dict[str, Any]) -> list[int]:
    found = (re.fullmatch(r"session_(\d+)", key) for key in conversation)
    return sorted(int(m.group(1)) for m in found if m and conversation[m.group(0)])


def build_session(number: int, date: str, turns: list[dict[str, Any]], speaker_a: str) -> Session:
    parsed = [Turn(t["dia_id"], t["speaker"], t["text"]) for t in turns]
    opening: list[Turn] = []
    while parsed and parsed[0].speaker != speaker_a:
        opening.append(parsed.pop(0))
    history: list[dict[str, str]] = []
    exchanges = []
    for turn in opening:
        # As a client whose user opens the chat: a short greeting, answered by B's opening turn.
        exchanges.append(Exchange(tuple(history), Turn("", speaker_a, OPENING_USER_TEXT), turn))
        history.append({"role": "user", "content": OPENING_USER_TEXT})
        history.append({"role": "assistant", "content": turn.text})
    index = 0
    while index < len(parsed):
        user = parsed[index]
        # LoCoMo alternates speakers; should two turns of one speaker follow each other, the
        # second is a separate call (A) or is not an answer (B) and is left out of the replay.
        answer = parsed[index + 1] if index + 1 < len(parsed) and parsed[index + 1].speaker != speaker_a else None
        exchanges.append(Exchange(tuple(history), user, answer))
        history.append({"role": "user", "content": user.text})
        history.append({"role": "assistant", "content": answer.text if answer else ""})
        index += 2 if answer else 1
    return Session(number, date, tuple(opening), tuple(exchanges))


def build_conversation(sample: dict[str, Any]) -> Conversation:
    raw = sample["conversation"]
    speaker_a = raw["speaker_a"]
    sessions = tuple(
        build_session(n, raw.get(f"session_{n}_date_time", ""), raw[f"session_{n}"], speaker_a)
        for n in session_numbers(raw)
    )
    turns = {t["dia_id"]: Turn(t["dia_id"], t["speaker"], t["text"])
             for n in session_numbers(raw) for t in raw[f"session_{n}"]}
    questions, missing = [], 0
    for index, qa in enumerate(sample.get("qa", [])):
        if qa.get("category") not in CATEGORIES:
            continue  # category 5 (adversarial) has no evidence
        evidence = tuple(turns[d] for d in qa.get("evidence", []) if d in turns)
        missing += sum(1 for d in qa.get("evidence", []) if d not in turns)
        if evidence:
            questions.append(Question(index, qa["category"], qa["question"], evidence))
    return Conversation(sample["sample_id"], speaker_a, raw["speaker_b"], sessions, tuple(questions), missing)


def chat_messages(date: str, history: tuple[dict[str, str], ...], user_text: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": f"Current date: {date}"}] if date else []
    return [*system, *history, {"role": "user", "content": user_text}]


# --- what came back (pure) ---------------------------------------------------------------------


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def recall_block(messages: list[dict[str, Any]]) -> str | None:
    """The text the proxy injected into the last user message, or None when it injected nothing."""
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if last_user is None:
        return None
    lines = message_text(last_user.get("content")).splitlines()
    stripped = [line.strip() for line in lines]
    try:
        start = stripped.index(RECALL_OPEN)
        end = stripped.index(RECALL_CLOSE, start + 1)
    except ValueError:
        return None
    return "\n".join(lines[start + 1:end])


def normalise(text: str) -> str:
    return " ".join(text.split())


def evidence_found(block: str | None, turn_text: str) -> bool:
    wanted = normalise(turn_text)
    if not block or not wanted:
        return False
    return wanted in normalise(block)


@dataclass
class QuestionResult:
    sample_id: str
    index: int
    category: int
    found: list[bool]
    unstorable: int  # evidence turns the replay could not have stored (opening B turns)
    block_chars: int | None  # None: nothing injected
    recall_ms: float | None
    leaked_filler: bool = False

    @property
    def any_found(self) -> bool:
        return any(self.found)

    @property
    def all_found(self) -> bool:
        return all(self.found)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def recall_summary(results: list[QuestionResult]) -> dict[str, Any]:
    def rates(rows: list[QuestionResult]) -> dict[str, Any]:
        n = len(rows)
        return {
            "questions": n,
            "recall_any": sum(r.any_found for r in rows) / n if n else float("nan"),
            "recall_all": sum(r.all_found for r in rows) / n if n else float("nan"),
            # Questions with every evidence turn storable: what a perfect memory could reach.
            "reachable_any": sum(r.unstorable < len(r.found) for r in rows) / n if n else float("nan"),
        }

    sizes = [r.block_chars for r in results if r.block_chars is not None]
    samples = sorted({r.sample_id for r in results})
    recall_ms = [r.recall_ms for r in results if r.recall_ms is not None]
    return {
        "overall": rates(results),
        "per_category": {f"{c} {name}": rates([r for r in results if r.category == c]) for c, name in CATEGORIES.items()},
        "per_conversation": {sample: rates([r for r in results if r.sample_id == sample]) for sample in samples},
        "injected": len(sizes),
        "block_chars_median": statistics.median(sizes) if sizes else float("nan"),
        "block_chars_max": max(sizes) if sizes else float("nan"),
        "recall_ms_p50": percentile(recall_ms, 0.50),
        "recall_ms_p95": percentile(recall_ms, 0.95),
        "recall_ms_reported": len(recall_ms),
        "filler_leaks": sum(r.leaked_filler for r in results),
    }


def filler_memories(count: int, seed: int = 13) -> Iterator[dict[str, Any]]:
    """Synthetic memories of another user, worded like chat turns, each carrying FILLER_MARK."""
    rng = random.Random(seed)
    words = ["trip", "garden", "concert", "recipe", "painting", "museum", "puppy", "marathon", "camping", "guitar", "novel",
             "workshop", "beach", "festival", "pottery", "hiking", "school", "volunteer", "yoga", "bakery", "family", "photo",
             "sunset", "lake", "mountain", "city", "friend", "sister", "brother", "weekend", "summer", "winter", "class",
             "project", "adoption", "support", "group", "career"]
    start = 1_700_000_000.0  # fixed, so that every run imports the same store
    for i in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
        yield {"user_id": FILLER_USER, "conversation_id": f"filler-{i // 20}", "client": "memory-bench",
               "model": MODEL, "role": "user" if i % 2 == 0 else "assistant",
               "text": f"{FILLER_MARK} {text}", "created_at": start + i}


# --- the processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # No proxy settings (loopback only) and no Supermemory key: the proxy's own memory is measured.
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "supermemory_api_key"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop}
    return env | {"LITELLM_LOCAL_MODEL_COST_MAP": "True"} | (extra or {})


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def start_upstream() -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, str(UPSTREAM_SCRIPT), "--api-key", UPSTREAM_KEY],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=clean_env())
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        stop(process)
        raise BenchFailure("the fake upstream did not start")
    return process, int(line)


def write_config(workdir: Path, upstream_port: int, budget_tokens: int | None = None) -> Path:
    config = workdir / "config.yaml"
    memory = f"memory:\n  budget_tokens: {budget_tokens}\n" if budget_tokens else ""
    config.write_text(memory +
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "user_id_mappings:\n"
        f"  custom_header: {USER_HEADER}\n"
        "  default_user_id: memory-bench\n"
    )
    return config


def start_proxy(workdir: Path, upstream_port: int, extra_args: list[str],
                budget_tokens: int | None = None) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = workdir / "mitmdump.log"
    args = [sys.executable, str(MITMDUMP), "--set", f"confdir={workdir / 'confdir'}", "--listen-host", "127.0.0.1",
            "--set", "connection_strategy=lazy", "-s", str(ROOT / "addon.py"),
            "--set", f"memory_routing_config={write_config(workdir, upstream_port, budget_tokens)}",
            "--mode", f"reverse:http://memory-routing.localhost@{port}", *extra_args]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=clean_env())
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchFailure(f"mitmdump exited at start:\n{log_tail(log)}")
        try:
            status, _, _ = Gateway(port).get("/health")
            if status == 200:
                return process, port, log
        except OSError:
            pass
        time.sleep(0.05)  # polling interval while mitmdump starts
    stop(process)
    raise BenchFailure(f"mitmdump did not answer /health within {START_TIMEOUT:.0f} s:\n{log_tail(log)}")


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class Gateway:
    """A client of the proxy's gateway over one kept-alive connection (reconnects when needed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server had closed: retry once on a new one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Upstream:
    def __init__(self, port: int) -> None:
        self.client = Gateway(port)

    def script(self, answer: str) -> None:
        status, _, _ = self.client.request("PUT", "/bench/next-answer", json.dumps({"text": answer}).encode(),
                                           {"content-type": "application/json"})
        if status != 200:
            raise BenchFailure(f"the fake upstream refused the script ({status})")

    def last(self) -> dict[str, Any]:
        status, _, body = self.client.get("/bench/last")
        if status != 200:
            raise BenchFailure(f"the fake upstream did not say what it received ({status})")
        return json.loads(body)


@dataclass
class Call:
    status: int
    headers: dict[str, str]
    seconds: float
    received: dict[str, Any] | None  # the request as the upstream saw it (None: it saw none)
    error: str = ""


def streamed_text(data: bytes) -> str | None:
    """The answer's text from OpenAI server-sent events; None when they do not end with [DONE]."""
    pieces, done = [], False
    for line in data.decode(errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            continue
        try:
            choices = json.loads(payload).get("choices") or []
        except (ValueError, AttributeError):
            return None
        pieces += [c.get("delta", {}).get("content") or "" for c in choices if isinstance(c, dict)]
    return "".join(pieces) if done else None


def model_call(gateway: Gateway, upstream: Upstream, messages: list[dict[str, str]], answer: str,
               headers: dict[str, str], stream: bool = False) -> Call:
    """One chat/completions call through the proxy, answered by the upstream with ``answer``."""
    upstream.script(answer)
    before = upstream.last().get("count", 0)
    body = json.dumps({"model": MODEL, "messages": messages, **({"stream": True} if stream else {})}).encode()
    started = time.perf_counter()
    status, response_headers, data = gateway.request(
        "POST", "/v1/chat/completions", body,
        {"content-type": "application/json", "authorization": "Bearer sk-memory-bench-client",
         "user-agent": CLIENT_USER_AGENT, **headers})
    seconds = time.perf_counter() - started
    last = upstream.last()
    received = last.get("body") if last.get("count", 0) == before + 1 else None
    error = "" if status == 200 else data[:300].decode(errors="replace")
    if status == 200 and stream:
        content = streamed_text(data)
    elif status == 200:
        try:
            content = json.loads(data)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
    if status == 200 and content != answer:
        error = "the client did not receive the scripted answer"
    return Call(status, response_headers, seconds, received, error)


# --- memory endpoints --------------------------------------------------------------------------


def memory_total(gateway: Gateway, user_id: str) -> int | None:
    """``total`` of GET /memory-routing/memories for a user; None when the proxy has no such endpoint."""
    status, _, body = gateway.get(f"/memory-routing/memories?{urllib.parse.urlencode({'user_id': user_id, 'limit': 1})}")
    if status != 200:
        return None
    try:
        total = json.loads(body).get("total")
    except (ValueError, AttributeError):
        return None
    return total if isinstance(total, int) else None


def probe_memory(gateway: Gateway) -> str | None:
    """None when the proxy serves the memory endpoints, else what is missing."""
    status, _, body = gateway.get("/memory-routing/memories?user_id=locomo-probe&limit=1")
    if status != 200:
        return f"GET /memory-routing/memories answered {status}: {body[:120].decode(errors='replace')}"
    if memory_total(gateway, "locomo-probe") is None:
        return "GET /memory-routing/memories answered without an integer `total`"
    return None


def import_filler(gateway: Gateway, count: int) -> None:
    import_memories(gateway, filler_memories(count), count)


def import_memories(gateway: Gateway, lines: Iterator[dict[str, Any]], count: int) -> None:
    sent = 0
    while sent < count:
        chunk = [json.dumps(next(lines)) for _ in range(min(IMPORT_CHUNK, count - sent))]
        status, _, body = gateway.request("POST", "/memory-routing/memories/import", "\n".join(chunk).encode() + b"\n",
                                          {"content-type": "application/x-ndjson"})
        if status not in (200, 201, 202):
            raise BenchFailure(f"POST /memory-routing/memories/import answered {status}: {body[:200].decode(errors='replace')}")
        sent += len(chunk)


def wait_stored(gateway: Gateway, expected: dict[str, int], timeout: float) -> dict[str, int | None]:
    """Poll each user's total until it reaches what was sent or stops growing, within ``timeout``."""
    deadline = time.monotonic() + timeout
    totals: dict[str, int | None] = {}
    unchanged_since: float | None = None
    while True:
        current = {user: memory_total(gateway, user) for user in expected}
        if current != totals:
            unchanged_since = time.monotonic()
        totals = current
        if all(total is not None and total >= expected[user] for user, total in totals.items()):
            return totals
        # Rows may merge a turn and its answer; a count still for 3 s is taken as all written.
        if unchanged_since is not None and time.monotonic() - unchanged_since > 3 and all(totals.values()):
            return totals
        if time.monotonic() > deadline:
            return totals
        time.sleep(0.25)  # polling interval for the writer queue


# --- the run -----------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    calls: int = 0
    failed: list[str] = field(default_factory=list)
    expected_rows: dict[str, int] = field(default_factory=dict)


def replay(gateway: Gateway, upstream: Upstream, conversations: list[Conversation], stream: bool) -> ReplayStats:
    stats = ReplayStats()
    for conversation in conversations:
        rows = 0
        for session in conversation.sessions:
            headers = {USER_HEADER: conversation.user_id,
                       CONVERSATION_HEADER: f"locomo-{conversation.sample_id}-s{session.number}"}
            for exchange in session.exchanges:
                answer = exchange.answer.text if exchange.answer else ""
                call = model_call(gateway, upstream, chat_messages(session.date, exchange.history, exchange.user.text),
                                  answer, headers, stream)
                stats.calls += 1
                rows += 1 + bool(answer)
                if call.status != 200 or call.error or call.received is None:
                    stats.failed.append(f"{conversation.sample_id} {exchange.user.dia_id}: {call.status} {call.error}")
        stats.expected_rows[conversation.user_id] = rows
        print(f"replayed {conversation.sample_id}: {len(conversation.sessions)} sessions", file=sys.stderr)
    return stats


def ask(gateway: Gateway, upstream: Upstream, conversations: list[Conversation],
        user_suffix: str = "") -> tuple[list[QuestionResult], list[str]]:
    results, failed = [], []
    for conversation in conversations:
        date = conversation.sessions[-1].date if conversation.sessions else ""
        unstorable = conversation.unstorable
        for question in conversation.questions:
            headers = {USER_HEADER: conversation.user_id + user_suffix, MODE_HEADER: "read",
                       CONVERSATION_HEADER: f"locomo-{conversation.sample_id}-q{question.index}"}
            call = model_call(gateway, upstream, chat_messages(date, (), question.text), "I am not sure.", headers)
            if call.status != 200 or call.received is None:
                failed.append(f"{conversation.sample_id} q{question.index}: {call.status} {call.error}")
                continue
            block = recall_block(call.received.get("messages", []))
            recall_ms = call.headers.get(RECALL_MS_HEADER)
            try:
                recall_ms_value = float(recall_ms) if recall_ms is not None else None
            except ValueError:
                recall_ms_value = None
            results.append(QuestionResult(
                conversation.sample_id, question.index, question.category,
                [evidence_found(block, turn.text) for turn in question.evidence],
                sum(turn.dia_id in unstorable for turn in question.evidence),
                len(block) if block is not None else None, recall_ms_value,
                leaked_filler=block is not None and FILLER_MARK in block,
            ))
    return results, failed


def added_latency(gateway: Gateway, upstream: Upstream, conversations: list[Conversation], pairs: int) -> dict[str, Any]:
    """The same call with memory (default mode) and with ``x-memory-mode: off``, alternating which
    goes first; each pair's difference is what memory added. Runs after the questions: with
    memory on, these calls are stored."""
    questions = [(c, q) for c in conversations for q in c.questions]
    with_memory, without, differences = [], [], []
    for i in range(min(pairs, len(questions))):
        conversation, question = questions[i * len(questions) // max(1, min(pairs, len(questions)))]
        messages = chat_messages(conversation.sessions[-1].date, (), question.text)
        seconds = {}
        for mode in (("default", "off") if i % 2 == 0 else ("off", "default")):
            headers = {USER_HEADER: conversation.user_id,
                       CONVERSATION_HEADER: f"locomo-{conversation.sample_id}-latency{i}-{mode}"}
            if mode == "off":
                headers[MODE_HEADER] = "off"
            call = model_call(gateway, upstream, messages, "I am not sure.", headers)
            if call.status != 200:
                raise BenchFailure(f"latency call answered {call.status}: {call.error}")
            seconds[mode] = call.seconds * 1000
        with_memory.append(seconds["default"])
        without.append(seconds["off"])
        differences.append(seconds["default"] - seconds["off"])
    return {
        "pairs": len(differences),
        "with_memory_ms_p50": percentile(with_memory, 0.5), "with_memory_ms_p95": percentile(with_memory, 0.95),
        "memory_off_ms_p50": percentile(without, 0.5), "memory_off_ms_p95": percentile(without, 0.95),
        "added_ms_p50": percentile(with_memory, 0.5) - percentile(without, 0.5),
        "added_ms_p95": percentile(with_memory, 0.95) - percentile(without, 0.95),
        "paired_difference_ms_median": percentile(differences, 0.5),
    }


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def print_report(summary: dict[str, Any], latency: dict[str, Any] | None, store_size: int, memory_active: bool,
                 dated: dict[str, Any] | None = None) -> None:
    if dated is not None:
        print("\nWith the dialogues' own dates (turns imported with created_at = the session's date):\n")
        print_recall_table(dated)
        print(f"injected block: in {dated['injected']} of {dated['overall']['questions']} questions; "
              f"median {fmt(dated['block_chars_median'], 0)} chars, max {fmt(dated['block_chars_max'], 0)}; "
              f"retrieval ms p95 {fmt(dated['recall_ms_p95'], 2)}")
    print("\nMemory benchmark: LoCoMo replayed through mitmdump with the addon (wall-clock dates)\n")
    print_recall_table(summary)
    print_targets(summary, latency, store_size, memory_active)
    if dated is not None:
        overall = dated["overall"]["recall_any"]
        print(f"target: recall_any >= {TARGET_RECALL_ANY_DATED:.2f} with the dialogues' dates: {fmt(overall)} "
              f"({verdict(overall >= TARGET_RECALL_ANY_DATED)}); median block {fmt(dated['block_chars_median'], 0)}, "
              f"max {fmt(dated['block_chars_max'], 0)} "
              f"({verdict(dated['block_chars_median'] <= TARGET_MEDIAN_BLOCK and dated['block_chars_max'] <= TARGET_MAX_BLOCK)})")


def print_recall_table(summary: dict[str, Any]) -> None:
    print(f"{'questions':<24}{'n':>6}{'recall_any':>12}{'recall_all':>12}{'reachable':>11}")
    for name, row in [("all", summary["overall"]), *summary["per_category"].items(),
                      *summary.get("per_conversation", {}).items()]:
        print(f"{name:<24}{row['questions']:>6}{fmt(row['recall_any']):>12}{fmt(row['recall_all']):>12}"
              f"{fmt(row['reachable_any']):>11}")
    print("(reachable: questions with an evidence turn the replay sends as a new turn or an answer)")


def print_targets(summary: dict[str, Any], latency: dict[str, Any] | None, store_size: int, memory_active: bool) -> None:
    print(f"\ninjected block: in {summary['injected']} of {summary['overall']['questions']} questions; "
          f"median {fmt(summary['block_chars_median'], 0)} chars, max {fmt(summary['block_chars_max'], 0)}")
    print(f"retrieval ms ({RECALL_MS_HEADER}, {summary['recall_ms_reported']} answers, store "
          f"{'+' + str(store_size) + ' filler memories' if store_size else 'replay only'}): "
          f"p50 {fmt(summary['recall_ms_p50'], 2)}, p95 {fmt(summary['recall_ms_p95'], 2)}")
    if store_size:
        print(f"filler memories of another user injected: {summary['filler_leaks']} (must be 0)")
    if latency:
        print(f"model call ms, {latency['pairs']} alternating pairs: with memory p50 {fmt(latency['with_memory_ms_p50'], 2)} "
              f"p95 {fmt(latency['with_memory_ms_p95'], 2)}; x-memory-mode: off p50 {fmt(latency['memory_off_ms_p50'], 2)} "
              f"p95 {fmt(latency['memory_off_ms_p95'], 2)}; added p50 {fmt(latency['added_ms_p50'], 2)}, "
              f"p95 {fmt(latency['added_ms_p95'], 2)}")
    overall = summary["overall"]["recall_any"]
    print(f"\ntarget: recall_any >= {TARGET_RECALL_ANY:.2f} (wall-clock): {fmt(overall)} "
          f"({verdict(overall >= TARGET_RECALL_ANY)})")
    median_block, max_block = summary["block_chars_median"], summary["block_chars_max"]
    print(f"target: median block <= {TARGET_MEDIAN_BLOCK}, none over {TARGET_MAX_BLOCK} chars: "
          f"{verdict(median_block <= TARGET_MEDIAN_BLOCK and max_block <= TARGET_MAX_BLOCK)}")
    p95 = summary["recall_ms_p95"]
    print(f"target: retrieval p95 <= {TARGET_RECALL_P95_MS:.0f} ms"
          f"{' (at 100k memories: run with --store-size 100000)' if store_size < 100000 else ''}: "
          f"{fmt(p95, 2)} ({verdict(p95 <= TARGET_RECALL_P95_MS)})")
    if latency:
        added = latency["added_ms_p95"]
        # Without a memory to search the difference is noise, not memory's cost.
        outcome = verdict(added <= TARGET_ADDED_P95_MS) if memory_active else "not measured: no memory active"
        print(f"target: p95 added latency of a model call <= {TARGET_ADDED_P95_MS:.0f} ms: {fmt(added, 2)} ({outcome})")


def finite(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON (default: %(default)s)")
    parser.add_argument("--conversations", default="", help="sample ids, comma-separated (default: all in the file)")
    parser.add_argument("--store-size", type=int, default=0,
                        help="first import this many synthetic memories of another user (e.g. 100000)")
    parser.add_argument("--latency-pairs", type=int, default=200, help="alternating with/without-memory pairs")
    parser.add_argument("--stream", action="store_true", help="replay the sessions as streamed calls (SSE)")
    parser.add_argument("--store-timeout", type=float, default=STORE_TIMEOUT)
    parser.add_argument("--mitm-arg", action="append", default=[], help="extra mitmdump argument (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-dated", action="store_true",
                        help="skip the run with the dialogues' own dates (imported with created_at)")
    parser.add_argument("--budget-tokens", type=int, help="memory.budget_tokens in the proxy's config (default: its default)")
    args = parser.parse_args()

    if not args.data.is_file():
        print(f"bench-memory skipped: no LoCoMo data at {args.data} (see ../shared/data/README.md; "
              "it is never copied into this repository). Pass --data PATH.")
        return 0
    samples = json.loads(args.data.read_text())
    wanted = {s.strip() for s in args.conversations.split(",") if s.strip()}
    unknown = wanted - {s["sample_id"] for s in samples}
    if unknown:
        print(f"unknown conversations: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    conversations = [build_conversation(s) for s in samples if not wanted or s["sample_id"] in wanted]

    try:
        return run(args, conversations)
    except BenchFailure as failure:
        print(f"\nbench-memory FAILED: {failure}")
        return 1


def run(args: argparse.Namespace, conversations: list[Conversation]) -> int:
    started = time.monotonic()
    upstream_process, upstream_port = start_upstream()
    upstream = Upstream(upstream_port)
    try:
        with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
            proxy, port, log = start_proxy(Path(tmp), upstream_port, args.mitm_arg, args.budget_tokens)
            gateway = Gateway(port)
            try:
                missing = probe_memory(gateway)
                if missing:
                    print(f"the proxy has no memory endpoints yet ({missing}); replaying anyway, "
                          "but nothing can be waited for or measured as stored", file=sys.stderr)
                if args.store_size:
                    if missing:
                        raise BenchFailure(f"--store-size needs the memory endpoints: {missing}")
                    import_filler(gateway, args.store_size)
                    print(f"imported {args.store_size} filler memories: total "
                          f"{memory_total(gateway, FILLER_USER)}", file=sys.stderr)
                stats = replay(gateway, upstream, conversations, args.stream)
                if stats.failed:
                    raise BenchFailure(f"{len(stats.failed)} of {stats.calls} replayed calls failed, e.g. {stats.failed[0]}")
                totals = {} if missing else wait_stored(gateway, stats.expected_rows, args.store_timeout)
                for user, expected in stats.expected_rows.items():
                    print(f"stored for {user}: {totals.get(user, 'unknown')} (sent {expected} turns and answers)",
                          file=sys.stderr)
                results, failed_questions = ask(gateway, upstream, conversations)
                if failed_questions:
                    raise BenchFailure(f"{len(failed_questions)} questions failed, e.g. {failed_questions[0]}")
                summary = recall_summary(results)
                dated_summary = None
                if not missing and not args.no_dated:
                    for conversation in conversations:
                        memories = list(conversation.dated_memories())
                        import_memories(gateway, iter(memories), len(memories))
                    dated_results, failed_questions = ask(gateway, upstream, conversations, DATED_SUFFIX)
                    if failed_questions:
                        raise BenchFailure(f"{len(failed_questions)} questions failed, e.g. {failed_questions[0]}")
                    dated_summary = recall_summary(dated_results)
                latency = added_latency(gateway, upstream, conversations, args.latency_pairs) if args.latency_pairs else None
                info_status, _, info = gateway.get("/memory-routing/info")
            finally:
                gateway.close()
                stop(proxy)
            log_text = log.read_text(errors="replace")
    finally:
        upstream.client.close()
        stop(upstream_process)

    print_report(summary, latency, args.store_size, memory_active=not missing and summary["injected"] > 0,
                 dated=dated_summary)
    evidence_missing = sum(c.missing_evidence for c in conversations)
    print(f"\n{len(conversations)} conversations, {stats.calls} replayed calls, "
          f"{sum(len(c.questions) for c in conversations)} questions "
          f"({evidence_missing} evidence ids name no turn and are left out); ran {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(finite({
            "conversations": [c.sample_id for c in conversations], "store_size": args.store_size,
            "stored_totals": totals, "expected_rows": stats.expected_rows, "summary": summary,
            "latency": latency, "questions": [asdict(r) for r in results], "dated_summary": dated_summary,
        }), indent=1))
        print(f"JSON written to {args.json}")
    if info_status == 200:
        info_body = json.loads(info)
        # The memory's backend and counts are under "store" once the local store is wired in.
        memory_info = info_body.get("memory") or (info_body.get("store") or {}).get("memory")
        print(f"/memory-routing/info memory: {json.dumps(memory_info)[:400]}")
    errors = [line for line in log_text.splitlines() if "error" in line.lower()][:5]
    if errors:
        print("mitmdump logged errors:\n  " + "\n  ".join(errors))
    if missing:
        print(f"\nbench-memory FAILED: the proxy has no memory endpoints yet ({missing}); "
              f"the figures above are of a proxy without memory")
        return 1
    if summary["injected"] == 0:
        print("\nbench-memory FAILED: the proxy injected no recall block into any question")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
