"""Cost of a call from LiteLLM's bundled price table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from memory_routing.dashboard import cost
from memory_routing.dashboard.cost import call_cost_usd


@pytest.fixture(scope="module")
def price_table():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm.model_cost


def test_openai_model_with_cached_input(price_table):
    prices = price_table["gpt-4o-mini"]
    expected = (600 * prices["input_cost_per_token"] + 400 * prices["cache_read_input_token_cost"]
                + 100 * prices["output_cost_per_token"])
    assert call_cost_usd("openai", "gpt-4o-mini", 1000, 100, 400) == pytest.approx(expected, rel=1e-9)
    assert call_cost_usd("openai", "gpt-4o-mini", 1000, 100, 400) < call_cost_usd("openai", "gpt-4o-mini", 1000, 100)


def test_anthropic_model(price_table):
    prices = price_table["claude-sonnet-4-5"]
    expected = 2000 * prices["input_cost_per_token"] + 300 * prices["output_cost_per_token"]
    assert call_cost_usd("anthropic", "claude-sonnet-4-5", 2000, 300, 0) == pytest.approx(expected, rel=1e-9)
    # A provider prefix in the model name, as LiteLLM config entries write it, prices the same.
    assert call_cost_usd("anthropic", "anthropic/claude-sonnet-4-5", 2000, 300) == pytest.approx(expected, rel=1e-9)


def test_unknown_model_or_tokens_have_no_cost(price_table):
    assert call_cost_usd("openai", "no-such-model-anywhere", 1000, 100) is None
    assert call_cost_usd("openai", "no-such-model-anywhere", 1000, 100) is None  # remembered
    assert call_cost_usd("openai", "gpt-4o-mini", None, None) is None
    assert call_cost_usd("openai", "gpt-4o-mini", 0, 0) == 0


def test_importing_the_module_does_not_import_litellm():
    code = "import sys, memory_routing.dashboard.cost; print('litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


# --- the linear fast path: rates learned from LiteLLM and checked against it ---------------------

def _litellm_usd(litellm, provider, model, prompt, completion, cached):
    prompt_cost, completion_cost = litellm.cost_per_token(
        model=model, custom_llm_provider=provider or None, prompt_tokens=prompt,
        completion_tokens=completion, cache_read_input_tokens=cached)
    return prompt_cost + completion_cost


def _tier_thresholds(entry):
    """Prompt-token thresholds of a table entry's tiers, read the way the test's reader would."""
    found = set()
    for name, value in entry.items():
        match = re.search(r"_above_(\d+)(k?)_tokens", name)
        if match and value is not None:
            found.add(int(match[1]) * (1000 if match[2] else 1))
    for tier in entry.get("tiered_pricing") or ():
        found.update(int(bound) for bound in tier.get("range", ()) if bound > 0)
    return sorted(found)


def _chat_models_sample(price_table):
    """Every tiered chat model and the first few (by name) of every provider: all providers covered."""
    per_provider: dict[str, list[str]] = {}
    tiered = []
    for name in sorted(price_table):
        entry = price_table[name]
        if entry.get("mode") != "chat" or not isinstance(entry.get("litellm_provider"), str):
            continue
        if _tier_thresholds(entry):
            tiered.append((entry["litellm_provider"], name))
        else:
            per_provider.setdefault(entry["litellm_provider"], []).append(name)
    sample = tiered + [(provider, name) for provider, names in per_provider.items() for name in names[:3]]
    return sample, {provider for provider, _ in sample}


@pytest.fixture
def fresh_prices(monkeypatch):
    """An empty memo of learned prices for the test, the module's own restored after it."""
    monkeypatch.setattr(cost, "_prices", {})
    monkeypatch.setattr(cost, "_prices_version", cost._prices_version)
    return cost


@pytest.fixture
def litellm_calls(price_table, monkeypatch):
    """Counts LiteLLM's cost_per_token calls (the wrapper answers exactly what LiteLLM does)."""
    import litellm

    counted = {"calls": 0}
    real = litellm.cost_per_token

    def counting(*args, **kwargs):
        counted["calls"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm, "cost_per_token", counting)
    return counted


def test_fast_path_equals_litellm_over_the_price_table(price_table, fresh_prices):
    import litellm

    sample, providers = _chat_models_sample(price_table)
    all_providers = {e.get("litellm_provider") for e in price_table.values() if e.get("mode") == "chat"}
    assert providers == all_providers - {None}
    assert sum(1 for _ in sample) > 300
    linear = 0
    for provider, model in sample:
        price = cost.linear_price(provider, model)
        limit = price.token_limit if price is not None else cost.PROBE_LIMIT
        linear += price is not None
        thresholds = _tier_thresholds(price_table[model])
        mixes = [(1000, 100, 400), (1, 0, 0), (limit, 17, 0), (limit // 2 + 1, 3333, limit // 5),
                 (limit, limit, limit), (77_777 % limit + 1, 0, 0)]
        for threshold in thresholds:  # both sides of every tier, inside and beyond the checked range
            mixes += [(threshold, 500, 0), (threshold + 1, 500, 0), (threshold + 1, 10, threshold // 2),
                      (threshold * 2 + 3, 1234, threshold)]
        mixes.append((cost.PROBE_LIMIT + 1, 100, 0))
        for mix in mixes:
            expected = _litellm_usd(litellm, provider, model, *mix)
            assert cost.call_cost_usd(provider, model, *mix) == pytest.approx(expected, rel=1e-9, abs=0), \
                (provider, model, mix)
    # The fast path is not a formality: almost every chat model gets linear rates.
    assert linear >= 0.9 * len(sample)


def test_in_range_calls_are_arithmetic_and_beyond_it_litellm(price_table, fresh_prices, litellm_calls):
    cost.call_cost_usd("openai", "gpt-4o-mini", 1000, 100, 400)  # learns the rates
    price = cost.linear_price("openai", "gpt-4o-mini")
    assert price is not None and price.token_limit == cost.PROBE_LIMIT
    before = litellm_calls["calls"]
    for prompt in range(1, 200_000, 997):
        cost.call_cost_usd("openai", "gpt-4o-mini", prompt, prompt % 4096, prompt // 3)
    assert litellm_calls["calls"] == before
    for mix in [(cost.PROBE_LIMIT + 1, 10, 0), (1000, cost.PROBE_LIMIT + 1, 0), (10, 10, 11), (0, 10, 0)]:
        cost.call_cost_usd("openai", "gpt-4o-mini", *mix)
    assert litellm_calls["calls"] == before + 4


def test_a_tiered_model_is_linear_only_below_its_first_tier(price_table, fresh_prices, litellm_calls):
    import litellm

    assert price_table["claude-sonnet-4-5"]["input_cost_per_token_above_200k_tokens"] is not None
    price = cost.linear_price("anthropic", "claude-sonnet-4-5")
    assert price is not None and price.token_limit < 200_000
    above = (250_000, 2000, 50_000)
    tiered = _litellm_usd(litellm, "anthropic", "claude-sonnet-4-5", *above)
    assert tiered > price.cost(*above) * 1.2  # the tier is dearer than the base rates extrapolated
    before = litellm_calls["calls"]
    assert cost.call_cost_usd("anthropic", "claude-sonnet-4-5", *above) == pytest.approx(tiered, rel=1e-9)
    assert litellm_calls["calls"] == before + 1


def test_the_probes_alone_reject_a_tier_inside_the_range(price_table, fresh_prices, monkeypatch):
    # With the tier keys not read, the range would be a million tokens: the probes at its
    # corners are priced by LiteLLM at the tier's rates and the linear form is refused.
    monkeypatch.setattr(cost, "_token_limit", lambda model_info: cost.PROBE_LIMIT)
    assert cost.linear_price("anthropic", "claude-sonnet-4-5") is None
    tiered_table = [name for name, entry in price_table.items()
                    if entry.get("mode") == "chat" and entry.get("tiered_pricing")]
    assert tiered_table
    accepted = [n for n in tiered_table if cost.linear_price(price_table[n]["litellm_provider"], n) is not None]
    assert not accepted


@pytest.fixture
def off_peak_model(price_table):
    """A model registered with LiteLLM whose price depends on the hour; removed after the test."""
    import litellm

    name = "memory-routing-test-off-peak"
    assert name not in litellm.model_cost
    litellm.register_model({name: {
        "litellm_provider": "openai", "mode": "chat",
        "input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6,
        # A window whose start equals its end is the whole day: the off-peak rates apply now.
        "off_peak_pricing": {"hours_utc": "00:00-00:00", "input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6},
    }}, persist_across_reloads=False)
    yield name
    litellm.model_cost.pop(name, None)
    litellm.open_ai_chat_completion_models.discard(name)
    litellm.get_model_info.cache_clear()


def test_time_dependent_pricing_always_goes_to_litellm(off_peak_model, fresh_prices, litellm_calls):
    assert cost.linear_price("openai", off_peak_model) is None
    before = litellm_calls["calls"]
    for prompt in (1000, 2000, 3000):
        assert cost.call_cost_usd("openai", off_peak_model, prompt, 100) == pytest.approx(
            prompt * 1e-6 + 100 * 4e-6, rel=1e-9)
    assert litellm_calls["calls"] == before + 3


def test_a_changed_price_table_is_learned_again(price_table, fresh_prices):
    import litellm

    name = "memory-routing-test-repriced"
    try:
        litellm.register_model({name: {"litellm_provider": "openai", "mode": "chat",
                                        "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
                               persist_across_reloads=False)
        assert cost.call_cost_usd("openai", name, 1000, 1000) == pytest.approx(3e-3, rel=1e-9)
        assert cost.linear_price("openai", name) is not None
        litellm.register_model({name: {"litellm_provider": "openai", "mode": "chat",
                                        "input_cost_per_token": 3e-6, "output_cost_per_token": 2e-6}},
                               persist_across_reloads=False)
        assert cost.call_cost_usd("openai", name, 1000, 1000) == pytest.approx(5e-3, rel=1e-9)
    finally:
        litellm.model_cost.pop(name, None)
        litellm.open_ai_chat_completion_models.discard(name)
        litellm.get_model_info.cache_clear()
