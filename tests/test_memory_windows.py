"""Recall 2 at the store: windows of consecutive turns, their dates, period search, kept import dates.

Every test goes through the `memory_store` fixture, so that the same tests can run on every
MemoryStore implementation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from memory_routing.fleet.health import FleetHealth
from memory_routing.fleet.postgres import FleetDatabase, packaged_migrations
from memory_routing.memory.pg_store import PostgresMemoryStore
from memory_routing.memory.records import NewMemory
from memory_routing.memory.recall import Recaller, RecallTuning
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore
from fleet_servers import PostgresServer, postgres_memory_store

DAY = 86400.0


def at(year: int, month: int, day: int, hour: int = 12) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


MAY_7 = at(2023, 5, 7)
APRIL_2 = at(2023, 4, 2)


def say(user: str, conversation: str, role: str, text: str, when: float = MAY_7) -> NewMemory:
    return NewMemory(user, conversation, "cli", "m", role, text, when)


@pytest.fixture(params=["sqlite", "postgres"])
def memory_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    if request.param == "sqlite":
        store = SQLiteMemoryStore(tmp_path / "m.sqlite3")
        yield store
        store.close()
        return
    with postgres_memory_store(request.getfixturevalue("database_url")) as postgres:
        yield postgres


def texts(window: tuple[object, ...]) -> list[str]:
    return [m.text for m in window]  # type: ignore[attr-defined]


# --- windows ---------------------------------------------------------------------------------


def test_a_window_holds_consecutive_turns_found_by_words_spread_over_them(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "c1", "user", "Where did you go on holiday?"),
                           say("u", "c1", "assistant", "Porto, in the north"),
                           say("u", "c1", "user", "Who came along?"),
                           say("u", "c1", "assistant", "My cousin Ines and her dog")])
    memory_store.add_many([say("u", "c2", "user", "holiday plans"), say("u", "c2", "assistant", "none yet")])
    found = memory_store.search_windows("u", "holiday with cousin", 10)
    # The best window holds both words, in conversation order, and never spans two conversations.
    assert texts(found[0][0]) == ["Porto, in the north", "Who came along?", "My cousin Ines and her dog"] or \
        texts(found[0][0]) == ["Where did you go on holiday?", "Porto, in the north", "Who came along?"]
    assert all(len({m.conversation_id for m in window}) == 1 for window, _ in found)
    assert all(2 <= len(window) <= 3 for window, _ in found)
    assert [[m.id for m in window] for window, _ in found] == \
        [sorted(m.id for m in window) for window, _ in found]
    spans = {tuple(texts(window)) for window, _ in found}
    assert ("Where did you go on holiday?", "Porto, in the north", "Who came along?") in spans
    scores = [score for _, score in found]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_window_search_keeps_to_the_user_and_leaves_out_the_current_conversation(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "c1", "user", "the lighthouse keeper"), say("u", "c1", "assistant", "lives alone")])
    memory_store.add_many([say("v", "c1", "user", "the lighthouse keeper"), say("v", "c1", "assistant", "v's secret")])
    found = memory_store.search_windows("u", "lighthouse", 10)
    assert [m.user_id for window, _ in found for m in window] == ["u", "u"]
    assert memory_store.search_windows("u", "lighthouse", 10, exclude_conversation_id="c1") == []
    assert memory_store.search_windows("nobody", "lighthouse", 10) == []


def test_deleting_a_turn_deletes_its_windows_and_their_words_leave_the_file(tmp_path: Path,
                                                                            memory_store: MemoryStore) -> None:
    ids = memory_store.add_many([say("u", "c1", "user", "first turn"), say("u", "c1", "assistant", "zorbleflux code"),
                                 say("u", "c1", "user", "third turn"), say("u", "c1", "assistant", "fourth turn"),
                                 say("u", "c1", "user", "fifth turn")])
    assert len(memory_store.search_windows("u", "turn", 10)) == 4  # one per turn after the first
    assert memory_store.delete(ids[1]) is True
    left = memory_store.search_windows("u", "turn", 10)
    # The windows holding the deleted turn are gone (those ending at turns 2, 3 and 4).
    assert [texts(window) for window, _ in left] == [["third turn", "fourth turn", "fifth turn"]]
    assert memory_store.search_windows("u", "zorbleflux", 10) == []
    if isinstance(memory_store, SQLiteMemoryStore):
        conn = memory_store.open_connection()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        data = memory_store.path.read_bytes()
        assert b"zorbleflux" not in data and b"zorble" not in data


def test_forgetting_a_user_and_the_retention_delete_their_windows(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "old", "user", "ancient quokka", APRIL_2),
                           say("u", "old", "assistant", "quokka facts", APRIL_2)])
    memory_store.add_many([say("u", "new", "user", "recent quokka"), say("u", "new", "assistant", "more quokka")])
    memory_store.add_many([say("v", "c", "user", "quokka of v"), say("v", "c", "assistant", "yes")])
    assert memory_store.delete_older_than(MAY_7 - DAY) == 2
    assert [texts(w) for w, _ in memory_store.search_windows("u", "quokka", 10)] == [["recent quokka", "more quokka"]]
    memory_store.forget_user("u")
    assert memory_store.search_windows("u", "quokka", 10) == []
    assert len(memory_store.search_windows("v", "quokka", 10)) == 1


def test_windows_are_built_for_a_file_written_before_windows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = SQLiteMemoryStore(path)
    store.add_many([say("u", "c", "user", "the kite festival"), say("u", "c", "assistant", "colourful kites")])
    store.close()
    with sqlite3.connect(path) as conn:  # as a file of the previous version: no windows, version 0
        conn.execute("DELETE FROM memory_windows")
        conn.execute("PRAGMA user_version = 0")
    store = SQLiteMemoryStore(path)
    try:
        assert [texts(w) for w, _ in store.search_windows("u", "kite", 10)] == [["the kite festival", "colourful kites"]]
    finally:
        store.close()


def _postgres_store(url: str, migrations: int | None = None) -> tuple[FleetDatabase, PostgresMemoryStore]:
    chosen = packaged_migrations()[:migrations] if migrations is not None else None
    database = FleetDatabase(url, health=FleetHealth(), migrations=chosen)
    database.start()
    assert database.wait_ready(30)
    return database, PostgresMemoryStore(database)


def _postgres_windows(url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with psycopg.connect(url) as conn:
        windows = conn.execute("SELECT user_id, conversation_id, first_id, last_id, created_at, text, words, tsv::text"
                               " FROM memory_windows ORDER BY last_id").fetchall()
        counts = conn.execute("SELECT user_id, lexeme, rows FROM memory_window_term_rows"
                              " ORDER BY user_id, lexeme").fetchall()
    return windows, counts


def test_the_migration_builds_the_windows_of_a_database_written_before_windows(postgres_server: PostgresServer) -> None:
    turns = [say("u", "c", "user", "the kite festival", APRIL_2), say("u", "c", "assistant", "colourful kites"),
             say("v", "c", "user", "a kite of v"), say("u", "c", "user", "windy day, kites up"),
             say("u", "c", "assistant", "four turns"), say("u", "solo", "user", "one kite turn alone"),
             say("v", "c", "assistant", "v answers")]
    old_url, new_url = postgres_server.create_database(), postgres_server.create_database()
    database, store = _postgres_store(old_url, migrations=3)  # the schema before 004_memory_windows.sql
    store.add_many(turns)
    store.close()
    database.close()
    database, store = _postgres_store(old_url)
    try:
        assert [texts(w) for w, _ in store.search_windows("u", "festival", 10)] == \
            [["the kite festival", "colourful kites"], ["the kite festival", "colourful kites", "windy day, kites up"]]
        assert [texts(w) for w, _ in store.search_windows("v", "kite", 10)] == [["a kite of v", "v answers"]]
    finally:
        store.close()
        database.close()
    # The same turns written with 004 applied: the migration built the windows (and their word
    # counts) the insert trigger makes.
    database, store = _postgres_store(new_url)
    store.add_many(turns)
    store.close()
    database.close()
    built, made = _postgres_windows(old_url), _postgres_windows(new_url)
    assert len(built[0]) == 4 and built == made


# --- dates -----------------------------------------------------------------------------------


def test_a_window_is_found_by_the_words_of_its_date(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "april", "user", "we planted tulips", APRIL_2),
                           say("u", "april", "assistant", "lovely garden", APRIL_2)])
    memory_store.add_many([say("u", "may", "user", "we painted the fence", MAY_7),
                           say("u", "may", "assistant", "white paint", MAY_7)])
    found = memory_store.search_windows("u", "What happened in May?", 10)
    assert [texts(w) for w, _ in found] == [["we painted the fence", "white paint"]]
    assert memory_store.search("u", "What happened in May?", 10) == []  # the turns carry no date words
    found = memory_store.search_windows("u", "What happened in May 2023?", 10)
    assert [texts(w) for w, _ in found] == [["we painted the fence", "white paint"], ["we planted tulips", "lovely garden"]]


def test_window_search_narrowed_to_a_period(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "april", "user", "a concert downtown", APRIL_2),
                           say("u", "april", "assistant", "great concert", APRIL_2)])
    memory_store.add_many([say("u", "may", "user", "another concert", MAY_7),
                           say("u", "may", "assistant", "loud", MAY_7)])
    assert len(memory_store.search_windows("u", "concert", 10)) == 2
    in_may = memory_store.search_windows("u", "concert", 10, period=["m202305"])
    assert [texts(w) for w, _ in in_may] == [["another concert", "loud"]]
    in_april_2 = memory_store.search_windows("u", "concert", 10, period=["d20230401", "d20230402"])
    assert [texts(w) for w, _ in in_april_2] == [["a concert downtown", "great concert"]]
    assert memory_store.search_windows("u", "concert", 10, period=["y2022"]) == []
    assert memory_store.search_windows("u", "concert", 10, period=[]) == []


def test_import_keeps_created_at_and_dates_the_windows_by_it(memory_store: MemoryStore, tmp_path: Path) -> None:
    source = SQLiteMemoryStore(tmp_path / "source.sqlite3")
    try:
        source.add_many([say("u", "c", "user", "the regatta", APRIL_2), say("u", "c", "assistant", "sails", APRIL_2 + 1)])
        exported = list(source.export_jsonl("u"))
    finally:
        source.close()
    assert memory_store.import_jsonl(exported) == 2
    imported = memory_store.list("u")[1]
    assert sorted(m.created_at for m in imported) == [APRIL_2, APRIL_2 + 1]
    assert [texts(w) for w, _ in memory_store.search_windows("u", "regatta", 10, period=["m202304"])] == \
        [["the regatta", "sails"]]
    assert memory_store.search_windows("u", "regatta", 10, period=["m202305"]) == []


# --- recall over turns and windows ---------------------------------------------------------------


def test_recall_shows_the_windows_of_the_date_a_question_names(memory_store: MemoryStore) -> None:
    memory_store.add_many([say("u", "april", "user", "we planted tulips", APRIL_2),
                           say("u", "april", "assistant", "lovely garden", APRIL_2)])
    memory_store.add_many([say("u", "may", "user", "we painted the fence", MAY_7),
                           say("u", "may", "assistant", "white paint", MAY_7)])
    block = Recaller(memory_store).block_for("u", "new", "What happened in May?")
    assert block is not None and "we painted the fence" in block and "tulips" not in block
    assert "[2023-05-07] user: we painted the fence" in block  # each run opens with its date
    assert Recaller(memory_store, tuning=RecallTuning(windows=0)).block_for("u", "new", "What happened in May?") \
        is None


def test_a_relative_period_is_taken_from_the_questions_time(memory_store: MemoryStore) -> None:
    now = at(2023, 5, 17)  # a Wednesday
    # Three weeks ago: a turn that matches the question better on its words alone.
    memory_store.add_many([say("u", "old", "user", "pasta pasta dinner", at(2023, 4, 26)),
                           say("u", "old", "assistant", "yum", at(2023, 4, 26))])
    memory_store.add_many([say("u", "recent", "user", "a pasta dinner with friends at the new place downtown",
                               at(2023, 5, 10)),
                           say("u", "recent", "assistant", "sounds fun", at(2023, 5, 10))])
    boosted = RecallTuning(expand=1, wide=0, narrow_after=0)

    def first_line(tuning: RecallTuning, when: float) -> str:
        block = Recaller(memory_store, tuning=tuning, clock=lambda: when).block_for("u", "q", "the pasta dinner last week")
        assert block is not None
        return block.split("\n")[2]  # the first run's first line, under the fence and the header

    assert "new place downtown" in first_line(boosted, now)
    assert "new place downtown" not in first_line(RecallTuning(expand=1, wide=0, narrow_after=0, period_weight=0), now)
    # Asked a month later, "last week" names other days: the words decide again.
    assert "new place downtown" not in first_line(boosted, now + 30 * DAY)


def test_the_block_budget_grows_with_strong_hits_and_shrinks_with_few(memory_store: MemoryStore) -> None:
    filler = " ".join(["words"] * 60)
    # One strong hit among weak ones: "saxophone" is in one turn, "music" in many.
    memory_store.add_many([say("u", "one", "user", "my saxophone lesson"), say("u", "one", "assistant", filler)])
    for n in range(8):  # under a tenth of the rows: "music" is not left out as a common word
        memory_store.add_many([say("u", f"m{n}", "user", f"music number {n} {filler}"),
                               say("u", f"m{n}", "assistant", filler)])
    # Many equally strong hits for "violin".
    for n in range(20):
        memory_store.add_many([say("u", f"v{n}", "user", f"violin practice {n}"),
                               say("u", f"v{n}", "assistant", filler)])
    tuning = RecallTuning(floor_tokens=200, tokens_per_strong_hit=100)
    recaller = Recaller(memory_store, budget_tokens=1000, tuning=tuning)
    narrow = recaller.block_for("u", "q1", "saxophone music")
    broad = recaller.block_for("u", "q2", "violin practice")
    assert narrow is not None and broad is not None and "saxophone" in narrow
    assert len(narrow) <= 200 * 4 < len(broad)
    fixed = Recaller(memory_store, budget_tokens=1000, tuning=RecallTuning(floor_tokens=1000))
    assert len(fixed.block_for("u", "q3", "saxophone music") or "") > 200 * 4
