"""Where the proxy's resident memory comes from: one interpreter imports, stage by stage, what
``mitmdump -s addon.py`` imports, and prints resident and anonymous memory after each stage
(from /proc/self/smaps_rollup, after a collection). Linux only; a few seconds (LiteLLM's import).

    .venv/bin/python bench/rss_breakdown.py

The last stage builds the cl100k tokenizer table that LiteLLM's import would otherwise build
(routing/deferred_encoding.py defers it to the first count_tokens call that needs it). A running
proxy adds its event loop, stores and threads on top (``make bench``'s idle RSS lines).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rollup_mib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return fields


def build_cl100k() -> None:
    import tiktoken

    tiktoken.get_encoding("cl100k_base").encode("hello")


def load_litellm() -> None:
    from memory_routing.llm import load_litellm

    load_litellm()


STAGES = (
    ("mitmproxy (what bare mitmdump imports)", lambda: importlib.import_module("mitmproxy.tools.dump")),
    ("the addon's modules (memory_routing.addons)", lambda: importlib.import_module("memory_routing.addons")),
    ("LiteLLM (llm.load_litellm)", load_litellm),
    ("the LiteLLM modules translation adds", lambda: importlib.import_module("memory_routing.llm.translation")),
    ("cl100k table, built (deferred in the proxy)", build_cl100k),
)


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    sys.path.insert(0, str(ROOT))
    before = rollup_mib()
    print(f"{'stage':48} {'RSS MiB':>8} {'+RSS':>7} {'+anon':>7} {'+modules':>9} {'CPU s':>6}")
    print(f"{'interpreter':48} {before['Rss']:8.1f}")
    for name, stage in STAGES:
        modules, cpu = len(sys.modules), time.process_time()
        stage()
        gc.collect()
        after = rollup_mib()
        print(f"{name:48} {after['Rss']:8.1f} {after['Rss'] - before['Rss']:+7.1f} "
              f"{after['Anonymous'] - before['Anonymous']:+7.1f} {len(sys.modules) - modules:+9d} "
              f"{time.process_time() - cpu:6.2f}")
        before = after


if __name__ == "__main__":
    main()
