"""Everything LiteLLM, and the only package that imports it: the one loader (here), where a model
lives (``providers``), translation between API formats (``translation``, ``parameters``) and the
LiteLLM internals those lean on (``litellm_internals``). No mitmproxy imports.

LiteLLM is loaded and configured here, once (its import takes seconds, so never at module level):
``load_litellm()``, or ``from memory_routing.llm import litellm`` in the translation modules.
Importing this package alone does not import LiteLLM.
"""

from __future__ import annotations

import os

# Must be set before litellm is imported: otherwise it downloads a price list at import time.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# LiteLLM's own log handler defaults to DEBUG; the proxy only uses its lookups.
os.environ.setdefault("LITELLM_LOG", "WARNING")

import functools
import logging
from types import ModuleType


@functools.cache
def load_litellm() -> ModuleType:
    """Import and configure LiteLLM (seconds, once); safe from any thread."""
    from memory_routing.llm.deferred_encoding import defer_default_encoding

    # LiteLLM's import would build tiktoken's cl100k table (tens of MB resident) for nothing.
    defer_default_encoding()
    import litellm

    # LiteLLM prints a provider list to stdout on every failed lookup.
    litellm.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


def __getattr__(name: str) -> ModuleType:
    # ``from memory_routing.llm import litellm`` (the translation modules) loads it configured.
    if name == "litellm":
        return load_litellm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
