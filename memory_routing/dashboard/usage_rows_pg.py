"""Usage rows in the fleet's PostgreSQL: every proxy writes its calls there, and every dashboard
reads the whole fleet's, each row naming the proxy that served the call.

The table is migration 003_usage.sql; the queries and the aggregation are usage_rows' own, in
PostgreSQL's spelling (``POSTGRES``). Each method takes a pooled connection on the caller's
thread (the usage writer's, or the dashboard's ``asyncio.to_thread``), never the event loop's.
A database that is down, not migrated yet or too slow raises SharedServerUnavailable: the
writer queues its rows (recorder.UsageRecorder), the dashboard answers 503.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from memory_routing.fleet.postgres import FleetDatabase

from .usage_rows import (
    UsageDialect,
    UsageRow,
    count_calls,
    insert_statement,
    recent_calls,
    row_values,
    usage_series,
    usage_totals,
)

POSTGRES = UsageDialect(
    "%s", "to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "(floor(at / {width}) * {width})::bigint",
    percentiles_in_sql=True)
# A row written again (its batch's answer was lost with the connection) is stored once.
_INSERT = insert_statement(POSTGRES) + " ON CONFLICT (call_id) DO NOTHING"
# How long a use waits for a pooled connection: the writer can wait (its rows queue meanwhile);
# a dashboard request answers 503 soon rather than hang.
WRITE_WAIT_S = 5.0
READ_WAIT_S = 3.0
# A dashboard query over a fleet's months of rows must not hold a connection for minutes.
READ_STATEMENT_TIMEOUT_MS = 15_000


class PostgresUsageStore:
    """SQLiteUsageStore's interface over the fleet's database (see usage_rows.SQLiteUsageStore)."""

    def __init__(self, database: FleetDatabase) -> None:
        self.database = database

    def insert(self, rows: Iterable[UsageRow]) -> int:
        """Writes the rows in one transaction; returns how many were new (not written before)."""
        values = row_values(rows)
        if not values:
            return 0
        with self.database.connection(timeout=WRITE_WAIT_S) as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_INSERT, values)
            return max(cursor.rowcount, 0)

    def totals(self, group_by: str, since: float | None = None, until: float | None = None,
               proxy: str | None = None) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return usage_totals(conn, group_by, since, until, proxy=proxy, dialect=POSTGRES)

    def series(self, since: float | None = None, until: float | None = None, bucket: str = "day",
               proxy: str | None = None) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return usage_series(conn, since, until, bucket, proxy=proxy, dialect=POSTGRES)

    def recent(self, limit: int = 50, proxy: str | None = None) -> list[UsageRow]:
        with self._reading() as conn:
            return recent_calls(conn, limit, proxy=proxy, dialect=POSTGRES)

    def prune(self, older_than: float) -> int:
        """Deletes the fleet's calls made before ``older_than`` (epoch seconds); returns how many."""
        with self.database.connection(timeout=WRITE_WAIT_S) as conn:
            return max(conn.execute("DELETE FROM usage_calls WHERE at < %s", (older_than,)).rowcount, 0)

    def count(self) -> int:
        """How many calls the fleet keeps (for /memory-routing/info)."""
        with self._reading() as conn:
            return count_calls(conn)

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        with self.database.connection(timeout=READ_WAIT_S) as conn, conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = {READ_STATEMENT_TIMEOUT_MS}")
            yield conn
