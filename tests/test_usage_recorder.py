"""UsageRecorder and UsageLog: call records become usage rows, off the event loop, pruned by age."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode

from memory_routing.addons.call_log import CallLog
from memory_routing.call_record import CallRecord, MemoryOutcome
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.dashboard.recorder import DAY_S, UsageRecorder, usage_row
from memory_routing.dashboard.usage_rows import SQLiteUsageStore
from memory_routing.addons.local_stores import LocalStores
from memory_routing.addons.shared_servers import SharedServers
from memory_routing.addons.usage_log import UsageLog
from memory_routing.routing.planner import RoutePlanner
from memory_routing.llm.providers import ProviderResolver
from memory_routing.flow_state import context_of
from memory_routing.addons.router import ModelRouter

WAIT_S = 10.0
ROUTED = CallRecord(
    user_id="alice", rule="custom header", requested_model="fast", alias="fast", route="routed",
    provider="openai", provider_model="gpt-4o-mini", client_protocol="openai",
    translated_to=None, at=1_700_000_000.0, client="OpenAI/Python", status=200, stream=False,
    latency_ms=120.5, ttfb_ms=80.0, input_tokens=1000, output_tokens=200,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store():
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    yield SQLiteUsageStore(conn)
    conn.close()


def fixed_price(provider, model, tokens_in, tokens_out, cached, cache_write=None, reasoning=None):
    return None if tokens_in is None else (tokens_in + 2 * (tokens_out or 0)) / 1e6


def test_a_routed_record_becomes_a_row():
    row = usage_row(ROUTED._replace(memory=MemoryOutcome("both", "injected", 2, stored=True)), 0.25, now=5.0)
    assert (row.at, row.user_id, row.client, row.alias, row.provider_model, row.protocol) == (
        1_700_000_000.0, "alice", "OpenAI/Python", "fast", "gpt-4o-mini", "openai")
    assert (row.status, row.error, row.input_tokens, row.output_tokens, row.cost_usd) == (200, None, 1000, 200, 0.25)
    assert (row.route, row.memory_injected, row.memory_stored) == ("routed", True, True)


def test_the_embedded_memorys_outcome_marks_the_row():
    record = ROUTED._replace(memory=MemoryOutcome("both", "reinjected", 3, stored=False))
    row = usage_row(record, 0.25, now=5.0)
    assert (row.memory_injected, row.memory_stored) == (True, False)
    row = usage_row(ROUTED._replace(memory=MemoryOutcome("both", "none", stored=True)), 0.25, now=5.0)
    assert (row.memory_injected, row.memory_stored) == (False, True)
    # Supermemory's routing is not the embedded memory's recall.
    assert usage_row(ROUTED._replace(supermemory_routing=True), 0.25, now=5.0).memory_injected is False


def test_only_a_call_with_a_recall_block_has_memory_tokens():
    with_block = usage_row(ROUTED._replace(memory=MemoryOutcome("both", "injected", 1, block_tokens=80)), None, 0)
    assert with_block.memory_tokens == 80
    # The memory was on but put no block into the call: not a memory call in the totals.
    without = usage_row(ROUTED._replace(memory=MemoryOutcome("both", "none", stored=True)), None, 0)
    assert without.memory_tokens is None
    assert usage_row(ROUTED, None, 0).memory_tokens is None


def test_a_refused_record_becomes_a_row():
    refused = CallRecord(at=3.0, user_id="", client="", client_protocol="anthropic", requested_model="nope",
                         route="refused", status=400, latency_ms=1.0, error="unknown model")
    row = usage_row(refused, None, now=9.0)
    assert (row.route, row.alias, row.provider_model, row.provider, row.status) == ("refused", "nope", "nope", "", 400)


def test_writes_in_a_thread_prices_and_drains(store):
    recorder = UsageRecorder(lambda: store, price=fixed_price, clock=Clock(1_700_000_000.0))
    recorder.start()
    writer_threads: list[str] = []
    original = store.insert
    store.insert = lambda rows: (writer_threads.append(threading.current_thread().name), original(rows))[1]
    for n in range(5):
        recorder.submit(ROUTED._replace(at=ROUTED.at + n))
    assert recorder.close(WAIT_S)
    assert recorder.written == 5 and recorder.dropped == 0
    assert set(writer_threads) == {"usage-recorder"}
    [total] = store.totals("user")
    assert (total["key"], total["calls"], total["cost_usd"]) == ("alice", 5, round(5 * 1400 / 1e6, 6))


def test_a_full_queue_drops_and_counts(store):
    recorder = UsageRecorder(lambda: store, capacity=2, price=fixed_price)
    for _ in range(5):  # not started: nothing is written while the queue fills
        recorder.submit(ROUTED)
    assert recorder.dropped == 3
    recorder.start()
    assert recorder.flush(WAIT_S)
    assert recorder.written == 2 and store.count() == 2
    assert recorder.close(WAIT_S)


def test_a_closed_store_counts_rows_as_dropped():
    recorder = UsageRecorder(lambda: None, price=fixed_price)
    recorder.start()
    recorder.submit(ROUTED)
    assert recorder.flush(WAIT_S) and recorder.close(WAIT_S)
    assert (recorder.written, recorder.dropped) == (0, 1)


def test_prunes_at_start_and_then_daily(store):
    clock = Clock(100 * DAY_S)
    store.insert([usage_row(ROUTED._replace(at=at), None, 0) for at in (1 * DAY_S, 50 * DAY_S, 99 * DAY_S)])
    recorder = UsageRecorder(lambda: store, retention_days=30, clock=clock, price=fixed_price)
    recorder.start()
    recorder.submit(ROUTED._replace(at=clock.now))
    assert recorder.flush(WAIT_S)
    assert recorder.pruned == 2 and store.count() == 2  # day 99 and the new call
    clock.now += DAY_S / 2  # not a day yet: the next batch prunes nothing
    recorder.retention_days = 0.1
    recorder.submit(ROUTED._replace(at=clock.now))
    assert recorder.flush(WAIT_S) and recorder.pruned == 2
    clock.now += DAY_S  # a day later: rows older than 0.1 day go
    recorder.submit(ROUTED._replace(at=clock.now))
    assert recorder.flush(WAIT_S) and recorder.close(WAIT_S)
    assert recorder.pruned == 5 and store.count() == 1


# --- wiring: ModelRouter's sink, UsageLog's option ------------------------------------------

CONFIG = """
model_list:
  - model_name: fast
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
"""


def gateway_flow(body: bytes, **headers: str):
    request = tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body,
                          headers=Headers(host="127.0.0.1", content_type="application/json", **headers))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    return flow


@pytest.fixture
def wired(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    routing, stores = RoutingConfig(), LocalStores()
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    calls = CallLog()
    usage_log = UsageLog(stores, calls)
    usage_log.recorder.price = fixed_price
    with taddons.context(routing, stores, usage_log, router, calls) as tctx:
        tctx.configure(routing, memory_routing_config=str(tmp_path / "config.yaml"))
        tctx.configure(stores, memory_routing_store=str(tmp_path / "store.sqlite3"), memory_routing_flow_log="")
        usage_log.running()
        yield tctx, (router, calls), stores, usage_log
        stores.done()
        usage_log.done()


def test_routed_and_refused_calls_reach_the_store(wired):
    _, (router, calls), stores, usage_log = wired
    routed = gateway_flow(b'{"model": "fast", "messages": []}', user_agent="OpenAI/Python 1.99")
    router.request(routed)
    context_of(routed).memory = MemoryOutcome("both", "injected", 1, stored=True)  # as the memory leaves it
    routed.response = tutils.tresp(content=json.dumps(
        {"usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode(),
        headers=Headers(content_type="application/json"))
    router.response(routed)
    calls.response(routed)
    refused = gateway_flow(b'{"model": "no-such-model", "messages": []}', user_agent="curl/8")
    router.request(refused)
    assert refused.response.status_code >= 400
    calls.response(refused)  # mitmproxy calls the response hook of an answer an addon made, too
    bad_user = gateway_flow(b'{"model": "fast"}', x_memory_user_id="bad/id")
    router.request(bad_user)
    assert bad_user.response.status_code == 400
    calls.response(bad_user)
    assert usage_log.recorder.flush(WAIT_S)
    rows = sorted(stores.usage.recent(), key=lambda row: (row.route, row.alias))
    assert [(r.route, r.alias, r.status) for r in rows] == [
        ("refused", "fast", 400), ("refused", "no-such-model", refused.response.status_code), ("routed", "fast", 200)]
    routed_row = rows[-1]
    assert (routed_row.client, routed_row.input_tokens, routed_row.output_tokens) == ("OpenAI/Python", 11, 7)
    assert routed_row.memory_injected and routed_row.cost_usd == fixed_price("", "", 11, 7, None)


def test_rows_queued_at_shutdown_are_written_before_the_file_closes(wired, tmp_path: Path):
    _, _, stores, usage_log = wired
    for _ in range(20):
        usage_log.recorder.submit(ROUTED)
    stores.done()  # drains first, then closes
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    assert conn.execute("SELECT COUNT(*) FROM usage_calls").fetchone()[0] == 20
    conn.close()


def test_retention_must_be_positive(wired):
    tctx, _, _, usage_log = wired
    with pytest.raises(exceptions.OptionsError, match="memory_routing_usage_retention_days"):
        tctx.configure(usage_log, memory_routing_usage_retention_days=0)
    tctx.configure(usage_log, memory_routing_usage_retention_days=7)
    assert usage_log.recorder.retention_days == 7


def test_rows_name_the_proxy_and_the_outage_queue_takes_its_size_from_storage(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(CONFIG + "storage: {proxy_name: gw-7, outage_queue_rows: 7}\n")
    routing = RoutingConfig()
    shared = SharedServers(routing)
    stores = LocalStores(shared)
    usage_log = UsageLog(stores, CallLog())
    with taddons.context(routing, shared, stores, usage_log) as tctx:
        tctx.configure(routing, memory_routing_config=str(tmp_path / "config.yaml"))
        tctx.configure(stores, memory_routing_store=str(tmp_path / "store.sqlite3"))
        usage_log.running()
        try:
            assert usage_log.recorder.outage_capacity == 7
            usage_log.recorder.submit(ROUTED)
            assert usage_log.recorder.flush(WAIT_S)
            assert stores.usage is not None and [row.proxy for row in stores.usage.recent()] == ["gw-7"]
            assert usage_log.status()["written"] == 1 and usage_log.status()["outage_queued"] == 0
        finally:
            stores.done()
            usage_log.done()
