"""Addon that owns the loaded config: parses it at start, reloads it when the file changes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from memory_routing.config.schema import ConfigError, ProxyConfig, load_config
from memory_routing.dashboard.bodies import config_summary
from memory_routing.routing.classify import Classifier
from memory_routing.routing.planner import llm_hosts

logger = logging.getLogger(__name__)

RELOAD_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: str) -> _FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


def _proxy_starting() -> bool:
    """mitmdump is starting up: its proxy server has not run yet."""
    server = ctx.master.addons.get("proxyserver")
    # No proxy server (mitmproxy's test harness, a tool that only loads addons): not a start-up.
    return server is not None and not getattr(server, "is_running", True)


def _exit_at_start(message: str) -> NoReturn:
    """A config that cannot be used at start: say so in one line and exit 1.

    mitmproxy loads ``-s`` scripts in a task after it has processed its options, so an
    OptionsError from a script's ``configure`` is not refused like a bad command-line option:
    the script loader logs it with a traceback, start-up goes on to announce its listeners, and
    only then does mitmproxy exit ("Error logged during startup"). SystemExit is not an Exception:
    it passes the script loader and stops the event loop at once, before the listeners are
    announced or a flow is served. (mitmproxy binds its sockets before it imports any script, so
    they exist for that moment; nothing answers on them, and they close with the process.)
    """
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)


class RoutingConfig:
    """Holds the current ProxyConfig and Classifier; a broken edit keeps the last good config."""

    def __init__(self) -> None:
        self.config: ProxyConfig | None = None
        self.classifier: Classifier | None = None
        self.loaded_at: float = 0.0
        self.last_error: str | None = None
        self.summary: dict[str, object] = {}
        self.llm_hosts: frozenset[str] = frozenset()
        self._listeners: list[Callable[[], None]] = []
        self._path: str = ""
        self._stamp: _FileStamp | None = None
        self._watcher: asyncio.Task[None] | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "memory_routing_config",
            str,
            "config.yaml",
            """
            Path of the LiteLLM-style config (model_list, user_id_mappings, memory).
            Reloaded when the file changes; a broken edit keeps the last good config.
            """,
        )

    def configure(self, updated: set[str]) -> None:
        if "memory_routing_config" not in updated:
            return
        path = os.path.expanduser(ctx.options.memory_routing_config)
        try:
            config = load_config(path)
        except ConfigError as e:
            if _proxy_starting():
                _exit_at_start(str(e))
            # A running proxy: mitmproxy refuses the option change and the old config stays.
            raise exceptions.OptionsError(str(e)) from None
        self._path = path
        self._install(config, _stamp(path))

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every successful (re)load."""
        self._listeners.append(listener)

    def reload_if_changed(self) -> None:
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            config = load_config(self._path)
        except ConfigError as e:
            self.last_error = str(e)
            self._refresh_summary()
            logger.error(f"{e} (keeping the last good config)")
            return
        self._install(config, stamp)
        logger.info(f"{self._path}: reloaded ({len(config.models)} models)")

    def _install(self, config: ProxyConfig, stamp: _FileStamp | None) -> None:
        self.config = config
        self.classifier = Classifier(config.user_id_mappings)
        self.llm_hosts = llm_hosts(config)
        self.loaded_at = time.time()
        self.last_error = None
        self._stamp = stamp
        self._refresh_summary()
        for warning in config.warnings:
            logger.warning(warning)
        for listener in self._listeners:
            listener()

    def _refresh_summary(self) -> None:
        # Built once per load, not per request: /memory-routing/info serves it as is.
        if self.config is not None:
            self.summary = config_summary(self.config, self.loaded_at, self.last_error)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            try:
                self.reload_if_changed()
            except Exception:  # the watcher must outlive any one bad reload
                logger.exception(f"{self._path}: reload failed (keeping the last good config)")
