"""Recognise model-call endpoints by path, and build the upstream path for a provider.

Pure logic. Only these endpoints are routed; every other request to an LLM host passes
through untouched.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from memory_routing.wire.protocol import ClientProtocol


class Endpoint(enum.Enum):
    CHAT_COMPLETIONS = "chat/completions"
    RESPONSES = "responses"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    COUNT_TOKENS = "messages/count_tokens"
    GENERATE_CONTENT = "generateContent"
    STREAM_GENERATE_CONTENT = "streamGenerateContent"

    @property
    def protocol(self) -> ClientProtocol:
        return _PROTOCOL_OF_ENDPOINT[self]


_PROTOCOL_OF_ENDPOINT = {
    endpoint: (
        ClientProtocol.ANTHROPIC if endpoint in (Endpoint.MESSAGES, Endpoint.COUNT_TOKENS)
        else ClientProtocol.GEMINI if endpoint in (Endpoint.GENERATE_CONTENT, Endpoint.STREAM_GENERATE_CONTENT)
        else ClientProtocol.OPENAI
    )
    for endpoint in Endpoint
}

# The OpenAI family is reached under /v1 (OpenAI, Anthropic's compat layer), under
# /v1beta/openai (Gemini's compat layer), or bare when a client's base URL has no /v1.
_OPENAI_PATH = re.compile(r"^(?:/v1beta/openai|/openai/v1|/v1)?/(chat/completions|responses|completions|embeddings)$")
_ANTHROPIC_PATH = re.compile(r"^/v1/(messages|messages/count_tokens)$")
_GEMINI_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:]+):(generateContent|streamGenerateContent)$")


@dataclass(frozen=True)
class ModelCall:
    endpoint: Endpoint
    query: str  # the raw query string, without "?"
    path_model: str | None = None  # Gemini names the model in the path
    api_version: str = "v1"  # Gemini's v1 or v1beta

    @property
    def protocol(self) -> ClientProtocol:
        return self.endpoint.protocol


def parse_model_call(method: str, path: str) -> ModelCall | None:
    if method != "POST":
        return None
    if "?" in path:
        # Not cached: a query can hold a key (Gemini's ?key=), and the cache must not keep one.
        return _parse_post(path)
    return _parse_post_cached(path)


def _parse_post(path: str) -> ModelCall | None:
    route, _, query = path.partition("?")
    if m := _OPENAI_PATH.match(route):
        return ModelCall(Endpoint(m.group(1)), query)
    if m := _ANTHROPIC_PATH.match(route):
        return ModelCall(Endpoint(m.group(1)), query)
    if m := _GEMINI_PATH.match(route):
        return ModelCall(Endpoint(m.group(3)), query, path_model=m.group(2), api_version=m.group(1))
    return None


# Four addons ask per request (limits, large bodies, memory, router) and clients use a handful of
# paths: the regex matches cost ~12 µs a call here. ModelCall is frozen, so sharing one is safe.
_parse_post_cached = functools.lru_cache(maxsize=256)(_parse_post)


def upstream_path(call: ModelCall, provider_model: str) -> str:
    """The path below a provider base URL (see ProviderRoute) for this call."""
    if call.protocol is ClientProtocol.GEMINI:
        return f"/{call.api_version}/models/{provider_model}:{call.endpoint.value}"
    if call.protocol is ClientProtocol.ANTHROPIC:
        return f"/v1/{call.endpoint.value}"
    return f"/{call.endpoint.value}"


def native_path(protocol: ClientProtocol, provider_model: str, stream: bool) -> str:
    """The chat path below a provider's native base (see ProviderRoute) for a translated call."""
    if protocol is ClientProtocol.GEMINI:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{provider_model}:{method}"
    if protocol is ClientProtocol.ANTHROPIC:
        return "/v1/messages"
    return "/chat/completions"


# Calls LiteLLM can translate into another provider's chat API (count_tokens is answered by
# LiteLLM's tokenizer: other providers have no such endpoint).
TRANSLATABLE_ENDPOINTS = frozenset({Endpoint.CHAT_COMPLETIONS, Endpoint.MESSAGES, Endpoint.COUNT_TOKENS})

# Which OpenAI-format endpoints each non-OpenAI provider's compatibility layer serves.
OPENAI_COMPAT_ENDPOINTS: dict[str, frozenset[Endpoint]] = {
    "anthropic": frozenset({Endpoint.CHAT_COMPLETIONS}),
    "gemini": frozenset({Endpoint.CHAT_COMPLETIONS, Endpoint.EMBEDDINGS}),
}
