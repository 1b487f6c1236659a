"""The memory while the fleet's PostgreSQL is away: the writer holds the turns (bounded, overflow
counted and logged once) and writes them when the database is back; recall gives up at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from fleet_servers import PostgresServer, postgres_memory_store
from harness import wait_until
from memory_routing.errors import SharedServerUnavailable
from memory_routing.fleet.health import DATABASE
from memory_routing.memory.pg_store import PostgresMemoryStore
from memory_routing.memory.records import NewMemory
from memory_routing.memory.writer import MemoryWriter


@pytest.fixture(autouse=True)
def _no_stale_mitmproxy_log_handler() -> None:
    """A mitmproxy Master made outside a test (test_docs_configuration builds its option list at
    collection) leaves its log handler on the root logger, bound to a closed event loop, until the
    next Master replaces it; the writer and pool threads here log warnings before any Master of
    their own (in the proxy, the Master's loop runs as long as they do)."""
    from mitmproxy.log import MitmLogHandler

    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, MitmLogHandler) and handler._initiated_in_test is None:
            handler.uninstall()


@pytest.fixture
def fleet_store(database_url: str, postgres_server: PostgresServer) -> Iterator[PostgresMemoryStore]:
    with postgres_memory_store(database_url) as store:
        try:
            yield store
        finally:
            if postgres_server.process is None:
                postgres_server.start()  # the server is shared by the session's tests


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


def test_a_call_during_an_outage_is_answered_without_memory_and_its_turn_kept(
        fleet_store: PostgresMemoryStore, postgres_server: PostgresServer, tmp_path) -> None:
    from types import SimpleNamespace

    from mitmproxy.test import taddons

    from memory_routing.addons.memory import EmbeddedMemory
    from memory_routing.addons.routing_config import RoutingConfig
    from memory_routing.flow_state import known_context
    from test_memory_addon import CONFIG, answer, openai_call, run

    fleet_store.add_many([NewMemory("alice", "old", "cli", "m", "user", "My cat is called Miso.", time.time())])
    assert wait_until(lambda: fleet_store.has_memories("alice"), 10)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    routing = RoutingConfig()
    memory = EmbeddedMemory(routing, SimpleNamespace(memory=fleet_store, before_close=[], outage_rows=50))
    with taddons.context(routing, memory) as tctx:
        tctx.configure(routing, memory_routing_config=str(path))
        postgres_server.stop()
        h = SimpleNamespace(memory=memory)
        outcomes = []
        for question in ("What is my cat called?", "Remind me of my cat's name?"):
            flow = openai_call(question)
            run(memory, flow)
            assert "Miso" not in flow.request.content.decode()  # went on without memory
            answer(h, flow, {"choices": [{"message": {"role": "assistant", "content": "I do not know your cat."}}]})
            context = known_context(flow)
            assert context is not None and context.memory is not None and context.memory.stored
            outcomes.append(context.memory.recall)
            # The first call finds the outage (within its recall deadline); the next ones are
            # told at once.
            assert wait_until(lambda: fleet_store.database.health.is_degraded(DATABASE), 30)
        assert outcomes[0] in ("timeout", "unavailable") and outcomes[1] == "unavailable"
        assert wait_until(lambda: memory.status().get("held") == 4, 30)
        postgres_server.start()
        assert wait_until(lambda: "I do not know your cat." in found(fleet_store, "know"), 60)
        assert wait_until(lambda: memory.status().get("held") == 0, 30)
    memory.done()


def test_local_stores_give_the_memory_the_fleet_database(
        fleet_store: PostgresMemoryStore, tmp_path) -> None:
    from types import SimpleNamespace

    from memory_routing.addons.local_stores import LocalStores
    from memory_routing.config.schema import StorageSettings
    from memory_routing.memory.store import SQLiteMemoryStore

    alone = LocalStores()
    alone.open(tmp_path / "alone.sqlite3")
    assert isinstance(alone.memory, SQLiteMemoryStore) and alone.outage_rows is None
    alone.close()
    shared = SimpleNamespace(database=fleet_store.database, settings=StorageSettings(outage_queue_rows=7))
    stores = LocalStores(shared)  # type: ignore[arg-type]
    stores.open(tmp_path / "fleet.sqlite3")
    memory = stores.memory
    assert isinstance(memory, PostgresMemoryStore) and memory.database is fleet_store.database
    assert stores.memory is memory and stores.outage_rows == 7
    assert stores.usage is not None  # the file still holds what is not moved to the database
    stores.close()
    assert stores.memory is None


def test_the_fleet_stores_kept_blocks_are_read_off_the_event_loop(
        fleet_store: PostgresMemoryStore, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from types import SimpleNamespace

    from mitmproxy.test import taddons

    from memory_routing.addons.memory import EmbeddedMemory
    from memory_routing.addons.routing_config import RoutingConfig
    from test_memory_addon import CONFIG, openai_call, run

    fleet_store.add_many([NewMemory("alice", "old", "cli", "m", "user", "My cat is called Miso.", time.time())])
    assert wait_until(lambda: fleet_store.has_memories("alice"), 10)
    threads: list[str] = []
    read = fleet_store.recall_blocks

    def recall_blocks(*args, **kwargs):  # records where the store is read, and reads it
        threads.append(threading.current_thread().name)
        return read(*args, **kwargs)

    monkeypatch.setattr(fleet_store, "recall_blocks", recall_blocks)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    routing = RoutingConfig()
    memory = EmbeddedMemory(routing, SimpleNamespace(memory=fleet_store, before_close=[]))
    with taddons.context(routing, memory) as tctx:
        tctx.configure(routing, memory_routing_config=str(path))
        flow = openai_call("What is my cat called?")
        run(memory, flow)
    memory.done()
    assert threads and all(name.startswith("memory-recall") for name in threads)


def test_an_outage_queue_of_zero_rows_holds_nothing_and_counts_every_turn(
        fleet_store: PostgresMemoryStore, postgres_server: PostgresServer) -> None:
    writer = MemoryWriter(fleet_store, linger_s=0, outage_rows=0, outage_retry_s=0.05)
    try:
        postgres_server.stop()
        assert writer.submit([turn("the kayak is red"), turn("the tent is green")])
        assert writer.flush(30)
        assert writer.held == 0 and writer.outage_dropped == 2
    finally:
        writer.close(10)
