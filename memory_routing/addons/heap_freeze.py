"""Addon that takes the start-up heap out of the garbage collector's reach once the proxy runs.

Importing LiteLLM leaves ~300,000 long-lived objects; every full collection then walks them all
(about a quarter of a second measured here), a pause that lands on whichever request is in flight.
``gc.freeze()`` moves them to the permanent generation; later garbage is collected as usual.
LiteLLM itself is imported after start-up (addons/litellm_loading.py), which freezes again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def _malloc_trim():
    """glibc's malloc_trim, or None (another libc, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def freeze_heap() -> None:
    gc.collect()
    gc.freeze()
    # Imports leave freed memory inside the allocator's arenas: glibc hands it back to the
    # system only on request (a few MB of resident memory after LiteLLM's import).
    if _TRIM is not None:
        _TRIM(0)


class HeapFreeze:
    def running(self) -> None:
        freeze_heap()
