"""The MemoryStore contract, checked on both stores: the local SQLite file and the fleet's
PostgreSQL. The same inputs give the same observable results (ids may differ), so the proxy
behaves the same whichever store holds its memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_servers import postgres_memory_store
from memory_routing.memory.records import BlockLine, KeptBlock, Memory, MemoryRecordError, MemoryTimeoutError, NewMemory
from memory_routing.memory.store import MemoryStore, SQLiteMemoryStore

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore]:
    if request.param == "sqlite":
        sqlite = SQLiteMemoryStore(tmp_path / "memory.sqlite3")
        yield sqlite
        sqlite.close()
        return
    with postgres_memory_store(request.getfixturevalue("database_url")) as postgres:
        assert postgres.presence_loaded.wait(10)
        yield postgres


def turn(text: str, user: str = "alice", conversation: str = "c1", role: str = "user", at: float = T0) -> NewMemory:
    return NewMemory(user, conversation, "claude-code", "claude-sonnet-4", role, text, at)


def texts(found: list[tuple[Memory, float]] | list[Memory]) -> list[str]:
    return [item[0].text if isinstance(item, tuple) else item.text for item in found]


def test_is_a_memory_store(store: MemoryStore) -> None:
    assert isinstance(store, MemoryStore)


def test_add_many_dedupes_per_user_conversation_role_and_text(store: MemoryStore) -> None:
    first = store.add_many([turn("I live in Lisbon"), turn("I live in Lisbon", role="assistant")])
    again = store.add_many([turn("I live in Lisbon"), turn("I live in Lisbon", conversation="c2"),
                            turn("I live in Lisbon", user="bob"), turn("I live in Lisbon")])
    assert len(set(first)) == 2
    assert again[0] == first[0] and again[3] == first[0]
    assert len({*first, *again}) == 4
    assert store.counts() == {"memories": 4, "users": 2}
    got = store.get(first[0])
    assert got == Memory(first[0], "alice", "c1", "claude-code", "claude-sonnet-4", "user", "I live in Lisbon", T0)
    assert store.get(max(*first, *again) + 1000) is None


def test_search_ranks_stems_and_stays_with_its_user(store: MemoryStore) -> None:
    store.add_many([turn("my dog is called Rex and he loves running on the beach"),
                    turn("the weather in Lisbon is sunny", role="assistant"),
                    turn("I adopted a second dog, a puppy named Max", conversation="c2"),
                    turn("my dog secret belongs to bob", user="bob")])
    found = store.search("alice", "what dogs do I have? running", limit=10)
    assert texts(found) == ["my dog is called Rex and he loves running on the beach",
                            "I adopted a second dog, a puppy named Max"]
    assert found[0][1] > found[1][1] > 0
    assert all(m.user_id == "alice" for m, _ in found)
    assert texts(store.search("alice", "dog", limit=1)) == ["I adopted a second dog, a puppy named Max"]  # shorter
    assert texts(store.search("alice", "dog", exclude_conversation_id="c1")) == [
        "I adopted a second dog, a puppy named Max"]
    assert store.search("alice", "the and of", limit=10) == []  # nothing but stopwords
    assert store.search("alice", "dog", limit=0) == []
    assert store.search("carol", "dog") == []
    assert texts(store.search("bob", "dog")) == ["my dog secret belongs to bob"]


def test_search_reads_any_text_as_words(store: MemoryStore) -> None:
    store.add_many([turn("send it to example.com tomorrow, version 3.5")])
    for query in ['"', "'", "NEAR(a b)", "owner : x", "a & b | !c", "\\", "-dog", "example", "3", "(((", "x:*"]:
        store.search("alice", query)
    assert texts(store.search("alice", "example")) == ["send it to example.com tomorrow, version 3.5"]
    assert texts(store.search("alice", "version 5")) == ["send it to example.com tomorrow, version 3.5"]


def test_common_share_leaves_out_words_that_are_everywhere(store: MemoryStore) -> None:
    # "caroline" is in every row: with common_share it no longer decides the ranking.
    rows = [turn(f"caroline talked about topic number {i}", conversation=f"c{i}") for i in range(30)]
    rows.append(turn("caroline went to the pottery workshop", conversation="pottery"))
    rows.append(turn("pottery caroline caroline caroline", conversation="other"))
    store.add_many(rows)
    found = store.search("alice", "caroline pottery", limit=2, common_share=0.1)
    assert {m.conversation_id for m, _ in found} == {"pottery", "other"}
    # Every word common: the query is kept whole rather than emptied.
    assert len(store.search("alice", "caroline", limit=5, common_share=0.1)) == 5


def test_a_search_past_its_deadline_raises_timeout(store: MemoryStore) -> None:
    import time
    store.add_many([turn("a dog")])
    with pytest.raises(MemoryTimeoutError):
        store.search("alice", "dog", deadline=time.monotonic() - 1)
    with pytest.raises(MemoryTimeoutError):
        store.neighbours(store.list("alice")[1][0], 1, 1, deadline=time.monotonic() - 1)


def test_search_windows_keeps_to_the_user_and_honours_common_share_period_and_deadline(store: MemoryStore) -> None:
    import time
    rows = []
    for i in range(30):  # "caroline" in every window
        rows += [turn(f"caroline talked about topic {i}", conversation=f"c{i}", at=T0 + 2 * i),
                 turn(f"reply {i}", conversation=f"c{i}", role="assistant", at=T0 + 2 * i + 1)]
    rows += [turn("caroline went to the pottery workshop", conversation="pottery"),
             turn("she loved the clay", conversation="pottery", role="assistant")]
    store.add_many(rows)
    store.add_many([turn("pottery secret", user="bob"), turn("clay of bob", user="bob", role="assistant")])
    found = store.search_windows("alice", "caroline pottery clay", limit=3, common_share=0.1)
    assert [texts(list(window)) for window, _ in found] == [["caroline went to the pottery workshop",
                                                             "she loved the clay"]]
    assert found[0][1] > 0
    assert [m.user_id for window, _ in store.search_windows("bob", "pottery clay") for m in window] == ["bob", "bob"]
    # Every word common: the query is kept whole rather than emptied.
    assert len(store.search_windows("alice", "caroline", limit=5, common_share=0.1)) == 5
    assert store.search_windows("alice", "pottery", exclude_conversation_id="pottery") == []
    assert store.search_windows("alice", "pottery", limit=0) == []
    # T0 is 14 November 2023 (UTC).
    assert len(store.search_windows("alice", "pottery", period=["m202311"])) == 1
    assert len(store.search_windows("alice", "pottery", period=["y2022", "d20231114"])) == 1
    assert store.search_windows("alice", "pottery", period=["m202312"]) == []
    assert store.search_windows("alice", "pottery", period=[]) == []
    with pytest.raises(MemoryTimeoutError):
        store.search_windows("alice", "pottery", deadline=time.monotonic() - 1)


def test_neighbours_stay_in_the_conversation(store: MemoryStore) -> None:
    ids = store.add_many([turn(f"turn {i}", conversation="c1" if i % 2 == 0 else "c2", at=T0 + i) for i in range(10)])
    middle = store.get(ids[4])
    assert middle is not None
    assert texts(store.neighbours(middle, 1, 2)) == ["turn 2", "turn 4", "turn 6", "turn 8"]
    assert texts(store.neighbours(middle, 0, 0)) == ["turn 4"]
    assert texts(store.neighbours(middle, 5, 0)) == ["turn 0", "turn 2", "turn 4"]


def test_list_pages_filters_searches_and_counts(store: MemoryStore) -> None:
    store.add_many([turn(f"note {i} about {'cats' if i % 3 == 0 else 'dogs'}", conversation=f"c{i % 2}", at=T0 + i)
                    for i in range(9)])
    store.add_many([turn("cats of bob", user="bob")])
    total, page = store.list("alice", limit=3)
    assert total == 9 and texts(page) == ["note 8 about dogs", "note 7 about dogs", "note 6 about cats"]
    total, page = store.list("alice", limit=3, offset=7)
    assert total == 9 and texts(page) == ["note 1 about dogs", "note 0 about cats"]
    total, page = store.list("alice", conversation_id="c1")
    assert total == 4 and texts(page) == ["note 7 about dogs", "note 5 about dogs", "note 3 about cats",
                                          "note 1 about dogs"]
    total, page = store.list("alice", q="cats")
    assert total == 3 and sorted(texts(page)) == ["note 0 about cats", "note 3 about cats", "note 6 about cats"]
    total, page = store.list("alice", q="cats", conversation_id="c0")
    assert total == 2 and sorted(texts(page)) == ["note 0 about cats", "note 6 about cats"]
    assert store.list("alice", q="the") == (0, [])
    assert store.list("alice", q="giraffes") == (0, [])


def test_delete_only_own_forget_user_and_presence(store: MemoryStore) -> None:
    assert not store.has_memories("alice")
    ids = store.add_many([turn("alpha"), turn("beta"), turn("gamma", user="bob")])
    assert store.has_memories("alice") and store.has_memories("bob")
    assert not store.delete(ids[0], user_id="bob")
    assert store.delete(ids[0], user_id="alice")
    assert not store.delete(ids[0])
    assert store.get(ids[0]) is None
    assert store.delete(ids[2])
    assert not store.has_memories("bob") and store.has_memories("alice")
    assert store.forget_user("alice") == 1
    assert store.forget_user("alice") == 0
    assert not store.has_memories("alice")
    assert store.counts() == {"memories": 0, "users": 0}


def test_delete_older_than(store: MemoryStore) -> None:
    store.add_many([turn("old one", at=T0), turn("new one", at=T0 + 100), turn("old of bob", user="bob", at=T0 + 1)])
    assert store.delete_older_than(T0 + 50) == 2
    assert texts(store.list("alice")[1]) == ["new one"]
    assert store.users() == [("alice", 1)]


def test_export_import_round_trip_keeps_created_at(store: MemoryStore) -> None:
    store.add_many([turn("one", at=T0 + 1), turn("two", role="assistant", at=T0 + 2), turn("three", user="bob")])
    exported = list(store.export_jsonl())
    assert [json.loads(line)["text"] for line in exported] == ["one", "two", "three"]
    assert [json.loads(line)["text"] for line in store.export_jsonl("alice")] == ["one", "two"]
    assert store.forget_user("alice") == 2
    assert store.import_jsonl([*exported, ""]) == 2  # bob's line is a repeat
    assert [(m.text, m.created_at, m.role) for m in reversed(store.list("alice")[1])] == [
        ("one", T0 + 1, "user"), ("two", T0 + 2, "assistant")]
    with pytest.raises(MemoryRecordError, match="line 2"):
        store.import_jsonl([exported[0], "{not json"])
    assert store.counts() == {"memories": 3, "users": 2}


def test_users_and_counts(store: MemoryStore) -> None:
    assert store.users() == [] and store.counts() == {"memories": 0, "users": 0}
    store.add_many([turn("a"), turn("b"), turn("c", user="bob")])
    assert store.users() == [("alice", 2), ("bob", 1)]
    assert store.counts() == {"memories": 3, "users": 2}


def test_recall_blocks_kept_per_user_and_turn_and_emptied_by_deletes(store: MemoryStore) -> None:
    ids = store.add_many([turn("fact one", at=T0 + 100), turn("fact two", at=T0 + 100),
                          turn("fact of bob", user="bob", at=T0 + 100)])
    lines = (BlockLine(ids[0], 0, "2023-11-14", "user: fact one"), BlockLine(ids[1], 1, "2023-11-14", "user: fact two"),
             BlockLine(ids[2], 1, "2023-11-14", "user: fact of bob"))  # another user's line is left out
    assert store.save_recall_blocks([KeptBlock("alice", b"k1", lines, T0),
                                     KeptBlock("alice", b"k1", lines[:1], T0),  # the first block stays
                                     KeptBlock("alice", b"k2", (), T0 + 10)]) == 2
    assert store.recall_blocks("alice", [b"k1", b"k2", b"k3"]) == {b"k1": lines[:2], b"k2": ()}
    assert store.recall_blocks("bob", [b"k1"]) == {}
    store.delete(ids[0])
    assert store.recall_blocks("alice", [b"k1"]) == {b"k1": lines[1:2]}
    assert store.delete_older_than(T0 + 5) == 0  # no memory that old, but the block k1 is
    assert store.recall_blocks("alice", [b"k1", b"k2"]) == {b"k2": ()}
    store.save_recall_blocks([KeptBlock("alice", b"k3", lines[1:2], T0 + 20)])
    store.forget_user("alice")
    assert store.recall_blocks("alice", [b"k2", b"k3"]) == {}


def test_closed_store_refuses(store: MemoryStore) -> None:
    from memory_routing.memory.records import MemoryStoreClosedError
    store.close()
    with pytest.raises(MemoryStoreClosedError):
        store.add_many([turn("late")])


def test_neighbours_of_search_hits_are_the_conversations_turns(store: MemoryStore) -> None:
    # The PostgreSQL store reads the turns around its hits with the search: the same answers.
    store.add_many([turn(f"turn {i} {'kayak' if i in (0, 5, 9) else 'tea'}", conversation="c1" if i < 7 else "c2",
                         at=T0 + i) for i in range(10)])
    hits = store.search("alice", "kayak", limit=5)
    assert sorted(texts(hits)) == ["turn 0 kayak", "turn 5 kayak", "turn 9 kayak"]
    by_text = {m.text: m for m, _ in hits}
    assert texts(store.neighbours(by_text["turn 5 kayak"], 1, 2)) == ["turn 4 tea", "turn 5 kayak", "turn 6 tea"]
    assert texts(store.neighbours(by_text["turn 5 kayak"], 3, 0)) == ["turn 2 tea", "turn 3 tea", "turn 4 tea",
                                                                       "turn 5 kayak"]
    assert texts(store.neighbours(by_text["turn 0 kayak"], 1, 1)) == ["turn 0 kayak", "turn 1 tea"]
    assert texts(store.neighbours(by_text["turn 9 kayak"], 2, 2)) == ["turn 7 tea", "turn 8 tea", "turn 9 kayak"]
