"""The fleet's PostgreSQL: one connection pool per proxy, and the schema migrations.

A proxy never waits for the database to start: the pool opens in the background and a thread
applies the migrations, retrying until the server answers; until then every use raises
SharedServerUnavailable and the caller degrades (recall skipped, rows queued). Database work runs
on the callers' own threads (the memory's writer and recall threads, the usage writer), never on
mitmproxy's event loop.

Migrations are the numbered SQL files of memory_routing/fleet/migrations (NNN_name.sql, 1..N),
applied in one transaction under a transaction-scoped advisory lock, with the versions applied
kept in a table: proxies starting together queue on the lock, and the first one migrates.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from memory_routing.errors import MigrationError, SharedServerUnavailable
from memory_routing.fleet.health import DATABASE, FleetHealth

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "memory_routing.fleet.migrations"
SCHEMA_TABLE = "memory_routing_schema"
# The advisory lock the migrations run under: one fixed 64-bit key ("memrout" in ASCII), unlikely
# to be used by other software sharing the database.
MIGRATION_LOCK_KEY = 0x6D656D726F7574
DATABASE_FALLBACK = "recall is skipped; turns to store and usage rows wait in bounded queues"
_MIGRATION_FILE = re.compile(r"(\d{3,})_([a-z0-9_]+)\.sql")
_RETRY_FIRST_S, _RETRY_MOST_S = 0.5, 10.0

# psycopg_pool warns on every failed reconnection attempt; an outage is told once, by FleetHealth.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def packaged_migrations(package: str = MIGRATIONS_PACKAGE) -> tuple[Migration, ...]:
    """The package's migration files, in order; MigrationError when they are misnamed or not 1..N."""
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{package}: {entry.name}: migration files are named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"{package}: migrations must be numbered 1..N with no gap or repeat, found {versions}")
    return tuple(found)


def apply_migrations(conn: psycopg.Connection, migrations: Sequence[Migration]) -> list[int]:
    """Brings the database to the newest migration; returns the versions applied now.

    One transaction under the advisory lock: a failing migration leaves the schema as it was, and
    a proxy starting meanwhile waits for the lock, then finds the work done.
    """
    newest = max((m.version for m in migrations), default=0)
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version integer PRIMARY KEY,"
                     " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {int(row[0]) for row in conn.execute(f"SELECT version FROM {SCHEMA_TABLE}")}
        if done and max(done) > newest:
            raise MigrationError(f"the database's schema is at version {max(done)}, newer than this proxy's"
                                 f" {newest}: upgrade this proxy (every proxy of a fleet runs the same release)")
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                conn.execute(migration.sql.encode("utf-8"))
            except psycopg.Error as e:
                raise MigrationError(f"migration {migration.version:03d}_{migration.name}.sql failed:"
                                     f" {type(e).__name__}: {e}".strip()) from e
            conn.execute(f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES (%s, %s)",
                         (migration.version, migration.name))
            applied.append(migration.version)
    return applied


def schema_version(conn: psycopg.Connection) -> int:
    """The newest migration applied to the database (0 before any)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (SCHEMA_TABLE,)).fetchone()
    if row is None or not row[0]:
        return 0
    version = conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_TABLE}").fetchone()
    return int(version[0]) if version else 0


def outage_reason(error: BaseException) -> str:
    """What to log and show of a database error: its class and first line, never the URL (psycopg's
    connection errors name host and port only, never the password)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"[:300]


class FleetDatabase:
    """A pool of connections to the fleet's PostgreSQL, usable once the schema is migrated."""

    def __init__(self, url: str, *, health: FleetHealth, application_name: str = "memory-routing",
                 max_size: int = 6, connect_timeout_s: int = 3,
                 migrations: Sequence[Migration] | None = None) -> None:
        self.health = health
        # Two recall threads, the memory writer, the usage writer and the dashboard's threads.
        self._max_size = max_size
        self._migrations = tuple(migrations) if migrations is not None else packaged_migrations()
        self._pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
            url, min_size=1, max_size=max_size, open=False, name=application_name,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout_s, "application_name": application_name},
            # A connection broken by a server restart is found before it is handed out, not by
            # the query that uses it.
            check=ConnectionPool.check_connection,
        )
        self._ready = threading.Event()
        self._closed = threading.Event()
        self.migration_error: str | None = None
        self._migrator: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        """Opens the pool and starts migrating, both in the background: returns at once."""
        self._pool.open(wait=False)
        self._migrator = threading.Thread(target=self._migrate_until_done, name="fleet-db-migrate", daemon=True)
        self._migrator.start()

    def wait_ready(self, timeout: float) -> bool:
        """Waits (bounded) until the schema is migrated; True when it is."""
        return self._ready.wait(timeout)

    def _migrate_until_done(self) -> None:
        delay = _RETRY_FIRST_S
        while not self._closed.is_set():
            try:
                with self._pool.connection(timeout=_RETRY_MOST_S) as conn:
                    applied = apply_migrations(conn, self._migrations)
            except MigrationError as e:
                # Not retried: the same files would fail again. The database stays unused.
                self.migration_error = str(e)
                log.error("fleet database: %s; memories and usage rows are not written there", e)
                self.health.failed(DATABASE, "schema migration failed", DATABASE_FALLBACK)
                return
            except (psycopg.Error, PoolTimeout) as e:
                self.health.failed(DATABASE, outage_reason(e), DATABASE_FALLBACK)
                self._closed.wait(delay)
                delay = min(delay * 2, _RETRY_MOST_S)
                continue
            if applied:
                log.info("fleet database: applied migrations %s", ", ".join(f"{v:03d}" for v in applied))
            self._ready.set()
            self.health.recovered(DATABASE)
            return

    @contextmanager
    def connection(self, timeout: float) -> Iterator[psycopg.Connection]:
        """A pooled connection (autocommit; use ``conn.transaction()`` for several statements),
        waited for at most ``timeout`` seconds.

        Raises SharedServerUnavailable when the schema is not migrated yet, no connection comes
        in time, or the server is gone (then the outage is reported to FleetHealth). A query
        cancelled by its own statement_timeout raises SharedServerUnavailable too, without
        counting as an outage: the database is slow for that query, not down.
        """
        if self._closed.is_set():
            # The proxy is stopping: a writer's last try is not an outage to report.
            raise SharedServerUnavailable("the fleet database's pool is closed (the proxy is stopping)")
        if not self._ready.is_set():
            raise SharedServerUnavailable(self.migration_error or "the fleet database is not reachable yet")
        try:
            with self._pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg.errors.QueryCanceled as e:
            raise SharedServerUnavailable(f"database query ran past its deadline: {outage_reason(e)}") from e
        except PoolTimeout as e:
            if self._pool.get_stats().get("pool_size", 0) >= self._max_size:
                # Every connection is out working (recall, writers, dashboard): busy, not down.
                raise SharedServerUnavailable("every fleet database connection is busy") from e
            self.health.failed(DATABASE, outage_reason(e), DATABASE_FALLBACK)
            raise SharedServerUnavailable(outage_reason(e)) from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self.health.failed(DATABASE, outage_reason(e), DATABASE_FALLBACK)
            raise SharedServerUnavailable(outage_reason(e)) from e
        self.health.recovered(DATABASE)

    def status(self) -> dict[str, object]:
        """Pool figures for /memory-routing/info: counts only, never the URL's secrets."""
        stats = self._pool.get_stats()
        return {"ready": self.ready, "migration_error": self.migration_error,
                "pool_size": stats.get("pool_size", 0), "pool_available": stats.get("pool_available", 0),
                "requests_waiting": stats.get("requests_waiting", 0)}

    def close(self) -> None:
        self._closed.set()
        if self._migrator is not None:
            self._migrator.join(_RETRY_MOST_S + 1)
        self._pool.close(timeout=5.0)
