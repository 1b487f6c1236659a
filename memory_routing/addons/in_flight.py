"""Addon that caps concurrent requests per upstream host and queues the rest in arrival order.

Cloudflare answers error 1200 when too many requests queue at its edge for one origin; a
bounded number in flight from this proxy is the cure that cookies alone are not.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from dataclasses import dataclass, field

from mitmproxy import ctx
from mitmproxy import http

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
    def __init__(self) -> None:
        self.cap = 0
        self.queue_timeout = 0
        self._hosts: dict[str, _HostSlots] = {}

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

    @fail_closed(500, "the proxy failed to queue this request; its log has the details")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Synchronous when a slot is free (the common case); mitmproxy awaits what a hook
        # returns, so only a request that must queue pays for a coroutine.
        route = route_of(flow)
        if route is None or flow.response is not None or self.cap <= 0:
            return None
        slots = self._hosts.get(host := f"{flow.request.host}:{flow.request.port}")
        if slots is None:
            slots = self._hosts[host] = _HostSlots()
        if slots.in_flight < self.cap and not slots.waiting:
            slots.in_flight += 1
            context_of(flow).slot = slots
            return None
        return self._wait_for_slot(flow, slots, route)

    async def _wait_for_slot(self, flow: http.HTTPFlow, slots: _HostSlots, route: Route) -> None:
        waiter = asyncio.get_running_loop().create_future()
        slots.waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.queue_timeout)
        except TimeoutError:
            flow.response = error_response(
                flow, 503,
                f"{slots.in_flight} requests to {flow.request.host} are in flight (the proxy's cap) and this one "
                f"waited {self.queue_timeout} s for a slot; retry later",
                retryable=True, protocol=route.client_protocol,
                headers={"retry-after": str(max(1, self.queue_timeout // 4))},
            )
            return
        context_of(flow).slot = slots
        if not flow.live or flow.error:  # the client left while it waited
            self._release(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._release(flow)

    def status(self) -> dict[str, dict[str, int]]:
        return {
            host: {"in_flight": slots.in_flight, "queued": sum(not w.done() for w in slots.waiting), "cap": self.cap}
            for host, slots in sorted(self._hosts.items())
        }

    def _release(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        if context is not None and context.slot is not None:
            slots, context.slot = context.slot, None
            slots.release()
