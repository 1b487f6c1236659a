"""LocalStores (the one SQLite file: opened at start-up, 0600, closed in done()) and LocalEndpoints serving
the dashboard from it."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.local_endpoints import RESERVED_HOST, LocalEndpoints, gateway_host
from memory_routing.addons.local_stores import DEFAULT_STORE_NAME, LocalStores


def test_default_file_lives_in_confdir_with_mode_0600(tmp_path: Path):
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        tctx.configure(stores, confdir=str(tmp_path))
        assert stores.path == tmp_path / DEFAULT_STORE_NAME
        assert stores.memory is not None and stores.usage is not None
        assert stat.S_IMODE((tmp_path / DEFAULT_STORE_NAME).stat().st_mode) == 0o600
        assert stores.usage.recent() == []
        stores.done()
    assert stores.memory is None and stores.usage is None


def test_option_path_is_expanded_and_reopened_on_change(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        tctx.configure(stores, memory_routing_store="~/a.sqlite3")
        assert stores.path == tmp_path / "a.sqlite3"
        first = stores.memory
        tctx.configure(stores, memory_routing_store=str(tmp_path / "b.sqlite3"))
        assert stores.path == tmp_path / "b.sqlite3" and stores.memory is not first
        stores.done()


def test_drains_run_before_the_file_closes(tmp_path: Path):
    stores = LocalStores()
    seen: list[bool] = []
    stores.before_close.append(lambda: seen.append(stores.usage is not None))
    with taddons.context(stores) as tctx:
        tctx.configure(stores, confdir=str(tmp_path))
        stores.done()
    assert seen == [True]


def test_unopenable_store_names_the_option_and_path(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stores = LocalStores()
    with taddons.context(stores) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"memory_routing_store: cannot open .*file/store"):
            tctx.configure(stores, memory_routing_store=str(blocker / "store.sqlite3"))


# --- LocalEndpoints: /memory-routing/… served from the store, off the event loop -----------


def _gateway_flow(path: str, method: str = "GET", **headers: str):
    flow = tflow.tflow(req=tutils.treq(method=method.encode(), path=path.encode(), headers=Headers(**headers)))
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    flow.client_conn.sockname = ("127.0.0.1", 8764)
    return flow


@pytest.fixture
def endpoints(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(
        "model_list:\n  - model_name: fast\n    litellm_params: {model: openai/gpt-4o-mini, api_key: sk-test}\n")
    routing, stores = RoutingConfig(), LocalStores()
    endpoints = LocalEndpoints(routing, stores=stores)
    with taddons.context(routing, stores, endpoints) as tctx:
        tctx.configure(routing, memory_routing_config=str(tmp_path / "config.yaml"))
        tctx.configure(stores, memory_routing_store=str(tmp_path / "store.sqlite3"))
        yield endpoints, stores
        stores.done()


def _run(endpoints: LocalEndpoints, flow) -> None:
    pending = endpoints.request(flow)
    assert pending is not None, "dashboard requests are answered by an awaitable"
    asyncio.run(pending)


def test_dashboard_paths_are_answered_in_a_thread(endpoints):
    handler, stores = endpoints
    threads: list[str] = []
    original = stores.usage.totals
    stores.usage.totals = lambda *a, **k: (threads.append(threading.current_thread().name), original(*a, **k))[1]
    flow = _gateway_flow("/memory-routing/usage?group_by=user")
    _run(handler, flow)
    assert flow.response.status_code == 200 and json.loads(flow.response.content)["data"] == []
    assert threads and threads[0] != threading.main_thread().name


def test_the_reserved_host_serves_the_page_and_deletes(endpoints):
    handler, _ = endpoints
    page = tflow.tflow(req=tutils.treq(host=RESERVED_HOST, port=80, path=b"/memory-routing/",
                                       headers=Headers(host=RESERVED_HOST)))
    _run(handler, page)
    assert page.response.status_code == 200 and page.response.headers["content-type"].startswith("text/html")
    delete = tflow.tflow(req=tutils.treq(host=RESERVED_HOST, port=80, method=b"DELETE",
                                         path=b"/memory-routing/memories?user_id=alice",
                                         headers=Headers(host=RESERVED_HOST)))
    _run(handler, delete)
    assert delete.response.status_code == 200, delete.response.content


def test_a_failing_dashboard_fails_closed(endpoints, monkeypatch):
    handler, _ = endpoints
    monkeypatch.setattr("memory_routing.dashboard.api.handle", lambda *a, **k: 1 / 0)
    flow = _gateway_flow("/memory-routing/usage")
    _run(handler, flow)
    assert flow.response.status_code == 500  # answered here, never forwarded
    assert "ZeroDivisionError" not in flow.response.text


def test_info_shows_the_store_counts_never_contents(endpoints):
    handler, stores = endpoints
    flow = _gateway_flow("/memory-routing/info")
    _run(handler, flow)
    store = json.loads(flow.response.content)["store"]
    assert store == {"path": str(stores.path), "open": True, "usage_calls": 0,
                     "memory": {"memories": 0, "users": 0}}


@pytest.mark.parametrize("origin, host", [
    (None, "127.0.0.1:8764"),
    ("http://localhost:8764", "localhost:8764"),
    ("http://evil.example:8764", "127.0.0.1:8764"),
    ("http://127.0.0.1:9999", "127.0.0.1:8764"),
])
def test_gateway_host_stands_in_for_the_rewritten_host(origin, host):
    assert gateway_host(_gateway_flow("/memory-routing/"), origin) == host
