"""The fleet's PostgreSQL plumbing against a real server: migrations under the advisory lock,
the schema version, outages reported once, and the pool refusing before the schema is ready."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from fleet_servers import PostgresServer
from harness import wait_until
from memory_routing.errors import MigrationError, SharedServerUnavailable
from memory_routing.fleet.health import DATABASE, FleetHealth
from memory_routing.fleet.postgres import (FleetDatabase, Migration, apply_migrations, packaged_migrations,
                                           schema_version)

ONE = Migration(1, "one", "CREATE TABLE one (id integer PRIMARY KEY); INSERT INTO one VALUES (1);")
TWO = Migration(2, "two", "CREATE TABLE two (id integer PRIMARY KEY);")


def test_migrations_apply_once_in_order(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert schema_version(conn) == 0
        assert apply_migrations(conn, [ONE]) == [1]
        assert apply_migrations(conn, [ONE, TWO]) == [2]
        assert apply_migrations(conn, [ONE, TWO]) == []
        assert schema_version(conn) == 2
        assert conn.execute("SELECT count(*) FROM one").fetchone() == (1,)


def test_proxies_starting_together_migrate_once(database_url: str) -> None:
    # Without the advisory lock, both would run migration 1 and one would fail on the CREATE TABLE
    # (or insert the version twice).
    slow = Migration(1, "slow", "SELECT pg_sleep(0.3); CREATE TABLE one (id integer PRIMARY KEY);")
    results: list[object] = []

    def start() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                results.append(apply_migrations(conn, [slow, TWO]))
        except Exception as e:  # noqa: BLE001 - the assertion below shows it
            results.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, results)) == sorted(["[1, 2]", "[]", "[]"])


def test_a_failing_migration_changes_nothing(database_url: str) -> None:
    broken = Migration(2, "broken", "CREATE TABLE two (id integer); SELECT no_such_function();")
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, [ONE])
        with pytest.raises(MigrationError, match=r"002_broken\.sql failed"):
            apply_migrations(conn, [ONE, broken])
        assert schema_version(conn) == 1
        assert conn.execute("SELECT to_regclass('two')").fetchone() == (None,)


def test_a_database_newer_than_the_proxy_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, [ONE, TWO])
        with pytest.raises(MigrationError, match=r"newer than this proxy's 1"):
            apply_migrations(conn, [ONE])


def test_packaged_migrations_are_numbered_without_gaps(tmp_path: Path) -> None:
    versions = [m.version for m in packaged_migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_the_packaged_migrations_apply_to_an_empty_database(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        applied = apply_migrations(conn, packaged_migrations())
        assert schema_version(conn) == len(applied)


def test_the_pool_waits_for_the_schema_and_reports_outages(postgres_server: PostgresServer, database_url: str) -> None:
    health = FleetHealth()
    db = FleetDatabase(database_url, health=health, migrations=[ONE])
    try:
        db.start()
        assert db.wait_ready(30)
        with db.connection(timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM one").fetchone() == (1,)
        postgres_server.stop()
        try:
            with pytest.raises(SharedServerUnavailable), db.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
            assert health.is_degraded(DATABASE)
            assert "database" in health.status()
            assert health.outages_seen[DATABASE] == 1
        finally:
            postgres_server.start()

        def works() -> bool:
            try:
                with db.connection(timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except SharedServerUnavailable:
                return False

        assert wait_until(works, 30)
        assert not health.is_degraded(DATABASE)
        assert health.outages_seen[DATABASE] == 1
    finally:
        db.close()


def test_a_database_down_at_start_is_used_once_it_comes(postgres_server: PostgresServer, database_url: str) -> None:
    postgres_server.stop()
    health = FleetHealth()
    db = FleetDatabase(database_url, health=health, migrations=[ONE], connect_timeout_s=1)
    try:
        db.start()  # returns at once: the proxy never waits for its database to start
        with pytest.raises(SharedServerUnavailable):
            with db.connection(timeout=1):
                pass
        assert wait_until(lambda: health.is_degraded(DATABASE), 15)
        postgres_server.start()
        assert db.wait_ready(30)
        assert not health.is_degraded(DATABASE)
    finally:
        postgres_server.start() if postgres_server.process is None else None
        db.close()


def test_a_busy_pool_is_not_an_outage(database_url: str) -> None:
    health = FleetHealth()
    db = FleetDatabase(database_url, health=health, migrations=[ONE], max_size=1)
    try:
        db.start()
        assert db.wait_ready(30)
        with db.connection(timeout=5):
            # The only connection is out: the next caller times out, and the database is not down.
            with pytest.raises(SharedServerUnavailable, match="busy"), db.connection(timeout=0.2):
                pass
        assert not health.is_degraded(DATABASE)
    finally:
        db.close()


def test_a_closed_pool_is_not_an_outage(database_url: str) -> None:
    health = FleetHealth()
    db = FleetDatabase(database_url, health=health, migrations=[ONE])
    db.start()
    assert db.wait_ready(30)
    db.close()
    # A writer's last try while the proxy stops (seen in a fleet test's teardown: "database
    # unavailable (PoolClosed ...)") must not be reported as the database being down.
    with pytest.raises(SharedServerUnavailable, match="closed"), db.connection(timeout=1):
        pass
    assert not health.is_degraded(DATABASE)
