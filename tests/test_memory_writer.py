"""MemoryWriter: one thread, a bounded queue, nothing unprepared stored, nothing lost on close."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from memory_routing.memory.records import NewMemory
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.memory.store import SQLiteMemoryStore
from memory_routing.memory.writer import MemoryWriter, prepare

WAIT = 30.0


def turn(text: str, user: str = "u", role: str = "user") -> NewMemory:
    return NewMemory(user, "c", "cli", "m", role, text, 1_700_000_000.0)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteMemoryStore(tmp_path / "m.sqlite3")
    yield s
    s.close()


class BlockedStore:
    """A store whose writes wait until released, to fill the queue deterministically."""

    def __init__(self, fail: bool = False) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail = fail
        self.rows: list[NewMemory] = []

    def add_many(self, memories):
        self.entered.set()
        assert self.release.wait(WAIT)
        if self.fail:
            raise RuntimeError("disk full")
        self.rows.extend(memories)
        return list(range(len(memories)))


def test_prepare_strips_private_secrets_and_recall() -> None:
    out = prepare([turn(f"{FENCE_OPEN}\n[2023-01-01] user: old\n{FENCE_CLOSE}\nkey sk-ant-api03-{'a' * 30} <private>x</private>"),
                   turn("<private>all of it</private>"), turn("plain")])
    assert [m.text for m in out] == ["key [REDACTED]", "plain"]


def test_submit_then_flush_stores_prepared_turns(store: SQLiteMemoryStore) -> None:
    writer = MemoryWriter(store)
    try:
        assert writer.submit([turn("my password=hunter2 is set"), turn("ok", role="assistant")])
        assert writer.submit([turn("my password=hunter2 is set")])  # the same turn again: stored once
        assert writer.submit([])
        assert writer.flush(WAIT)
        total, rows = store.list("u")
        assert total == 2 and {m.text for m in rows} == {"my password=[REDACTED] is set", "ok"}
        assert writer.written == 3 and writer.dropped == 0
    finally:
        writer.close(WAIT)


def test_full_queue_drops_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    blocked = BlockedStore()
    writer = MemoryWriter(blocked, max_queue=3)  # type: ignore[arg-type]
    try:
        assert writer.submit([turn("first")])
        assert blocked.entered.wait(WAIT)  # the thread holds "first"; the queue is empty again
        with caplog.at_level(logging.WARNING, logger="memory_routing.memory.writer"):
            accepted = [writer.submit([turn(f"t{i}"), turn(f"a{i}", role="assistant")]) for i in range(10)]
        assert accepted == [True] * 3 + [False] * 7
        assert writer.dropped == 14
        drops = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drops) == 1 and "t4" not in caplog.text
        assert not writer.flush(0.05)
        blocked.release.set()
        assert writer.flush(WAIT)
        assert sorted(m.text for m in blocked.rows) == sorted(
            ["first"] + [f"t{i}" for i in range(3)] + [f"a{i}" for i in range(3)])
    finally:
        blocked.release.set()
        writer.close(WAIT)


def test_close_drains_the_queue(store: SQLiteMemoryStore) -> None:
    writer = MemoryWriter(store, max_queue=1000)
    for i in range(500):
        assert writer.submit([turn(f"memory {i}"), turn(f"answer {i}", role="assistant")])
    assert writer.close(WAIT)
    assert store.counts()["memories"] == 1000
    assert writer.submit([turn("too late")]) is False and writer.dropped == 1
    assert writer.close(WAIT)


def test_a_failing_store_does_not_stop_the_writer(caplog: pytest.LogCaptureFixture) -> None:
    failing = BlockedStore(fail=True)
    failing.release.set()
    writer = MemoryWriter(failing)  # type: ignore[arg-type]
    try:
        assert writer.submit([turn("secret diary entry")])
        assert writer.flush(WAIT)
        assert writer.failed == 1
        assert "secret diary" not in caplog.text and "could not store 1 turn" in caplog.text
        failing.fail = False
        assert writer.submit([turn("next one")])
        assert writer.flush(WAIT)
        assert [m.text for m in failing.rows] == ["next one"]
    finally:
        writer.close(WAIT)


def test_concurrent_submitters_lose_nothing(store: SQLiteMemoryStore) -> None:
    writer = MemoryWriter(store, max_queue=10_000)
    barrier = threading.Barrier(8)

    def submit(n: int) -> None:
        barrier.wait(WAIT)
        for i in range(50):
            assert writer.submit([turn(f"thread {n} turn {i}", user=f"user{n}")])

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert writer.close(WAIT)
    assert store.counts() == {"memories": 400, "users": 8}


DAY = 86_400.0
NOW = 1_800_000_000.0


def aged(text: str, days_old: float, conversation: str = "c") -> NewMemory:
    return NewMemory("u", conversation, "cli", "m", "user", text, NOW - days_old * DAY)


def texts(store: SQLiteMemoryStore) -> set[str]:
    return {m.text for m in store.list("u", limit=1000)[1]}


def test_retention_deletes_old_memories_at_start_then_once_a_day(tmp_path: Path):
    path = tmp_path / "m.sqlite3"
    store = SQLiteMemoryStore(path)
    store.add_many([aged("the ancient walrus anecdote", 40), aged("a recent note about kayaks", 10)])
    clock = [NOW]
    pruned: list[int] = []
    # Idle wake-ups an hour apart: only submits wake the thread in this test.
    writer = MemoryWriter(store, retention_days=30, clock=lambda: clock[0], idle_wake_s=3600, on_pruned=pruned.append)
    try:
        assert writer.submit([aged("written today", 0)]) and writer.flush(WAIT)
        assert texts(store) == {"a recent note about kayaks", "written today"}
        assert writer.pruned == 1 and pruned == [1]
        # Really gone, as a DELETE: the words are not in the file any more.
        assert b"walrus" not in b"".join(p.read_bytes() for p in tmp_path.glob("m.sqlite3*"))
        store.add_many([aged("turned 31 days old just now", 31)])
        clock[0] = NOW + 3600  # an hour later: not due
        assert writer.submit([aged("later today", 0, "c2")]) and writer.flush(WAIT)
        assert "turned 31 days old just now" in texts(store)
        clock[0] = NOW + DAY + 1  # a day later: due (the 10-day-old note is 11 days old: kept)
        assert writer.submit([aged("tomorrow", 0, "c3")]) and writer.flush(WAIT)
        assert "turned 31 days old just now" not in texts(store) and "a recent note about kayaks" in texts(store)
        assert writer.pruned == 2
        # Keeping everything again: nothing more is deleted, even when due.
        writer.set_retention(None)
        store.add_many([aged("kept forever", 400)])
        clock[0] = NOW + 3 * DAY
        assert writer.submit([aged("the day after", 0, "c4")]) and writer.flush(WAIT)
        assert "kept forever" in texts(store)
    finally:
        assert writer.close(WAIT)
        store.close()


def test_retention_prunes_at_start_with_no_submit(store: SQLiteMemoryStore):
    store.add_many([aged("stale walrus", 100), aged("fresh", 1)])
    writer = MemoryWriter(store, retention_days=7, clock=lambda: NOW, idle_wake_s=3600)
    try:
        deadline = time.monotonic() + WAIT
        while writer.pruned == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the writer thread's first turn
        assert writer.pruned == 1 and texts(store) == {"fresh"}
    finally:
        assert writer.close(WAIT)


def test_without_retention_nothing_is_deleted(store: SQLiteMemoryStore):
    store.add_many([aged("from long ago", 10_000)])
    writer = MemoryWriter(store, clock=lambda: NOW)
    try:
        assert writer.submit([aged("now", 0)]) and writer.flush(WAIT)
        assert texts(store) == {"from long ago", "now"} and writer.pruned == 0
    finally:
        assert writer.close(WAIT)
