"""Usage rows in the fleet's PostgreSQL, against a real server: a row written twice is stored
once, rows the writer cannot write while the server is down wait in a bounded queue and are
written when it returns (overflow counted and told once), the dashboard answers 503 meanwhile,
and LocalStores hands the fleet's store to the writer and the dashboard."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fleet_servers import PostgresServer, fleet_database
from harness import wait_until
from test_usage_recorder import ROUTED, Clock
from memory_routing.addons.local_stores import LocalStores
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.shared_servers import SharedServers
from memory_routing.call_record import CallRecord
from memory_routing.dashboard.api import DashboardSources, handle
from memory_routing.dashboard.recorder import DAY_S, UsageRecorder, usage_row
from memory_routing.dashboard.usage_rows_pg import PostgresUsageStore
from memory_routing.errors import SharedServerUnavailable
from memory_routing.fleet.health import DATABASE, FleetHealth
from memory_routing.fleet.postgres import FleetDatabase

WAIT_S = 40.0
CALL = ROUTED


@contextmanager
def postgres_usage_store(url: str, health: FleetHealth | None = None) -> Iterator[PostgresUsageStore]:
    """The usage store on a migrated FleetDatabase of ``url``; the pool closed afterwards."""
    with fleet_database(url, health, connect_timeout_s=1) as database:
        yield PostgresUsageStore(database)


@pytest.fixture
def health() -> FleetHealth:
    return FleetHealth()


@pytest.fixture
def store(database_url: str, health: FleetHealth) -> Iterator[PostgresUsageStore]:
    with postgres_usage_store(database_url, health) as postgres:
        yield postgres


@pytest.fixture
def server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, running again after the test whatever it stopped."""
    yield postgres_server
    if postgres_server.process is None:
        postgres_server.start()


def recorder_on(store: PostgresUsageStore, **kwargs: object) -> UsageRecorder:
    recorder = UsageRecorder(lambda: store, price=lambda *args: 0.001, linger_s=0.0,
                             proxy_name=lambda: "proxy-a", **kwargs)  # type: ignore[arg-type]
    recorder.start()
    return recorder


def calls(count: int, first: int = 0) -> list[CallRecord]:
    return [CALL._replace(at=CALL.at + first + n) for n in range(count)]


def stored(store: PostgresUsageStore, count: int) -> bool:
    try:
        return store.count() == count
    except SharedServerUnavailable:
        return False


def test_a_row_written_twice_is_stored_once(store: PostgresUsageStore) -> None:
    rows = [usage_row(line, 0.001, now=0.0, proxy="proxy-a") for line in calls(4)]
    assert store.insert(rows[:3]) == 3
    # The same batch again (its first answer lost with the connection), with one new row.
    assert store.insert(rows[1:]) == 1
    assert store.count() == 4


def test_the_store_says_unavailable_while_the_server_is_down(store: PostgresUsageStore, server: PostgresServer,
                                                            health: FleetHealth) -> None:
    server.stop()
    with pytest.raises(SharedServerUnavailable):
        store.totals("user")
    assert health.is_degraded(DATABASE)


def test_rows_wait_while_the_database_is_down_and_are_written_when_it_returns(
        store: PostgresUsageStore, server: PostgresServer) -> None:
    recorder = recorder_on(store)
    try:
        for line in calls(2):
            recorder.submit(line)
        assert recorder.flush(WAIT_S) and store.count() == 2
        server.stop()
        for line in calls(3, first=10):
            recorder.submit(line)
        assert recorder.flush(WAIT_S)
        assert wait_until(lambda: recorder.status()["outage_queued"] == 3, WAIT_S)
        assert recorder.status()["failed"] == recorder.status()["dropped"] == 0
        server.start()
        assert wait_until(lambda: stored(store, 5), WAIT_S), recorder.status()
        status = recorder.status()
        assert (status["outage_queued"], status["outage_dropped"], status["written"]) == (0, 0, 5)
        rows = store.recent(10)
        assert sorted(r.at for r in rows) == [CALL.at + n for n in (0, 1, 10, 11, 12)]
        assert {r.proxy for r in rows} == {"proxy-a"} and len({r.call_id for r in rows}) == 5
    finally:
        recorder.close(WAIT_S)


def test_a_full_outage_queue_counts_what_it_drops_and_says_so_once(
        store: PostgresUsageStore, server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    recorder = recorder_on(store, outage_capacity=2)
    caplog.set_level(logging.INFO, logger="memory_routing.dashboard.recorder")
    try:
        server.stop()
        for batch in (calls(3), calls(2, first=10)):
            for line in batch:
                recorder.submit(line)
            assert recorder.flush(WAIT_S)
        status = recorder.status()
        assert (status["outage_queued"], status["outage_dropped"]) == (2, 3)
        told = [r for r in caplog.records if "storage.outage_queue_rows" in r.getMessage()]
        assert len(told) == 1 and told[0].levelno == logging.WARNING
        server.start()
        assert wait_until(lambda: stored(store, 2), WAIT_S), recorder.status()
        assert sorted(r.at for r in store.recent(10)) == [CALL.at, CALL.at + 1]  # the oldest kept
    finally:
        recorder.close(WAIT_S)


def test_the_dashboard_answers_503_in_its_own_shape_while_the_database_is_down(
        store: PostgresUsageStore, server: PostgresServer) -> None:
    sources = DashboardSources(usage=store, memory=None, clock=lambda: CALL.at + 60)
    assert handle("GET", "/memory-routing/usage", {}, b"", sources).status == 200
    server.stop()
    for path in ("/memory-routing/usage", "/memory-routing/usage/recent", "/memory-routing/usage/series",
                 "/memory-routing/"):
        answer = handle("GET", path, {}, b"", sources)
        assert answer is not None and answer.status == 503, path
        assert answer.content_type == "application/json"
        error = json.loads(answer.body)["error"]
        assert error["type"] == "service_unavailable" and "database is unavailable" in error["message"]
        assert ("retry-after", "10") in answer.headers
    server.start()
    assert wait_until(lambda: handle("GET", "/memory-routing/usage", {}, b"", sources).status == 200, WAIT_S)


def test_local_stores_give_the_fleet_database_to_the_usage_writer_and_dashboard(
        store: PostgresUsageStore, tmp_path: Path) -> None:
    shared = SharedServers(RoutingConfig())
    shared.database = store.database
    stores = LocalStores(shared)
    stores.open(tmp_path / "local.sqlite3")
    try:
        assert isinstance(stores.usage, PostgresUsageStore) and stores.usage.database is store.database
        recorder = UsageRecorder(lambda: stores.usage, price=lambda *args: None, linger_s=0.0)
        recorder.start()
        recorder.submit(CALL)
        assert recorder.flush(WAIT_S) and recorder.close(WAIT_S)
        assert store.count() == 1
        local = sqlite3.connect(tmp_path / "local.sqlite3")
        tables = {name for (name,) in local.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "usage_calls" not in tables  # the local file holds no usage rows
        local.close()
    finally:
        stores.close()


def test_the_daily_prune_waits_for_a_database_that_is_not_ready_yet(
        store: PostgresUsageStore, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store.insert([usage_row(line, None, now=0.0) for line in calls(2)])  # 2 old rows
    late = FleetDatabase(database_url, health=FleetHealth())  # started below: not migrated at first
    clock = Clock(CALL.at + 3 * DAY_S)
    recorder = UsageRecorder(lambda: PostgresUsageStore(late), retention_days=1, clock=clock, linger_s=0.0,
                             price=lambda *args: None)
    try:
        recorder.start()
        recorder.submit(CALL._replace(at=clock.now))
        assert recorder.flush(WAIT_S)
        late.start()
        assert late.wait_ready(30)
        clock.now += 61  # not a day: the prune is tried again soon after a database that was not there
        recorder.submit(CALL._replace(at=clock.now))
        assert wait_until(lambda: recorder.status()["pruned"] == 2, WAIT_S), recorder.status()
        assert not [r for r in caplog.records if "could not delete" in r.getMessage()]
    finally:
        recorder.close(WAIT_S)
        late.close()
