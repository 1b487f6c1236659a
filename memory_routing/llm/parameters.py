"""What a translated call keeps, fits and drops of the client's parameters.

No mitmproxy imports. A client written for one API sends parameters another API has no
equivalent for: Claude Code 2.1 sends ``thinking``, ``output_config.effort`` and
``context_management`` on every call, and interactively a ``safeguards`` object holding the
home directory and working directory. Passed on verbatim they are refused by the provider (or
leak); LiteLLM's ``drop_params`` leaves unknown top-level fields through. So, on LiteLLM's
OpenAI-shaped completion arguments and with LiteLLM's own model table as the judge:

- a parameter the target does not take (``get_supported_openai_params``) is dropped, or,
  with ``drop_params: false`` on the alias, refused with a 400 naming it;
- reasoning parameters reach only models LiteLLM lists as reasoning (``supports_reasoning``);
- ``max_tokens`` is lowered to the model's output cap (``max_output_tokens``);
- ``user`` is the memory user id or left out, never the client's own (Claude Code's
  ``metadata.user_id`` holds device and session ids);
- ``prompt_cache_key`` is the client's own only when it sent one in an OpenAI body. LiteLLM
  fills it from Claude Code's session id; the proxy sends instead a key of its own, a hash of
  the memory user id and the conversation id, which keeps OpenAI's prompt-cache routing per
  conversation and reveals neither (no conversation id: no key).

Dropped parameters are reported under the names the client sent them by.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# First: llm sets LiteLLM's environment (no price-list download) before LiteLLM loads.
from memory_routing.llm import litellm  # isort: skip

from memory_routing.errors import UnsupportedParams
from memory_routing.wire.protocol import ClientProtocol

REASONING_PARAMS = ("reasoning_effort", "thinking")
OUTPUT_LIMIT_PARAMS = ("max_tokens", "max_completion_tokens")
# The Anthropic adapter folds these client fields into one OpenAI parameter: a dropped
# parameter is named by the fields the client actually sent.
ANTHROPIC_SOURCES = {
    "reasoning_effort": ("thinking", "output_config"),
    "user": ("metadata.user_id",),
}
# OpenAI documents no length for ``user``; its newer safety_identifier, for the same purpose,
# takes at most 64 characters. A longer memory user id is left out rather than cut.
USER_ID_LIMIT = 64


@dataclass(frozen=True)
class TargetModel:
    """What LiteLLM's model table says about the model a call is translated for."""

    # Parameters the provider's transformation takes for this model; None when LiteLLM
    # cannot tell (an unknown provider), and then nothing is judged unsupported.
    supported: frozenset[str] | None
    reasons: bool
    max_output_tokens: int | None


@dataclass(frozen=True)
class FittedParams:
    completion: dict[str, Any]
    dropped: tuple[str, ...]  # client-side names, in the order found
    fitted: tuple[tuple[str, int], ...]  # (parameter, the value it was lowered to)


@functools.lru_cache(maxsize=1024)  # the same few models, call after call; LiteLLM's lookups are not free
def target_model(provider: str, model: str) -> TargetModel:
    """LiteLLM's bundled model table on ``provider``'s ``model`` (nothing is fetched)."""
    try:
        supported = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:
        supported = None
    try:
        reasons = bool(litellm.supports_reasoning(model=model, custom_llm_provider=provider))
    except Exception:
        reasons = False
    try:
        cap = litellm.get_model_info(model, custom_llm_provider=provider).get("max_output_tokens")
    except Exception:  # a model the table does not list: no cap known
        cap = None
    return TargetModel(
        supported=frozenset(supported) if supported is not None else None,
        reasons=reasons,
        max_output_tokens=cap if isinstance(cap, int) and cap > 0 else None,
    )


def fit_params(
    completion: Mapping[str, Any],
    target: TargetModel,
    *,
    client: ClientProtocol,
    client_payload: Mapping[str, Any],
    drop: bool,
    user_id: str | None,
    not_params: frozenset[str],
    conversation_id: str | None = None,
) -> FittedParams:
    """``completion`` (LiteLLM's OpenAI-shaped arguments) fitted to ``target``.

    ``not_params``: keys of ``completion`` that are not request parameters (model, messages,
    LiteLLM's own options); they are left alone.
    """
    out = dict(completion)
    client_user = out.pop("user", None)
    if client_user is not None and user_id and len(user_id) <= USER_ID_LIMIT and _takes(target, "user"):
        out["user"] = user_id
    client_cache_key = out.pop("prompt_cache_key", None)
    if client is ClientProtocol.OPENAI and "prompt_cache_key" in client_payload:
        out["prompt_cache_key"] = client_cache_key  # the client's own choice, judged like any other
    elif user_id and conversation_id and _takes(target, "prompt_cache_key"):
        out["prompt_cache_key"] = prompt_cache_key(user_id, conversation_id)
    unsupported = [
        key for key, value in out.items()
        if key not in not_params and value is not None and (
            (key in REASONING_PARAMS and not target.reasons) or not _takes(target, key)
        )
    ]
    names = _client_names(unsupported, client, client_payload)
    if unsupported and not drop:
        raise UnsupportedParams(names)
    for key in unsupported:
        del out[key]
    fitted: list[tuple[str, int]] = []
    cap = target.max_output_tokens
    if drop and cap is not None:
        for key in OUTPUT_LIMIT_PARAMS:
            value = out.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                out[key] = cap
                fitted.append((key, cap))
    return FittedParams(completion=out, dropped=names, fitted=tuple(fitted))


def prompt_cache_key(user_id: str, conversation_id: str) -> str:
    """The proxy's own cache key for a conversation: stable, and revealing neither id."""
    # Both come from the user id alphabet (no newline): the joined text is unambiguous.
    return hashlib.sha256(f"{user_id}\n{conversation_id}".encode()).hexdigest()[:32]


def _takes(target: TargetModel, key: str) -> bool:
    return target.supported is None or key in target.supported


def _client_names(keys: list[str], client: ClientProtocol, payload: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for key in keys:
        sources = ANTHROPIC_SOURCES.get(key, ()) if client is ClientProtocol.ANTHROPIC else ()
        present = [source for source in sources if source.split(".", 1)[0] in payload]
        for name in present or [key]:
            if name not in names:
                names.append(name)
    return tuple(names)
