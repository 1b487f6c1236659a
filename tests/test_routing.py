"""Routing decisions: LiteLLM resolution, URL and header rewriting, Supermemory, refusals."""

from __future__ import annotations

import textwrap

import pytest

from memory_routing.routing.classify import ClientIdentity
from memory_routing.config.schema import parse_config
from memory_routing.wire.model_calls import Endpoint, ModelCall, parse_model_call
from memory_routing.wire.protocol import ClientProtocol
from memory_routing.llm import providers
from memory_routing.llm.providers import ProviderResolver, UnresolvableModel, UnsupportedProvider
from memory_routing.routing.planner import (
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


def test_a_hot_model_stays_resolved_through_a_flood_of_distinct_names(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(providers, "_RESOLVE_CACHE_LIMIT", 8)
    resolved: list[str] = []

    class CountingResolver(ProviderResolver):
        def _resolve(self, model, custom_llm_provider, api_base, client_protocol):
            resolved.append(model)
            return providers.ProviderRoute("openai", model, ClientProtocol.OPENAI, "https://api.openai.com/v1",
                                           "https://api.openai.com/v1")

    resolver = CountingResolver()
    for index in range(100):
        assert resolver.resolve("gpt-hot").provider_model == "gpt-hot"
        resolver.resolve(f"gpt-flood-{index}")
    assert resolved.count("gpt-hot") == 1  # not re-resolved after the cache filled, 12 times over
    resolver.resolve("gpt-flood-0")
    assert resolved.count("gpt-flood-0") == 2  # the cold ones did leave: the cache is bounded


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
  - model_name: claude-native
    translate: always
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: sk-ant-config}
  - model_name: gemini-native
    translate: always
    litellm_params: {model: gemini/gemini-2.5-flash, api_key: g-config-key}
  - model_name: gpt-untranslated
    translate: never
    litellm_params: {model: openai/gpt-4o, api_key: sk-config-openai}
  - model_name: gpt-nokey
    litellm_params: {model: openai/gpt-4o, drop_params: true}
memory:
  api_key: sm-key
"""
IDENTITY = ClientIdentity(user_id="claude-cli", matched_rule=None, custom_header_present=True, is_default=False)


def config(text: str = CONFIG, memory: bool = True):
    source = textwrap.dedent(text) if memory else textwrap.dedent(text).replace("  api_key: sm-key", "  enabled: false")
    return parse_config(source, "cfg.yaml", {})


def facts(
    path: str, model: str, gateway: bool = True, url: str = "http://memory-routing.localhost", creds: bool = True,
    conversation: str | None = None, stream: bool = False, client_key: str | None = None,
):
    call = parse_model_call("POST", path)
    assert call is not None
    return RequestFacts(call, model, gateway, url + path, creds, conversation, stream, client_key)


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
        ("/v1/messages", "gpt-untranslated", 400, "its config entry says translate: never"),
        ("/v1/responses", "claude-alias", 400, "the proxy translates only OpenAI chat/completions and Anthropic messages"),
        ("/v1beta/models/gpt-alias:generateContent", "gpt-alias", 400, "has no gemini-format generateContent endpoint"),
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


# --- translation -----------------------------------------------------------------------------


def test_anthropic_client_on_a_gpt_alias_is_translated_to_chat_completions(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/messages?beta=true", "gpt-alias", conversation="sess-1"))
    assert d.translation is not None and d.translation.target_protocol is ClientProtocol.OPENAI
    # Through Supermemory, without Claude Code's ?beta=true, with the key in OpenAI's header.
    assert d.upstream_url == "https://api.supermemory.ai/v3/https://api.openai.com/v1/chat/completions"
    assert headers_of(d)["authorization"] == "Bearer sk-config-openai"
    assert headers_of(d)["x-sm-user-id"] == "claude-cli" and headers_of(d)["x-sm-conversation-id"] == "sess-1"
    assert {"anthropic-version", "anthropic-beta", "x-api-key", "x-claude-code-session-id"} <= set(d.remove_headers)
    assert d.body_model is None  # the translated body names the model
    assert d.summary()["translated_to"] == "openai"


@pytest.mark.parametrize("stream, method", [(False, "generateContent"), (True, "streamGenerateContent?alt=sse")])
def test_anthropic_client_on_gemini_uses_the_native_api(planner, stream, method):
    d = planner.plan(config(memory=False), IDENTITY, facts("/v1/messages", "gemini-alias", stream=stream))
    assert d.provider_url == f"https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:{method}"
    assert headers_of(d)["x-goog-api-key"] == "g-config-key"


def test_openai_client_on_claude_passes_through_unless_the_entry_says_always(planner):
    passed = planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "claude-alias"))
    assert passed.translation is None
    translated = planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "claude-native"))
    assert translated.translation is not None
    assert translated.provider_url == "https://api.anthropic.com/v1/messages"
    assert headers_of(translated)["x-api-key"] == "sk-ant-config"
    assert "authorization" in translated.remove_headers and "openai-organization" in translated.remove_headers
    # "always" means the native API: an Anthropic client on it is plain pass-through.
    assert planner.plan(config(), IDENTITY, facts("/v1/messages", "claude-native")).translation is None


def test_translate_always_leaves_calls_it_cannot_translate_on_the_compatible_endpoint(planner):
    assert planner.plan(config(), IDENTITY, facts("/v1/chat/completions", "gemini-native")).translation is not None
    embeddings = planner.plan(config(), IDENTITY, facts("/v1/embeddings", "gemini-native"))
    assert embeddings.translation is None
    assert embeddings.provider_url == "https://generativelanguage.googleapis.com/v1beta/openai/embeddings"


def test_translated_call_without_a_config_key_carries_the_clients_key_in_the_providers_header(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1/messages", "gpt-nokey", client_key="sk-client-own"))
    assert headers_of(d)["authorization"] == "Bearer sk-client-own"
    assert "x-api-key" in d.remove_headers
    assert d.translation is not None and d.translation.drop_params is True


def test_forward_mode_translation_never_moves_a_key_to_another_host(planner):
    with pytest.raises(RouteRefused) as excinfo:
        planner.plan(
            config(), IDENTITY,
            facts("/v1/messages", "gpt-nokey", gateway=False, url="https://api.anthropic.com", client_key="sk-ant-own"),
        )
    assert "will not send credentials meant for api.anthropic.com" in excinfo.value.message


def test_decision_summary_and_repr_hold_no_secret(planner):
    d = planner.plan(config(), IDENTITY, facts("/v1beta/models/gemini-alias:generateContent?key=client-key", "gemini-alias"))
    shown = repr(d) + str(d.summary()) + d.shown_upstream_url
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


def test_decision_cache_evicts_least_recently_used_not_everything(monkeypatch):
    from memory_routing.routing import planner as planner_module

    monkeypatch.setattr(planner_module, "_DECISION_CACHE_LIMIT", 3)
    planner = planner_module.RoutePlanner(ProviderResolver())
    calls: list[object] = []
    monkeypatch.setattr(planner, "_plan", lambda config, identity, facts: calls.append(facts) or object())
    config = object()
    hot = planner.plan(config, "id", "hot")
    for n in range(10):
        planner.plan(config, "id", f"conversation-{n}")
        assert planner.plan(config, "id", "hot") is hot  # still cached: used on every request
    assert calls.count("hot") == 1
    assert len(planner._decisions) == 3


def test_model_call_parses_are_shared_but_a_query_is_never_kept():
    from memory_routing.wire import model_calls

    first = parse_model_call("POST", "/v1/chat/completions")
    assert parse_model_call("POST", "/v1/chat/completions") is first  # four addons ask per request
    before = model_calls._parse_post_cached.cache_info().currsize
    call = parse_model_call("POST", "/v1beta/models/g:generateContent?key=AIza-secret")
    assert call is not None and call.query == "key=AIza-secret"
    # A query can hold a key: such paths are parsed each time, never cached.
    assert model_calls._parse_post_cached.cache_info().currsize == before
