"""Property-based tests: arbitrary headers, User-Agents and bodies thrown at classification,
the size limits and the router, in mitmproxy's own test harness.

Whatever comes in: no exception escapes a hook, the router never takes its internal-error
path, every answer the proxy makes is JSON in the client's shape, and every header the proxy
writes is one a peer can parse (no CR, LF or NUL, bounded length).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.routing.classify import Classifier, InvalidUserId
from memory_routing.config.schema import Secret, load_config
from memory_routing.addons.router import METADATA_KEY, ModelRouter
from memory_routing.llm.providers import ProviderResolver
from memory_routing.addons.request_limits import RequestLimits
from memory_routing.routing.planner import MAX_HEADER_VALUE, RoutePlanner, header_safe
from memory_routing.addons.routing_config import RoutingConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config-1}
  - model_name: claude-alias
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_base: 'http://llm.internal:8001'}
  - model_name: gemini-alias
    litellm_params: {model: gemini/gemini-2.5-flash, api_base: 'http://llm.internal:8002'}
user_id_mappings:
  header_patterns:
    - {header: user-agent, pattern: '^claude-cli', user_id: claude-code}
    - {header: x-client, pattern: 'jet(brains)?', user_id: jetbrains}
memory:
  api_key: sm-config-2
  base_url: http://memory.internal/v3
"""
PATHS = [
    "/v1/chat/completions", "/v1/messages", "/v1/messages?beta=true", "/v1/responses", "/v1/embeddings",
    "/v1beta/models/gemini-alias:generateContent?key=AIza-client", "/v1beta/models/gemini-alias:streamGenerateContent",
    "/v1/models", "/health", "/anything/else",
]
# Header names as clients may send them (tokens), values as anything at all, including the
# control characters a peer would read as the end of a header.
header_names = st.one_of(
    st.sampled_from(["user-agent", "x-memory-user-id", "x-client", "authorization", "x-api-key", "cookie",
                     "x-memory-conversation-id", "x-claude-code-session-id", "anthropic-version", "x-sm-user-id",
                     "x-goog-api-key", "content-encoding", "transfer-encoding", "x-supermemory-api-key"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
)
header_values = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["claude-cli/2.1.0 (external, cli)", "jetbrains", "user-1", "a\r\nx-injected: 1", "\x00", ""]),
    st.builds(lambda n: "claude-cli/" + "x" * n, st.integers(0, 20000)),
)
models = st.one_of(st.sampled_from(["gpt-alias", "claude-alias", "gemini-alias", "unknown-model", ""]), st.text(max_size=40))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Conversations of any shape, for the calls the proxy translates (gpt-alias from /v1/messages).
messages = st.lists(
    st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "name"]), json_values, max_size=3)
    | st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": json_values}),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda model, conversation, extra, stream: json.dumps(
        {"model": model, "messages": conversation, "stream": stream, **extra}).encode(),
              models, messages, st.dictionaries(st.sampled_from(["tools", "system", "max_tokens", "tool_choice", "temperature"]),
                                                json_values, max_size=3), st.booleans()),
    st.builds(lambda model, extra, stream: json.dumps({"model": model, "stream": stream, **extra}).encode(),
              models, st.dictionaries(st.text(max_size=10), json_values, max_size=4), st.booleans()),
    json_values.map(lambda value: json.dumps(value).encode()),
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("props") / "config.yaml"
    path.write_text(CONFIG)
    return path


def make_flow(path: str, headers: list[tuple[str, str]], body: bytes, gateway: bool):
    fields = [(b"host", b"api.openai.com")] + [
        (name.encode(), value.encode("utf-8", "surrogateescape")) for name, value in headers
    ]
    request = tutils.treq(method=b"POST", path=path.encode(), content=body, headers=Headers(fields))
    request.data.host = "api.openai.com"  # not the setter: it would rewrite every Host header
    flow = tflow.tflow(req=request)
    if gateway:
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def assert_answer_in_client_shape(flow) -> None:
    assert flow.response.headers["content-type"] == "application/json"
    body = json.loads(flow.response.content)
    assert isinstance(body, dict)
    if flow.response.status_code >= 400:
        assert "error" in body
        assert "failed to route this request" not in flow.response.text  # the catch-all never fires


def assert_written_headers_are_safe(before: set[tuple[bytes, bytes]], flow) -> None:
    for name, value in flow.request.headers.fields:
        if (name, value) in before:
            continue  # the client's own header, passed on as it came
        text = value.decode("utf-8", "surrogateescape")
        assert header_safe(text), (name, value[:80])
        assert len(value) <= MAX_HEADER_VALUE


paths = st.one_of(
    st.sampled_from(PATHS),
    # The client's Gemini key, whatever it holds, moves from the URL into a header.
    st.builds(lambda key: "/v1beta/models/gemini-alias:generateContent?key=" + quote(key, safe=""), st.text(max_size=60)),
)


@PROPERTY_SETTINGS
@given(
    path=paths,
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
    body=bodies,
    gateway=st.booleans(),
)
def test_router_survives_anything_and_writes_only_safe_headers(config_file: Path, path, headers, body, gateway):
    routing = RoutingConfig()
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    limits = RequestLimits(routing)
    with taddons.context(routing, limits, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(limits, memory_routing_max_header_size="16k")
        flow = make_flow(path, headers, body, gateway)
        before = set(flow.request.headers.fields)
        limits.requestheaders(flow)
        if flow.response is None:
            limits.request(flow)
        if flow.response is None:
            router.request(flow)
        if flow.response is not None:
            assert_answer_in_client_shape(flow)
            assert METADATA_KEY not in flow.metadata
        elif METADATA_KEY in flow.metadata:
            assert_written_headers_are_safe(before, flow)
            assert "key=" not in flow.request.path  # Gemini keys leave the URL


@PROPERTY_SETTINGS
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=10))
def test_classification_never_fails_but_on_a_bad_explicit_id(headers):
    config = load_config(ROOT / "config.yaml", environ={})
    classifier = Classifier(config.user_id_mappings)
    try:
        identity = classifier.classify(Headers([(n.encode(), v.encode("utf-8", "surrogateescape")) for n, v in headers]))
    except InvalidUserId as e:
        assert any(name == "x-memory-user-id" for name, _ in headers)
        assert "\n" not in str(e) and "\r" not in str(e)
    else:
        assert header_safe(identity.user_id) and len(identity.user_id) <= 128


def test_a_config_secret_with_a_line_break_is_refused_not_sent(config_file: Path):
    # The loader refuses such values; this is the last line behind it, for anything that
    # reaches a decision another way.
    routing = RoutingConfig()
    router = ModelRouter(routing, RoutePlanner(ProviderResolver()))
    with taddons.context(routing, router) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        alias = routing.config.model("gpt-alias")
        broken = dataclasses.replace(alias, api_key=Secret("sk-1\r\nx-injected: yes", "KEY"))
        models = tuple(broken if m is alias else m for m in routing.config.models)
        routing.config = dataclasses.replace(
            routing.config, models=models, _models_by_name={m.model_name: m for m in models}
        )
        flow = make_flow("/v1/chat/completions", [], b'{"model": "gpt-alias"}', gateway=True)
        router.request(flow)
        assert flow.response.status_code == 500
        assert "'authorization'" in flow.response.text and "sk-1" not in flow.response.text


@pytest.mark.parametrize(
    "extra, status",
    [([], None), ([("host", "evil.example")], 400), ([("x-big", "v" * 20000)], 431), ([("content-length", "2000000")], 413)],
)
def test_request_limits(config_file: Path, extra, status):
    routing = RoutingConfig()
    limits = RequestLimits(routing)
    with taddons.context(routing, limits) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        tctx.configure(limits, memory_routing_max_header_size="16k", memory_routing_max_body_size="1m")
        flow = make_flow("/v1/chat/completions", extra, b"{}", gateway=False)
        limits.requestheaders(flow)
        assert (flow.response.status_code if flow.response else None) == status
        if status:
            assert_answer_in_client_shape(flow)
