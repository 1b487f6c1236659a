"""A model call's cost in USD, from the price table bundled with LiteLLM (nothing fetched).

Importing LiteLLM takes seconds, so it happens on the first price asked for (on the usage
writer's thread, off the event loop), or earlier through ``warm_up()`` in a background thread.

Every call is priced as LiteLLM prices its usage: the counts go to ``litellm.cost_per_token``
as one LiteLLM ``Usage`` (prompt and completion tokens, cache reads and writes, reasoning
tokens), which applies the model's cache-write and cache-read prices and its tiers (such as
above 200k prompt tokens, cached ones included).

``litellm.cost_per_token`` costs about 200 µs of CPU per call. For most models its answer is
linear in the token counts, so the rates are learned from LiteLLM itself, once per model:
LiteLLM prices a few unit calls, and the linear form those give must then match LiteLLM's own
answer at large and odd token counts (the corners of the range it will be used for). Only a
model that passes is priced by arithmetic, and only within that range; every other call
(tiers beyond the range, time-of-day pricing, a mismatch, no price) is LiteLLM's as before.
No pricing rule but that linear form is written here: a rule it misses shows up as a mismatch.
"""

from __future__ import annotations

import enum
import functools
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

_import_lock = threading.Lock()
_litellm: Any = None
_price_table_version: Callable[[], object] | None = None
_unpriced: set[tuple[str, str]] = set()
_UNPRICED_LIMIT = 1024

# Beyond a million prompt or completion tokens a call is LiteLLM's to price.
PROBE_LIMIT = 1_000_000
# LiteLLM's tier keys (input_cost_per_token_above_200k_tokens, ..._above_128_tokens, a
# "_priority" suffix) only tell where to probe: the probes decide, not this pattern.
_TIER_THRESHOLD = re.compile(r"_above_(\d+(?:\.\d+)?)(k?)_tokens")
# Time-of-day pricing (LiteLLM's off_peak_pricing block): the same tokens cost differently by
# the hour, so rates probed at one hour are never kept.
_TIME_DEPENDENT_MARKER = "peak"
_PROBE_REL_TOL = 1e-12
_PRICES_LIMIT = 512


@dataclass(frozen=True, slots=True)
class LinearPrice:
    """A model's price where LiteLLM's is linear, checked against LiteLLM up to ``token_limit``."""

    per_call: float
    per_input_token: float  # an uncached prompt token
    per_cached_token: float  # a cache-read prompt token
    per_output_token: float  # an output token that is not reasoning
    token_limit: int  # the largest prompt and completion counts the probes covered
    per_cache_write_token: float = 0.0  # a prompt token written to the cache
    per_reasoning_token: float = 0.0

    def covers(self, input_tokens: int, output_tokens: int, cached_tokens: int,
               cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> bool:
        # No prompt at all is left to LiteLLM: tier tables treat it as a case of its own.
        return (1 <= input_tokens <= self.token_limit and 0 <= output_tokens <= self.token_limit
                and cached_tokens >= 0 and cache_write_tokens >= 0
                and cached_tokens + cache_write_tokens <= input_tokens and 0 <= reasoning_tokens <= output_tokens)

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int,
             cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> float:
        return (self.per_call + (input_tokens - cached_tokens - cache_write_tokens) * self.per_input_token
                + cached_tokens * self.per_cached_token + cache_write_tokens * self.per_cache_write_token
                + (output_tokens - reasoning_tokens) * self.per_output_token
                + reasoning_tokens * self.per_reasoning_token)


class _Unlearned(enum.Enum):
    """The memo's answer for a model it has not learned yet (None is a learned answer)."""

    UNLEARNED = enum.auto()


_UNLEARNED: Final = _Unlearned.UNLEARNED
_prices_lock = threading.Lock()
# (provider, model) -> its LinearPrice, or None: always LiteLLM. Reset when LiteLLM's table changes.
_prices: dict[tuple[str, str], LinearPrice | None] = {}
_prices_version: object = None


def _load_litellm() -> Any:
    global _litellm, _price_table_version
    if _litellm is not None:  # every call after the first: no lock
        return _litellm
    with _import_lock:
        if _litellm is None:
            from memory_routing.llm import load_litellm  # the one loader: configured, no price download
            from memory_routing.llm.litellm_internals import price_table_version

            _price_table_version = price_table_version
            _litellm = load_litellm()
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
    cache_write_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> float | None:
    """USD for one call, or None when the tokens or the model's price are unknown.

    ``input_tokens`` includes ``cached_tokens`` (cache reads) and ``cache_write_tokens``, and
    ``output_tokens`` includes ``reasoning_tokens`` (LiteLLM's ``Usage`` convention, see
    wire.usage); each part is priced at the model's own price for it when the table has one.
    """
    if input_tokens is None and output_tokens is None:
        return None
    key = (provider, provider_model)
    if key in _unpriced:
        return None
    litellm = _load_litellm()
    tokens = (input_tokens or 0, output_tokens or 0, cached_tokens or 0, cache_write_tokens or 0, reasoning_tokens or 0)
    price = _known_prices().get(key, _UNLEARNED)
    if price is _UNLEARNED:
        cost = _litellm_cost(litellm, provider, provider_model, *tokens)
        if cost is not None:
            _learn(litellm, key)
        return cost
    if price is not None and price.covers(*tokens):
        return price.cost(*tokens)
    return _litellm_cost(litellm, provider, provider_model, *tokens)


def linear_price(provider: str, provider_model: str) -> LinearPrice | None:
    """The linear price call_cost_usd uses for this model, or None when LiteLLM prices each call."""
    key = (provider, provider_model)
    litellm = _load_litellm()
    price = _known_prices().get(key, _UNLEARNED)
    if price is _UNLEARNED:
        price = _learn(litellm, key)
    return price


def litellm_usage(litellm: Any, prompt: int, completion: int, cache_read: int = 0, cache_write: int = 0,
                  reasoning: int = 0) -> Any:
    """The counts as LiteLLM's own ``Usage``, the form its provider parsers produce and its
    cost functions read (cache reads and writes as its Anthropic parser sets them)."""
    details = litellm.types.utils.CompletionTokensDetailsWrapper(reasoning_tokens=reasoning) if reasoning else None
    return litellm.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        cache_read_input_tokens=cache_read or None, cache_creation_input_tokens=cache_write or None,
        completion_tokens_details=details,
    )


def _litellm_usd(litellm: Any, provider: str, provider_model: str, prompt: int, completion: int,
                 cached: int, cache_write: int = 0, reasoning: int = 0) -> float:
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=provider_model,
        custom_llm_provider=provider or None,
        usage_object=litellm_usage(litellm, prompt, completion, cached, cache_write, reasoning),
    )
    return prompt_cost + completion_cost


def _litellm_cost(litellm: Any, provider: str, provider_model: str, prompt: int, completion: int,
                  cached: int, cache_write: int = 0, reasoning: int = 0) -> float | None:
    try:
        return _litellm_usd(litellm, provider, provider_model, prompt, completion, cached, cache_write, reasoning)
    except Exception:  # LiteLLM raises a bare Exception for a model its table does not map
        # Remembered: building that exception walks the whole table each time.
        if len(_unpriced) < _UNPRICED_LIMIT:
            _unpriced.add((provider, provider_model))
        return None


def _known_prices() -> dict[tuple[str, str], LinearPrice | None]:
    """The memo, emptied first if LiteLLM's price table changed since it was filled."""
    global _prices, _prices_version
    version = _price_table_version() if _price_table_version is not None else None
    if version != _prices_version:
        with _prices_lock:
            if version != _prices_version:
                _prices = {}
                _prices_version = version
    return _prices


def _learn(litellm: Any, key: tuple[str, str]) -> LinearPrice | None:
    table_version = _price_table_version
    if table_version is None:
        raise RuntimeError("LiteLLM is not loaded: _load_litellm() comes first")
    version = table_version()
    price = _learn_linear_price(litellm, *key)
    with _prices_lock:
        # Learned from a table that has changed since: not kept, the next call learns again.
        if version != _prices_version or version != table_version():
            return price
        if len(_prices) >= _PRICES_LIMIT:
            del _prices[next(iter(_prices))]  # the oldest learned
        _prices[key] = price
    return price


def _token_limit(model_info: Mapping[str, Any]) -> int:
    """Below the lowest tier threshold the model's priced keys name (one less: xAI's tiers start
    at it). Its model info lists every known key, unpriced ones as None."""
    thresholds = [PROBE_LIMIT + 1]
    for name, value in model_info.items():
        if value is not None and (match := _TIER_THRESHOLD.search(name)):
            thresholds.append(int(float(match[1]) * (1000 if match[2] else 1)))
    tiers = model_info.get("tiered_pricing")
    if isinstance(tiers, list):
        for tier in tiers:
            bounds = tier.get("range") if isinstance(tier, Mapping) else None
            if isinstance(bounds, list):
                thresholds.extend(int(b) for b in bounds if isinstance(b, (int, float)) and b > 0)
    return min(thresholds) - 1


def _probes(limit: int) -> list[tuple[int, int, int, int, int]]:
    """(input, output, cached, cache write, reasoning) points where the linear form must equal
    LiteLLM: the corners of the range (with the unit points the rates come from, all of them: a
    tier whose threshold lies inside the range is in force at the far ones) and odd points inside."""
    third, odd = max(limit // 3, 1), max(limit // 7 + 13, 1)
    small = min(12_345, limit)
    return [
        (limit, 0, 0, 0, 0), (1, limit, 0, 0, 0), (1, limit, 1, 0, 0), (limit, limit, 0, 0, 0), (limit, 0, limit, 0, 0),
        (limit, limit, limit, 0, 0), (limit, 0, 0, limit, 0), (1, limit, 0, 0, limit), (limit, limit, 0, limit, limit),
        (limit, odd, third, third, odd // 2), (min(odd, limit), min(third, limit), min(odd // 5, limit), 0, 0),
        (small, min(678, limit), min(9_001, small), small - min(9_001, small), min(333, limit)),
    ]


def _learn_linear_price(litellm: Any, provider: str, provider_model: str) -> LinearPrice | None:
    """The model's linear price if LiteLLM agrees with it at every probe, else None."""
    try:
        model_info = litellm.get_model_info(model=provider_model, custom_llm_provider=provider or None)
    except Exception:  # not in the table under this name: its price cannot be checked for time-dependence
        return None
    # The table entries LiteLLM may price this name from, too: were off-peak rates in force while
    # probing, they would otherwise be learned for every hour.
    entries = [model_info] + [litellm.model_cost.get(name) or {} for name in
                              (f"{provider}/{provider_model}", provider_model, provider_model.split("/", 1)[-1])]
    if any(_TIME_DEPENDENT_MARKER in name and value is not None for entry in entries for name, value in entry.items()):
        return None
    limit = _token_limit(model_info)
    if limit < 2:
        return None

    litellm_cost = functools.partial(_litellm_usd, litellm, provider, provider_model)
    try:
        one_token = litellm_cost(1, 0, 0)
        per_input_token = litellm_cost(2, 0, 0) - one_token
        per_call = one_token - per_input_token
        price = LinearPrice(
            per_call=per_call,
            per_input_token=per_input_token,
            per_cached_token=litellm_cost(1, 0, 1) - per_call,
            per_output_token=litellm_cost(1, 1, 0) - one_token,
            token_limit=limit,
            per_cache_write_token=litellm_cost(1, 0, 0, 1) - per_call,
            per_reasoning_token=litellm_cost(1, 1, 0, 0, 1) - one_token,
        )
        for point in _probes(limit):
            if not math.isclose(price.cost(*point), litellm_cost(*point), rel_tol=_PROBE_REL_TOL):
                return None
    except Exception:  # a model LiteLLM prices by other means (per second, per character)
        return None
    return price
