"""The upstream cookie jars shared by a fleet of proxies through Redis.

Each proxy keeps its in-process jar (upstream.cookie_jar) and answers every hook from it; Redis
is where the proxies tell each other. Per jar scope (the machine, or a memory user id) one hash,
one field per cookie (``domain TAB path TAB name``, the identity RFC 6265 gives a cookie), the
value the cookie as the jar file stores it (JSON). A change a proxy makes is written in the
background (set fields, deleted fields), then announced on ``CHANGED_CHANNEL``; the other proxies
read that scope's hash and replace their copy with it. A periodic resync catches announcements
lost while a proxy was cut off. Two proxies changing the same scope at once both keep their
cookies: writes are per cookie, last writer wins per cookie.

Redis down: every change waits here (merged per cookie) and is written when it is back, the
jars work locally meanwhile, and the outage is told once (FleetHealth). Expiry stays the
cookies' own: an expired entry is dropped when read, and the hash expires when left alone.
Nothing here imports mitmproxy or the jar; the addon (addons.upstream_cookies) passes entries.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.client

from memory_routing.fleet.health import REDIS, FleetHealth
from memory_routing.fleet.postgres import outage_reason
from memory_routing.fleet.redis_client import COMMAND_TIMEOUT_S, REDIS_FALLBACK, listen_forever, open_client

KEY_PREFIX = "memory-routing:cookies"
CHANGED_CHANNEL = f"{KEY_PREFIX}:changed"
RESYNC_S = 30.0  # the backstop: every resident jar is read again this often
RETRY_S = 1.0  # while Redis is down, how often it is tried again
JAR_IDLE_TTL_S = 7 * 24 * 3600  # a jar nobody changes for this long leaves Redis
FETCH_ATTEMPTS = 3
# A field every written jar has: a hash without cookies still says the fleet knows the jar (its
# cookies were deleted), unlike a missing one (never written, or idle past JAR_IDLE_TTL_S).
KNOWN_FIELD = "known"

Entry = dict[str, Any]  # one cookie, as the jar file stores it


def scope_key(scope: str) -> str:
    return f"{KEY_PREFIX}:{scope}"


def cookie_field(entry: Mapping[str, Any]) -> str:
    """A cookie's identity in its jar (RFC 6265 5.3 step 11: same name, domain and path replace)."""
    return f"{entry['domain']}\t{entry['path']}\t{entry['name']}"


@dataclass(frozen=True)
class JarDiff:
    """What changed in one scope's jar: cookies set (by field) and fields deleted."""

    scope: str
    set: Mapping[str, Entry]
    deleted: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.set or self.deleted)


def jar_diff(scope: str, before: Iterable[Entry], after: Iterable[Entry]) -> JarDiff:
    old = {cookie_field(e): e for e in before}
    new = {cookie_field(e): e for e in after}
    return JarDiff(scope, {f: e for f, e in new.items() if old.get(f) != e}, frozenset(old.keys() - new.keys()))


def well_formed_entries(values: Iterable[bytes | str]) -> list[Entry]:
    """The hash's cookies, skipping what is not one (the jar drops the expired ones itself)."""
    entries: list[Entry] = []
    for value in values:
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if isinstance(entry, dict) and {"domain", "path", "name"} <= entry.keys():
            entries.append(entry)
    return entries


@dataclass
class _Unwritten:
    """A scope's changes not yet in Redis, merged per cookie (None: delete the field)."""

    fields: dict[str, Entry | None] = field(default_factory=dict)

    def merge(self, diff: JarDiff) -> None:
        self.fields.update(diff.set)
        self.fields.update(dict.fromkeys(diff.deleted))

    def over(self, remote: Iterable[Entry]) -> list[Entry]:
        """The remote cookies with these changes on top (they are newer)."""
        merged: dict[str, Entry | None] = {cookie_field(e): e for e in remote}
        merged.update(self.fields)
        return [e for e in merged.values() if e is not None]


class SharedCookies:
    """This proxy's side of the shared jars (asyncio, on mitmproxy's loop).

    ``apply(scope, entries)`` is called to replace a scope's local jar with the fleet's cookies
    (this proxy's unwritten changes already on top), and says whether it could (False: the jar is
    in the local file only, read again when it is used); ``local(scope)`` gives a jar's cookies to
    seed a scope the fleet has never seen; ``scopes()`` names the scopes to resync.
    """

    def __init__(self, url: str, health: FleetHealth, *,
                 apply: Callable[[str, list[Entry]], bool], local: Callable[[str], Iterable[Entry]],
                 scopes: Callable[[], Iterable[str]]) -> None:
        self.url = url
        self.client = open_client(url)
        self.health = health
        self.apply = apply
        self.local = local
        self.scopes = scopes
        self.origin = uuid.uuid4().hex  # this proxy's announcements are not read back by itself
        self.synced: set[str] = set()  # scopes read from Redis since the start (or the outage's end)
        self._unwritten: dict[str, _Unwritten] = {}
        self._written: dict[str, int] = {}  # scope -> writes done, to notice a read that crossed one
        self._down = False
        self._wake_writer = asyncio.Event()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._write_forever()),
                           asyncio.ensure_future(listen_forever(self.client, CHANGED_CHANNEL, self._announced, RETRY_S,
                                                               self._resync_in_background)),
                           asyncio.ensure_future(self._resync_forever())]

    def stop(self) -> None:
        for task in [*self._tasks, *self._fetching.values()]:
            task.cancel()
        self._tasks = []

    async def close(self) -> None:
        tasks = [*self._tasks, *self._fetching.values()]
        self.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    @property
    def unwritten(self) -> int:
        """Cookie changes waiting to be written (Redis down, or the writer busy)."""
        return sum(len(u.fields) for u in self._unwritten.values())

    def changed(self, diff: JarDiff) -> None:
        """A local change to write and announce, in the background (never waits)."""
        if diff:
            self._unwritten.setdefault(diff.scope, _Unwritten()).merge(diff)
            self._wake_writer.set()

    def need(self, scope: str) -> None:
        """Read ``scope`` from Redis in the background unless done already since the start."""
        if scope not in self.synced and scope not in self._fetching and not self._down:
            self._fetch_in_background(scope)

    # --- background work ---------------------------------------------------------------------

    def _fetch_in_background(self, scope: str) -> None:
        task = self._fetching[scope] = asyncio.ensure_future(self._fetch_quietly(scope))
        task.add_done_callback(lambda _: self._fetching.pop(scope, None))

    async def _fetch_quietly(self, scope: str) -> None:
        try:
            await self._guarded(self.fetch(scope))
        except redis.RedisError:
            pass  # reported; the writer's retries notice when it is back, then everything resyncs

    def _announced(self, message: bytes) -> None:
        try:
            announcement = json.loads(message)
            scope, origin = str(announcement["scope"]), announcement.get("origin")
        except (ValueError, KeyError, TypeError):
            return
        if origin != self.origin:
            self._fetch_in_background(scope)

    async def fetch(self, scope: str) -> None:
        """Replace the local copy of ``scope`` with the fleet's (plus this proxy's unwritten changes)."""
        for _ in range(FETCH_ATTEMPTS):
            writes = self._written.get(scope, 0)
            values = await self.client.hvals(scope_key(scope))  # type: ignore[misc]  # typeshed: sync | async
            if self._written.get(scope, 0) != writes:
                continue  # one of this proxy's writes landed while reading: the read may predate it
            if not values:
                # The fleet has never seen this jar: this proxy's (from its file) seeds it.
                self.changed(jar_diff(scope, (), self.local(scope)))
                self.synced.add(scope)
                return
            remote = well_formed_entries(values)
            unwritten = self._unwritten.get(scope)
            if self.apply(scope, unwritten.over(remote) if unwritten is not None else remote):
                self.synced.add(scope)
            return

    async def write(self, scope: str, unwritten: _Unwritten) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            self._queue_write(pipe, scope, unwritten)
            await pipe.execute()
        self._written[scope] = self._written.get(scope, 0) + 1

    def _queue_write(self, pipe: redis.asyncio.client.Pipeline | redis.client.Pipeline, scope: str,
                     unwritten: _Unwritten) -> None:
        """The commands of one scope's write, in a transaction: its cookies, then the announcement."""
        key = scope_key(scope)
        pipe.hset(key, KNOWN_FIELD, "1")
        if sets := {f: json.dumps(e) for f, e in unwritten.fields.items() if e is not None}:
            pipe.hset(key, mapping=sets)
        if deleted := [f for f, e in unwritten.fields.items() if e is None]:
            pipe.hdel(key, *deleted)
        pipe.expire(key, int(JAR_IDLE_TTL_S))
        pipe.publish(CHANGED_CHANNEL, json.dumps({"scope": scope, "origin": self.origin}))

    def write_rest(self) -> None:
        """At shutdown (mitmproxy's ``done``, synchronous): stop, and write what is still
        unwritten in one blocking transaction bounded by the command timeout, so the next start
        does not read an older copy from Redis over the file's newer one."""
        self.stop()
        unwritten, self._unwritten = self._unwritten, {}
        if not unwritten or self._down:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S)
        try:
            with client.pipeline(transaction=True) as pipe:
                for scope, changes in unwritten.items():
                    self._queue_write(pipe, scope, changes)
                pipe.execute()
        except redis.RedisError:
            pass  # the file has them; Redis's copy is older until this jar changes again
        finally:
            client.close()

    async def _write_forever(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            while self._unwritten:
                scope, unwritten = next(iter(self._unwritten.items()))
                del self._unwritten[scope]
                try:
                    await self._guarded(self.write(scope, unwritten))
                except redis.RedisError:
                    # Back in the queue under anything newer, tried again once Redis answers.
                    newer = self._unwritten.pop(scope, None)
                    if newer is not None:
                        unwritten.fields.update(newer.fields)
                    self._unwritten[scope] = unwritten
                    await asyncio.sleep(RETRY_S)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S if self._down else RESYNC_S)
            await self.resync()

    async def resync(self) -> None:
        """Read every resident scope again (the backstop; after an outage, at once)."""
        try:
            for scope in list(self.scopes()):
                await self._guarded(self.fetch(scope))
        except redis.RedisError:
            pass  # reported

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except redis.RedisError as e:
            if not self._down:
                self._down = True
                self.synced.clear()  # what was read may be stale once Redis is back
            self.health.failed(REDIS, outage_reason(e), REDIS_FALLBACK)
            raise
        if self._down:
            self._down = False
            self.health.recovered(REDIS)
            self._wake_writer.set()
            self._resync_in_background()

    def _resync_in_background(self) -> None:
        task = asyncio.ensure_future(self.resync())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
