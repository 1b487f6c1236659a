"""Routing decisions: LiteLLM resolution, URL and header rewriting, Supermemory, refusals."""

from __future__ import annotations

import textwrap

import pytest

from memory_routing.classify import ClientIdentity
from memory_routing.config import parse_config
from memory_routing.model_calls import Endpoint, ModelCall, parse_model_call
from memory_routing.protocol import ClientProtocol
from memory_routing.providers import ProviderResolver, UnresolvableModel, UnsupportedProvider
from memory_routing.routing import (
    RequestFacts,
    RoutePlanner,
    RouteRefused,
    conversation_id_from,
    llm_hosts,
    loggable_url,
)

PROVIDER_ENV_VARS = (
    "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE", "GEMINI_API_BASE",
)


@pytest.fixture(autouse=True)
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM honours these; the pinned defaults below are what it resolves without them.
    for name in PROVIDER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def resolver() -> ProviderResolver:
    return ProviderResolver()


# --- LiteLLM resolution: the base URL of every provider we support, pinned ---------------


@pytest.mark.parametrize(
    "model, protocol, provider, provider_model, native_base, openai_base",
    [
        ("gpt-4o", ClientProtocol.OPENAI, "openai", "gpt-4o", "https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("openai/gpt-4o-mini", ClientProtocol.OPENAI, "openai", "gpt-4o-mini", "https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("text-embedding-3-small", ClientProtocol.OPENAI, "openai", "text-embedding-3-small", "https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("claude-sonnet-4-5", ClientProtocol.ANTHROPIC, "anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", "https://api.anthropic.com/v1"),
        ("anthropic/claude-haiku-4-5", ClientProtocol.OPENAI, "anthropic", "claude-haiku-4-5", "https://api.anthropic.com", "https://api.anthropic.com/v1"),
        ("gemini/gemini-2.5-pro", ClientProtocol.OPENAI, "gemini", "gemini-2.5-pro", "https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta/openai"),
        ("groq/llama-3.1-8b-instant", ClientProtocol.OPENAI, "groq", "llama-3.1-8b-instant", "https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
        ("xai/grok-2", ClientProtocol.OPENAI, "xai", "grok-2", "https://api.x.ai/v1", "https://api.x.ai/v1"),
        ("mistral/mistral-large-latest", ClientProtocol.OPENAI, "mistral", "mistral-large-latest", "https://api.mistral.ai/v1", "https://api.mistral.ai/v1"),
        # A client speaking a provider's own API with a model LiteLLM does not know yet.
        ("claude-future-9", ClientProtocol.ANTHROPIC, "anthropic", "claude-future-9", "https://api.anthropic.com", "https://api.anthropic.com/v1"),
        ("gemini-3.0-ultra", ClientProtocol.GEMINI, "gemini", "gemini-3.0-ultra", "https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta/openai"),
    ],
)
def test_resolved_provider_bases_are_pinned(resolver, model, protocol, provider, provider_model, native_base, openai_base):
    route = resolver.resolve(model, client_protocol=protocol)
    assert (route.provider, route.provider_model, route.native_base, route.openai_base) == (
        provider, provider_model, native_base, openai_base,
    )


@pytest.mark.parametrize(
    "model, api_base, native_base",
    [
        ("anthropic/claude-sonnet-4-5", "https://example.test/v1/messages", "https://example.test"),
        ("anthropic/claude-sonnet-4-5", "https://example.test/v1/", "https://example.test"),
        ("anthropic/claude-sonnet-4-5", "https://api.supermemory.ai/v3/https://api.anthropic.com", "https://api.supermemory.ai/v3/https://api.anthropic.com"),
        ("openai/my-model", "http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("hosted_vllm/qwen", "http://gpu-box:8000/v1", "http://gpu-box:8000/v1"),
        ("gemini/gemini-2.5-pro", "https://gemini.example.test/v1beta", "https://gemini.example.test"),
    ],
)
def test_configured_api_base_wins(resolver, model, api_base, native_base):
    assert resolver.resolve(model, api_base=api_base).native_base == native_base


def test_unknown_model_and_unsupported_provider(resolver):
    with pytest.raises(UnresolvableModel):
        resolver.resolve("no-such-model-anywhere", client_protocol=ClientProtocol.OPENAI)
    with pytest.raises(UnsupportedProvider, match="bedrock is not supported"):
        resolver.resolve("bedrock/anthropic.claude-v2")
    with pytest.raises(UnsupportedProvider, match="hosted_vllm: no API base known"):
        resolver.resolve("hosted_vllm/qwen")


# --- endpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, endpoint, query, path_model",
    [
        ("/v1/chat/completions", Endpoint.CHAT_COMPLETIONS, "", None),
        ("/chat/completions", Endpoint.CHAT_COMPLETIONS, "", None),
        ("/v1beta/openai/chat/completions", Endpoint.CHAT_COMPLETIONS, "", None),
        ("/v1/responses", Endpoint.RESPONSES, "", None),
        ("/v1/completions", Endpoint.COMPLETIONS, "", None),
        ("/v1/embeddings", Endpoint.EMBEDDINGS, "", None),
        ("/v1/messages?beta=true", Endpoint.MESSAGES, "beta=true", None),
        ("/v1/messages/count_tokens?beta=true", Endpoint.COUNT_TOKENS, "beta=true", None),
        ("/v1beta/models/gemini-2.5-pro:generateContent", Endpoint.GENERATE_CONTENT, "", "gemini-2.5-pro"),
        ("/v1beta/models/g:streamGenerateContent?alt=sse", Endpoint.STREAM_GENERATE_CONTENT, "alt=sse", "g"),
    ],
)
def test_model_call_paths(path, endpoint, query, path_model):
    call = parse_model_call("POST", path)
    assert (call.endpoint, call.query, call.path_model) == (endpoint, query, path_model)


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/v1/chat/completions"), ("POST", "/v1/models"), ("POST", "/api/event_logging/batch"),
     ("POST", "/v1/messages/batches"), ("POST", "/v1/files"), ("POST", "/v1/chat/completions/extra")],
)
def test_other_paths_are_no_model_calls(method, path):
    assert parse_model_call(method, path) is None


# --- planning -----------------------------------------------------------------------------

CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_key: sk-config-openai}
  - model_name: claude-alias
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: sk-ant-config
      extra_headers: {anthropic-beta: context-1m}
  - model_name: claude-nokey
    litellm_params: {model: anthropic/claude-haiku-4-5}
  - model_name: gemini-alias
    litellm_params: {model: gemini/gemini-2.5-flash, api_key: g-config-key}
  - model_name: private
    memory: false
    litellm_params: {model: openai/gpt-4o, api_key: sk-private}
  - model_name: needs-env
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/MR_UNSET_KEY}
  - model_name: routed-already
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_base: https://api.supermemory.ai/v3/https://api.anthropic.com
      api_key: sk-ant-config
      extra_headers: {x-supermemory-api-key: sm-from-extra-headers}
memory:
  api_key: sm-key
"""
IDENTITY = ClientIdentity(user_id="claude-cli", matched_rule=None, custom_header_present=True, is_default=False)


def config(text: str = CONFIG, memory: bool = True):
    source = textwrap.dedent(text) if memory else textwrap.dedent(text).replace("  api_key: sm-key", "  enabled: false")
    return parse_config(source, "cfg.yaml", {})


def facts(path: str, model: str, gateway: bool = True, url: str = "http://memory-routing.localhost", creds: bool = True, conversation: str | None = None):
    call = parse_model_call("POST", path)
    assert call is not None
    return RequestFacts(call, model, gateway, url + path, creds, conversation)


@pytest.fixture(scope="module")
def planner(resolver) -> RoutePlanner:
    return RoutePlanner(resolver)


def headers_of(decision) -> dict[str, str]:
    return dict(decision.set_headers)


def test_alias_goes_through_supermemory_with_config_key(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "gpt-alias"))
    assert d.provider_url == "https://api.openai.com/v1/chat/completions"
    assert d.upstream_url == "https://api.supermemory.ai/v3/https://api.openai.com/v1/chat/completions"
    assert d.body_model == "gpt-4o-mini"
    assert headers_of(d) == {
        "authorization": "Bearer sk-config-openai",
        "x-supermemory-api-key": "sm-key",
        "x-sm-user-id": "claude-cli",
    }
    assert {"authorization", "x-api-key", "x-goog-api-key", "x-memory-user-id"} <= set(d.remove_headers)


def test_memory_off_goes_straight_to_the_provider(planner):
    d = planner.plan(config(memory=False), IDENTITY, facts("/v1/chat/completions", "gpt-alias"))
    assert d.upstream_url == "https://api.openai.com/v1/chat/completions"
    assert d.memory is False
    assert "x-supermemory-api-key" not in headers_of(d)
    assert headers_of(d)["x-sm-user-id"] == "claude-cli"


def test_model_can_opt_out_of_memory(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "private"))
    assert (d.upstream_url, d.memory) == ("https://api.openai.com/v1/chat/completions", False)
    assert "x-supermemory-api-key" not in headers_of(d)


def test_anthropic_native_keeps_query_and_uses_x_api_key(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/messages?beta=true", "claude-alias", conversation="sess-1"))
    assert d.upstream_url == "https://api.supermemory.ai/v3/https://api.anthropic.com/v1/messages?beta=true"
    assert headers_of(d) == {
        "x-api-key": "sk-ant-config",
        "anthropic-beta": "context-1m",
        "x-supermemory-api-key": "sm-key",
        "x-sm-user-id": "claude-cli",
        "x-sm-conversation-id": "sess-1",
    }
    assert d.body_model == "claude-sonnet-4-5"


def test_client_credentials_pass_through_when_config_names_no_key(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/messages/count_tokens?beta=true", "claude-nokey"))
    assert d.provider_url == "https://api.anthropic.com/v1/messages/count_tokens?beta=true"
    assert "x-api-key" not in headers_of(d) and "authorization" not in headers_of(d)
    assert "authorization" not in d.remove_headers and "x-api-key" not in d.remove_headers


def test_openai_format_for_claude_uses_anthropics_openai_endpoint(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "claude-alias"))
    assert d.provider_url == "https://api.anthropic.com/v1/chat/completions"
    assert headers_of(d)["authorization"] == "Bearer sk-ant-config"


def test_openai_format_for_gemini_uses_googles_openai_endpoint(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/embeddings", "gemini-alias"))
    assert d.provider_url == "https://generativelanguage.googleapis.com/v1beta/openai/embeddings"


def test_gemini_native_puts_the_model_in_the_path_and_the_key_in_a_header(planner):
    d = planner.plan(
        config(), IDENTITY, facts("/v1beta/models/gemini-alias:streamGenerateContent?alt=sse&key=client-key", "gemini-alias")
    )
    assert d.provider_url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert headers_of(d)["x-goog-api-key"] == "g-config-key"
    assert d.body_model is None


def test_background_style_router_api_base_is_not_wrapped_twice(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/messages", "routed-already"))
    assert d.upstream_url == "https://api.supermemory.ai/v3/https://api.anthropic.com/v1/messages"
    assert d.memory is True
    assert headers_of(d)["x-supermemory-api-key"] == "sm-from-extra-headers"


def test_unaliased_model_is_resolved_by_litellm_on_the_gateway(planner):
    d = planner.plan(config(memory=False), IDENTITY, facts("/v1/chat/completions", "gpt-4o"))
    assert (d.provider, d.provider_url, d.body_model, d.alias) == (
        "openai", "https://api.openai.com/v1/chat/completions", None, None,
    )


def test_forward_mode_keeps_the_clients_destination_for_unaliased_models(planner):
    d = planner.plan(
        config(), IDENTITY,
        facts("/v1/chat/completions", "gpt-4.1", gateway=False, url="https://api.openai.com"),
    )
    assert d.provider_url == "https://api.openai.com/v1/chat/completions"
    assert d.upstream_url == "https://api.supermemory.ai/v3/https://api.openai.com/v1/chat/completions"
    assert d.provider == "openai" and d.body_model is None


def test_forward_mode_never_sends_credentials_to_another_host(planner):
    with pytest.raises(RouteRefused) as excinfo:
        planner.plan(
            config(), IDENTITY,
            facts("/v1/chat/completions", "claude-nokey", gateway=False, url="https://api.openai.com"),
        )
    assert excinfo.value.status == 400
    assert "will not send credentials meant for api.openai.com" in excinfo.value.message


@pytest.mark.parametrize(
    "path, model, status, fragment",
    [
        ("/v1/messages", "gpt-alias", 400, "translating between the two formats is not supported yet"),
        ("/v1/responses", "claude-alias", 400, "has no openai-format responses endpoint"),
        ("/v1/chat/completions", "no-such-model-xyz", 404, "neither a configured alias (gpt-alias, claude-alias"),
        ("/v1/chat/completions", "needs-env", 500, "needs the environment variable(s) MR_UNSET_KEY"),
        ("/v1/chat/completions", "bedrock/anthropic.claude-v2", 400, "bedrock is not supported"),
    ],
)
def test_refusals(planner, path, model, status, fragment):
    with pytest.raises(RouteRefused) as excinfo:
        planner.plan(config(), IDENTITY, facts(path, model))
    assert excinfo.value.status == status
    assert fragment in excinfo.value.message


def test_decision_summary_and_repr_hold_no_secret(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1beta/models/gemini-alias:generateContent?key=client-key", "gemini-alias"))
    shown = repr(d) + str(d.summary()) + d.describe()
    for secret in ("sk-config-openai", "g-config-key", "sm-key", "client-key"):
        assert secret not in shown


def test_llm_hosts_include_configured_bases():
    cfg = parse_config(
        "model_list: [{model_name: a, litellm_params: {model: openai/x, api_base: 'http://Local-LLM:8000/v1'}}]\n"
        "memory: {base_url: 'https://memory.example.test/v3'}",
        "cfg.yaml", {},
    )
    assert {"api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", "api.supermemory.ai",
            "local-llm", "memory.example.test"} == set(llm_hosts(cfg))


def test_conversation_id_sources():
    assert conversation_id_from({"x-claude-code-session-id": "0b1e-uuid"}.get) == "0b1e-uuid"
    assert conversation_id_from({"x-memory-conversation-id": "mine", "x-claude-code-session-id": "cc"}.get) == "mine"
    assert conversation_id_from({"x-claude-code-session-id": "bad value\r\nx: y"}.get) is None


def test_loggable_url_drops_keys_only():
    assert loggable_url("https://g.test/v1beta/models/m:generateContent?alt=sse&key=secret") == (
        "https://g.test/v1beta/models/m:generateContent?alt=sse"
    )


def test_model_call_protocols():
    assert ModelCall(Endpoint.MESSAGES, "").protocol is ClientProtocol.ANTHROPIC
    assert ModelCall(Endpoint.GENERATE_CONTENT, "", "m").protocol is ClientProtocol.GEMINI
    assert ModelCall(Endpoint.EMBEDDINGS, "").protocol is ClientProtocol.OPENAI
