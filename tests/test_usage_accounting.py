"""Accounting a new user found wrong: refusals are calls, with a user and a model; one model,
one name; the cache, the reasoning and the memory's own tokens in the rows and totals."""

from __future__ import annotations

import json
import sqlite3


from test_usage_recorder import ROUTED, WAIT_S, gateway_flow, usage_row, wired  # noqa: F401  (fixture)
from test_usage_rows import T0, conn, row  # noqa: F401  (fixture)

from memory_routing.dashboard.usage_rows import SQLiteUsageStore, UsageRow
from memory_routing.addons.memory import EmbeddedMemory
from memory_routing.call_record import NO_MODEL, UNIDENTIFIED_USER, MemoryOutcome
from memory_routing.wire.responses import error_response


def test_a_call_refused_for_an_invalid_memory_mode_leaves_a_row(wired):
    tctx, (router, calls), stores, usage_log = wired
    memory = EmbeddedMemory(router.routing, stores)
    tctx.master.addons.add(memory)
    flow = gateway_flow(b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}]}',
                        x_memory_mode="sometimes", x_memory_user_id="carol", user_agent="curl/8")
    memory.request(flow)
    assert flow.response is not None and flow.response.status_code == 400
    router.request(flow)  # the next stage: it counts what an earlier one refused
    calls.response(flow)  # mitmproxy calls the response hook of an answer an addon made, too
    # Not a call refused for missing proxy credentials: anyone could write rows under any name.
    unauthenticated = gateway_flow(b'{"model": "fast"}', x_memory_user_id="mallory")
    unauthenticated.response = error_response(unauthenticated, 401, "missing proxy credentials")
    router.request(unauthenticated)
    calls.response(unauthenticated)
    assert usage_log.recorder.flush(WAIT_S)
    [refused] = stores.usage.recent()
    assert (refused.route, refused.status, refused.user_id, refused.alias, refused.client) == (
        "refused", 400, "carol", "fast", "curl/8")
    assert "x-memory-mode" in refused.error


def test_refusals_name_who_asked_and_for_what_even_before_classification(wired):
    _, (router, calls), stores, usage_log = wired
    bad_user = gateway_flow(b'{"model": "fast"}', x_memory_user_id="bad/id")
    router.request(bad_user)
    calls.response(bad_user)
    no_model = gateway_flow(b'{"messages": []}', x_memory_user_id="dave")
    router.request(no_model)
    calls.response(no_model)
    assert bad_user.response.status_code == no_model.response.status_code == 400
    assert usage_log.recorder.flush(WAIT_S)
    rows = {(r.user_id, r.alias, r.provider_model) for r in stores.usage.recent()}
    assert rows == {(UNIDENTIFIED_USER, "fast", "fast"), ("dave", NO_MODEL, NO_MODEL)}


def test_one_model_under_two_spellings_is_one_model(conn):
    store = SQLiteUsageStore(conn)
    store.insert([
        row(provider="anthropic", provider_model="claude-sonnet-4-5"),
        row(at=T0 + 61, provider="anthropic", provider_model="claude-sonnet-4-5"),
        row(at=T0 + 62, provider="", provider_model="claude-sonnet-4.5", alias="claude-sonnet-4.5",
            route="refused", status=400, error="unknown model", input_tokens=None, output_tokens=None),
        row(at=T0 + 63, provider="", provider_model="anthropic/claude-sonnet-4.5", route="refused", status=400),
        row(at=T0 + 64),  # gpt-4o-mini
    ])
    models = {group["key"]: (group["calls"], group["errors"]) for group in store.totals("model")}
    assert models == {"claude-sonnet-4-5": (4, 2), "gpt-4o-mini": (1, 0)}


def test_an_older_usage_table_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE usage_calls (id INTEGER PRIMARY KEY, at REAL NOT NULL, user_id TEXT NOT NULL, "
                "client TEXT NOT NULL, alias TEXT NOT NULL, provider TEXT NOT NULL, provider_model TEXT NOT NULL, "
                "protocol TEXT NOT NULL, status INTEGER, error TEXT, input_tokens INTEGER, output_tokens INTEGER, "
                "cached_tokens INTEGER, cost_usd REAL, latency_ms REAL, ttfb_ms REAL, memory_injected INTEGER NOT NULL, "
                "memory_stored INTEGER NOT NULL, route TEXT NOT NULL, translated_to TEXT)")
    old.commit()
    old.close()
    store = SQLiteUsageStore(sqlite3.connect(path))
    store.insert([row(cache_write_tokens=5, memory_tokens=9)])
    assert store.recent()[0].memory_tokens == 9


def test_rows_and_totals_carry_the_cache_reasoning_and_memory(conn):
    record = ROUTED._replace(input_tokens=52_100, output_tokens=300, cache_read_tokens=50_000,
                     cache_write_tokens=2000, reasoning_tokens=120,
                     memory=MemoryOutcome("both", "injected", recalled=2, block_tokens=80))
    first = usage_row(record, None, now=0)
    assert (first.cached_tokens, first.cache_write_tokens, first.reasoning_tokens, first.memory_tokens) == (
        50_000, 2000, 120, 80)
    store = SQLiteUsageStore(conn)
    store.insert([
        UsageRow(**{**first.__dict__, "cost_usd": 0.0273, "memory_cost_usd": 0.00024, "cache_saved_usd": 0.1335}),
        row(input_tokens=47_900, cached_tokens=0, cost_usd=0.1),
    ])
    [alice] = store.totals("user")
    assert (alice["cache_read_tokens"], alice["cached_tokens"], alice["cache_write_tokens"]) == (50_000, 50_000, 2000)
    assert alice["reasoning_tokens"] == 120
    assert alice["cache_hit_ratio"] == 0.5  # 50,000 of 100,000 input tokens
    assert (alice["memory_calls"], alice["memory_tokens"], alice["memory_cost_usd"]) == (1, 80, 0.00024)
    assert alice["cache_saved_usd"] == 0.1335
    assert json.loads(json.dumps(alice)) == alice
