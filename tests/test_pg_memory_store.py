"""What only the PostgreSQL memory store has: the per-user word counts its triggers keep, and the
owner lexeme that scopes a search inside the one GIN index (the shared contract is in
test_memory_store_contract.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from memory_routing.fleet.health import FleetHealth
from memory_routing.fleet.postgres import FleetDatabase
from memory_routing.memory.pg_store import PostgresMemoryStore, owner_lexeme
from memory_routing.memory.records import NewMemory


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresMemoryStore]:
    database = FleetDatabase(database_url, health=FleetHealth())
    database.start()
    assert database.wait_ready(30)
    store = PostgresMemoryStore(database)
    yield store
    store.close()
    database.close()


def turn(text: str, user: str = "alice", conversation: str = "c1") -> NewMemory:
    return NewMemory(user, conversation, "cli", "model", "user", text, 1_700_000_000.0)


def term_rows(url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(url) as conn:
        return {(u, lexeme): rows for u, lexeme, rows in conn.execute("SELECT user_id, lexeme, rows FROM memory_term_rows")}


def test_word_counts_follow_inserts_repeats_deletes_and_forgetting(store: PostgresMemoryStore, database_url: str) -> None:
    ids = store.add_many([turn("kayaks and kayaking"), turn("a red kayak"), turn("kayak", user="bob")])
    store.add_many([turn("a red kayak")])  # a repeat adds no row, and counts nothing
    counts = term_rows(database_url)
    assert counts[("alice", "kayak")] == 2  # once per row, whatever the row's repeats
    assert counts[("alice", "red")] == 1 and counts[("bob", "kayak")] == 1
    assert store.users() == [("alice", 2), ("bob", 1)]
    store.delete(ids[1])
    counts = term_rows(database_url)
    assert counts[("alice", "kayak")] == 1 and ("alice", "red") not in counts
    store.forget_user("alice")
    assert all(user == "bob" for user, _ in term_rows(database_url))  # no word of alice is left
    assert store.counts() == {"memories": 1, "users": 1}


def test_a_text_naming_anothers_owner_lexeme_reaches_no_other_user(store: PostgresMemoryStore) -> None:
    forged = owner_lexeme("bob")
    store.add_many([turn(f"{forged} secret plans", user="mallory"), turn("plans for the weekend", user="bob")])
    assert [m.user_id for m, _ in store.search("bob", "secret plans", 10)] == ["bob"]
    assert [m.text for m, _ in store.search("bob", forged, 10)] == []


def test_a_memory_deleted_through_another_proxy_leaves_this_proxys_kept_blocks(store: PostgresMemoryStore) -> None:
    from memory_routing.memory.blocks import BlockBook, TurnBlock
    from memory_routing.memory.records import BlockLine, KeptBlock

    ids = store.add_many([turn("the kayak is red"), turn("the tent is green")])
    lines = (BlockLine(ids[0], 0, "2023-11-14", "user: the kayak is red"),
             BlockLine(ids[1], 0, "2023-11-14", "user: the tent is green"))
    store.save_recall_blocks([KeptBlock("alice", b"turn", lines, 1_700_000_000.0)])
    here = BlockBook()
    assert here.lookup(store, "alice", [b"turn"]) == {b"turn": TurnBlock(lines)}
    store.delete(ids[0])  # through another proxy: this one's book is not told
    assert here.lookup(store, "alice", [b"turn"]) == {b"turn": TurnBlock(lines)}  # remembered
    assert here.needs_store("alice", [b"turn"], max_age_s=0.0)
    assert here.lookup(store, "alice", [b"turn"], max_age_s=0.0) == {b"turn": TurnBlock(lines[1:])}
    store.forget_user("alice")
    assert here.lookup(store, "alice", [b"turn"], max_age_s=0.0) == {b"turn": TurnBlock()}
