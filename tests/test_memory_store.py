"""The SQLite memory store: dedupe, isolation, deletion that really deletes, corruption, threads."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_routing.memory.records import BlockLine, KeptBlock, Memory, MemoryRecordError, MemoryStoreError, NewMemory
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore, fts_query


def turn(user: str, text: str, conversation: str = "c1", role: str = "user", at: float = 1_700_000_000.0) -> NewMemory:
    return NewMemory(user, conversation, "claude-code", "claude-x", role, text, at)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteMemoryStore(tmp_path / "memory.sqlite3")
    yield s
    s.close()


def test_is_a_memory_store(store: SQLiteMemoryStore) -> None:
    assert isinstance(store, MemoryStore)


def test_file_is_private_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    s = SQLiteMemoryStore(path)
    try:
        s.add_many([turn("u", "hello there wal")])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        conn = s.open_connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        s.close()


def test_add_many_dedupes_the_same_turn(store: SQLiteMemoryStore) -> None:
    first = store.add_many([turn("u", "I adopted a cat named Miso"), turn("u", "nice", role="assistant")])
    again = store.add_many([turn("u", "I adopted a cat named Miso"), turn("u", "a new line")])
    assert again[0] == first[0]
    assert again[1] not in first
    assert store.counts() == {"memories": 3, "users": 1}
    # The same text in another conversation or role is another memory.
    store.add_many([turn("u", "I adopted a cat named Miso", conversation="c2")])
    store.add_many([turn("u", "I adopted a cat named Miso", role="assistant")])
    assert store.counts()["memories"] == 5


def test_search_ranks_and_is_isolated_per_user(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("alice", "My cat Miso loves tuna"), turn("alice", "I went hiking in the Alps"),
                    turn("bob", "My cat Miso is secret bob stuff")])
    hits = store.search("alice", "what does my cat eat? Miso", 5)
    assert hits[0][0].text == "My cat Miso loves tuna"
    assert all(m.user_id == "alice" for m, _ in hits)
    assert hits[0][1] > 0
    assert store.search("carol", "cat Miso", 5) == []
    assert all(m.user_id == "bob" for m, _ in store.search("bob", "cat Miso tuna Alps", 5))


def test_search_stems_and_excludes_conversation(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("u", "We were painting sunsets", conversation="old"),
                    turn("u", "painted a sunset today", conversation="now")])
    assert {m.conversation_id for m, _ in store.search("u", "paint", 5)} == {"old", "now"}
    hits = store.search("u", "paints", 5, exclude_conversation_id="now")
    assert [m.conversation_id for m, _ in hits] == ["old"]


def test_neighbours_stay_in_the_conversation(store: SQLiteMemoryStore) -> None:
    ids = []
    for i in range(5):
        ids += store.add_many([turn("u", f"a{i}", conversation="A"), turn("u", f"b{i}", conversation="B")])
    middle = store.get(ids[4])  # a2
    assert middle is not None and middle.text == "a2"
    assert [m.text for m in store.neighbours(middle, 1, 2)] == ["a1", "a2", "a3", "a4"]


def test_list_pages_filters_and_counts(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("u", f"note number {i} about gardening" if i % 2 else f"note {i}",
                         conversation=f"c{i % 3}") for i in range(10)])
    store.add_many([turn("v", "gardening elsewhere")])
    total, page = store.list("u", limit=3)
    assert total == 10 and [m.text for m in page] == ["note number 9 about gardening", "note 8", "note number 7 about gardening"]
    total, page = store.list("u", limit=3, offset=9)
    assert total == 10 and [m.text for m in page] == ["note 0"]
    total, page = store.list("u", q="gardening")
    assert total == 5 and all("gardening" in m.text for m in page)
    total, page = store.list("u", conversation_id="c0")
    assert total == 4 and {m.conversation_id for m in page} == {"c0"}
    assert store.list("u", q="the of and") == (0, [])


def test_delete_only_own_and_forget_user(store: SQLiteMemoryStore) -> None:
    [a, b] = store.add_many([turn("u", "one thing"), turn("v", "other thing")])
    assert store.delete(b, user_id="u") is False
    assert store.get(b) is not None
    assert store.delete(a, user_id="u") is True
    assert store.get(a) is None and store.delete(a) is False
    store.add_many([turn("v", f"more {i}") for i in range(3)])
    assert store.forget_user("v") == 4
    assert store.list("v") == (0, [])
    assert store.search("v", "thing more", 10) == []
    assert store.counts() == {"memories": 0, "users": 0}


def test_deleted_text_is_gone_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    s = SQLiteMemoryStore(path)
    secret, kept = "zanzibarquux", "keepmeplease"
    s.add_many([turn("u", f"{secret} is my wifi name")] + [turn("u", f"{kept} filler {i}") for i in range(50)])
    s.add_many([turn("u", f"{secret}{i} another") for i in range(5)])
    [victim] = s.add_many([turn("v", f"{secret} for v")])
    conn = s.open_connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert secret.encode() in path.read_bytes()
    assert s.forget_user("u") == 56
    assert s.delete(victim) is True
    s.add_many([turn("w", f"{kept} survives")])
    conn = s.open_connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = path.read_bytes() + path.with_name(path.name + "-wal").read_bytes()
    assert secret.encode() not in data
    assert secret[:6].encode() not in data  # not even an FTS term prefix
    assert kept.encode() in data
    s.close()


def test_export_import_round_trip(store: SQLiteMemoryStore, tmp_path: Path) -> None:
    store.add_many([turn("u", "first ü"), turn("u", "second", role="assistant", at=5.5), turn("v", "other")])
    lines = list(store.export_jsonl("u"))
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert json.loads(lines[1])["created_at"] == 5.5
    assert len(list(store.export_jsonl())) == 3
    other = SQLiteMemoryStore(tmp_path / "other.sqlite3")
    try:
        assert other.import_jsonl(lines) == 2
        assert other.import_jsonl(lines) == 0  # dedupe
        assert [m.text for m in other.list("u")[1]] == ["second", "first ü"]
        with pytest.raises(MemoryRecordError, match="line 2"):
            other.import_jsonl([lines[0], "{not json", lines[1]])
        with pytest.raises(MemoryRecordError, match="user_id"):
            other.import_jsonl(['{"conversation_id": "c", "role": "user", "text": "x", "created_at": 1}'])
        assert other.counts()["memories"] == 2
    finally:
        other.close()


def test_memory_json_round_trip() -> None:
    m = Memory(7, "u", "c", "cli", "mod", "user", "text \"quoted\"\n", 12.25)
    assert Memory.from_json(m.to_json()) == m
    assert issubclass(MemoryRecordError, MemoryStoreError)


def test_users_lists_counts(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("b", "x1"), turn("a", "y1"), turn("b", "x2")])
    assert store.users() == [("a", 1), ("b", 2)]


def test_corrupt_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "memory.sqlite3"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    neighbour = tmp_path / "other-file.txt"
    neighbour.write_text("untouched")
    with caplog.at_level(logging.WARNING, logger="memory_routing.memory.store"):
        s = SQLiteMemoryStore(path)
    try:
        records = [r for r in caplog.records if r.name == "memory_routing.memory.store"]
        assert len(records) == 1 and "moved it to" in records[0].getMessage()
        [aside] = list(tmp_path.glob("memory.sqlite3.corrupt-*"))
        assert aside.read_bytes() == garbage
        assert neighbour.read_text() == "untouched"
        s.add_many([turn("u", "fresh start")])
        assert s.counts() == {"memories": 1, "users": 1}
    finally:
        s.close()


def test_malformed_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    s = SQLiteMemoryStore(path)
    s.add_many([turn("u", f"line {i} " + "x" * 500) for i in range(200)])
    s.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 3: page * 6] = os.urandom(page * 3)  # trash some b-tree pages, keep the header
    path.write_bytes(bytes(data))
    s = SQLiteMemoryStore(path)
    try:
        assert len(list(tmp_path.glob("memory.sqlite3.corrupt-*"))) == 1
        # What the trashed pages held is gone; what was readable was copied into the fresh file.
        assert s.recovery is not None and s.counts()["memories"] == s.recovery.rows.get("memories", 0) <= 200
    finally:
        s.close()


def test_locked_file_is_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    path.mkdir()  # cannot be opened as a file at all: an error, not corruption
    with pytest.raises((MemoryStoreError, OSError)):
        SQLiteMemoryStore(path)
    assert path.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_reads_while_a_thread_writes(store: SQLiteMemoryStore) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(200):
                store.add_many([turn("u", f"concurrent memory {i} about rivers")])
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set() and reads < 100_000:
        store.search("u", "rivers memory", 5)
        store.counts()
        reads += 1
    writer.join(timeout=30)
    assert not errors and not writer.is_alive()
    assert store.counts()["memories"] == 200


def test_closed_store_raises(tmp_path: Path) -> None:
    s = SQLiteMemoryStore(tmp_path / "m.sqlite3")
    s.close()
    s.close()
    with pytest.raises(MemoryStoreError):
        s.search("u", "anything", 3)
    with pytest.raises(MemoryStoreError):
        s.add_many([turn("u", "x")])


def test_open_connection_allows_another_table(store: SQLiteMemoryStore) -> None:
    conn = store.open_connection()
    conn.execute("CREATE TABLE usage (k TEXT)")
    conn.execute("INSERT INTO usage VALUES ('x')")
    conn.close()
    store.add_many([turn("u", "still works")])
    assert store.counts()["memories"] == 1


def test_fts_query_quotes_everything() -> None:
    assert fts_query('cat AND dog NEAR(xx) -yy "zz') == '"cat" OR "dog" OR "near" OR "xx" OR "yy" OR "zz"'
    assert fts_query("the of a") is None
    assert fts_query("") is None


@pytest.fixture(scope="module")
def query_store(tmp_path_factory: pytest.TempPathFactory):
    s = SQLiteMemoryStore(tmp_path_factory.mktemp("fts") / "h.sqlite3")
    s.add_many([turn("u", "a few words to match against NEAR AND OR * ^ : \" ( )")])
    yield s
    s.close()


def _query_runs(s: SQLiteMemoryStore, text: str) -> None:
    s.search("u", text, 5)
    s.search("u", text, 5, exclude_conversation_id=text, common_share=0.1)
    s.list("u", q=text)
    q = fts_query(text)
    if q is not None:
        conn = s.open_connection()
        conn.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (q,)).fetchall()
        conn.close()


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_search_never_raises_on_arbitrary_text(query_store: SQLiteMemoryStore, text: str) -> None:
    _query_runs(query_store, text)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from('ab"*^:()-+ NEARANDORNOT{}'), max_size=40))
def test_search_never_raises_on_fts_syntax(query_store: SQLiteMemoryStore, text: str) -> None:
    _query_runs(query_store, text)


def test_search_deadline(store: SQLiteMemoryStore) -> None:
    import time

    from memory_routing.memory.records import MemoryTimeoutError
    store.add_many([turn("u", f"river number {i}") for i in range(50)])
    assert len(store.search("u", "river", 5, deadline=time.monotonic() + 30)) == 5
    with pytest.raises(MemoryTimeoutError):
        store.search("u", "river", 5, deadline=time.monotonic() - 1)
    with store._reader().lock:  # close() (say) holds this thread's connection past the deadline
        with pytest.raises(MemoryTimeoutError):
            store.search("u", "river", 5, deadline=time.monotonic() + 0.01)
    assert len(store.search("u", "river", 5)) == 5


def test_search_for_a_light_user_among_many(store: SQLiteMemoryStore) -> None:
    # One user among many takes the path that narrows by owner inside FTS5; a user owning most
    # rows is filtered after ranking. Both must give only that user's rows, minus the excluded conversation.
    store.add_many([turn(f"user{i}", f"shared words about kayaks {j}", conversation=f"c{j}")
                    for i in range(20) for j in range(5)])
    store.add_many([turn("heavy", f"kayaks and more kayaks {j}", conversation=f"h{j % 3}") for j in range(2000)])
    for user, excluded in (("user7", "c2"), ("heavy", "h1")):
        hits = store.search(user, "kayaks words", 1000, exclude_conversation_id=excluded)
        assert hits and all(m.user_id == user for m, _ in hits)
        assert all(m.conversation_id != excluded for m, _ in hits)
    assert len(store.search("user7", "kayaks", 1000, exclude_conversation_id="c2")) == 4


def test_common_share_leaves_out_words_that_are_everywhere(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("u", f"Hey Caroline, chat number {i} about nothing") for i in range(40)])
    store.add_many([turn("u", "Caroline adopted a puppy called Rex", conversation="pets"),
                    turn("u", "puppy training tips from the vet", conversation="pets")])
    plain = store.search("u", "Caroline puppy", 2)
    narrowed = store.search("u", "Caroline puppy", 5, common_share=0.1)
    # Without it "caroline" matches the 41 chats too; with it only the puppy rows are candidates.
    assert len(store.search("u", "Caroline puppy", 50)) == 42
    assert {m.text for m, _ in narrowed} == {"Caroline adopted a puppy called Rex", "puppy training tips from the vet"}
    assert plain[0][0].text == "Caroline adopted a puppy called Rex"
    # Every word common: the query is kept whole rather than emptied.
    assert len(store.search("u", "Caroline chat", 50, common_share=0.1)) == 41


def test_another_process_opening_the_file_leaves_the_open_stores_wal_alone(tmp_path: Path):
    """A second process (the sqlite3 CLI, a backup, a test) opening and closing the file must not
    take itself for the last connection and delete the WAL the proxy still writes to."""
    import subprocess
    import sys

    path = tmp_path / "m.sqlite3"
    store = SQLiteMemoryStore(path)
    try:
        store.add_many([turn("u", "giraffe poster")])
        wal = os.stat(str(path) + "-wal").st_ino
        code = f"from memory_routing.memory.store import SQLiteMemoryStore as S; S({str(path)!r}).close()"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert os.stat(str(path) + "-wal").st_ino == wal
        store.add_many([turn("u", "written after")])
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT count(*) FROM memories").fetchone()[0] == 2
        finally:
            other.close()
    finally:
        store.close()


def test_has_memories_follows_adds_and_forgetting(tmp_path):
    store = SQLiteMemoryStore(tmp_path / "m.sqlite3")
    try:
        assert not store.has_memories("u1")
        store.add_many([NewMemory("u1", "c", "curl", "m", "user", "the sky is green here", 1.0)])
        assert store.has_memories("u1") and not store.has_memories("u2")
        store.forget_user("u1")
        assert not store.has_memories("u1")
    finally:
        store.close()


def test_threads_read_through_their_own_connections_at_once(store: SQLiteMemoryStore) -> None:
    """A read in flight on one thread does not hold up a search on another (one shared connection did)."""
    import time

    from memory_routing.memory.records import MemoryTimeoutError
    store.add_many([turn("u", f"river number {i}") for i in range(50)])
    started, outcome = threading.Event(), []

    def endless_read() -> None:
        reader = store._reader()
        reader.conn.create_function("running", 0, lambda: started.set() or 1)
        try:
            # Runs until interrupted below (its own deadline is far away); says when it runs.
            store._read("WITH RECURSIVE c(x) AS (SELECT running() UNION ALL SELECT x + 1 FROM c)"
                        " SELECT count(*) FROM c", deadline=time.monotonic() + 120)
        except (MemoryTimeoutError, sqlite3.OperationalError) as e:
            outcome.append(type(e).__name__)
        assert reader is store._reader()

    other = threading.Thread(target=endless_read)
    other.start()
    try:
        assert started.wait(30)
        assert len(store.search("u", "river", 5, deadline=time.monotonic() + 10)) == 5
        assert other.is_alive() and store._readers[other.ident].lock.locked()  # it was reading all along
        assert store._readers[other.ident].conn is not store._reader().conn
    finally:
        deadline = time.monotonic() + 30
        while other.is_alive() and time.monotonic() < deadline:
            store._readers[other.ident].conn.interrupt()
            other.join(0.05)
    assert outcome == ["OperationalError"]


def test_close_closes_every_threads_reader_and_readers_of_ended_threads_go(tmp_path: Path) -> None:
    store = SQLiteMemoryStore(tmp_path / "m.sqlite3")
    store.add_many([turn("u", "a kayak on the lake")])
    connections = []

    def read() -> None:
        assert store.search("u", "kayak", 5)
        connections.append(store._reader().conn)

    first = threading.Thread(target=read)
    first.start()
    first.join(30)
    second = threading.Thread(target=read)
    second.start()
    second.join(30)
    # The first thread had ended when the second opened its connection: the first's was closed.
    with pytest.raises(sqlite3.ProgrammingError):
        connections[0].execute("SELECT 1")
    assert store.search("u", "kayak", 5)
    mine = store._reader().conn
    store.close()
    for conn in (connections[1], mine):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    with pytest.raises(MemoryStoreError):
        store.search("u", "kayak", 5)


def test_read_connections_map_the_file_and_never_write(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("u", "hello")])
    conn = store._reader().conn
    assert conn.execute("PRAGMA mmap_size").fetchone()[0] > 0
    assert conn.execute("PRAGMA query_only").fetchone()[0] == 1


def test_opening_warms_the_file_in_a_thread_and_close_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    first = SQLiteMemoryStore(path)
    first.add_many([turn("u", f"warm turn {i}") for i in range(200)])
    first.close()
    store = SQLiteMemoryStore(path)
    assert store.warmed.wait(30)
    store._warmer.join(30)
    assert not store._warmer.is_alive()  # its connection is closed: it holds nothing
    store.close()
    # Closed at once after opening: the warm-up stops rather than holding the file.
    again = SQLiteMemoryStore(path)
    again.close()
    assert not again._warmer.is_alive()


def test_delete_older_than(store: SQLiteMemoryStore) -> None:
    store.add_many([turn("u", "old otter", at=100.0), turn("v", "old beaver", at=150.0), turn("u", "new otter", at=300.0)])
    assert store.delete_older_than(200.0) == 2
    assert [m.text for m in store.list("u")[1]] == ["new otter"] and store.list("v")[0] == 0
    assert not store.has_memories("v") and store.counts() == {"memories": 1, "users": 1}
    assert store.delete_older_than(200.0) == 0


def test_in_a_big_file_a_users_ranking_does_not_depend_on_other_users_rows(tmp_path: Path, monkeypatch) -> None:
    """bm25() weighs words by the whole file: another user's 300 rows about gardens would make
    'garden' count for little in this user's search. Ranked with the user's own statistics, the
    same rows get the same scores however much else the file holds."""
    import memory_routing.memory.store as store_module

    monkeypatch.setattr(store_module, "USER_RANKING_MIN_ROWS", 100)
    mine = [turn("u", text, conversation=f"c{i % 3}") for i, text in enumerate([
        "garden party with friends on sunday", "concert tickets for friday night", "garden concert in the park",
        "the garden needs water", *(f"unrelated note number {i} about taxes" for i in range(30))])]
    results = []
    for name, others in (("alone", 0), ("crowded", 300)):
        store = SQLiteMemoryStore(tmp_path / f"{name}.sqlite3")
        try:
            store.add_many(mine)
            store.add_many([turn("noise", f"garden garden gnome {i}") for i in range(others)])
            store.add_many([turn(f"filler{i}", "filler row") for i in range(120)])
            hits = store.search("u", "garden concert tickets", 10, exclude_conversation_id="c1")
            assert hits and all(m.user_id == "u" and m.conversation_id != "c1" for m, _ in hits)
            results.append([(m.text, round(score, 9)) for m, score in hits])
        finally:
            store.close()
    assert results[0] == results[1]
    assert [text for text, _ in results[0]][:1] == ["garden concert in the park"]


def test_user_ranking_leaves_out_words_common_for_the_user(store: SQLiteMemoryStore, monkeypatch) -> None:
    import memory_routing.memory.store as store_module

    monkeypatch.setattr(store_module, "USER_RANKING_MIN_ROWS", 10)
    store.add_many([turn("u", f"Hey Caroline, chat number {i} about nothing") for i in range(40)])
    store.add_many([turn("u", "Caroline adopted a puppy called Rex", conversation="pets"),
                    turn("u", "puppy training tips from the vet", conversation="pets")])
    store.add_many([turn(f"other{i}", "Caroline puppy") for i in range(200)])
    narrowed = store.search("u", "Caroline puppy", 5, common_share=0.1)
    assert {m.text for m, _ in narrowed} == {"Caroline adopted a puppy called Rex", "puppy training tips from the vet"}
    # Every word common: the query is kept whole rather than emptied.
    assert len(store.search("u", "Caroline chat", 50, common_share=0.1)) == 41
    assert store.search("u", "zebra", 5) == [] and store.search("nobody", "Caroline", 5) == []


def corrupt_page_holding(path: Path, marker: bytes) -> int:
    """Overwrites the one page of the file that holds ``marker`` in a turn's own row with random
    bytes; its number. (A window's text holds the turn's text too, always after a newline.)"""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    offset = data.find(marker)
    while offset > 0 and data[offset - 1:offset] == b"\n":
        offset = data.find(marker, offset + 1)
    assert offset > 0, marker
    page = offset // page_size
    data[page * page_size:(page + 1) * page_size] = os.urandom(page_size)
    path.write_bytes(bytes(data))
    return page


def test_a_damaged_page_costs_only_its_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from memory_routing.call_record import CallRecord
    from memory_routing.dashboard.recorder import usage_row
    from memory_routing.dashboard.usage_rows import SQLiteUsageStore

    path = tmp_path / "memory.sqlite3"
    s = SQLiteMemoryStore(path)
    s.add_many([turn("u", f"memory number {i:04d} " + "x" * 300) for i in range(1000)])
    conn = s.open_connection()
    SQLiteUsageStore(conn).insert(
        [usage_row(CallRecord(at=1.0, user_id="u", client="", client_protocol="openai", requested_model=f"m{i}",
                              route="routed", status=200, latency_ms=1.0), None, 1.0) for i in range(300)])
    conn.close()
    s.close()
    page_count = path.stat().st_size // 4096
    page = corrupt_page_holding(path, b"memory number 0500 ")
    assert 2 < page < page_count - 2  # a page in the middle of the file
    with caplog.at_level(logging.WARNING, logger="memory_routing.memory.store"):
        s = SQLiteMemoryStore(path)
    try:
        [aside] = list(tmp_path.glob("memory.sqlite3.corrupt-*"))  # the damaged file, kept as it was
        assert s.recovery is not None and s.recovery.source == aside
        saved = s.recovery.rows
        # One 4 KiB page holds about ten of these rows: those are gone, every other one is back.
        assert 980 <= saved["memories"] < 1000 and saved["usage_calls"] == 300
        assert s.counts()["memories"] == saved["memories"]
        texts = {s.get(i).text.split(" x")[0] for i in (1, 1000)}  # type: ignore[union-attr]
        assert texts == {"memory number 0000", "memory number 0999"}
        assert s.search("u", "number 0999", limit=5)  # the full-text index was rebuilt from the rows
        records = [r.getMessage() for r in caplog.records if r.name == "memory_routing.memory.store"]
        assert len(records) == 1 and f"saved {s.recovery.total_rows} rows" in records[0]
        assert usage_count(path) == 300
    finally:
        s.close()


def usage_count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM usage_calls").fetchone()[0]


def test_two_damaged_stretches_are_both_skipped(tmp_path: Path) -> None:
    """The copy finds where reading works again after each damaged page, not only past the last."""
    path = tmp_path / "memory.sqlite3"
    s = SQLiteMemoryStore(path)
    s.add_many([turn("u", f"memory number {i:04d} " + "x" * 300) for i in range(1000)])
    s.close()
    corrupt_page_holding(path, b"memory number 0300 ")
    corrupt_page_holding(path, b"memory number 0700 ")
    s = SQLiteMemoryStore(path)
    try:
        assert s.recovery is not None and s.recovery.skipped_stretches == 2
        assert 960 <= s.recovery.rows["memories"] <= 980
        kept = {s.get(i).text.split(" x")[0] for i in (1, 500, 1000)}  # type: ignore[union-attr]
        assert kept == {"memory number 0000", "memory number 0499", "memory number 0999"}
    finally:
        s.close()


# --- recall blocks as the provider first saw them -----------------------------------------------



def kept(user: str, key: bytes, ids: list[int], at: float = 1_700_000_000.0) -> KeptBlock:
    lines = tuple(BlockLine(i, 0, "2023-11-14", f"user: note {i}") for i in ids)
    return KeptBlock(user, key, lines, at)


def test_recall_blocks_are_kept_per_user_and_turn_and_the_first_stays(store: SQLiteMemoryStore) -> None:
    a, b, c = store.add_many([turn("u", "alpha"), turn("u", "beta"), turn("v", "gamma")])
    assert store.save_recall_blocks([kept("u", b"k1", [a, b]), kept("v", b"k1", [c])]) == 2
    assert store.save_recall_blocks([kept("u", b"k1", [b])]) == 0  # the block the provider saw stays
    found = store.recall_blocks("u", [b"k1", b"k2"])
    assert list(found) == [b"k1"] and [line.memory_id for line in found[b"k1"]] == [a, b]
    assert found[b"k1"][1] == BlockLine(b, 0, "2023-11-14", f"user: note {b}")
    assert [line.memory_id for line in store.recall_blocks("v", [b"k1"])[b"k1"]] == [c]  # never another user's
    assert store.recall_blocks("w", [b"k1"]) == {}


def test_a_deleted_memory_leaves_every_block_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    s = SQLiteMemoryStore(path)
    secret = "zanzibarquux"
    one, two = s.add_many([turn("u", f"{secret} is my wifi name"), turn("u", "the second memory")])
    lines = (BlockLine(one, 0, "2023-11-14", f"user: {secret} is my wifi name"),
             BlockLine(two, 0, "2023-11-14", "user: the second memory"))
    s.save_recall_blocks([KeptBlock("u", b"k1", lines, 1.0), KeptBlock("u", b"k2", lines[:1], 1.0)])
    assert s.delete(one) is True
    found = s.recall_blocks("u", [b"k1", b"k2"])
    assert [line.memory_id for line in found[b"k1"]] == [two] and found[b"k2"] == ()  # k2 now carries no block
    conn = s.open_connection()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert secret.encode() not in path.read_bytes() + path.with_name(path.name + "-wal").read_bytes()
    # A block still waiting in the writer's queue when its memory went: the line is left out.
    assert s.save_recall_blocks([kept("u", b"k3", [one, two])]) == 1
    assert [line.memory_id for line in s.recall_blocks("u", [b"k3"])[b"k3"]] == [two]
    s.forget_user("u")
    assert s.recall_blocks("u", [b"k1", b"k2", b"k3"]) == {}
    s.close()


def test_the_retention_drops_old_blocks(store: SQLiteMemoryStore) -> None:
    [memory] = store.add_many([turn("u", "fresh", at=2_000_000_000.0)])
    store.save_recall_blocks([kept("u", b"old", [memory], at=1_000.0), kept("u", b"new", [memory], at=2_000_000_000.0)])
    store.delete_older_than(1_500_000_000.0)
    assert list(store.recall_blocks("u", [b"old", b"new"])) == [b"new"]
