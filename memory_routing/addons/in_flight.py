"""Addon that caps concurrent requests per upstream host and queues the rest in arrival order.

Cloudflare answers error 1200 when too many requests queue at its edge for one origin; a
bounded number in flight from this proxy is the cure that cookies alone are not.

With ``storage.redis_url`` the cap is the fleet's: slots are leases in Redis (fleet.leases),
shared by every proxy naming that Redis. When Redis fails, calls are counted by this proxy's
local queue at once (one warning per outage, /health degraded) until it is back.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from dataclasses import dataclass, field

import redis
from mitmproxy import ctx
from mitmproxy import http

from memory_routing.addons.shared_servers import SharedServers
from memory_routing.fleet.leases import FleetCap, FleetSlot
from memory_routing.flow_state import Route, context_of, known_context, route_of
from memory_routing.wire.responses import error_response, fail_closed


@dataclass
class _HostSlots:
    in_flight: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)

    def release(self) -> None:
        # Hand the slot straight to the oldest live waiter, so arrival order is kept.
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


class InFlightLimiter:
    def __init__(self, shared: SharedServers | None = None) -> None:
        self.cap = 0
        self.queue_timeout = 0
        self._hosts: dict[str, _HostSlots] = {}
        self.shared = shared
        self.fleet: FleetCap | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_max_in_flight", int, 16,
            "Requests in flight at once per upstream host; the rest wait in arrival order. 0: no cap.",
        )
        loader.add_option(
            "memory_routing_queue_timeout", int, 60,
            "Seconds a request may wait for a slot before it is answered 503 with retry-after.",
        )

    def configure(self, updated) -> None:
        if "memory_routing_max_in_flight" in updated:
            self.cap = ctx.options.memory_routing_max_in_flight
        if "memory_routing_queue_timeout" in updated:
            self.queue_timeout = ctx.options.memory_routing_queue_timeout

    def running(self) -> None:
        shared = self.shared
        if self.fleet is None and shared is not None and shared.redis_url and shared.settings is not None:
            self.fleet = FleetCap(shared.redis_url, shared.health,
                                  lease_seconds=shared.settings.lease_seconds, proxy_name=shared.proxy_name)
            self.fleet.start()

    def done(self) -> None:
        if self.fleet is not None:
            self.fleet.give_back_all()  # the calls cut short by the stop: the fleet gets their slots now
            self.fleet = None

    @fail_closed(500, "the proxy failed to queue this request; its log has the details")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Synchronous when a slot is free (the common case); mitmproxy awaits what a hook
        # returns, so only a request that must queue pays for a coroutine.
        route = route_of(flow)
        if route is None or flow.response is not None or self.cap <= 0:
            return None
        host = f"{flow.request.host}:{flow.request.port}"
        if self.fleet is not None and self.fleet.usable:
            return self._fleet_slot(flow, host, route)
        return self._local_slot(flow, host, route, self.queue_timeout)

    def _local_slot(self, flow: http.HTTPFlow, host: str, route: Route, timeout: float) -> Awaitable[None] | None:
        slots = self._hosts.get(host)
        if slots is None:
            slots = self._hosts[host] = _HostSlots()
        if slots.in_flight < self.cap and not slots.waiting:
            slots.in_flight += 1
            context_of(flow).slot = slots
            return None
        return self._wait_for_slot(flow, slots, route, timeout)

    async def _wait_for_slot(self, flow: http.HTTPFlow, slots: _HostSlots, route: Route, timeout: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        slots.waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._answer_queue_timeout(flow, route, slots.in_flight, "the proxy's cap")
            return
        self._hold(flow, slots)

    async def _fleet_slot(self, flow: http.HTTPFlow, host: str, route: Route) -> None:
        assert self.fleet is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        try:
            slot = await self.fleet.take(host, self.cap, self.queue_timeout)
        except redis.RedisError:
            # Reported once per outage (FleetHealth); this call is counted here, in the time it has left.
            waiting = self._local_slot(flow, host, route, max(0.0, deadline - loop.time()))
            if waiting is not None:
                await waiting
            return
        if slot is None:
            count = self.fleet.counts.get(host)
            self._answer_queue_timeout(flow, route, count.in_flight if count else self.cap, "the fleet's cap")
            return
        self._hold(flow, slot)

    def _hold(self, flow: http.HTTPFlow, slot: _HostSlots | FleetSlot) -> None:
        context_of(flow).slot = slot
        if not flow.live or flow.error:  # the client left while it waited
            self._release(flow)

    def _answer_queue_timeout(self, flow: http.HTTPFlow, route: Route, in_flight: int, whose: str) -> None:
        flow.response = error_response(
            flow, 503,
            f"{in_flight} requests to {flow.request.host} are in flight ({whose}) and this one "
            f"waited {self.queue_timeout} s for a slot; retry later",
            retryable=True, protocol=route.client_protocol,
            headers={"retry-after": str(max(1, self.queue_timeout // 4))},
        )

    def response(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def status(self) -> dict[str, dict[str, object]]:
        """Per host: this proxy's calls in flight and queued (local and fleet slots), and with
        Redis the fleet's figures as of the last lease operation or renewal tick."""
        hosts = self._hosts.keys() | (self.fleet.hosts() if self.fleet is not None else set())
        return {host: self._host_status(host) for host in sorted(hosts)}

    def _host_status(self, host: str) -> dict[str, object]:
        slots = self._hosts.get(host)
        in_flight = slots.in_flight if slots is not None else 0
        queued = sum(not w.done() for w in slots.waiting) if slots is not None else 0
        status: dict[str, object] = {"cap": self.cap}
        if self.fleet is not None:
            in_flight += len(self.fleet.held.get(host, ()))
            queued += self.fleet.waiting[host]
            if (count := self.fleet.counts.get(host)) is not None:
                status["fleet"] = {"in_flight": count.in_flight, "waiting": count.waiting}
        return {"in_flight": in_flight, "queued": queued, **status}

    def _release(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        if context is not None and context.slot is not None:
            slots, context.slot = context.slot, None
            slots.release()
