"""Addon that turns upstream failures of routed calls into errors in the client's own shape.

- An upstream that refuses the connection, does not resolve, or breaks before answering: 502.
  A name that does not resolve, a refused connection or an unreachable network is no passing
  fault: that 502 says ``x-should-retry: false`` (an SDK would otherwise retry for minutes) and
  names the host, the alias the model matched or that it matched none, and the aliases there are.
- One that does not accept the connection within the connect timeout, or sends nothing for
  the read timeout (before its answer, or between two chunks of it): 504, and the upstream
  connection is dropped. mitmproxy itself has no such timeouts: it would wait for the OS.
- An answer cut short after it started cannot be turned into an error any more: the client
  sees a broken stream (mitmproxy closes the connection without the final chunk), and the
  proxy logs it, so a truncated answer is never mistaken for a complete one.

Every other failure of a routed call gets a 502 in the client's shape too, never mitmproxy's
HTML page (see error_pages). Upstream 4xx/5xx answers are answers: they pass through as sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.error_pages import ErrorPageOverrides
from memory_routing.mitm.internals import connection_task, drop_connection
from memory_routing.flow_state import context_of, route_of
from memory_routing.wire.responses import error_response

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 0.25
# The text of a cancelled connect attempt starts with this (mitmproxy passes the cancel message
# on as the connection error).
CONNECT_TIMEOUT_TEXT = "memory-routing: connect timeout"
# How the OS words a connection that cannot be made at all (asyncio's and getaddrinfo's texts):
# a retry a second later meets the same answer.
_UNREACHABLE_TEXTS: tuple[tuple[str, str], ...] = (
    ("name or service not known", "its name does not resolve"),
    ("nodename nor servname", "its name does not resolve"),
    ("no address associated with hostname", "its name does not resolve"),
    ("temporary failure in name resolution", "its name does not resolve (no DNS answer: is there a network?)"),
    ("connection refused", "it refused the connection (nothing listens on that port)"),
    ("connect call failed", "it refused the connection (nothing listens on that port)"),
    ("network is unreachable", "the network cannot reach it (is there a network?)"),
    ("no route to host", "the network cannot reach it (is there a network?)"),
)


def unreachable_reason(error_text: str) -> str | None:
    """Why an upstream cannot be connected to at all, in words; None for any other failure."""
    lowered = error_text.lower()
    for text, reason in _UNREACHABLE_TEXTS:
        if text in lowered:
            return reason
    return None


# Addresses whose connect attempt timed out recently: mitmproxy's connect error does not name
# the flow, so the error hook matches the flow's target against this.
_RECENT_SECONDS = 30.0


@dataclass
class _Watched:
    """A routed flow waiting for (or reading) its upstream answer."""

    flow: http.HTTPFlow
    sent_at: float
    last_chunk_at: float | None = None


class UpstreamFailures:
    def __init__(self, pages: ErrorPageOverrides | None = None, routing: RoutingConfig | None = None) -> None:
        self.pages = pages or ErrorPageOverrides()
        self.routing = routing  # the aliases an unreachable host's message lists
        self.connect_timeout = 10.0
        self.read_timeout = 300.0
        self._flows: dict[str, _Watched] = {}
        # Server connections to routed targets that are still connecting: when they started.
        self._connecting: weakref.WeakKeyDictionary[connection.Server, float] = weakref.WeakKeyDictionary()
        # The task that owns each server connection (it connects, then reads until the end).
        self._tasks: weakref.WeakKeyDictionary[connection.Server, asyncio.Task] = weakref.WeakKeyDictionary()
        self._routed_targets: set[tuple[str, int]] = set()
        self._connect_timeouts: dict[tuple[str, int], float] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_connect_timeout", int, 10,
            "Seconds a routed call may wait for the upstream to accept its connection (DNS included); then 504.",
        )
        loader.add_option(
            "memory_routing_read_timeout", int, 300,
            "Seconds a routed call may wait for the upstream's answer, or between two chunks of it; then 504.",
        )

    def configure(self, updated) -> None:
        # 0 or less would time out every connection at once.
        for name in ("memory_routing_connect_timeout", "memory_routing_read_timeout"):
            if name in updated and getattr(ctx.options, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be > 0 seconds, got {getattr(ctx.options, name)}")
        self.connect_timeout = ctx.options.memory_routing_connect_timeout
        self.read_timeout = ctx.options.memory_routing_read_timeout

    def running(self) -> None:
        self.pages.install()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def done(self) -> None:
        self.pages.uninstall()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- hooks ----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and route_of(flow) is not None and flow.error is None:
            self._flows[flow.id] = _Watched(flow, time.time())
            if len(self._routed_targets) < 4096:
                self._routed_targets.add((flow.request.host, flow.request.port))

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        # Runs inside the task that will connect and then read this connection: cancelling it
        # is how a timed-out connection is dropped.
        task = connection_task()
        if task is not None:
            self._tasks[data.server] = task
        if data.server.address is not None and data.server.address in self._routed_targets:
            self._connecting[data.server] = time.time()

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connecting.pop(data.server, None)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._connecting.pop(data.server, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        watched = self._flows.get(flow.id)
        if watched is None or flow.response is None:
            return
        watched.last_chunk_at = time.time()
        inner = flow.response.stream
        if not inner:
            return  # a buffered answer: the read timeout keeps counting until it is complete
        pass_on = inner if callable(inner) else None

        def note_chunk(chunk: bytes) -> Iterable[bytes] | bytes:
            watched.last_chunk_at = time.time()
            return pass_on(chunk) if pass_on is not None else chunk

        flow.response.stream = note_chunk

    def response(self, flow: http.HTTPFlow) -> None:
        self._flows.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        watched = self._flows.pop(flow.id, None)
        route = route_of(flow)
        if route is None or flow.error is None:
            return
        host = flow.request.pretty_host
        if flow.response is not None and flow.response.stream:
            # The answer had started reaching the client: all that can be done is not to pass
            # it off as complete.
            received = "" if watched is None or watched.last_chunk_at is None else " after its first bytes"
            # mitmproxy reports a read cancelled for its timeout as "server closed connection": it did not.
            why = context_of(flow).failure or flow.error.msg
            logger.warning(
                f"memory-routing: the answer from {host} was cut short{received} ({why}); "
                f"the client gets a broken stream"
            )
            return
        status, message, retryable = self._describe(flow, host)
        logger.warning(f"memory-routing: {message}")
        if not flow.client_conn.state & connection.ConnectionState.CAN_WRITE:
            return  # the client has gone: no page will be written
        answer = error_response(flow, status, message, retryable=retryable, protocol=route.client_protocol)
        self.pages.register(flow.error.msg, answer)

    # --- timeouts -------------------------------------------------------------------------

    def _describe(self, flow: http.HTTPFlow, host: str) -> tuple[int, str, bool]:
        """(status, message, retryable) for a failure before the answer started."""
        text = flow.error.msg if flow.error else ""
        read_timeout = context_of(flow).failure  # set only when the watchdog cancelled the read
        if read_timeout is not None:
            return 504, f"{read_timeout}; gave up", True
        recent = self._connect_timeouts.get((flow.request.host, flow.request.port))
        if CONNECT_TIMEOUT_TEXT in text or (recent is not None and time.time() - recent < _RECENT_SECONDS):
            return 504, (
                f"{host} did not accept a connection within {self.connect_timeout:g} s "
                f"(memory_routing_connect_timeout)"
            ), True
        if "body_size_limit" in text:
            return 413, f"mitmproxy refused the body: {text}", True
        reason = unreachable_reason(text)
        if reason is not None:
            return 502, f"the proxy could not get an answer from {host}: {reason} ({text}); {self._which_alias(flow)}", False
        return 502, f"the proxy could not get an answer from {host}: {text}", True

    def _which_alias(self, flow: http.HTTPFlow) -> str:
        """How the model came to this host: its alias, or none (then the provider's own API)."""
        route = route_of(flow)
        assert route is not None
        decision = route.decision
        config = self.routing.config if self.routing is not None else None
        aliases = ", ".join(config.aliases) if config is not None and config.aliases else "none are configured"
        if decision.alias is not None:
            return f"model {decision.requested_model!r} is the alias {decision.alias!r}, whose api_base names this host"
        return (
            f"model {decision.requested_model!r} matched no alias, so it went to {decision.provider}'s own API; "
            f"the aliases are: {aliases}"
        )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self._sweep(time.time())
            except Exception:  # the sweeper must outlive any one bad flow
                logger.exception("memory-routing: upstream timeout check failed")

    def _sweep(self, now: float) -> None:
        for server, started in list(self._connecting.items()):
            if now - started > self.connect_timeout:
                self._connecting.pop(server, None)
                if server.address is not None:
                    self._connect_timeouts[server.address] = now
                self._cancel(server, f"{CONNECT_TIMEOUT_TEXT} after {self.connect_timeout:g} s")
        for address, when in list(self._connect_timeouts.items()):
            if now - when > _RECENT_SECONDS:
                del self._connect_timeouts[address]
        for flow_id, watched in list(self._flows.items()):
            flow = watched.flow
            if not flow.live or flow.error is not None:
                del self._flows[flow_id]
                continue
            connected_at = flow.server_conn.timestamp_tcp_setup
            if connected_at is None or flow.server_conn.state is connection.ConnectionState.CLOSED:
                continue  # still connecting: the connect timeout applies
            last = watched.last_chunk_at or max(watched.sent_at, connected_at)
            if now - last > self.read_timeout:
                del self._flows[flow_id]
                context_of(flow).failure = (
                    f"read timeout: {flow.request.pretty_host} sent nothing for {self.read_timeout:g} s "
                    "(memory_routing_read_timeout)"
                )
                self._cancel(flow.server_conn, "memory-routing: read timeout")

    def _cancel(self, server: connection.Server, reason: str) -> None:
        task = self._tasks.get(server)
        if task is not None:
            drop_connection(task, reason)
