"""Where a model lives: provider, provider model id and base URLs, as LiteLLM resolves them.

No mitmproxy imports. LiteLLM is loaded on first use (``llm.load_litellm``): its import takes
seconds, so the proxy loads it in a thread once it listens (addons/litellm_loading.py) and
nothing here imports it at module level.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from memory_routing.errors import UnresolvableModel, UnsupportedProvider
from memory_routing.llm import load_litellm
from memory_routing.wire.protocol import ClientProtocol

# Providers whose OpenAI-compatible endpoint LiteLLM does not describe. Anthropic documents
# https://api.anthropic.com/v1/ for the OpenAI SDK; Google documents .../v1beta/openai/.
_OPENAI_COMPAT_SUFFIX = {"anthropic": "/v1", "gemini": "/v1beta/openai"}
_NATIVE_PROTOCOL = {"anthropic": ClientProtocol.ANTHROPIC, "gemini": ClientProtocol.GEMINI}
# A client speaking a provider's own API with a model LiteLLM cannot place means that provider.
_PROVIDER_OF_PROTOCOL = {ClientProtocol.ANTHROPIC: "anthropic", ClientProtocol.GEMINI: "gemini"}
_RESOLVE_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class ProviderRoute:
    """A provider's API, as the proxy addresses it."""

    provider: str
    provider_model: str
    native_protocol: ClientProtocol
    # Base of the provider's own API: https://api.openai.com/v1, https://api.anthropic.com, ...
    native_base: str
    # Base of its OpenAI-compatible API (equal to native_base for OpenAI-compatible providers).
    openai_base: str | None

    def base_for(self, protocol: ClientProtocol) -> str | None:
        """The base URL serving ``protocol`` without translation, or None."""
        if protocol is self.native_protocol:
            return self.native_base
        if protocol is ClientProtocol.OPENAI:
            return self.openai_base
        return None


def _known_base(provider: str, base: str | None) -> str:
    if not base:
        raise UnsupportedProvider(f"{provider}: no API base known; set litellm_params.api_base for this model")
    return base


def _strip_suffix(url: str, *suffixes: str) -> str:
    url = url.rstrip("/")
    for suffix in suffixes:
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


class ProviderResolver:
    """Resolves model names with LiteLLM; results are cached per (model, provider, api_base)."""

    def __init__(self) -> None:
        # LRU, not cleared wholesale when full: the few models every request uses stay resolved
        # while a flood of distinct names (a client trying many) passes through.
        self._cached_resolve = functools.lru_cache(maxsize=_RESOLVE_CACHE_LIMIT)(self._resolve)

    def resolve(
        self,
        model: str,
        *,
        custom_llm_provider: str | None = None,
        api_base: str | None = None,
        client_protocol: ClientProtocol = ClientProtocol.OPENAI,
    ) -> ProviderRoute:
        return self._cached_resolve(model, custom_llm_provider, api_base, client_protocol)

    def _resolve(
        self, model: str, custom_llm_provider: str | None, api_base: str | None, client_protocol: ClientProtocol
    ) -> ProviderRoute:
        litellm = load_litellm()
        try:
            provider_model, provider, _dynamic_key, dynamic_base = litellm.get_llm_provider(
                model=model, custom_llm_provider=custom_llm_provider, api_base=api_base
            )
        except Exception as e:  # LiteLLM raises its BadRequestError for unknown names
            fallback = _PROVIDER_OF_PROTOCOL.get(client_protocol)
            if fallback is None or "/" in model:
                raise UnresolvableModel(model) from e
            provider_model, provider, dynamic_base = model, fallback, None
        # LiteLLM's dynamic key is read from the proxy's environment: never used, the proxy
        # sends only keys the config names, or the client's own.
        if provider == "anthropic":
            base = _strip_suffix(
                _known_base(provider, api_base or _model_info_base(provider, provider_model)), "/v1/messages", "/v1"
            )
            return ProviderRoute(provider, provider_model, ClientProtocol.ANTHROPIC, base, base + "/v1")
        if provider == "gemini":
            base = _strip_suffix(_known_base(provider, api_base or _model_info_base(provider, provider_model)), "/v1beta", "/v1")
            return ProviderRoute(
                provider, provider_model, ClientProtocol.GEMINI, base, base + _OPENAI_COMPAT_SUFFIX["gemini"]
            )
        if _speaks_openai(provider):
            base = _strip_suffix(
                _known_base(provider, api_base or dynamic_base or _model_info_base(provider, provider_model)),
                "/chat/completions",
            )
            return ProviderRoute(provider, provider_model, ClientProtocol.OPENAI, base, base)
        raise UnsupportedProvider(
            f"{provider} is not supported by the proxy (supported: openai, anthropic, gemini and "
            f"OpenAI-compatible providers with an api_base)"
        )


def _speaks_openai(provider: str) -> bool:
    """LiteLLM's own class hierarchy says whether a provider's chat API is OpenAI-shaped."""
    litellm = load_litellm()
    from litellm.llms.openai.chat.gpt_transformation import OpenAIGPTConfig
    from litellm.utils import ProviderConfigManager

    if provider == "openai" or provider in litellm.openai_compatible_providers:
        return True
    try:
        chat_config = ProviderConfigManager.get_provider_chat_config(model="", provider=litellm.LlmProviders(provider))
    except ValueError:
        return False
    return isinstance(chat_config, OpenAIGPTConfig)


def _model_info_base(provider: str, model: str) -> str | None:
    # ProviderConfigManager has better defaults than litellm.get_api_base (which gives None
    # for Anthropic and no /v1 for OpenAI).
    litellm = load_litellm()
    from litellm.utils import ProviderConfigManager

    try:
        info = ProviderConfigManager.get_provider_model_info(model=model, provider=litellm.LlmProviders(provider))
    except ValueError:  # a provider name LiteLLM has no enum member for
        return None
    if info is None:
        return None
    try:
        return info.get_api_base()
    except Exception:  # some providers insist on an environment variable
        return None
