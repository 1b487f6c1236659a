"""Addon that keeps the cookies routed upstreams set (Cloudflare's) and sends them back.

The jar file is written off the event loop: a change schedules a save (at most one per
``SAVE_INTERVAL`` seconds), the snapshot of what changed is taken on the loop, and the merge into
the file, its fsync and rename run on one writer thread (one thread, so writes and read-backs of
evicted jars happen in order). ``done`` waits for a running save, then has what is left written
and waits for that too, blocking: mitmproxy calls it from synchronous code when addon.py is
reloaded, where nothing could await a save.

With ``storage.redis_url`` the jars are the fleet's too (fleet.shared_cookies): the local jar
answers every hook, a change is written to Redis in the background, and other proxies' changes
replace the local copy when announced. Redis down: the local jar and its file go on alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from memory_routing.addons.shared_servers import SharedServers
from memory_routing.fleet.shared_cookies import SharedCookies, jar_diff
from memory_routing.upstream.cookie_jar import (
    CLOUDFLARE_COOKIE_NAMES, MACHINE_SCOPE, Entry, JarChanges, UpstreamCookieJar, read_scope, write_changes,
)
from memory_routing.flow_state import Route, route_of

logger = logging.getLogger(__name__)

DEFAULT_FILE_NAME = "memory-routing-cookies.json"
SCOPES = ("machine", "user")
SAVE_INTERVAL = 1.0  # seconds between two saves of the jar file, at most one save per interval
LIMIT_OPTION = "memory_routing_cookie_jar_limit"
LAST_SAVE_WAIT = 10.0  # seconds done() waits for a save already running before it writes its own


class UpstreamCookies:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        writer: Callable[[Path, JarChanges], None] = write_changes,
        reader: Callable[[Path, str], list[Entry]] = read_scope,
        shared: SharedServers | None = None,
    ) -> None:
        self.jar = UpstreamCookieJar()
        self.path: Path | None = None
        self.per_user = False
        self.clock = clock
        self.writer = writer  # run on the writer thread
        self.reader = reader  # likewise
        self._thread: ThreadPoolExecutor | None = None
        self._last_save = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        # The save running on the writer thread, with the changes it writes.
        self._saving: tuple[Future[None], JarChanges] | None = None
        self._closing = False
        self._reading: dict[str, asyncio.Future[None]] = {}
        self.shared = shared
        self.fleet: SharedCookies | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_cookie_names", Sequence[str], list(CLOUDFLARE_COOKIE_NAMES),
            "Cookie names kept from routed upstream answers and sent back (Cloudflare's by default).",
        )
        loader.add_option(
            "memory_routing_cookie_scope", str, "machine",
            "One cookie jar for the machine, or one per memory user id (a shared team proxy).",
            choices=SCOPES,
        )
        loader.add_option(
            "memory_routing_cookie_file", str, "",
            f"Where the jar persists; default <confdir>/{DEFAULT_FILE_NAME}. 'none' keeps it in memory only.",
        )
        loader.add_option(
            LIMIT_OPTION, int, 256,
            "Cookie jars (one per memory user id in 'user' scope) kept in memory; the least recently "
            "used are saved to the jar file and read back when their user returns.",
        )

    def configure(self, updated) -> None:
        if LIMIT_OPTION in updated and getattr(ctx.options, LIMIT_OPTION) <= 0:
            raise exceptions.OptionsError(f"{LIMIT_OPTION} must be > 0, got {getattr(ctx.options, LIMIT_OPTION)}")
        if "memory_routing_cookie_scope" in updated:
            self.per_user = ctx.options.memory_routing_cookie_scope == "user"
        if {"memory_routing_cookie_names", "memory_routing_cookie_file", "confdir"} & set(updated):
            self.path = self._jar_path()
            self.jar = UpstreamCookieJar(
                ctx.options.memory_routing_cookie_names, getattr(ctx.options, LIMIT_OPTION), persistent=self.path is not None
            )
            if self.path is not None:
                self._load(self.path)
        elif LIMIT_OPTION in updated:
            self.jar.set_limit(getattr(ctx.options, LIMIT_OPTION))
            self._schedule_save()

    def running(self) -> None:
        shared = self.shared
        if self.fleet is None and shared is not None and shared.redis_url:
            self.fleet = SharedCookies(shared.redis_url, shared.health, apply=self._apply_fleet_copy,
                                       local=lambda scope: self.jar.scope_entries(scope),
                                       scopes=self._scopes_to_resync)
            self.fleet.start()
            for scope in self._scopes_to_resync():
                self.fleet.need(scope)

    def _apply_fleet_copy(self, scope: str, entries: list[Entry]) -> bool:
        if not self.jar.resident(scope):
            return False  # in the file only: read back, then from Redis, when it is used
        if self.jar.replace_scope(scope, entries):
            self._schedule_save()
        return True

    def _scopes_to_resync(self) -> list[str]:
        resident = self.jar.resident_scopes()
        return resident if self.per_user or MACHINE_SCOPE in resident else [MACHINE_SCOPE, *resident]

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        route = route_of(flow)
        if route is None or flow.response is not None:
            return None
        return self._with_jar(self._scope(route), self._send_cookies, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        route = route_of(flow)
        if route is None or flow.response is None:
            return None
        if not any(name.lower() == b"set-cookie" for name, _ in flow.response.headers.fields):
            return None
        return self._with_jar(self._scope(route), self._keep_cookies, flow)

    def _with_jar(self, scope: str, then: Callable[[http.HTTPFlow, str], None], flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Synchronous when the scope's jar is in memory (the common case); mitmproxy awaits what a
        # hook returns, so only a jar read back from the file costs a coroutine.
        if not self.jar.resident(scope):
            return self._after_read_back(scope, then, flow)
        then(flow, scope)
        return None

    def done(self) -> None:
        """Write what is not saved yet: shutdown, or a reload of addon.py, must not lose the last
        cookies. Blocks the loop for the last write (a small file, once): mitmproxy may call this
        from synchronous code, where a save left to the loop would never be awaited."""
        if self.fleet is not None:
            self.fleet.write_rest()  # and the file, below
            self.fleet = None
        self._closing = True  # a settled save schedules no other: this writes what is left
        self._cancel_timer()
        self._wait_for_save()
        if self.path is not None and self.jar.has_changes and self._saving is None:
            changes = self.jar.take_changes()
            # On the writer thread all the same: after any read-back queued there, in order.
            self._saving = (self._writer_thread().submit(self.writer, self.path, changes), changes)
            self._wait_for_save()
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None
        self._closing = False

    def _wait_for_save(self) -> None:
        if self._saving is None:
            return
        saving, changes = self._saving
        if futures.wait([saving], timeout=LAST_SAVE_WAIT).done:
            self._settle(saving, changes)  # its callback on the loop could not run before this returns
        else:
            logger.warning(f"memory-routing: the cookie jar's last save to {self.path} did not finish in time")

    def status(self) -> list[dict[str, object]]:
        return [
            {"scope": c.scope, "name": c.name, "domain": c.domain, "path": c.path, "secure": c.secure,
             "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.expires)) if c.expires else None}
            for c in self.jar.describe()
        ]

    def _send_cookies(self, flow: http.HTTPFlow, scope: str) -> None:
        if self.fleet is not None:
            self.fleet.need(scope)  # the first use of a jar since the start reads the fleet's copy
        if not self.jar.holds(scope):
            return
        client_cookies = "; ".join(flow.request.headers.get_all("cookie")) or None
        header = self.jar.cookie_header(flow.request.url, scope, client_cookies)
        if header and header != client_cookies:
            flow.request.headers["cookie"] = header

    def _keep_cookies(self, flow: http.HTTPFlow, scope: str) -> None:
        assert flow.response is not None
        set_cookies = [value.decode("utf-8", "surrogateescape") for name, value in flow.response.headers.fields
                       if name.lower() == b"set-cookie"]
        before = self.jar.scope_entries(scope) if self.fleet is not None else ()
        if self.jar.store(flow.request.url, scope, set_cookies) and self.fleet is not None:
            self.fleet.changed(jar_diff(scope, before, self.jar.scope_entries(scope)))
        if self.jar.has_changes:  # stored something, or pushed a changed jar out of memory
            self._schedule_save()

    def _scope(self, route: Route) -> str:
        return route.user_id if self.per_user else MACHINE_SCOPE

    # --- the jar file, off the event loop ------------------------------------------------------

    def _writer_thread(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-routing-cookie-jar")
        return self._thread

    async def _after_read_back(self, scope: str, then: Callable[[http.HTTPFlow, str], None], flow: http.HTTPFlow) -> None:
        for _ in range(3):  # other flows may push it out again before this one resumes
            reading = self._reading.get(scope)
            if reading is None:
                reading = self._reading[scope] = asyncio.ensure_future(self._read_back(scope))
            await asyncio.shield(reading)
            if self.jar.resident(scope):
                then(flow, scope)
                return
        logger.warning("memory-routing: a cookie jar left memory three times while read back; this request goes without")

    async def _read_back(self, scope: str) -> None:
        assert self.path is not None  # only the file's scopes are ever away from memory
        try:
            entries = await asyncio.get_running_loop().run_in_executor(self._writer_thread(), self.reader, self.path, scope)
        except (OSError, ValueError) as e:
            logger.warning(f"memory-routing: cannot read the cookies of one jar back from {self.path}: {e}")
            entries = []
        finally:
            del self._reading[scope]
        if not self.jar.resident(scope):
            self.jar.restore(scope, entries)
        if self.jar.has_changes:  # bringing it back may have pushed another jar out
            self._schedule_save()

    def _schedule_save(self) -> None:
        if self.path is None or self._closing or self._timer is not None or self._saving is not None:
            return  # a save is due already, or one is running (it reschedules when done)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside mitmproxy's loop (a script, a test): save in place
            self._save_in_place()
            return
        delay = self._last_save + SAVE_INTERVAL - self.clock()
        if delay <= 0:
            self._start_save()
        else:
            self._timer = loop.call_later(delay, self._start_save)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_save(self) -> None:
        self._timer = None
        if self.path is None or not self.jar.has_changes:
            return
        changes = self.jar.take_changes()
        self._last_save = self.clock()
        saving = self._writer_thread().submit(self.writer, self.path, changes)
        self._saving = (saving, changes)
        # Settled on the loop when it ends, or by done() if that comes first.
        asyncio.wrap_future(saving).add_done_callback(lambda _: self._settle(saving, changes))

    def _settle(self, saving: Future[None], changes: JarChanges) -> None:
        """A finished save: its changes are saved, or back in the jar's unsaved ones."""
        if self._saving is None or self._saving[0] is not saving:
            return  # settled already
        self._saving = None
        error = "cancelled" if saving.cancelled() else saving.exception()
        if error is None:
            self.jar.saved(changes)
        else:
            self.jar.save_failed(changes)
            logger.warning(f"memory-routing: cannot save the cookie jar to {self.path}: {error}")
        if self.jar.has_changes:
            self._schedule_save()

    def _save_in_place(self) -> None:
        assert self.path is not None
        changes = self.jar.take_changes()
        try:
            self.writer(self.path, changes)
        except (OSError, ValueError) as e:
            self.jar.save_failed(changes)
            logger.warning(f"memory-routing: cannot save the cookie jar to {self.path}: {e}")
        else:
            self.jar.saved(changes)

    def _jar_path(self) -> Path | None:
        option = ctx.options.memory_routing_cookie_file
        if option == "none":
            return None
        if option:
            return Path(os.path.expanduser(option))
        return Path(os.path.expanduser(ctx.options.confdir)) / DEFAULT_FILE_NAME

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            count = self.jar.load(path)
        except (OSError, ValueError) as e:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                path.replace(aside)
            except OSError as move_error:
                raise exceptions.OptionsError(
                    f"{path}: unreadable cookie jar ({e}) that cannot be moved aside: {move_error}") from None
            logger.warning(f"memory-routing: {path} is not a usable cookie jar ({e}); moved it to {aside.name}, starting empty")
            self.jar = UpstreamCookieJar(self.jar.policy.names, self.jar.limit)
            return
        logger.info(f"memory-routing: loaded {count} cookies from {path}")
