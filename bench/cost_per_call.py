"""CPU time of pricing one model call: call_cost_usd against LiteLLM's cost_per_token on each call.

The usage recorder's thread prices every call. ``call_cost_usd`` answers from rates it learned
and checked against LiteLLM (memory_routing/dashboard/cost.py); the baseline is the same
module's LiteLLM path, which is what every call cost before. Each round prices the same
``--calls`` token mixes (seeded, varying: a cache on exact counts would gain nothing) once per
variant, alternating which goes first, and takes ``time.thread_time`` around each batch; the
figure is the median over ``--rounds`` of µs per call and of the ratio within the round.
Nothing leaves the machine; LiteLLM's bundled price table is used.

    .venv/bin/python bench/cost_per_call.py [--calls 3000] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory_routing.dashboard import cost

# A model whose price is linear everywhere, and one with a tier above 200k prompt tokens.
MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"))


def token_mixes(count: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    mixes = []
    for _ in range(count):
        prompt = rng.randint(50, 150_000)
        mixes.append((prompt, rng.randint(1, 8_000), rng.choice((0, rng.randint(0, prompt)))))
    return mixes


def per_call_us(price, provider: str, model: str, mixes: list[tuple[int, int, int]]) -> float:
    start = time.thread_time()
    for prompt, completion, cached in mixes:
        price(provider, model, prompt, completion, cached)
    return (time.thread_time() - start) / len(mixes) * 1e6


def litellm_each_call(provider: str, model: str, prompt: int, completion: int, cached: int) -> float | None:
    return cost._litellm_cost(cost._load_litellm(), provider, model, prompt, completion, cached)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    cost.warm_up()
    results: dict[str, dict[str, object]] = {}
    for provider, model in MODELS:
        mixes = token_mixes(args.calls, seed=len(results))
        # Outside the batches: the model's first call, LiteLLM's answer and learning the rates
        # (a dozen more LiteLLM calls, once per model and price table).
        start = time.thread_time()
        cost.call_cost_usd(provider, model, *mixes[0])
        first_call_ms = (time.thread_time() - start) * 1e3
        price = cost.linear_price(provider, model)
        in_range = sum(price is not None and price.covers(*mix) for mix in mixes)
        rounds = []
        for index in range(args.rounds):
            variants = [("litellm", litellm_each_call), ("fast", cost.call_cost_usd)]
            if index % 2:
                variants.reverse()
            rounds.append({name: per_call_us(fn, provider, model, mixes) for name, fn in variants})
        before = statistics.median(r["litellm"] for r in rounds)
        after = statistics.median(r["fast"] for r in rounds)
        ratio = statistics.median(r["litellm"] / r["fast"] for r in rounds)
        results[f"{provider}/{model}"] = {
            "calls": args.calls, "rounds": rounds, "in_range": in_range,
            "litellm_us_per_call": before, "call_cost_usd_us_per_call": after, "speedup": ratio,
            "token_limit": price.token_limit if price else None, "first_call_ms": first_call_ms,
        }
        print(f"{provider}/{model}: LiteLLM each call {before:.1f} µs, call_cost_usd {after:.2f} µs per call "
              f"(median of {args.rounds} rounds x {args.calls} calls; {ratio:.0f}x; "
              f"{in_range}/{args.calls} in the checked range, limit {price.token_limit if price else None}; "
              f"first call, learning included: {first_call_ms:.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
