"""Recaller: relevant memories of this user only, other conversations only, one block per turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory_routing.memory.recall import Recaller, RecallTuning
from memory_routing.memory.records import MemoryStoreError, NewMemory
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.memory.store import SQLiteMemoryStore

DAY = 86400.0
T0 = 1683504000.0  # 2023-05-08


def say(user: str, conversation: str, role: str, text: str, at: float = T0) -> NewMemory:
    return NewMemory(user, conversation, "cli", "m", role, text, at)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteMemoryStore(tmp_path / "m.sqlite3")
    s.add_many([say("alice", "old", "user", "We should talk about the weather"),
                say("alice", "old", "assistant", "Sure, it is sunny"),
                say("alice", "old", "user", "My sister Jane moved to Lisbon last spring"),
                say("alice", "old", "assistant", "Lisbon is lovely; the trams are famous"),
                say("alice", "old", "user", "Anyway, back to work"),
                say("bob", "b1", "user", "I moved to Lisbon too, bob's secret")])
    yield s
    s.close()


def test_block_holds_the_relevant_memory_and_its_neighbours(store: SQLiteMemoryStore) -> None:
    # Turn hits alone (no windows): a hit grows into a run of its neighbours.
    block = Recaller(store, tuning=RecallTuning(windows=0)).block_for("alice", "new",
                                                                      "Where does my sister live now? Lisbon?")
    assert block is not None
    assert block.startswith(FENCE_OPEN + "\n") and block.endswith("\n" + FENCE_CLOSE)
    lines = block.split("\n")
    assert lines[2] == "[2023-05-08] assistant: Sure, it is sunny"  # the turn before the hit opens the run
    assert "user: My sister Jane moved to Lisbon last spring" in lines
    assert "assistant: Lisbon is lovely; the trams are famous" in block
    assert "bob" not in block


def test_never_another_users_memories(store: SQLiteMemoryStore) -> None:
    block = Recaller(store).block_for("bob", "new", "sister Jane Lisbon trams weather")
    assert block is not None and "bob's secret" in block and "Jane" not in block
    assert Recaller(store).block_for("carol", "new", "Lisbon") is None


def test_current_conversation_is_left_out(store: SQLiteMemoryStore) -> None:
    assert Recaller(store).block_for("alice", "old", "Lisbon sister") is None
    included = Recaller(store, tuning=RecallTuning(exclude_current_conversation=False))
    assert "Lisbon" in (included.block_for("alice", "old", "Lisbon sister") or "")


def test_nothing_relevant_gives_none(store: SQLiteMemoryStore) -> None:
    assert Recaller(store).block_for("alice", "new", "quantum chromodynamics") is None
    assert Recaller(store).block_for("alice", "new", "the of and") is None


def test_same_turn_gets_the_same_bytes(store: SQLiteMemoryStore) -> None:
    recaller = Recaller(store)
    first = recaller.block_for("alice", "new", "tell me about Lisbon")
    store.add_many([say("alice", "other", "user", "Lisbon again, a newer memory")])
    assert recaller.block_for("alice", "new", "tell me about Lisbon") == first
    assert "newer memory" in (recaller.block_for("alice", "new", "and Lisbon now?") or "")
    assert "newer memory" in (recaller.block_for("alice", "new2", "tell me about Lisbon") or "")


def test_cache_is_bounded(store: SQLiteMemoryStore) -> None:
    recaller = Recaller(store, cache_size=2)
    first = recaller.block_for("alice", "c", "Lisbon one")
    recaller.block_for("alice", "c", "Lisbon two")
    recaller.block_for("alice", "c", "Lisbon three")
    store.add_many([say("alice", "x", "user", "Lisbon one more time")])
    assert recaller.block_for("alice", "c", "Lisbon one") != first  # evicted, so recomputed


def test_forget_user_drops_cached_blocks(store: SQLiteMemoryStore) -> None:
    recaller = Recaller(store)
    assert recaller.block_for("alice", "c", "Lisbon") is not None
    store.forget_user("alice")
    recaller.forget_user("alice")
    assert recaller.block_for("alice", "c", "Lisbon") is None


def test_budget_bounds_the_block(store: SQLiteMemoryStore) -> None:
    store.add_many([say("alice", f"c{i}", "user", f"Lisbon story number {i} " + "words " * 60) for i in range(100)])
    for budget in (200, 1000):
        block = Recaller(store, budget_tokens=budget).block_for("alice", "new", "Lisbon story")
        assert block is not None and len(block) <= budget * 4


def test_late_search_forwards_unchanged_and_stays_so_for_the_turn(store: SQLiteMemoryStore) -> None:
    late = Recaller(store, deadline_s=-1.0)
    assert late.block_for("alice", "new", "Lisbon") is None
    assert late.timeouts == 1
    late.deadline_s = 5.0
    assert late.block_for("alice", "new", "Lisbon") is None  # the tool loop's next request: unchanged too
    assert late.block_for("alice", "new", "Lisbon sister") is not None


class _BrokenStore:
    def __init__(self, store: SQLiteMemoryStore) -> None:
        self.store, self.broken = store, True

    def search(self, *args, **kwargs):
        if self.broken:
            raise MemoryStoreError("disk went away")
        return self.store.search(*args, **kwargs)

    def search_windows(self, *args, **kwargs):
        if self.broken:
            raise MemoryStoreError("disk went away")
        return self.store.search_windows(*args, **kwargs)

    def neighbours(self, *args, **kwargs):
        return self.store.neighbours(*args, **kwargs)


def test_store_error_gives_none_and_is_not_cached(store: SQLiteMemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    broken = _BrokenStore(store)
    recaller = Recaller(broken)  # type: ignore[arg-type]
    assert recaller.block_for("alice", "new", "Lisbon") is None
    assert "memory recall failed" in caplog.text and "Lisbon" not in caplog.text
    broken.broken = False
    assert recaller.block_for("alice", "new", "Lisbon") is not None


def test_bad_budget() -> None:
    with pytest.raises(ValueError):
        Recaller(object(), budget_tokens=0)  # type: ignore[arg-type]


def test_no_turn_or_repeated_text_is_shown_twice(tmp_path: Path) -> None:
    s = SQLiteMemoryStore(tmp_path / "d.sqlite3")
    try:
        # Hits in a row: their runs overlap and are merged; the same words typed in other
        # conversations are shown once.
        s.add_many([say("u", "a", "user", f"line {i} about ferries") for i in range(6)])
        s.add_many([say("u", f"c{i}", "user", "continue with the ferries") for i in range(5)])
        block = Recaller(s).block_for("u", "new", "ferries") or ""
        lines = [line.split(": ", 1)[-1] for line in block.split("\n")[2:-1] if line]
        assert len(lines) == len(set(lines)) and "continue with the ferries" in lines
        assert all(f"line {i} about ferries" in lines for i in range(6))
    finally:
        s.close()


def test_a_later_turn_shows_no_memory_an_earlier_block_showed_and_keeps_to_the_budget_left(
        store: SQLiteMemoryStore) -> None:
    recaller = Recaller(store)
    first = recaller.search_block("alice", "new", "Lisbon sister", budget_tokens=1000)
    assert first is not None and "Lisbon" in first.text and first.lines
    shown = frozenset(line.memory_id for line in first.lines)
    again = recaller.search_block("alice", "new", "Lisbon sister", budget_tokens=1000, exclude_ids=shown)
    assert again is None or not shown & {line.memory_id for line in again.lines}
    small = recaller.search_block("alice", "new", "Lisbon sister", budget_tokens=60)
    assert small is not None and len(small.text) <= 60 * 4
    assert recaller.search_block("alice", "new", "Lisbon sister", budget_tokens=10) is None
