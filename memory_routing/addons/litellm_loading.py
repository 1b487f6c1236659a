"""Addon that imports LiteLLM in a thread once the proxy listens; model calls that come earlier wait.

LiteLLM's import takes several seconds of CPU. Done at module level it delays the listeners and
``/health`` by that much; done here, the proxy answers its own endpoints at once and a model call
that arrives during the import is held (awaited, not refused) until the model table is there.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from types import ModuleType

from mitmproxy import http

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.mitm.flows import routed_call
from memory_routing.addons.heap_freeze import freeze_heap

logger = logging.getLogger(__name__)

# The modules that import LiteLLM: translation pulls in providers and parameters.
_LITELLM_MODULES = ("memory_routing.llm.translation",)
# A model call waits at most this long for the import; after that it imports in the foreground
# (blocking, but answered) rather than failing. The import takes 5-10 s on a loaded 2-core box.
WAIT_SECONDS = 120.0
LOADED_MESSAGE = "memory-routing: LiteLLM loaded"


def translation() -> ModuleType:
    """The translation module (LiteLLM): imported on first use if the background load has not run."""
    return importlib.import_module(_LITELLM_MODULES[0])


class LiteLLMLoading:
    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self._ready = threading.Event()
        self._loaded: asyncio.Future[None] | None = None
        self.waiting = 0  # model calls held until the import is done (shown by /health)

    @property
    def loaded(self) -> bool:
        return self._ready.is_set()

    def status(self) -> dict[str, object]:
        """What /health says of the import: whether it is done, and how many calls wait for it."""
        return {"litellm_loaded": self.loaded, "calls_waiting_for_litellm": self.waiting}

    def running(self) -> None:
        if self._loaded is not None:
            return
        loop = asyncio.get_running_loop()
        self._loaded = loop.create_future()
        threading.Thread(target=self._load, args=(loop,), name="litellm-import", daemon=True).start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        error: BaseException | None = None
        try:
            for name in _LITELLM_MODULES:
                importlib.import_module(name)
        except BaseException as e:  # reported on the loop; calls then import in the foreground
            error = e
        self._ready.set()
        loop.call_soon_threadsafe(self._finish, error)

    def _finish(self, error: BaseException | None) -> None:
        if error is not None:
            logger.error(f"memory-routing: loading LiteLLM failed: {error!r}")
        else:
            logger.info(LOADED_MESSAGE)
            # LiteLLM's heap arrived after HeapFreeze ran at start: take it out of the GC's walk too.
            freeze_heap()
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(None)

    def request(self, flow: http.HTTPFlow):
        # Returns None (nothing to await) on the hot path once loaded; mitmproxy awaits what it gets.
        if self._ready.is_set() or self._loaded is None or flow.response or flow.error:
            return None
        if routed_call(flow, self.routing.llm_hosts) is None:
            return None
        return self._wait()

    async def _wait(self) -> None:
        assert self._loaded is not None
        self.waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(self._loaded), WAIT_SECONDS)
        except TimeoutError:
            logger.warning("memory-routing: LiteLLM still loading; this call imports it in the foreground")
        finally:
            self.waiting -= 1
