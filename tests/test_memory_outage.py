"""The memory while the fleet's PostgreSQL is away: the writer holds the turns (bounded, overflow
counted and logged once) and writes them when the database is back; recall gives up at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from fleet_servers import PostgresServer
from harness import wait_until
from memory_routing.errors import SharedServerUnavailable
from memory_routing.fleet.health import DATABASE, FleetHealth
from memory_routing.fleet.postgres import FleetDatabase
from memory_routing.memory.pg_store import PostgresMemoryStore
from memory_routing.memory.records import NewMemory
from memory_routing.memory.writer import MemoryWriter


@pytest.fixture
def fleet_store(database_url: str, postgres_server: PostgresServer) -> Iterator[PostgresMemoryStore]:
    database = FleetDatabase(database_url, health=FleetHealth())
    database.start()
    assert database.wait_ready(30)
    store = PostgresMemoryStore(database)
    try:
        yield store
    finally:
        if postgres_server.process is None:
            postgres_server.start()  # the server is shared by the session's tests
        store.close()
        database.close()


def turn(text: str) -> NewMemory:
    return NewMemory("alice", "c1", "cli", "model", "user", text, time.time())


def found(store: PostgresMemoryStore, word: str) -> list[str]:
    try:
        return [m.text for m, _ in store.search("alice", word, 10)]
    except SharedServerUnavailable:
        return []


def test_turns_written_while_the_database_is_down_are_written_when_it_returns(
        fleet_store: PostgresMemoryStore, postgres_server: PostgresServer) -> None:
    writer = MemoryWriter(fleet_store, linger_s=0, outage_retry_s=0.05)
    try:
        postgres_server.stop()
        assert writer.submit([turn("the kayak is red"), turn("the tent is green")])
        assert writer.flush(30)
        assert writer.held == 2 and writer.failed == 0 and writer.written == 0
        assert writer.submit([turn("the kayak is red")])  # a repeat: stored once
        assert wait_until(lambda: writer.held == 3, 30)
        postgres_server.start()
        assert wait_until(lambda: found(fleet_store, "kayak") == ["the kayak is red"], 60)
        assert wait_until(lambda: writer.held == 0, 30)
        assert found(fleet_store, "tent") == ["the tent is green"]
        assert fleet_store.counts() == {"memories": 2, "users": 1}
        assert writer.outage_dropped == 0
    finally:
        writer.close(10)


def test_the_hold_is_bounded_and_its_overflow_counted_and_logged_once(
        fleet_store: PostgresMemoryStore, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    writer = MemoryWriter(fleet_store, linger_s=0, outage_rows=3, outage_retry_s=0.05)
    try:
        postgres_server.stop()
        with caplog.at_level(logging.WARNING, logger="memory_routing.memory.writer"):
            for n in range(5):
                assert writer.submit([turn(f"fact{n} kept")])
                assert writer.flush(30)
        assert writer.held == 3 and writer.outage_dropped == 2
        assert len([r for r in caplog.records if "outage_queue_rows" in r.getMessage()]) == 1
        postgres_server.start()
        assert wait_until(lambda: sorted(found(fleet_store, "kept")) == ["fact2 kept", "fact3 kept", "fact4 kept"], 60)
    finally:
        writer.close(10)


def test_recall_gives_up_at_once_during_a_known_outage(
        fleet_store: PostgresMemoryStore, postgres_server: PostgresServer) -> None:
    fleet_store.add_many([turn("the kayak is red")])
    postgres_server.stop()
    # The first read finds the outage (bounded by its deadline) and reports it...
    with pytest.raises(SharedServerUnavailable):
        fleet_store.search("alice", "kayak", 10, deadline=time.monotonic() + 0.5)
    assert fleet_store.database.health.is_degraded(DATABASE)
    # ...after which a recall does not wait for the database at all: a deadline long past
    # would raise MemoryTimeoutError if the store tried.
    with pytest.raises(SharedServerUnavailable):
        fleet_store.search("alice", "kayak", 10, deadline=time.monotonic() + 60)
    with pytest.raises(SharedServerUnavailable):
        fleet_store.recall_blocks("alice", [b"k"], deadline=time.monotonic() + 60)
    postgres_server.start()
    assert wait_until(lambda: found(fleet_store, "kayak") == ["the kayak is red"], 60)
