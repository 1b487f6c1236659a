"""tiktoken's ``cl100k_base`` table, built on first use instead of while LiteLLM is imported.

LiteLLM means to load its default encoding lazily (``litellm._lazy_imports._get_default_encoding``),
but ``import litellm`` reaches ``litellm_core_utils.token_counter``, whose module-level
``from ...default_encoding import encoding`` runs ``tiktoken.get_encoding("cl100k_base")``: about
25-45 MB resident (the 100,000-entry rank dict in Python, its copies in tiktoken's Rust core) and
0.3 s of CPU, in a proxy that counts tokens only for ``count_tokens`` calls (and then mostly with
another table: o200k for gpt-4o, a Hugging Face tokenizer for Claude and Llama).

No public switch turns that off, so the one private hook here: before LiteLLM is imported, the
registry tiktoken's ``get_encoding`` consults first (``tiktoken.registry.ENCODINGS``) is given a
``DeferredEncoding`` for the name, an ``Encoding`` whose tables are built by tiktoken's own
constructor the first time anything reads them. LiteLLM's import sets ``TIKTOKEN_CACHE_DIR`` to its
bundled copy of the table before it asks for the encoding, so the deferred build reads that file,
as the eager one did: nothing is downloaded. tests/test_contracts.py pins the assumptions.
Imports tiktoken; neither LiteLLM nor mitmproxy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import tiktoken
import tiktoken.registry
from tiktoken_ext import openai_public

DEFERRED_NAME = "cl100k_base"


class DeferredEncoding(tiktoken.Encoding):
    """An ``Encoding`` that runs ``Encoding.__init__`` with ``constructor()``'s arguments on the
    first read of an attribute it does not have yet (every method reads ``_core_bpe``)."""

    def __init__(self, name: str, constructor: Callable[[], dict[str, Any]]) -> None:
        # Not super().__init__(): that is the work being deferred. ``name`` is cheap and read by repr.
        self.name = name
        self._deferred_constructor = constructor
        self._deferred_lock = threading.Lock()

    @property
    def built(self) -> bool:
        return "_core_bpe" in self.__dict__

    def __getattr__(self, attribute: str) -> Any:
        # Only called for attributes not set yet; after the build, lookups never come here.
        if attribute.startswith(("_deferred", "__")):
            raise AttributeError(attribute)
        with self._deferred_lock:
            if not self.built:
                tiktoken.Encoding.__init__(self, **self._deferred_constructor())
        return object.__getattribute__(self, attribute)


def defer_default_encoding() -> None:
    """Put a ``DeferredEncoding`` for ``cl100k_base`` where ``tiktoken.get_encoding`` finds it.
    Call before LiteLLM is imported; a no-op once the name is registered (deferred or built)."""
    tiktoken.registry.ENCODINGS.setdefault(
        DEFERRED_NAME, DeferredEncoding(DEFERRED_NAME, openai_public.ENCODING_CONSTRUCTORS[DEFERRED_NAME])
    )
