"""Usage rows: totals per group, percentiles, series, recent calls, retention, the serving proxy.

The behaviours are a contract both stores keep (``store``: SQLite, and PostgreSQL on a real
server); the SQLite file's own details (its schema upgrade, sharing the memory's file) follow.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from test_usage_fleet import postgres_usage_store
from memory_routing.dashboard.usage_rows_pg import PostgresUsageStore
from memory_routing.dashboard.usage_rows import (
    SQLiteUsageStore,
    UsageQueryError,
    UsageRow,
    create_usage_schema,
    insert_usage,
    percentiles,
    recent_calls,
)

DAY = 86400
T0 = 1_763_856_000.0  # 2025-11-23T00:00:00Z


def row(**changes: object) -> UsageRow:
    base = UsageRow(
        at=T0 + 60, user_id="alice", client="curl", alias="fast", provider="openai",
        provider_model="gpt-4o-mini", protocol="openai", status=200, error=None,
        input_tokens=100, output_tokens=10, cached_tokens=0, cost_usd=0.001,
        latency_ms=100.0, ttfb_ms=20.0, memory_injected=False, memory_stored=True,
        route="routed", translated_to=None, proxy="proxy-a",
    )
    return replace(base, **{"call_id": uuid.uuid4().hex, **changes})


@pytest.fixture
def conn():
    connection = sqlite3.connect(":memory:")
    create_usage_schema(connection)
    yield connection
    connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[SQLiteUsageStore | PostgresUsageStore]:
    if request.param == "sqlite":
        connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        yield SQLiteUsageStore(connection)
        connection.close()
        return
    with postgres_usage_store(request.getfixturevalue("database_url")) as postgres:
        yield postgres


def test_rows_round_trip(store):
    original = row(status=None, error="upstream unreachable", cost_usd=None, memory_injected=True,
                   translated_to="anthropic", route="translated", cache_write_tokens=3, reasoning_tokens=4,
                   memory_tokens=5, memory_cost_usd=0.0001, cache_saved_usd=-0.5)
    assert store.insert([original]) == 1
    assert store.recent(5) == [original]
    assert store.count() == 1


def test_totals_per_user_count_errors_tokens_and_cost(store):
    store.insert([
        row(),
        row(at=T0 + 61, status=502, error="bad gateway", input_tokens=None, output_tokens=None, cost_usd=None),
        row(at=T0 + 62, status=None, error="connect failed", input_tokens=None, output_tokens=None, cost_usd=None),
        row(at=T0 + 63, status=429),
        row(at=T0 + 64, user_id="bob", input_tokens=7, output_tokens=3, cached_tokens=5, cost_usd=0.5,
            memory_tokens=2, memory_cost_usd=0.25),
    ])
    totals = {t["key"]: t for t in store.totals("user")}
    assert list(totals) == ["alice", "bob"]  # busiest first
    alice, bob = totals["alice"], totals["bob"]
    assert (alice["calls"], alice["errors"]) == (4, 3)
    assert (alice["input_tokens"], alice["output_tokens"], alice["cached_tokens"]) == (200, 20, 0)
    assert alice["cost_usd"] == pytest.approx(0.002)
    assert alice["unpriced_calls"] == 2
    assert (alice["memory_calls"], bob["memory_calls"], bob["memory_tokens"]) == (0, 1, 2)
    assert (bob["calls"], bob["errors"], bob["cached_tokens"], bob["cost_usd"]) == (1, 0, 5, 0.5)
    assert bob["cache_hit_ratio"] == pytest.approx(5 / 7, abs=1e-4)


def test_totals_by_model_client_and_day(store):
    store.insert([
        row(),
        row(at=T0 + DAY + 5, provider_model="claude-sonnet-4-5", client="claude-code"),
        row(at=T0 + DAY + 6, provider_model="anthropic/Claude-Sonnet-4.5", client="claude-code", route="refused"),
    ])
    assert [(t["key"], t["calls"]) for t in store.totals("model")] == [
        ("claude-sonnet-4-5", 2), ("gpt-4o-mini", 1)]  # one model's spellings, shown as routed
    assert [(t["key"], t["calls"]) for t in store.totals("client")] == [("claude-code", 2), ("curl", 1)]
    assert [(t["key"], t["calls"]) for t in store.totals("day")] == [("2025-11-23", 1), ("2025-11-24", 2)]
    assert [(t["key"], t["calls"]) for t in store.totals("all")] == [("all", 3)]


def test_each_row_names_its_proxy_and_the_totals_group_and_filter_by_it(store):
    store.insert([row(), row(at=T0 + 1, proxy="proxy-b"), row(at=T0 + 2, proxy="proxy-b", user_id="bob")])
    assert [(t["key"], t["calls"]) for t in store.totals("proxy")] == [("proxy-b", 2), ("proxy-a", 1)]
    assert [(t["key"], t["calls"]) for t in store.totals("user", proxy="proxy-b")] == [("alice", 1), ("bob", 1)]
    assert [(s["user_id"], s["calls"]) for s in store.series(proxy="proxy-a")] == [("alice", 1)]
    assert [r.proxy for r in store.recent(10)] == ["proxy-a", "proxy-b", "proxy-b"]
    assert [r.at for r in store.recent(10, proxy="proxy-a")] == [T0 + 60]
    assert store.totals("user", proxy="proxy-z") == []


def test_range_is_since_inclusive_until_exclusive(store):
    store.insert([row(at=T0), row(at=T0 + 10), row(at=T0 + 20)])
    assert store.totals("user", since=T0 + 10)[0]["calls"] == 2
    assert store.totals("user", until=T0 + 10)[0]["calls"] == 1
    assert store.totals("user", since=T0 + 10, until=T0 + 20)[0]["calls"] == 1
    assert store.totals("user", since=T0 + 30) == []
    with pytest.raises(UsageQueryError, match="since must not be after until"):
        store.totals("user", since=T0 + 20, until=T0)


def test_latency_percentiles_interpolate_like_numpy(store):
    latencies = [100.0, 1000.0, 300.0, 200.0]
    random.Random(3).shuffle(latencies)
    store.insert([row(at=T0 + i, latency_ms=ms) for i, ms in enumerate(latencies)]
                 + [row(at=T0 + 9, latency_ms=None)])  # a call without a latency is not a zero
    totals = store.totals("user")[0]
    # numpy.percentile([100, 200, 300, 1000], [50, 95]) == [250.0, 895.0]
    assert (totals["latency_ms_p50"], totals["latency_ms_p95"]) == (250.0, 895.0)


def test_every_store_interpolates_the_percentiles_alike(store):
    # PostgreSQL computes them itself (percentile_cont); they must equal the SQLite store's.
    latencies = [round(random.Random(n).uniform(1, 5000), 3) for n in range(37)]
    store.insert([row(at=T0 + n, latency_ms=ms) for n, ms in enumerate(latencies)] + [row(user_id="solo", latency_ms=7.5)])
    totals = {t["key"]: t for t in store.totals("user")}
    assert (totals["alice"]["latency_ms_p50"], totals["alice"]["latency_ms_p95"]) == percentiles(latencies, (50, 95))
    assert (totals["solo"]["latency_ms_p50"], totals["solo"]["latency_ms_p95"]) == (7.5, 7.5)


def test_percentiles_edge_cases():
    assert percentiles([], (50, 95)) == (None, None)
    assert percentiles([42.0], (50, 95)) == (42.0, 42.0)
    assert percentiles([float(v) for v in range(1, 11)], (50, 95)) == (5.5, 9.55)
    assert percentiles([5.0, 5.0, 5.0], (50, 95)) == (5.0, 5.0)


def test_percentiles_are_per_group(store):
    store.insert([row(latency_ms=10.0), row(latency_ms=20.0),
                  row(user_id="bob", latency_ms=1000.0), row(user_id="bob", latency_ms=3000.0)])
    totals = {t["key"]: t for t in store.totals("user")}
    assert totals["alice"]["latency_ms_p50"] == 15.0
    assert totals["bob"]["latency_ms_p50"] == 2000.0


def test_unknown_group_by_is_refused(store):
    with pytest.raises(UsageQueryError, match="group_by must be one of user, model, client, proxy, day"):
        store.totals("provider; DROP TABLE usage_calls")


def test_series_per_user_per_day_and_hour(store):
    store.insert([
        row(at=T0 + 10), row(at=T0 + 3600 + 10, input_tokens=1, output_tokens=2, cost_usd=None),
        row(at=T0 + 20, user_id="bob"), row(at=T0 + DAY + 1),
    ])
    daily = store.series(bucket="day")
    assert [(s["start"], s["user_id"], s["calls"], s["input_tokens"], s["output_tokens"]) for s in daily] == [
        (T0, "alice", 2, 101, 12), (T0, "bob", 1, 100, 10), (T0 + DAY, "alice", 1, 100, 10)]
    assert daily[0]["cost_usd"] == pytest.approx(0.001)
    hourly = store.series(since=T0, until=T0 + DAY, bucket="hour")
    assert [(s["start"], s["user_id"], s["calls"]) for s in hourly] == [
        (T0, "alice", 1), (T0, "bob", 1), (T0 + 3600, "alice", 1)]
    with pytest.raises(UsageQueryError, match="bucket"):
        store.series(bucket="week")


def test_recent_calls_newest_first_with_limit(store):
    store.insert([row(at=T0 + i, alias=f"a{i}") for i in range(5)])
    assert [r.alias for r in store.recent(3)] == ["a4", "a3", "a2"]
    assert store.recent(0) == []
    with pytest.raises(UsageQueryError, match="limit"):
        store.recent(-1)


def test_prune_deletes_only_older_rows(store):
    store.insert([row(at=T0 - 2 * DAY), row(at=T0 - DAY), row(at=T0)])
    assert store.prune(T0 - DAY) == 1
    assert sorted(r.at for r in store.recent(10)) == [T0 - DAY, T0]
    assert store.count() == 2


def test_store_shares_a_file_with_an_autocommit_connection(tmp_path):
    # The memory store's connections run in autocommit mode (isolation_level=None).
    path = tmp_path / "memory.sqlite3"
    store = SQLiteUsageStore(sqlite3.connect(path, isolation_level=None, check_same_thread=False))
    assert store.insert([row(at=T0), row(at=T0 + 1)]) == 2
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*) FROM usage_calls").fetchone() == (2,)
    assert store.totals("user")[0]["calls"] == 2
    assert store.series()[0]["calls"] == 2
    assert store.prune(T0 + 1) == 1
    assert [r.at for r in store.recent()] == [T0 + 1]
    other.close()
    store.conn.close()


def test_a_failed_insert_leaves_nothing(conn):
    with pytest.raises(sqlite3.Error):
        insert_usage(conn, [row(), row(user_id=None)])  # NOT NULL violated by the second row
    assert recent_calls(conn, 10) == []


def test_the_schema_is_idempotent(conn):
    create_usage_schema(conn)
    original = row()
    assert insert_usage(conn, [original]) == 1
    create_usage_schema(conn)
    assert recent_calls(conn, 5) == [original]


def test_a_file_from_before_the_fleet_gets_the_proxy_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE usage_calls (id INTEGER PRIMARY KEY, at REAL NOT NULL, user_id TEXT NOT NULL,
        client TEXT NOT NULL, alias TEXT NOT NULL, provider TEXT NOT NULL, provider_model TEXT NOT NULL,
        protocol TEXT NOT NULL, status INTEGER, error TEXT, input_tokens INTEGER, output_tokens INTEGER,
        cached_tokens INTEGER, cost_usd REAL, latency_ms REAL, ttfb_ms REAL, memory_injected INTEGER NOT NULL,
        memory_stored INTEGER NOT NULL, route TEXT NOT NULL, translated_to TEXT)""")
    old.execute("INSERT INTO usage_calls (at, user_id, client, alias, provider, provider_model, protocol, status,"
                " memory_injected, memory_stored, route) VALUES (?, 'alice', 'curl', 'fast', 'openai',"
                " 'gpt-4o-mini', 'openai', 200, 0, 0, 'routed')", (T0,))
    old.commit()
    old.close()
    store = SQLiteUsageStore(sqlite3.connect(path, check_same_thread=False, isolation_level=None))
    store.insert([row(at=T0 + 1)])
    assert [(r.proxy, r.at) for r in store.recent(5)] == [("proxy-a", T0 + 1), ("", T0)]
    assert [(t["key"], t["calls"]) for t in store.totals("proxy")] == [("", 1), ("proxy-a", 1)]
    store.conn.close()

