"""The per-host in-flight cap shared by a fleet of proxies: leases in Redis, one Lua script.

Per upstream host, three sorted sets (one hash tag, so a Redis Cluster keeps them in one slot):
- ``leases``: the slots taken, member = lease id, score = expiry in Redis's clock (ms). A proxy
  renews its leases while their calls run; a proxy killed or cut off stops renewing, and its
  slots are free once their lease time has passed.
- ``queue``: the waiting calls' tickets, score = arrival number (INCR of ``seq``): a waiter is
  granted only while its rank is below the free slots, so the fleet keeps arrival order.
- ``tickets``: the same tickets scored by expiry: a waiter renews its ticket each time it asks
  again; one whose proxy died stops blocking the queue after ``ticket_ms``.

Every operation is one call of the same script: it reads ``TIME`` (Redis's clock, the only one
the proxies share), drops what expired, does its work, and publishes on ``FREED_CHANNEL`` when a
slot became free, so the waiters of every proxy ask again at once instead of at their next poll.
Nothing here imports mitmproxy; the addon (addons.in_flight) decides when to call what.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import uuid
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass

import redis.asyncio
from redis.commands.core import AsyncScript

from memory_routing.fleet.health import REDIS, FleetHealth
from memory_routing.fleet.postgres import outage_reason  # class and first line: no URL, no password
from memory_routing.fleet.redis_client import COMMAND_TIMEOUT_S, REDIS_FALLBACK, listen_forever, open_client

KEY_PREFIX = "memory-routing:cap"
FREED_CHANNEL = f"{KEY_PREFIX}:freed"
PROBE_S = 1.0  # while Redis is down, how often it is tried again
POLL_MAX_S = 0.5  # a waiter asks again at least this often, announcement or not

LEASE_SCRIPT = """
local leases, queue, tickets, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, channel, host = ARGV[1], ARGV[2], ARGV[3]
local cap, lease_ms, ticket_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- What its proxy stopped renewing is gone: a dead holder's slots, a dead waiter's place.
local freed = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', tickets, '-inf', now)
for _, ticket in ipairs(dead) do
  redis.call('ZREM', queue, ticket)
  redis.call('ZREM', tickets, ticket)
end
local granted = 0
if op == 'acquire' then
  local ticket = ARGV[7]
  if redis.call('ZSCORE', leases, ticket) then
    granted = 1  -- asked again after a lost answer: it holds the slot already
  else
    if not redis.call('ZSCORE', queue, ticket) then
      redis.call('ZADD', queue, redis.call('INCR', seq), ticket)
    end
    local rank = redis.call('ZRANK', queue, ticket)
    if rank < cap - redis.call('ZCARD', leases) then
      redis.call('ZREM', queue, ticket)
      redis.call('ZREM', tickets, ticket)
      redis.call('ZADD', leases, now + lease_ms, ticket)
      granted = 1
    else
      redis.call('ZADD', tickets, now + ticket_ms, ticket)
    end
  end
elseif op == 'renew' then
  -- XX: a lease released (or expired) meanwhile is not brought back as a phantom slot.
  for i = 7, #ARGV do
    redis.call('ZADD', leases, 'XX', now + lease_ms, ARGV[i])
  end
elseif op == 'release' then
  -- A waiter that gives up counts as freeing too: those behind it move up.
  for i = 7, #ARGV do
    freed = freed + redis.call('ZREM', leases, ARGV[i]) + redis.call('ZREM', queue, ARGV[i])
    redis.call('ZREM', tickets, ARGV[i])
  end
end
if op == 'acquire' then
  -- A quiet host's keys go away on their own (set where they are created: acquire).
  for _, key in ipairs({leases, queue, tickets, seq}) do
    redis.call('PEXPIRE', key, lease_ms + ticket_ms + 60000)
  end
end
local waiting = redis.call('ZCARD', queue)
if (freed > 0 or #dead > 0) and waiting > 0 then
  redis.call('PUBLISH', channel, host)  -- only when someone waits: no cost to an uncontended call
end
return {granted, redis.call('ZCARD', leases), waiting, now}
"""


def lease_keys(host: str) -> list[str]:
    """The host's keys, in the script's KEYS order (one hash tag: one Redis Cluster slot)."""
    base = f"{KEY_PREFIX}:{{{host}}}"
    return [f"{base}:leases", f"{base}:queue", f"{base}:tickets", f"{base}:seq"]


@dataclass(frozen=True, slots=True)
class FleetCount:
    """One answer of the script: whether the ticket was granted, the fleet's figures for the host
    (slots taken, calls waiting) and Redis's clock (ms) when it ran."""

    granted: bool
    in_flight: int
    waiting: int
    redis_ms: int


class LeaseIds:
    """Lease ids unique across the fleet: this process's random id, then a counter."""

    def __init__(self, proxy_name: str) -> None:
        self.prefix = f"{proxy_name}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}:{next(self._counter)}"


class FleetLeases:
    """The lease script's operations for one fleet (one Redis): asyncio, on mitmproxy's loop.

    ``lease_ms``: how long a slot outlives its last renewal; ``ticket_ms``: how long a waiter's
    place outlives its last ask. Errors are redis-py's (``redis.RedisError``): the caller
    falls back to its local cap.
    """

    def __init__(self, client: redis.asyncio.Redis, *, lease_seconds: float, ticket_seconds: float) -> None:
        self.client = client
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.ticket_ms = max(1, int(ticket_seconds * 1000))
        self._script: AsyncScript = client.register_script(LEASE_SCRIPT)

    async def _run(self, op: str, host: str, cap: int, tickets: Sequence[str]) -> FleetCount:
        granted, in_flight, waiting, redis_ms = await self._script(
            keys=lease_keys(host), args=self.arguments(op, host, cap, tickets))
        return FleetCount(bool(granted), int(in_flight), int(waiting), int(redis_ms))

    def arguments(self, op: str, host: str, cap: int, tickets: Sequence[str]) -> list[str | int]:
        """The script's ARGV for one operation."""
        return [op, FREED_CHANNEL, host, cap, self.lease_ms, self.ticket_ms, *tickets]

    async def acquire(self, host: str, ticket: str, cap: int) -> FleetCount:
        """Take a slot for ``ticket`` if its turn has come (else it keeps its place in the queue)."""
        return await self._run("acquire", host, cap, [ticket])

    async def renew(self, host: str, tickets: Sequence[str]) -> FleetCount:
        """Extend the leases of the calls still running (none: just read the figures)."""
        return await self._run("renew", host, 0, tickets)

    async def release(self, host: str, tickets: Sequence[str]) -> FleetCount:
        """Give slots back, or give up places in the queue; wakes the fleet's waiters."""
        return await self._run("release", host, 0, tickets)


class FleetSlot:
    """A slot of the fleet's cap this proxy holds for one call; ``release`` gives it back."""

    __slots__ = ("cap", "host", "ticket")

    def __init__(self, cap: FleetCap, host: str, ticket: str) -> None:
        self.cap = cap
        self.host = host
        self.ticket = ticket

    def release(self) -> None:
        self.cap.release(self)


class FleetCap:
    """This proxy's side of the fleet's cap: takes slots, renews them while their calls run,
    gives them back, and wakes its waiters when any proxy frees a slot.

    Runs on one asyncio loop (mitmproxy's). A Redis error is reported to ``health`` (one warning
    per outage) and raised to the caller, who counts the call locally; meanwhile ``usable`` is
    False and a probe on the renewal tick notices when Redis is back.
    """

    def __init__(self, url: str, health: FleetHealth, *, lease_seconds: float, proxy_name: str) -> None:
        self.url = url
        client = open_client(url)
        # A waiter asks again at least every POLL, and its place outlives that several times
        # over; renewals come three times per lease, so one lost renewal costs no slot.
        self.poll_s = min(POLL_MAX_S, lease_seconds / 3)
        ticket_seconds = min(lease_seconds, max(5 * self.poll_s, 2.0))
        self.leases = FleetLeases(client, lease_seconds=lease_seconds, ticket_seconds=ticket_seconds)
        self.client = client
        self.health = health
        self.tick_s = lease_seconds / 3
        self.new_ticket = LeaseIds(proxy_name)
        self.held: dict[str, set[str]] = {}  # host -> tickets this proxy holds slots for
        self.counts: dict[str, FleetCount] = {}  # host -> the fleet's figures as last seen
        self.waiting: collections.Counter[str] = collections.Counter()  # host -> this proxy's calls queued
        self._freed: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def usable(self) -> bool:
        return not self.health.is_degraded(REDIS)

    def start(self) -> None:
        """Start the renewal and wake-up tasks on the running loop."""
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._renew_forever()), asyncio.ensure_future(self._listen_forever())]

    def stop(self) -> None:
        """Stop renewing and listening (the proxy stops): leases not given back yet run out."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def give_back_all(self) -> None:
        """At shutdown (mitmproxy's ``done``, synchronous): stop, and release every lease still
        held, one blocking script call per host bounded by the command timeout, so a restarted
        proxy does not keep the fleet's slots for a lease time. What fails runs out on its own."""
        self.stop()
        held = {host: sorted(tickets) for host, tickets in self.held.items() if tickets}
        self.held.clear()
        if not held:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=COMMAND_TIMEOUT_S,
                                      socket_connect_timeout=COMMAND_TIMEOUT_S)
        try:
            release = client.register_script(LEASE_SCRIPT)
            for host, tickets in held.items():
                release(keys=lease_keys(host), args=self.leases.arguments("release", host, 0, tickets))
        except redis.RedisError:
            pass
        finally:
            client.close()

    async def close(self) -> None:
        self.stop()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.aclose()

    def hosts(self) -> set[str]:
        """The hosts this proxy has figures for, holds slots at, or queues for."""
        return self.held.keys() | self.counts.keys() | {host for host, n in self.waiting.items() if n > 0}

    def failed(self, error: BaseException) -> None:
        self.health.failed(REDIS, outage_reason(error), REDIS_FALLBACK)

    async def take(self, host: str, cap: int, timeout: float) -> FleetSlot | None:
        """A slot for one call, waiting in the fleet's queue for at most ``timeout`` seconds
        (None: none came in time). Raises redis.RedisError (reported) when Redis fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ticket = self.new_ticket()
        queued = False
        try:
            while True:
                freed = self._freed.setdefault(host, asyncio.Event())
                count = await self._call(self.leases.acquire(host, ticket, cap))
                self.counts[host] = count
                if count.granted:
                    self.held.setdefault(host, set()).add(ticket)
                    return FleetSlot(self, host, ticket)
                left = deadline - loop.time()
                if left <= 0:
                    break
                if not queued:
                    queued = True
                    self.waiting[host] += 1
                try:
                    await asyncio.wait_for(freed.wait(), min(left, self.poll_s))
                except TimeoutError:
                    pass
        except BaseException:
            self._in_background(self._give_back(host, ticket))  # its place in the queue, if it has one
            raise
        finally:
            if queued:
                self.waiting[host] -= 1
        self._in_background(self._give_back(host, ticket))
        return None

    def release(self, slot: FleetSlot) -> None:
        held = self.held.get(slot.host)
        if held is None or slot.ticket not in held:
            return
        held.discard(slot.ticket)
        self._in_background(self._give_back(slot.host, slot.ticket))

    async def _give_back(self, host: str, ticket: str) -> None:
        try:
            self.counts[host] = await self._call(self.leases.release(host, [ticket]))
        except redis.RedisError:
            pass  # reported; its lease runs out on its own
        self._wake(host)  # this proxy's own waiters need not wait for the announcement

    async def _call(self, operation: Awaitable[FleetCount]) -> FleetCount:
        try:
            count = await operation
        except redis.RedisError as e:
            self.failed(e)
            raise
        self.health.recovered(REDIS)
        return count

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _wake(self, host: str) -> None:
        freed = self._freed.pop(host, None)
        if freed is not None:
            freed.set()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s if self.usable else min(self.tick_s, PROBE_S))
            try:
                await self.renew_now()
            except redis.RedisError:
                pass  # reported; the next tick probes again

    async def renew_now(self) -> None:
        """Renew every lease this proxy holds, and refresh the fleet's figures (or probe Redis
        during an outage)."""
        if not self.usable and not self.held and not self.counts:
            await self._call(self._ping())
        for host in list(self.held.keys() | self.counts.keys()):
            tickets = sorted(self.held.get(host, ()))
            self.counts[host] = await self._call(self.leases.renew(host, tickets))
            if not tickets:
                self.held.pop(host, None)

    async def _ping(self) -> FleetCount:
        await self.client.execute_command("PING")
        return FleetCount(False, 0, 0, 0)

    async def _listen_forever(self) -> None:
        # Only for promptness: a waiter polls anyway, so a lost announcement costs one poll.
        await listen_forever(self.client, FREED_CHANNEL, lambda host: self._wake(host.decode("utf-8", "replace")),
                             self.tick_s, self._wake_all)

    def _wake_all(self) -> None:
        for host in list(self._freed):
            self._wake(host)
