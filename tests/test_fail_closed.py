"""Fail closed: an unexpected exception in an enforcing addon answers the client; nothing goes upstream.

mitmproxy logs an exception raised in a hook and forwards the request; each test makes an
internal of one enforcing addon raise and checks the flow got an answer in the client's shape
(a flow with a response is never sent upstream) and was not rewritten.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

import memory_routing.addons.in_flight as in_flight_module
import memory_routing.addons.gateway_auth as gateway_auth_module
import memory_routing.addons.request_limits as request_limits_module
import memory_routing.addons.router as router_module
from memory_routing.addons.in_flight import InFlightLimiter
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.flow_state import Route, set_route
from memory_routing.addons.gateway_auth import GatewayAuth
from memory_routing.addons.request_limits import RequestLimits
from memory_routing.routing.planner import RoutePlanner
from memory_routing.llm.providers import ProviderResolver
from memory_routing.addons.router import ModelRouter
from memory_routing.wire.protocol import ClientProtocol
from memory_routing.wire.responses import fail_closed

CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
"""


def explode(*_args, **_kwargs):
    raise RuntimeError("an internal failed")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def anthropic_gateway_flow():
    request = tutils.treq(
        method=b"POST", path=b"/v1/messages", content=b'{"model": "gpt-alias", "max_tokens": 5, "messages": []}',
        headers=Headers(host="memory-routing.localhost", content_type="application/json", anthropic_version="2023-06-01"),
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def assert_answered_not_forwarded(flow, before, status: int) -> None:
    assert flow.response is not None and flow.response.status_code == status
    body = json.loads(flow.response.content)
    assert body["type"] == "error" and "log has the details" in body["error"]["message"]  # Anthropic's shape
    assert flow.request.data == before.data


def test_gateway_auth(monkeypatch, caplog):
    auth = GatewayAuth()
    with taddons.context(auth):
        flow = anthropic_gateway_flow()
        auth._marked.add(flow.client_conn)
        monkeypatch.setattr(gateway_auth_module.GatewayAuth, "_proxyauth", staticmethod(explode))
        before = flow.request.copy()
        with caplog.at_level(logging.ERROR):
            auth.requestheaders(flow)
    assert_answered_not_forwarded(flow, before, 401)
    assert "GatewayAuth.requestheaders failed" in caplog.text


@pytest.mark.parametrize("hook", ["requestheaders", "request"])
def test_request_limits(monkeypatch, config_file: Path, hook: str):
    routing = RoutingConfig()
    limits = RequestLimits(routing)
    with taddons.context(routing, limits) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(limits, memory_routing_max_body_size="1k")
        monkeypatch.setattr(request_limits_module, "is_gateway", explode)
        flow = anthropic_gateway_flow()
        flow.request.content = b"x" * 2048  # over the limit: request() must get as far as _applies
        before = flow.request.copy()
        getattr(limits, hook)(flow)
    assert_answered_not_forwarded(flow, before, 500)


def test_router(monkeypatch, config_file: Path):
    routing = RoutingConfig()
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        monkeypatch.setattr(router_module, "routed_call", explode)  # outside the router's own try
        flow = anthropic_gateway_flow()
        before = flow.request.copy()
        router.request(flow)
    assert_answered_not_forwarded(flow, before, 500)


def test_in_flight_limiter(monkeypatch):
    limiter = InFlightLimiter()
    with taddons.context(limiter) as tctx:
        tctx.configure(limiter, memory_routing_max_in_flight=1)
        flow = anthropic_gateway_flow()
        set_route(flow, Route(decision=None, client_protocol=ClientProtocol.ANTHROPIC, user_id="alice"))
        monkeypatch.setattr(in_flight_module, "_HostSlots", explode)
        before = flow.request.copy()
        assert limiter.request(flow) is None
    assert_answered_not_forwarded(flow, before, 500)


def test_an_awaited_hook_fails_closed_too():
    class Queueing:
        @fail_closed(500, "the proxy failed; its log has the details")
        def request(self, flow):
            async def wait():
                raise RuntimeError("failed while queued")

            return wait()

    flow = anthropic_gateway_flow()
    before = flow.request.copy()
    asyncio.run(Queueing().request(flow))
    assert_answered_not_forwarded(flow, before, 500)
