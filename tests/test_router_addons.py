"""ModelRouter and InterceptScope in mitmproxy's test harness."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons.call_log import CallLog
from memory_routing.addons.intercept_scope import InterceptScope
from memory_routing.addons.router import ModelRouter
from memory_routing.llm.providers import ProviderResolver
from memory_routing.routing.planner import RoutePlanner
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.upstream_cookies import UpstreamCookies
from memory_routing.flow_state import Route, route_of, set_route
from memory_routing.wire.protocol import ClientProtocol

CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


class ExplodingPlanner(RoutePlanner):
    def plan(self, *args, **kwargs):
        raise RuntimeError("boom")


def make_router(config_file: Path, planner: RoutePlanner | None = None):
    routing = RoutingConfig()
    router = ModelRouter(routing, planner or RoutePlanner(ProviderResolver()))
    return routing, router


def gateway_flow(path: str, body: bytes, **headers: str):
    request = tutils.treq(method=b"POST", path=path.encode(), content=body,
                          headers=Headers(host="memory-routing.localhost", content_type="application/json", **headers))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def test_routes_and_annotates_the_flow(config_file: Path):
    routing, router = make_router(config_file)
    calls = CallLog()
    with taddons.context(routing, router, calls) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(calls, memory_routing_flow_log="")
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias", "messages": []}', user_agent="curl/8")
        router.request(flow)
    assert flow.response is None
    assert flow.request.url == "http://llm.internal:8000/v1/chat/completions"
    assert flow.request.headers["host"] == "llm.internal:8000"
    assert json.loads(flow.request.content)["model"] == "gpt-4o-mini"
    assert flow.metadata["memory_routing"]["provider_model"] == "gpt-4o-mini"
    route = route_of(flow)  # what the addons after the router read
    assert route is not None and route.decision.provider_model == "gpt-4o-mini"
    assert (route.client_protocol, route.user_id) == (ClientProtocol.OPENAI, route.decision.user_id)
    assert route_of(tflow.tflow()) is None
    flow.response = tutils.tresp()
    router.response(flow)
    calls.response(flow)  # the call's record: its comment is mitmweb's
    assert "gpt-alias → openai/gpt-4o-mini" in flow.comment and flow.comment.endswith("; 200")
    assert "sk-config" not in flow.comment + json.dumps(flow.metadata["memory_routing"])


def test_internal_error_fails_closed(config_file: Path):
    routing, router = make_router(config_file, ExplodingPlanner(ProviderResolver()))
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias"}')
        before = flow.request.copy()
        router.request(flow)
    assert flow.response.status_code == 500
    assert json.loads(flow.response.content)["error"]["message"].startswith("the proxy failed to route")
    assert flow.request.data == before.data  # nothing half-rewritten


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "the request body is not valid JSON"),
        (b"[1, 2]", 400, "the request body must be a JSON object"),
        (b'{"messages": []}', 400, 'the request body has no "model"'),
    ],
)
def test_bad_bodies_are_answered_in_the_clients_shape(config_file: Path, body: bytes, status: int, message: str):
    routing, router = make_router(config_file)
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = gateway_flow("/v1/messages", body)
        router.request(flow)
    assert flow.response.status_code == status
    answer = json.loads(flow.response.content)
    assert answer["type"] == "error" and answer["error"]["message"].startswith(message)


def test_forward_mode_leaves_other_hosts_alone(config_file: Path):
    routing, router = make_router(config_file)
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = tflow.tflow(req=tutils.treq(host="example.com", port=443, method=b"POST", path=b"/v1/chat/completions",
                                           content=b'{"model": "gpt-alias"}'))
        before = flow.request.copy()
        router.request(flow)
    assert flow.response is None and flow.request.data == before.data


@pytest.mark.parametrize(
    "content_type, length, streamed",
    [("text/event-stream", None, True), ("application/json", None, True), ("application/json", "120", False),
     ("application/json", str(2 * 1024 * 1024), True)],
)
def test_event_streams_and_chunked_bodies_are_streamed(config_file: Path, content_type: str, length: str | None, streamed: bool):
    routing, router = make_router(config_file)
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias"}')
        router.request(flow)
        headers = Headers(content_type=content_type, **({"content_length": length} if length else {}))
        flow.response = tutils.tresp(headers=headers, content=None)
        router.responseheaders(flow)
    assert bool(flow.response.stream) is streamed



def test_a_whole_answers_usage_comes_from_the_parse_the_memory_reads_next(config_file: Path):
    from memory_routing.flow_state import answer_json_of

    routing, router = make_router(config_file)
    calls = CallLog()
    lines = []
    calls.sinks.append(lines.append)
    answer = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    with taddons.context(routing, router, calls) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias"}')
        router.request(flow)
        body = json.dumps(answer).encode()
        flow.response = tutils.tresp(headers=Headers(content_type="application/json", content_length=str(len(body))),
                                     content=body)
        router.responseheaders(flow)
        router.response(flow)
        calls.response(flow)
    parsed = answer_json_of(flow)  # left for the memory: it reads the answer's text from this parse
    assert parsed is not None and parsed.document == answer
    (record,) = lines
    assert (record.input_tokens, record.output_tokens) == (3, 5)

def allow_regex(tctx) -> re.Pattern[str]:
    (pattern,) = tctx.options.allow_hosts
    return re.compile(pattern, re.IGNORECASE)


def test_only_llm_hosts_are_intercepted(config_file: Path):
    routing = RoutingConfig()
    scope = InterceptScope(routing)
    with taddons.context(NextLayer(), routing, scope) as tctx:
        tctx.options.mode = ["regular@8080", "reverse:http://gateway.test:9@8764"]
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(scope)
        allowed = allow_regex(tctx)
        for host in ("api.openai.com:443", "API.ANTHROPIC.COM:443", "generativelanguage.googleapis.com:443",
                     "api.supermemory.ai:443", "llm.internal:8000", "memory-routing.localhost:443", "gateway.test:9"):
            assert allowed.search(host), host
        for host in ("example.com:443", "api.openai.com.evil.test:443", "github.com:443"):
            assert not allowed.search(host), host

        config_file.write_text(CONFIG.replace("llm.internal", "other-llm.internal"))
        routing.reload_if_changed()
        assert allow_regex(tctx).search("other-llm.internal:8000")


def test_ignore_hosts_conflicts_unless_scope_is_off(config_file: Path):
    routing = RoutingConfig()
    scope = InterceptScope(routing)
    with taddons.context(NextLayer(), routing, scope) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        with pytest.raises(exceptions.OptionsError, match="ignore_hosts"):
            tctx.configure(scope, ignore_hosts=["example.com"])
        tctx.configure(scope, memory_routing_intercept_llm_only=False, allow_hosts=[])
        tctx.configure(scope, ignore_hosts=["example.com"])
        assert tctx.options.allow_hosts == []


def test_connection_strategy_is_kept_lazy(config_file: Path):
    routing = RoutingConfig()
    scope = InterceptScope(routing)
    with taddons.context(Proxyserver(), routing, scope) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(scope, connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"


def routed_flow(user_id: str, url: str = "https://api.example.com/v1/chat/completions"):
    flow = tflow.tflow(req=tutils.treq(method=b"POST", headers=Headers(host="api.example.com")))
    flow.request.url = url
    # The cookie jar reads only the user id and the protocol of the route.
    set_route(flow, Route(decision=None, client_protocol=ClientProtocol.OPENAI, user_id=user_id))
    return flow


@pytest.mark.parametrize("scope, bob_gets_alices_cookie", [("user", False), ("machine", True)])
def test_cookie_scope(scope: str, bob_gets_alices_cookie: bool):
    cookies = UpstreamCookies()
    with taddons.context(cookies) as tctx:
        tctx.configure(cookies, memory_routing_cookie_scope=scope, memory_routing_cookie_file="none")
        alice = routed_flow("alice")
        alice.response = tutils.tresp(headers=Headers(set_cookie="__cf_bm=alice-token; Path=/"))
        cookies.responseheaders(alice)
        bob, alice_again = routed_flow("bob"), routed_flow("alice")
        cookies.request(bob)
        cookies.request(alice_again)
    assert alice_again.request.headers["cookie"] == "__cf_bm=alice-token"
    assert ("cookie" in bob.request.headers) is bob_gets_alices_cookie


def test_unrouted_flows_get_no_cookies():
    cookies = UpstreamCookies()
    with taddons.context(cookies) as tctx:
        tctx.configure(cookies, memory_routing_cookie_file="none")
        routed = routed_flow("alice")
        routed.response = tutils.tresp(headers=Headers(set_cookie="__cf_bm=t; Path=/"))
        cookies.responseheaders(routed)
        plain = tflow.tflow(req=tutils.treq(headers=Headers(host="api.example.com")))
        plain.request.url = "https://api.example.com/v1/chat/completions"
        cookies.request(plain)
    assert "cookie" not in plain.request.headers


def test_requests_that_would_loop_back_into_the_proxy_are_refused(tmp_path: Path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(CONFIG.replace("http://llm.internal:8000/v1", "http://localhost:8764/v1"))
    routing, router = make_router(config_file)
    with taddons.context(Proxyserver(), routing, router) as tctx:
        tctx.configure(router, mode=["regular@8080", "reverse:http://memory-routing.localhost@8764"], listen_host="127.0.0.1")
        tctx.configure(routing, memory_routing_config=str(config_file))
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias"}')
        router.request(flow)
    assert flow.response.status_code == 508
    assert "which is this proxy" in json.loads(flow.response.content)["error"]["message"]


def test_read_timeout_mid_stream_is_logged_as_a_read_timeout(caplog: pytest.LogCaptureFixture):
    from mitmproxy import flow as mflow

    from memory_routing.flow_state import Route, set_route
    from memory_routing.wire.protocol import ClientProtocol
    from memory_routing.addons.upstream_failures import UpstreamFailures
    from memory_routing.flow_state import context_of

    failures = UpstreamFailures()
    flow = tflow.tflow(resp=True)
    flow.response.stream = True
    set_route(flow, Route(decision=None, client_protocol=ClientProtocol.OPENAI, user_id="u", record=None))
    # What the watchdog notes when it cancels a read that timed out.
    context_of(flow).failure = "read timeout: example.com sent nothing for 60 s (memory_routing_read_timeout)"
    flow.error = mflow.Error("server closed connection")  # what mitmproxy reports for the cancelled read
    with caplog.at_level(logging.WARNING):
        failures.error(flow)
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "cut short (read timeout: " in message and "memory_routing_read_timeout" in message
    assert "server closed connection" not in message


def test_a_memory_edit_is_encoded_once_with_the_routers_own_changes(tmp_path: Path):
    from memory_routing.mitm.request_json import edit_request_json, request_json

    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.rstrip() + "\n  - model_name: gemini-2.5-flash\n"
                    "    litellm_params: {model: gemini/gemini-2.5-flash, api_key: g-key}\n")
    routing, router = make_router(path)
    encodes = []
    encode = router._encode_body
    router._encode_body = lambda document: encodes.append(1) or encode(document)
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(path))
        # OpenAI format: the provider's model name and the memory's block, in one encode.
        flow = gateway_flow("/v1/chat/completions", b'{"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]}')
        parsed = request_json(flow)
        edit_request_json(flow, parsed, {**parsed.payload, "messages": [{"role": "user", "content": "[block] hi"}]})
        router.request(flow)
        assert json.loads(flow.request.content) == {"model": "gpt-4o-mini",
                                                    "messages": [{"role": "user", "content": "[block] hi"}]}
        assert encodes == [1] and flow.request.headers["content-length"] == str(len(flow.request.content))
        # Gemini names the model in the path: the router reads no body, but still writes the edit.
        gemini = gateway_flow("/v1beta/models/gemini-2.5-flash:generateContent", b'{"contents": [{"parts": [{"text": "hi"}]}]}')
        parsed = request_json(gemini)
        edit_request_json(gemini, parsed, {"contents": [{"parts": [{"text": "[block]"}, {"text": "hi"}]}]})
        router.request(gemini)
        assert gemini.response is None
        assert json.loads(gemini.request.content) == {"contents": [{"parts": [{"text": "[block]"}, {"text": "hi"}]}]}
        assert encodes == [1, 1]


def test_tokens_are_counted_off_the_event_loop(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    import asyncio
    import threading

    from memory_routing.addons import litellm_loading

    counted_in = []

    def count_input_tokens(model, payload):
        counted_in.append(threading.get_ident())
        return 7

    monkeypatch.setattr(litellm_loading.translation(), "count_input_tokens", count_input_tokens)
    routing, router = make_router(config_file)
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        # An Anthropic client counting tokens for a GPT alias: LiteLLM's tokenizer answers.
        flow = gateway_flow("/v1/messages/count_tokens",
                            b'{"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]}')
        pending = router.request(flow)
        assert pending is not None and flow.response is None  # nothing counted on the loop
        asyncio.run(pending)
    assert counted_in and counted_in[0] != threading.get_ident()
    assert flow.response.status_code == 200 and json.loads(flow.response.content) == {"input_tokens": 7}
