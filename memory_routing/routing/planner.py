"""Decide where one model call goes and what changes on the way: the routing decision.

No mitmproxy imports: the decision is computed from plain values, and the router addon
applies it to the flow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from memory_routing.routing.classify import ClientIdentity
from memory_routing.config.schema import ModelAlias, ProxyConfig
from memory_routing.wire.model_calls import OPENAI_COMPAT_ENDPOINTS, TRANSLATABLE_ENDPOINTS, ModelCall, native_path, upstream_path
from memory_routing.wire.protocol import ClientProtocol
from memory_routing.errors import RouteRefused, UnresolvableModel
from memory_routing.wire.header_values import CONTROL_IN_VALUE, is_user_id

if TYPE_CHECKING:  # the resolver is LiteLLM's; the planner itself stays pure
    from memory_routing.llm.providers import ProviderResolver, ProviderRoute

# Hosts whose model calls are routed in forward-proxy mode, besides every host the config names.
KNOWN_LLM_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
    "api.supermemory.ai": "supermemory",
}
# Headers that carry a client's provider credentials.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
CREDENTIAL_QUERY_PARAMS = ("key",)
SUPERMEMORY_KEY_HEADER = "x-supermemory-api-key"
USER_ID_HEADER = "x-sm-user-id"
CONVERSATION_ID_HEADER = "x-sm-conversation-id"
# Where clients say which conversation a request belongs to; the first one present wins.
CONVERSATION_SOURCE_HEADERS = ("x-memory-conversation-id", "x-claude-code-session-id")
# Distinct (client, request shape) decisions kept; conversation ids make most of them.
_DECISION_CACHE_LIMIT = 4096
# Longest header value the proxy writes; API keys and ids are far shorter.
MAX_HEADER_VALUE = 8192
GEMINI_KEY_HEADER = "x-goog-api-key"
# Headers of one API family that mean nothing (or something else) to another: dropped when a
# call is translated away from that family (Gemini-format calls are never translated). Claude
# Code's session id is Anthropic's to see, not another provider's.
_FAMILY_HEADERS = {
    ClientProtocol.ANTHROPIC: ("anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access",
                               "x-claude-code-session-id"),
    ClientProtocol.OPENAI: ("openai-organization", "openai-project", "openai-beta"),
}


@dataclass(frozen=True)
class UpstreamTarget:
    """The upstream URL split the way mitmproxy's request attributes want it."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port else f"{host}:{self.port}"

    @classmethod
    @functools.lru_cache(maxsize=1024)  # the same few upstream URLs, request after request
    def from_url(cls, url: str) -> UpstreamTarget:
        parts = urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(scheme, parts.hostname or "", port, path)


@dataclass(frozen=True)
class Translation:
    """The call goes to the provider's native API in its own format, translated by LiteLLM
    (the decision's provider and provider_model say which)."""

    target_protocol: ClientProtocol
    drop_params: bool


@dataclass(frozen=True)
class RoutingDecision:
    user_id: str
    rule: str
    requested_model: str
    alias: str | None
    provider: str
    provider_model: str
    provider_url: str  # where the provider serves this call
    upstream_url: str  # where the proxy sends it: provider_url, or Supermemory's router form
    memory: bool
    client_protocol: ClientProtocol
    body_model: str | None  # the model to write into the JSON body, None to leave the body alone
    remove_headers: tuple[str, ...]
    remove_query_params: tuple[str, ...]
    translation: Translation | None
    # Header values include credentials: kept out of repr, logs and flow metadata.
    set_headers: tuple[tuple[str, str], ...] = field(repr=False)
    # The client's conversation id (it keys the prompt cache of a translated call).
    conversation_id: str | None = field(default=None, repr=False)
    # Derived once, for the router's single pass over the request: the split upstream URL,
    # every header name to drop (removed or replaced), and the headers to add as raw fields.
    upstream: UpstreamTarget = field(init=False, repr=False, compare=False)
    dropped_header_names: frozenset[bytes] = field(init=False, repr=False, compare=False)
    added_header_fields: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        added = tuple((name.encode(), value.encode()) for name, value in self.set_headers)
        dropped = {name.lower().encode() for name in self.remove_headers} | {name.lower() for name, _ in added}
        object.__setattr__(self, "upstream", UpstreamTarget.from_url(self.upstream_url))
        object.__setattr__(self, "dropped_header_names", frozenset(dropped))
        object.__setattr__(self, "added_header_fields", added)

    def summary(self) -> dict[str, object]:
        """What may be shown: no header values, no query string (it may hold a key). A copy:
        each flow gets its own."""
        return dict(self._summary)

    @functools.cached_property
    def log_fields(self) -> dict[str, object]:
        """The summary without the names of the headers set: the route's part of a flow-log line.
        Shared: copy it before changing it."""
        return {name: value for name, value in self._summary.items() if name != "headers_set"}

    @functools.cached_property
    def _summary(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "rule": self.rule,
            "requested_model": self.requested_model,
            "alias": self.alias,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "upstream_url": self.shown_upstream_url,
            "client_protocol": self.client_protocol.value,
            "memory": self.memory,
            "translated_to": self.translation.target_protocol.value if self.translation else None,
            "headers_set": [name for name, _ in self.set_headers],
        }

    @functools.cached_property
    def shown_upstream_url(self) -> str:
        """The upstream URL for logs and mitmweb: no key in the query string."""
        return loggable_url(self.upstream_url)


@dataclass(frozen=True)
class RequestFacts:
    """What the router knows about the incoming request."""

    call: ModelCall
    requested_model: str
    on_gateway: bool
    original_url: str  # as the client addressed it (forward mode); the gateway's URL otherwise
    has_client_credentials: bool
    conversation_id: str | None
    stream: bool = False  # the body asks for a streamed answer
    # The client's own API key, whichever header carried it: moved into the provider's header
    # when a translated call has no key in the config.
    client_credential: str | None = field(default=None, repr=False)


class RoutePlanner:
    def __init__(self, resolver: ProviderResolver) -> None:
        self.resolver = resolver
        # LRU: many conversations at once must not evict the decisions every request reuses.
        self._decisions: OrderedDict[tuple[ClientIdentity, RequestFacts], RoutingDecision] = OrderedDict()
        self._decisions_config: ProxyConfig | None = None

    def plan(self, config: ProxyConfig, identity: ClientIdentity, facts: RequestFacts) -> RoutingDecision:
        # A decision is a function of the config, the identity and the facts alone, and the
        # same client asks for the same model request after request: plan each once per config.
        if config is not self._decisions_config:
            self._decisions.clear()
            self._decisions_config = config
        key = (identity, facts)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._plan(config, identity, facts)
            if len(self._decisions) >= _DECISION_CACHE_LIMIT:
                self._decisions.popitem(last=False)
            self._decisions[key] = decision
        else:
            self._decisions.move_to_end(key)
        return decision

    def _plan(self, config: ProxyConfig, identity: ClientIdentity, facts: RequestFacts) -> RoutingDecision:
        alias = config.model(facts.requested_model)
        if alias is None and not facts.on_gateway:
            # The client addressed a provider itself: keep its destination.
            return self._decide(config, identity, facts, None, None, facts.original_url)
        route = self._resolve(config, alias, facts)
        mode = alias.translate if alias is not None else "auto"
        base = route.base_for(facts.call.protocol)
        compatible = base is not None and _compat_layer_serves(route, facts.call)
        translatable = facts.call.endpoint in TRANSLATABLE_ENDPOINTS and (
            facts.call.protocol is not ClientProtocol.GEMINI and route.native_protocol is not facts.call.protocol
        )
        # "always" prefers the native API for what can be translated; the rest still passes.
        if compatible and not (mode == "always" and translatable):
            assert base is not None
            provider_url = base + upstream_path(facts.call, route.provider_model)
            if facts.call.query:
                provider_url += "?" + facts.call.query
            return self._decide(config, identity, facts, alias, route, provider_url)
        if mode == "never" or not translatable:
            raise RouteRefused(400, _cannot_translate(facts, route, mode), param="model")
        translation = Translation(
            target_protocol=route.native_protocol,
            drop_params=alias.drop_params if alias is not None else True,
        )
        # The client's query string belongs to its own API (Claude Code's ?beta=true): not sent on.
        provider_url = route.native_base + native_path(route.native_protocol, route.provider_model, facts.stream)
        return self._decide(config, identity, facts, alias, route, provider_url, translation)

    def _resolve(self, config: ProxyConfig, alias: ModelAlias | None, facts: RequestFacts) -> ProviderRoute:
        if alias is not None and alias.unset_env_vars:
            names = ", ".join(alias.unset_env_vars)
            raise RouteRefused(
                500, f"model {alias.model_name!r} needs the environment variable(s) {names}, "
                f"which are not set where the proxy runs"
            )
        try:
            if alias is not None:
                return self.resolver.resolve(
                    alias.model,
                    custom_llm_provider=alias.custom_llm_provider,
                    api_base=alias.api_base,
                    client_protocol=facts.call.protocol,
                )
            return self.resolver.resolve(facts.requested_model, client_protocol=facts.call.protocol)
        except UnresolvableModel:
            aliases = ", ".join(config.aliases) or "none configured"
            raise RouteRefused(
                404,
                f"model {facts.requested_model!r} is neither a configured alias ({aliases}) "
                f"nor a model LiteLLM can place; prefix it with its provider, e.g. openai/{facts.requested_model}",
                param="model",
            ) from None

    def _decide(
        self,
        config: ProxyConfig,
        identity: ClientIdentity,
        facts: RequestFacts,
        alias: ModelAlias | None,
        route: ProviderRoute | None,
        provider_url: str,
        translation: Translation | None = None,
    ) -> RoutingDecision:
        provider_host = urlsplit(provider_url).hostname or ""
        memory_settings = config.memory
        already_via_router = provider_url.startswith(memory_settings.base_url + "/")
        use_memory = (
            memory_settings.active and not already_via_router and (alias is None or alias.memory)
        )
        key = alias.api_key if alias is not None and alias.api_key and alias.api_key.is_set else None

        set_headers: list[tuple[str, str]] = []
        remove_headers: list[str] = [config.user_id_mappings.custom_header]
        remove_query: list[str] = []
        target_protocol = translation.target_protocol if translation else facts.call.protocol
        if translation is not None:
            remove_headers.extend(_FAMILY_HEADERS[facts.call.protocol])
        if key is not None:
            remove_headers.extend(CREDENTIAL_HEADERS)
            remove_query.extend(CREDENTIAL_QUERY_PARAMS)
            set_headers.append(_auth_header(target_protocol, key.value or ""))
        elif translation is not None and facts.client_credential and (
            facts.on_gateway or urlsplit(facts.original_url).hostname == provider_host
        ):
            # The key the client chose for this endpoint, in the header the provider reads.
            remove_headers.extend(CREDENTIAL_HEADERS)
            set_headers.append(_auth_header(target_protocol, facts.client_credential))
        elif facts.has_client_credentials and not facts.on_gateway:
            original_host = urlsplit(facts.original_url).hostname or ""
            if original_host != provider_host:
                raise RouteRefused(
                    400,
                    f"model {facts.requested_model!r} is served by {provider_host}, but the config names no "
                    f"api_key for it; the proxy will not send credentials meant for {original_host} there",
                    param="model",
                )
        if key is None and facts.call.protocol is ClientProtocol.GEMINI and (
            client_key := _query_value(provider_url, "key")
        ) is not None:
            # The client's own Gemini key travels as a header instead: a URL is printed in
            # mitmproxy's flow list and logs, a header value is not.
            if not header_safe(client_key):
                raise RouteRefused(400, "the key query parameter is not a usable API key")
            remove_query.append("key")
            set_headers.append((GEMINI_KEY_HEADER, client_key))
        if alias is not None:
            set_headers.extend((name, secret.value or "") for name, secret in alias.extra_headers)
        provider_url = strip_query_params(provider_url, tuple(remove_query))

        memory_key = memory_settings.api_key.value if memory_settings.api_key else None
        if use_memory and memory_key:
            upstream_url = f"{memory_settings.base_url}/{provider_url}"
            remove_headers.append(SUPERMEMORY_KEY_HEADER)
            set_headers.append((SUPERMEMORY_KEY_HEADER, memory_key))
        else:
            upstream_url = provider_url
            if already_via_router and memory_key and not _names(set_headers, SUPERMEMORY_KEY_HEADER):
                set_headers.append((SUPERMEMORY_KEY_HEADER, memory_key))
        set_headers.append((USER_ID_HEADER, identity.user_id))
        if facts.conversation_id:
            set_headers.append((CONVERSATION_ID_HEADER, facts.conversation_id))

        for name, value in set_headers:
            if not header_safe(value):
                # Values come from the config and its environment variables (the client's are
                # checked where they are read); a line break would split the request.
                raise RouteRefused(
                    500, f"the value this proxy would send as {name!r} for model {facts.requested_model!r} "
                    f"contains a line break or NUL, or is over {MAX_HEADER_VALUE} characters; fix it in the "
                    "config or the environment variable it names"
                )
        provider_model = route.provider_model if route else facts.requested_model
        body_model = None
        # A translated body names the provider model itself.
        if (translation is None and route is not None and facts.call.path_model is None
                and provider_model != facts.requested_model):
            body_model = provider_model
        return RoutingDecision(
            user_id=identity.user_id,
            rule=identity.describe(),
            requested_model=facts.requested_model,
            alias=alias.model_name if alias else None,
            provider=route.provider if route else KNOWN_LLM_HOSTS.get(provider_host, provider_host),
            provider_model=provider_model,
            provider_url=provider_url,
            upstream_url=upstream_url,
            memory=use_memory or already_via_router,
            client_protocol=facts.call.protocol,
            body_model=body_model,
            remove_headers=tuple(dict.fromkeys(remove_headers)),
            remove_query_params=tuple(remove_query),
            translation=translation,
            set_headers=tuple(set_headers),
            conversation_id=facts.conversation_id,
        )


def llm_hosts(config: ProxyConfig) -> frozenset[str]:
    """Hosts whose model calls are routed in forward mode: the known APIs and every configured one."""
    urls = [alias.api_base for alias in config.models if alias.api_base] + [config.memory.base_url]
    configured = {urlsplit(url).hostname for url in urls}
    return frozenset(KNOWN_LLM_HOSTS) | {host.lower() for host in configured if host}


def conversation_id_from(get_header: Callable[[str], str | None]) -> str | None:
    """The client's conversation id, if it sent a usable one (an unusable one is ignored)."""
    for name in CONVERSATION_SOURCE_HEADERS:
        value = get_header(name)
        if value and is_user_id(value.strip()):  # the same alphabet: it goes the same ways
            return value.strip()
    return None


def strip_query_params(url: str, names: tuple[str, ...]) -> str:
    if not names or "?" not in url:
        return url
    base, _, query = url.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in names]
    return f"{base}?{urlencode(kept)}" if kept else base


def _auth_header(protocol: ClientProtocol, key: str) -> tuple[str, str]:
    if protocol is ClientProtocol.ANTHROPIC:
        return ("x-api-key", key)
    if protocol is ClientProtocol.GEMINI:
        return ("x-goog-api-key", key)
    return ("authorization", f"Bearer {key}")


def _compat_layer_serves(route: ProviderRoute, call: ModelCall) -> bool:
    if call.protocol is not ClientProtocol.OPENAI or route.native_protocol is ClientProtocol.OPENAI:
        return True
    return call.endpoint in OPENAI_COMPAT_ENDPOINTS.get(route.provider, frozenset())


def _cannot_translate(facts: RequestFacts, route: ProviderRoute, mode: str) -> str:
    served = (
        f"model {facts.requested_model!r} is served by {route.provider}, which has no "
        f"{facts.call.protocol.value}-format {facts.call.endpoint.value} endpoint"
    )
    if mode == "never":
        return f"{served}, and its config entry says translate: never"
    return (
        f"{served}; the proxy translates only OpenAI chat/completions and Anthropic messages calls "
        "(see docs/routing.md, 'Protocols and translation')"
    )


def header_safe(value: str) -> bool:
    return len(value) <= MAX_HEADER_VALUE and CONTROL_IN_VALUE.search(value) is None


def _query_value(url: str, name: str) -> str | None:
    if "?" not in url:
        return None
    for key, value in parse_qsl(url.partition("?")[2], keep_blank_values=True):
        if key == name:
            return value
    return None


def _names(headers: list[tuple[str, str]], name: str) -> bool:
    return any(n.lower() == name for n, _ in headers)


def loggable_url(url: str) -> str:
    """A URL fit for logs: credential query parameters (Gemini's ?key=) removed."""
    return strip_query_params(url, CREDENTIAL_QUERY_PARAMS)
