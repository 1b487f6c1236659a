"""Addon that takes the start-up heap out of the garbage collector's reach once the proxy runs.

Importing LiteLLM leaves ~300,000 long-lived objects; every full collection then walks them all
(about a quarter of a second measured here), a pause that lands on whichever request is in flight.
``gc.freeze()`` moves them to the permanent generation; later garbage is collected as usual.
LiteLLM itself is imported after start-up (routing/litellm_loading.py), which freezes again.
"""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    gc.collect()
    gc.freeze()


class HeapFreeze:
    def running(self) -> None:
        freeze_heap()
