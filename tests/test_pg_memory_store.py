"""What only the PostgreSQL memory store has: the per-user word counts its triggers keep, and the
owner lexeme that scopes a search inside the one GIN index (the shared contract is in
test_memory_store_contract.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from fleet_servers import postgres_memory_store
from memory_routing.memory.pg_store import PostgresMemoryStore, owner_lexeme
from memory_routing.memory.records import NewMemory


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresMemoryStore]:
    with postgres_memory_store(database_url) as store:
        yield store


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


def test_the_windows_sql_twins_agree_with_the_python_dates_and_owner_lexeme(store: PostgresMemoryStore,
                                                                            database_url: str) -> None:
    from datetime import UTC, datetime

    from memory_routing.memory.dates import date_label, period_keys

    moments = [0.0, 1_683_460_800.5, datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(),
               datetime(2024, 2, 29, 0, 0, tzinfo=UTC).timestamp(), datetime(1999, 9, 1, 7, tzinfo=UTC).timestamp(),
               datetime(2031, 10, 10, 23, 30, tzinfo=UTC).timestamp()]
    users = ["alice", "bøb ünïcode", "🙂 emoji user", ""]
    with psycopg.connect(database_url) as conn:
        for at in moments:
            assert conn.execute("SELECT memory_date_label(%s), memory_period_keys(%s)", (at, at)).fetchone() == \
                (date_label(at), list(period_keys(at)))
        for user in users:
            lexemes = conn.execute("SELECT tsvector_to_array(memory_window_tsv(%s, 'x', 0))", (user,)).fetchone()
            assert lexemes is not None and owner_lexeme(user) in lexemes[0]


def window_term_rows(url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(url) as conn:
        return {(u, lexeme): rows for u, lexeme, rows in
                conn.execute("SELECT user_id, lexeme, rows FROM memory_window_term_rows")}


def test_window_word_counts_follow_their_turns(store: PostgresMemoryStore, database_url: str) -> None:
    ids = store.add_many([turn("kayaks and kayaking"), turn("a red kayak"), turn("green tent"),
                          turn("kayak", user="bob"), turn("paddle", user="bob")])
    store.add_many([turn("a red kayak")])  # a repeat makes no window
    counts = window_term_rows(database_url)
    # alice's windows: turns 1-2 and 1-3; bob's: 4-5. The date label's words count; the owner's
    # and the period keys' lexemes do not.
    assert counts[("alice", "kayak")] == 2 and counts[("alice", "red")] == 2 and counts[("alice", "green")] == 1
    assert counts[("bob", "kayak")] == 1 and counts[("alice", "2023")] == 2
    assert not any(" " in lexeme for _, lexeme in counts)
    store.delete(ids[2])
    counts = window_term_rows(database_url)
    assert counts[("alice", "kayak")] == 1 and ("alice", "green") not in counts
    store.forget_user("alice")
    assert all(user == "bob" for user, _ in window_term_rows(database_url))
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT user_id, rows FROM memory_window_user_rows").fetchall() == [("bob", 1)]
