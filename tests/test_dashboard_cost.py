"""Cost of a call from LiteLLM's bundled price table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
