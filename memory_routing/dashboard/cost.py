"""A model call's cost in USD, from the price table bundled with LiteLLM (nothing fetched).

Importing LiteLLM takes seconds, so it happens on the first price asked for (on the usage
writer's thread, off the event loop), or earlier through ``warm_up()`` in a background thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_import_lock = threading.Lock()
_litellm: Any = None
_unpriced: set[tuple[str, str]] = set()
_UNPRICED_LIMIT = 1024


def _load_litellm() -> Any:
    global _litellm
    with _import_lock:
        if _litellm is None:
            # Otherwise LiteLLM downloads its price list while being imported.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            _litellm = litellm
    return _litellm


def warm_up() -> None:
    """Imports LiteLLM now; call it from a background thread so the first call is not slowed."""
    _load_litellm()


def call_cost_usd(
    provider: str,
    provider_model: str,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_tokens: int | None = None,
) -> float | None:
    """USD for one call, or None when the tokens or the model's price are unknown.

    ``input_tokens`` includes ``cached_tokens`` (OpenAI's convention); the cached part is
    priced at the model's cache-read price when the table has one.
    """
    if input_tokens is None and output_tokens is None:
        return None
    if (provider, provider_model) in _unpriced:
        return None
    try:
        prompt_cost, completion_cost = _load_litellm().cost_per_token(
            model=provider_model,
            custom_llm_provider=provider or None,
            prompt_tokens=input_tokens or 0,
            completion_tokens=output_tokens or 0,
            cache_read_input_tokens=cached_tokens or 0,
        )
    except Exception:  # LiteLLM raises a bare Exception for a model its table does not map
        # Remembered: building that exception walks the whole table each time.
        if len(_unpriced) < _UNPRICED_LIMIT:
            _unpriced.add((provider, provider_model))
        return None
    return prompt_cost + completion_cost
