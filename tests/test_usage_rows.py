"""Usage rows in SQLite: totals per group, percentiles, series, recent calls, retention."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace

import pytest

from memory_routing.dashboard.usage_rows import (
    SQLiteUsageStore,
    UsageQueryError,
    UsageRow,
    create_usage_schema,
    insert_usage,
    percentiles,
    prune_usage,
    recent_calls,
    usage_series,
    usage_totals,
)

DAY = 86400
T0 = 1_763_856_000.0  # 2025-11-23T00:00:00Z


def row(**changes) -> UsageRow:
    base = UsageRow(
        at=T0 + 60, user_id="alice", client="curl", alias="fast", provider="openai",
        provider_model="gpt-4o-mini", protocol="openai", status=200, error=None,
        input_tokens=100, output_tokens=10, cached_tokens=0, cost_usd=0.001,
        latency_ms=100.0, ttfb_ms=20.0, memory_injected=False, memory_stored=True,
        route="routed", translated_to=None,
    )
    return replace(base, **changes)


@pytest.fixture
def conn():
    connection = sqlite3.connect(":memory:")
    create_usage_schema(connection)
    yield connection
    connection.close()


def test_schema_is_idempotent_and_rows_round_trip(conn):
    create_usage_schema(conn)
    original = row(status=None, error="upstream unreachable", cost_usd=None, memory_injected=True,
                   translated_to="anthropic", route="translated")
    assert insert_usage(conn, [original]) == 1
    assert recent_calls(conn, 5) == [original]


def test_totals_per_user_count_errors_tokens_and_cost(conn):
    insert_usage(conn, [
        row(),
        row(at=T0 + 61, status=502, error="bad gateway", input_tokens=None, output_tokens=None, cost_usd=None),
        row(at=T0 + 62, status=None, error="connect failed", input_tokens=None, output_tokens=None, cost_usd=None),
        row(at=T0 + 63, status=429),
        row(at=T0 + 64, user_id="bob", input_tokens=7, output_tokens=3, cached_tokens=5, cost_usd=0.5),
    ])
    totals = {t["key"]: t for t in usage_totals(conn, "user")}
    assert list(totals) == ["alice", "bob"]  # busiest first
    alice, bob = totals["alice"], totals["bob"]
    assert (alice["calls"], alice["errors"]) == (4, 3)
    assert (alice["input_tokens"], alice["output_tokens"], alice["cached_tokens"]) == (200, 20, 0)
    assert alice["cost_usd"] == pytest.approx(0.002)
    assert alice["unpriced_calls"] == 2
    assert (bob["calls"], bob["errors"], bob["cached_tokens"], bob["cost_usd"]) == (1, 0, 5, 0.5)


def test_totals_by_model_client_and_day(conn):
    insert_usage(conn, [
        row(),
        row(at=T0 + DAY + 5, provider_model="claude-sonnet-4-5", client="claude-code"),
        row(at=T0 + DAY + 6, provider_model="claude-sonnet-4-5", client="claude-code"),
    ])
    assert [(t["key"], t["calls"]) for t in usage_totals(conn, "model")] == [
        ("claude-sonnet-4-5", 2), ("gpt-4o-mini", 1)]
    assert [(t["key"], t["calls"]) for t in usage_totals(conn, "client")] == [("claude-code", 2), ("curl", 1)]
    assert [(t["key"], t["calls"]) for t in usage_totals(conn, "day")] == [("2025-11-23", 1), ("2025-11-24", 2)]
    assert [(t["key"], t["calls"]) for t in usage_totals(conn, "all")] == [("all", 3)]


def test_range_is_since_inclusive_until_exclusive(conn):
    insert_usage(conn, [row(at=T0), row(at=T0 + 10), row(at=T0 + 20)])
    assert usage_totals(conn, "user", since=T0 + 10)[0]["calls"] == 2
    assert usage_totals(conn, "user", until=T0 + 10)[0]["calls"] == 1
    assert usage_totals(conn, "user", since=T0 + 10, until=T0 + 20)[0]["calls"] == 1
    assert usage_totals(conn, "user", since=T0 + 30) == []
    with pytest.raises(UsageQueryError, match="since must not be after until"):
        usage_totals(conn, "user", since=T0 + 20, until=T0)


def test_latency_percentiles_interpolate_like_numpy(conn):
    latencies = [100.0, 1000.0, 300.0, 200.0]
    random.Random(3).shuffle(latencies)
    insert_usage(conn, [row(at=T0 + i, latency_ms=ms) for i, ms in enumerate(latencies)]
                 + [row(at=T0 + 9, latency_ms=None)])  # a call without a latency is not a zero
    totals = usage_totals(conn, "user")[0]
    # numpy.percentile([100, 200, 300, 1000], [50, 95]) == [250.0, 895.0]
    assert (totals["latency_ms_p50"], totals["latency_ms_p95"]) == (250.0, 895.0)


def test_percentiles_edge_cases():
    assert percentiles([], (50, 95)) == (None, None)
    assert percentiles([42.0], (50, 95)) == (42.0, 42.0)
    assert percentiles([float(v) for v in range(1, 11)], (50, 95)) == (5.5, 9.55)
    assert percentiles([5.0, 5.0, 5.0], (50, 95)) == (5.0, 5.0)


def test_percentiles_are_per_group(conn):
    insert_usage(conn, [row(latency_ms=10.0), row(latency_ms=20.0),
                        row(user_id="bob", latency_ms=1000.0), row(user_id="bob", latency_ms=3000.0)])
    totals = {t["key"]: t for t in usage_totals(conn, "user")}
    assert totals["alice"]["latency_ms_p50"] == 15.0
    assert totals["bob"]["latency_ms_p50"] == 2000.0


def test_unknown_group_by_is_refused(conn):
    with pytest.raises(UsageQueryError, match="group_by must be one of user, model, client, day"):
        usage_totals(conn, "provider; DROP TABLE usage_calls")


def test_series_per_user_per_day_and_hour(conn):
    insert_usage(conn, [
        row(at=T0 + 10), row(at=T0 + 3600 + 10, input_tokens=1, output_tokens=2, cost_usd=None),
        row(at=T0 + 20, user_id="bob"), row(at=T0 + DAY + 1),
    ])
    daily = usage_series(conn, bucket="day")
    assert [(s["start"], s["user_id"], s["calls"], s["input_tokens"], s["output_tokens"]) for s in daily] == [
        (T0, "alice", 2, 101, 12), (T0, "bob", 1, 100, 10), (T0 + DAY, "alice", 1, 100, 10)]
    assert daily[0]["cost_usd"] == pytest.approx(0.001)
    hourly = usage_series(conn, since=T0, until=T0 + DAY, bucket="hour")
    assert [(s["start"], s["user_id"], s["calls"]) for s in hourly] == [
        (T0, "alice", 1), (T0, "bob", 1), (T0 + 3600, "alice", 1)]
    with pytest.raises(UsageQueryError, match="bucket"):
        usage_series(conn, bucket="week")


def test_recent_calls_newest_first_with_limit(conn):
    insert_usage(conn, [row(at=T0 + i, alias=f"a{i}") for i in range(5)])
    assert [r.alias for r in recent_calls(conn, 3)] == ["a4", "a3", "a2"]
    assert recent_calls(conn, 0) == []


def test_prune_deletes_only_older_rows(conn):
    insert_usage(conn, [row(at=T0 - 2 * DAY), row(at=T0 - DAY), row(at=T0)])
    assert prune_usage(conn, T0 - DAY) == 1
    assert sorted(r.at for r in recent_calls(conn, 10)) == [T0 - DAY, T0]


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
