"""Usage rows: one per model call, kept in the memory's SQLite file in a table of their own
(or, for a fleet of proxies, in PostgreSQL: usage_rows_pg.py, which shares the queries here).

Pure logic over a DB-API connection (``sqlite3`` here; psycopg's has the same ``execute``); no
mitmproxy, no LiteLLM. The caller owns the connection and runs the writes off the event loop.
Each store's own SQL spelling is its ``UsageDialect``.

Token convention (LiteLLM's ``Usage``, see wire.usage): ``input_tokens`` counts every input
token, cache reads and writes included (OpenAI's ``prompt_tokens``); ``cached_tokens`` is the
part of it read from the provider's prompt cache (the API also calls it ``cache_read_tokens``),
``cache_write_tokens`` the part written to it. ``output_tokens`` includes ``reasoning_tokens``.
``memory_tokens`` is what the recall block added to the input (an estimate: 4 characters a
token, the rule its budget uses); ``memory_cost_usd`` its price, and ``cache_saved_usd`` what
the call would have cost more with no prompt cache (negative when writing the cache cost more
than reading it saved). A call is an error when the proxy or the upstream did not answer it with
a 1xx-3xx status.

``proxy`` is the proxy that served the call (fleet.identity.proxy_name; '' for rows written
before the column existed); ``call_id`` a unique id the proxy gives the row, so a row written
again after a lost answer from the database is stored once.

The "model" grouping takes one model's spellings as one (``claude-sonnet-4.5`` refused,
``claude-sonnet-4-5`` routed; a provider prefix): see ``model_key``.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Protocol

from memory_routing.errors import UsageQueryError as UsageQueryError  # re-exported




@dataclass(frozen=True)
class UsageRow:
    at: float  # seconds since the epoch (UTC) when the request arrived
    user_id: str
    client: str
    alias: str  # the model name the client asked for
    provider: str
    provider_model: str
    protocol: str  # the client's API format: openai, anthropic, gemini, ...
    status: int | None  # None: no answer at all (connection failed)
    error: str | None  # short reason for a refusal or failure, never a secret
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cost_usd: float | None  # None: the price table does not know the model
    latency_ms: float | None
    ttfb_ms: float | None
    memory_injected: bool
    memory_stored: bool
    route: str  # the routing decision, e.g. "routed", "translated", "refused"
    translated_to: str | None  # the provider's API format when the call was translated
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    memory_tokens: int | None = None  # None: no recall block in this call
    memory_cost_usd: float | None = None
    cache_saved_usd: float | None = None
    proxy: str = ""  # the proxy of the fleet that served the call
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)


USAGE_COLUMNS: tuple[str, ...] = tuple(field.name for field in fields(UsageRow))
# A row's values in column order. Not dataclasses.astuple: it deep-copies every value (its
# generality costs about 20 µs of the writer's CPU per row; every field here is a scalar).
_row_values = attrgetter(*USAGE_COLUMNS)
GROUP_BY = ("user", "model", "client", "proxy", "day", "all")
BUCKETS = {"hour": 3600, "day": 86400}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_calls (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    user_id TEXT NOT NULL,
    client TEXT NOT NULL,
    alias TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_model TEXT NOT NULL,
    protocol TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    cost_usd REAL,
    latency_ms REAL,
    ttfb_ms REAL,
    memory_injected INTEGER NOT NULL,
    memory_stored INTEGER NOT NULL,
    route TEXT NOT NULL,
    translated_to TEXT,
    cache_write_tokens INTEGER,
    reasoning_tokens INTEGER,
    memory_tokens INTEGER,
    memory_cost_usd REAL,
    cache_saved_usd REAL,
    proxy TEXT NOT NULL DEFAULT '',
    call_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS usage_calls_at ON usage_calls (at);
"""
# Columns added since the table's first version: a file written by an older proxy gets them.
_ADDED_COLUMNS = (
    ("cache_write_tokens", "INTEGER"), ("reasoning_tokens", "INTEGER"), ("memory_tokens", "INTEGER"),
    ("memory_cost_usd", "REAL"), ("cache_saved_usd", "REAL"),
    # Rows of a file written before the fleet have no proxy name ('') and no id.
    ("proxy", "TEXT NOT NULL DEFAULT ''"), ("call_id", "TEXT NOT NULL DEFAULT ''"),
)

_ERRORS = "SUM(CASE WHEN error IS NOT NULL OR status IS NULL OR status >= 400 THEN 1 ELSE 0 END)"


@dataclass(frozen=True, slots=True)
class UsageDialect:
    """What differs between the stores' SQL: the parameter marker, a row's UTC day, the first
    second (epoch) of its bucket of ``{width}`` seconds, and whether the database computes the
    latency percentiles. The rest of every query is shared."""

    placeholder: str
    day: str
    bucket: str
    # percentile_cont (PostgreSQL) interpolates as ``percentiles`` does.
    percentiles_in_sql: bool = False

    def group_key(self, group_by: str) -> str:
        """The SQL of each ``group_by`` value's key; "day" is the UTC calendar day."""
        if group_by not in GROUP_BY:
            raise UsageQueryError(f"group_by must be one of {', '.join(GROUP_BY)}, not {group_by!r}")
        return {"user": "user_id", "model": "model_key(provider_model)", "client": "client", "proxy": "proxy",
                "day": self.day, "all": "'all'"}[group_by]  # "all": one row over every call


SQLITE = UsageDialect("?", "strftime('%Y-%m-%d', at, 'unixepoch')", "CAST(at / {width} AS INTEGER) * {width}")


class SQLConnection(Protocol):
    """A DB-API connection's ``execute`` (sqlite3's, psycopg's): the queries below run on either."""

    def execute(self, sql: str, params: Sequence[Any], /) -> Any: ...


def model_key(name: str) -> str:
    """One key for one model's spellings: no provider prefix, lower case, a dot as a dash
    (``anthropic/Claude-Sonnet-4.5`` and ``claude-sonnet-4-5``)."""
    return name.rsplit("/", 1)[-1].lower().replace(".", "-")


def create_usage_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    present = {row[1] for row in conn.execute("PRAGMA table_info(usage_calls)")}
    for name, kind in _ADDED_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE usage_calls ADD COLUMN {name} {kind}")
    conn.create_function("model_key", 1, model_key, deterministic=True)


def insert_statement(dialect: UsageDialect) -> str:
    """One row's INSERT, its values in ``row_values`` order."""
    placeholders = ", ".join(dialect.placeholder for _ in USAGE_COLUMNS)
    return f"INSERT INTO usage_calls ({', '.join(USAGE_COLUMNS)}) VALUES ({placeholders})"


def row_values(rows: Iterable[UsageRow]) -> list[tuple[Any, ...]]:
    return [_row_values(row) for row in rows]


def insert_usage(conn: sqlite3.Connection, rows: Iterable[UsageRow]) -> int:
    values = row_values(rows)
    with _transaction(conn):
        conn.executemany(insert_statement(SQLITE), values)
    return len(values)


def usage_totals(
    conn: SQLConnection, group_by: str, since: float | None = None, until: float | None = None,
    *, proxy: str | None = None, dialect: UsageDialect = SQLITE,
) -> list[dict[str, Any]]:
    """Per group: calls, errors, token sums, cost and latency percentiles; busiest group first.

    ``cost_usd`` sums the calls whose price is known; ``unpriced_calls`` counts the others.
    Latency percentiles interpolate linearly between ranks (numpy's default).
    """
    key = dialect.group_key(group_by)
    where, params = _where(dialect, since, until, proxy)
    # A model is shown by the name its routed calls used (its refusals' spelling otherwise).
    shown = ("COALESCE(MAX(CASE WHEN route NOT IN ('refused', 'failed') THEN provider_model END), MAX(provider_model))"
             if group_by == "model" else key)
    totals = conn.execute(
        f"""SELECT {key}, COUNT(*), {_ERRORS}, SUM(input_tokens), SUM(output_tokens),
                   SUM(cached_tokens), SUM(cost_usd), COUNT(*) - COUNT(cost_usd), MIN(at), MAX(at),
                   SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(memory_tokens), SUM(memory_cost_usd),
                   SUM(cache_saved_usd), COUNT(memory_tokens), {shown}
            FROM usage_calls {where} GROUP BY 1""",
        params,
    ).fetchall()
    latency = _latency_percentiles(conn, dialect, key, where, params)
    result = []
    for (group, calls, errors, tokens_in, tokens_out, cached, cost, unpriced, first, last, cache_write, reasoning,
         memory_tokens, memory_cost, cache_saved, memory_calls, name) in totals:
        p50, p95 = latency.get(group, (None, None))
        result.append({
            "key": name,
            "calls": calls,
            "errors": errors,
            "input_tokens": tokens_in or 0,
            "output_tokens": tokens_out or 0,
            "cached_tokens": cached or 0,
            "cache_read_tokens": cached or 0,
            "cache_write_tokens": cache_write or 0,
            "reasoning_tokens": reasoning or 0,
            # The share of the input read from the provider's cache.
            "cache_hit_ratio": round(cached / tokens_in, 4) if cached and tokens_in else 0.0,
            # Microdollars each: kept to the nano-dollar.
            "cache_saved_usd": round(cache_saved, 9) if cache_saved is not None else None,
            "memory_calls": memory_calls,
            "memory_tokens": memory_tokens or 0,
            "memory_cost_usd": round(memory_cost, 9) if memory_cost is not None else None,
            "cost_usd": round(cost, 6) if cost is not None else None,
            "unpriced_calls": unpriced,
            "latency_ms_p50": p50,
            "latency_ms_p95": p95,
            "first_at": first,
            "last_at": last,
        })
    if group_by == "day":
        result.sort(key=lambda row: row["key"])
    else:
        result.sort(key=lambda row: (-row["calls"], row["key"]))
    return result


def _latency_percentiles(conn: SQLConnection, dialect: UsageDialect, key: str, where: str,
                         params: tuple[float | str, ...]) -> dict[Any, tuple[float | None, ...]]:
    """p50 and p95 of the latency per group: computed by the database when it can (a fleet's
    PostgreSQL: no row leaves it), else here over the group's latencies."""
    with_latency = f"{where} {'AND' if where else 'WHERE'} latency_ms IS NOT NULL"
    if dialect.percentiles_in_sql:
        return {group: (_rounded(p50), _rounded(p95)) for group, p50, p95 in conn.execute(
            f"""SELECT {key}, percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                FROM usage_calls {with_latency} GROUP BY 1""", params)}
    latencies: dict[Any, list[float]] = {}
    for group, latency in conn.execute(f"SELECT {key}, latency_ms FROM usage_calls {with_latency}", params):
        latencies.setdefault(group, []).append(latency)
    return {group: percentiles(values, (50, 95)) for group, values in latencies.items()}


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def usage_series(
    conn: SQLConnection, since: float | None = None, until: float | None = None, bucket: str = "day",
    *, proxy: str | None = None, dialect: UsageDialect = SQLITE,
) -> list[dict[str, Any]]:
    """Tokens and cost per memory user per UTC hour or day, oldest bucket first.

    ``start`` is the bucket's first second (epoch); buckets without calls are absent.
    """
    if bucket not in BUCKETS:
        raise UsageQueryError(f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")
    start = dialect.bucket.format(width=BUCKETS[bucket])
    where, params = _where(dialect, since, until, proxy)
    rows = conn.execute(
        f"""SELECT {start}, user_id, COUNT(*), {_ERRORS},
                   SUM(input_tokens), SUM(output_tokens), SUM(cost_usd)
            FROM usage_calls {where} GROUP BY 1, 2 ORDER BY 1, 2""",
        params,
    ).fetchall()
    return [
        {
            "start": start,
            "user_id": user_id,
            "calls": calls,
            "errors": errors,
            "input_tokens": tokens_in or 0,
            "output_tokens": tokens_out or 0,
            "cost_usd": round(cost, 6) if cost is not None else None,
        }
        for start, user_id, calls, errors, tokens_in, tokens_out, cost in rows
    ]


def recent_calls(conn: SQLConnection, limit: int = 50, *, proxy: str | None = None,
                 dialect: UsageDialect = SQLITE) -> list[UsageRow]:
    """The newest calls first."""
    if limit < 0:
        raise UsageQueryError("limit must not be negative")
    where, params = _where(dialect, None, None, proxy)
    rows = conn.execute(
        f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage_calls {where} ORDER BY at DESC, id DESC"
        f" LIMIT {dialect.placeholder}", (*params, limit),
    ).fetchall()
    return [_row(values) for values in rows]


def count_calls(conn: SQLConnection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM usage_calls", ()).fetchone()[0])


def prune_usage(conn: sqlite3.Connection, older_than: float) -> int:
    """Deletes the calls made before ``older_than`` (epoch seconds); returns how many."""
    with _transaction(conn):
        return conn.execute("DELETE FROM usage_calls WHERE at < ?", (older_than,)).rowcount


def percentiles(values: list[float], ranks: Iterable[int]) -> tuple[float | None, ...]:
    """Linearly interpolated percentiles (numpy's default method); None for no values."""
    ranks = tuple(ranks)
    if not values:
        return tuple(None for _ in ranks)
    if len(values) == 1:
        return tuple(float(values[0]) for _ in ranks)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return tuple(round(cuts[rank - 1], 3) for rank in ranks)


class SQLiteUsageStore:
    """The usage store over one SQLite connection, shared by the writer thread and the API.

    The interface usage_rows_pg.PostgresUsageStore implements too: insert, totals, series,
    recent, prune, count.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # One connection serves several threads (check_same_thread=False): one statement at a time.
        self._lock = threading.Lock()
        with self._lock:
            create_usage_schema(conn)

    def insert(self, rows: Iterable[UsageRow]) -> int:
        with self._lock:
            return insert_usage(self.conn, rows)

    def totals(self, group_by: str, since: float | None = None, until: float | None = None,
               proxy: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return usage_totals(self.conn, group_by, since, until, proxy=proxy)

    def series(self, since: float | None = None, until: float | None = None, bucket: str = "day",
               proxy: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return usage_series(self.conn, since, until, bucket, proxy=proxy)

    def recent(self, limit: int = 50, proxy: str | None = None) -> list[UsageRow]:
        with self._lock:
            return recent_calls(self.conn, limit, proxy=proxy)

    def prune(self, older_than: float) -> int:
        with self._lock:
            return prune_usage(self.conn, older_than)

    def count(self) -> int:
        """How many calls are kept (for /memory-routing/info)."""
        with self._lock:
            return count_calls(self.conn)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction, on connections in autocommit mode (the memory store's) or Python's default."""
    if conn.in_transaction:
        # The caller's own transaction: it commits.
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _where(dialect: UsageDialect, since: float | None, until: float | None,
           proxy: str | None) -> tuple[str, tuple[float | str, ...]]:
    """``since`` inclusive, ``until`` exclusive, either may be open; ``proxy``: only its calls."""
    if since is not None and until is not None and since > until:
        raise UsageQueryError("since must not be after until")
    clauses: list[str] = []
    params: list[float | str] = []
    for clause, value in (("at >=", since), ("at <", until), ("proxy =", proxy)):
        if value is not None:
            clauses.append(f"{clause} {dialect.placeholder}")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _row(values: tuple[Any, ...]) -> UsageRow:
    record = dict(zip(USAGE_COLUMNS, values, strict=True))
    record["memory_injected"] = bool(record["memory_injected"])
    record["memory_stored"] = bool(record["memory_stored"])
    return UsageRow(**record)
