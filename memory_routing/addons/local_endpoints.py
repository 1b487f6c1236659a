"""Addon answering the proxy's own endpoints; these requests are never forwarded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx
from mitmproxy import http

from memory_routing import __version__
from memory_routing.dashboard import api as dashboard
from memory_routing.addons.local_stores import LocalStores
from memory_routing.errors import InvalidUserId, SharedServerUnavailable
from memory_routing.dashboard.bodies import (
    anthropic_models_body,
    health_body,
    openai_models_body,
    routing_info_body,
)
from memory_routing.wire.protocol import ClientProtocol, detect_protocol
from memory_routing.wire.responses import error_response, json_response, refusal_response
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons.shared_servers import SharedServers
from memory_routing.mitm.flows import is_gateway
from memory_routing.mitm.modes import gateway_urls, loopback_alias, own_listeners

# Through the forward proxy the endpoints live on this name. ".localhost" is reserved
# (RFC 6761): it never resolves to a real server, so no request to it can leak upstream.
RESERVED_HOST = "memory-routing.localhost"

HEALTH_PATH = "/health"
INFO_PATH = "/memory-routing/info"
MODELS_PATH = "/v1/models"
DASHBOARD_PATH = dashboard.PREFIX + "/"
# Dashboard requests read and write SQLite in threads; at most this many at once, the rest wait.
DASHBOARD_THREADS = 4

logger = logging.getLogger(__name__)


def gateway_host(flow: http.HTTPFlow, origin: str | None) -> str:
    """The Host a gateway client addressed, for the dashboard's host and Origin checks.

    In reverse mode mitmproxy replaces the Host header with the upstream's before any hook runs
    (unless keep_host_header), so the listener's own address stands in for it; a loopback Origin
    on the listener's port (the page itself, reached as localhost or 127.0.0.1) is taken as is.
    """
    host, port = flow.client_conn.sockname[:2]
    if origin:
        parts = urlsplit(origin)
        if parts.hostname in dashboard.LOOPBACK_HOSTS and parts.port == port:
            return parts.netloc
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LocalEndpoints:
    def __init__(
        self,
        routing: RoutingConfig,
        status_sources: dict[str, Callable[[], object]] | None = None,
        stores: LocalStores | None = None,
        memory_status: Callable[[], dict[str, object]] | None = None,
        litellm_status: Callable[[], dict[str, object]] | None = None,
        shared: SharedServers | None = None,
        usage_status: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.routing = routing
        # The usage writer's counts (rows queued, written, dropped; waiting for the fleet's database).
        self.usage_status = usage_status
        # The fleet's servers: /health names a degraded one, /memory-routing/info shows them.
        self.shared = shared
        # /health says whether LiteLLM's model table is loaded yet, and how many model calls
        # wait for it meanwhile.
        self.litellm_status = litellm_status
        # The local SQLite file (memory, usage rows) the dashboard reads; None: no dashboard.
        self.stores = stores
        # The memory addon's own account for /memory-routing/info (backend and counts, never
        # contents); without one, the store's counts. Called in a thread.
        self.memory_status = memory_status
        self._dashboard_slots: asyncio.Semaphore | None = None
        # Live state of other addons shown under "upstreams" in /memory-routing/info.
        self.status_sources = status_sources or {}
        self.started_at = time.time()
        # This proxy's listeners, to answer a request addressed to the forward-proxy listener
        # itself (a base URL set to it) instead of mitmproxy's HTML "destination unknown" page.
        self.own_listeners: frozenset[tuple[str, int]] = frozenset()
        self.gateway_urls: list[str] = []
        self.routes: dict[str, Callable[[http.HTTPFlow], http.Response]] = {
            HEALTH_PATH: self.health,
            INFO_PATH: self.routing_info,
            MODELS_PATH: self.models,
        }

    def configure(self, updated) -> None:
        if {"mode", "listen_host"} & set(updated):
            self.own_listeners = own_listeners(ctx.options.mode, ctx.options.listen_host)
            self.gateway_urls = gateway_urls(ctx.options.mode, ctx.options.listen_host)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        on_gateway = is_gateway(flow)
        if not on_gateway and (loopback_alias(flow.request.host), flow.request.port) in self.own_listeners:
            flow.response = error_response(flow, 421, self._misdirected(flow))
            return None
        if not on_gateway and flow.request.host.lower() != RESERVED_HOST:
            return None
        raw_path = flow.request.path.split("?", 1)[0]
        path = raw_path.rstrip("/") or "/"
        handler = self.routes.get(path)
        if handler is None and self.stores is not None and (path == dashboard.PREFIX or raw_path.startswith(DASHBOARD_PATH)):
            # Only this request waits for the store; mitmproxy awaits what a hook returns.
            return self._dashboard(flow, raw_path)
        if handler is None:
            if not on_gateway:
                # Nothing exists behind the reserved name, so an unknown path ends here.
                flow.response = error_response(flow, 404, f"no local endpoint {path}; try {', '.join(self.routes)}")
            return None
        if flow.request.method not in ("GET", "HEAD"):
            flow.response = error_response(flow, 405, f"{path} answers GET only")
            return None
        flow.metadata["memory_routing.local_endpoint"] = path
        if path == INFO_PATH and self.stores is not None:
            body = self._routing_info_body(flow)
            if isinstance(body, dict):
                return self._info_with_store(flow, body)
            flow.response = body
            return None
        flow.response = handler(flow)
        return None

    def _misdirected(self, flow: http.HTTPFlow) -> str:
        here = f"{flow.request.host}:{flow.request.port}"
        if self.gateway_urls:
            gateway = self.gateway_urls[0]
            use = f"as a base URL use the gateway, {gateway} (OPENAI_BASE_URL={gateway}/v1, ANTHROPIC_BASE_URL={gateway})"
        else:
            use = "for a base URL start the proxy with a gateway listener (--mode reverse:http://memory-routing.localhost@8764)"
        return f"{here} is this proxy's forward-proxy listener: clients reach it through HTTPS_PROXY / HTTP_PROXY; {use}"

    def health(self, flow: http.HTTPFlow) -> http.Response:
        body = health_body(__version__, self.started_at, self.routing.loaded_at, self.routing.last_error)
        if self.litellm_status is not None:
            body.update(self.litellm_status())
        if self.stores is not None and (recovered := self.stores.recovery()) is not None:
            body["store_recovered"] = recovered  # the store file was damaged at start: what was saved
        if self.shared is not None and (degraded := self.shared.health_status()):
            # Still 200: every call is answered; a shared part works locally until it is back.
            body["status"] = "degraded"
            body["degraded"] = degraded
        return json_response(200, body)

    def routing_info(self, flow: http.HTTPFlow) -> http.Response:
        body = self._routing_info_body(flow)
        return body if isinstance(body, http.Response) else json_response(200, body)

    def _routing_info_body(self, flow: http.HTTPFlow) -> dict[str, Any] | http.Response:
        assert self.routing.classifier is not None
        try:
            identity = self.routing.classifier.classify(flow.request.headers)
        except InvalidUserId as e:
            return refusal_response(e, flow)
        listener = "gateway" if is_gateway(flow) else "forward"
        body = routing_info_body(identity, flow.request.headers.items(multi=True), listener, self.routing.summary)
        body["upstreams"] = {name: source() for name, source in self.status_sources.items()}
        if self.shared is not None:
            body["fleet"] = self.shared.status()
        return body

    async def _off_loop(self, work: Callable[[], Any]) -> Any:
        if self._dashboard_slots is None:
            self._dashboard_slots = asyncio.Semaphore(DASHBOARD_THREADS)
        async with self._dashboard_slots:
            return await asyncio.to_thread(work)

    async def _dashboard(self, flow: http.HTTPFlow, path: str) -> None:
        try:
            flow.response = await self._dashboard_response(flow, path)
        except Exception:
            # Fail closed: a dashboard request is never forwarded, whatever went wrong.
            logger.exception("memory-routing: the dashboard failed to answer")
            flow.response = error_response(flow, 500, "the dashboard failed to answer; the proxy's log has the details")
        flow.metadata["memory_routing.local_endpoint"] = dashboard.PREFIX

    async def _dashboard_response(self, flow: http.HTTPFlow, path: str) -> http.Response:
        request = flow.request
        sources = self._dashboard_sources()
        query = {name: value for name, value in request.query.items()}
        headers = {name.lower(): value for name, value in request.headers.items()}
        if is_gateway(flow):
            headers["host"] = gateway_host(flow, headers.get("origin"))
        body = request.raw_content if "content-encoding" not in request.headers else request.get_content(strict=False)
        answer = await self._off_loop(
            lambda: dashboard.handle(request.method, path, query, body or b"", sources, headers)
        )
        if answer is None:  # not the dashboard's path after all
            answer = dashboard.error_answer(404, f"no local endpoint {path}")
        fields = [("content-type", answer.content_type), ("cache-control", "no-store"), *answer.headers]
        return http.Response.make(
            answer.status, answer.body, [(name.encode(), value.encode()) for name, value in fields]
        )

    def _dashboard_sources(self) -> dashboard.DashboardSources:
        assert self.stores is not None
        return dashboard.DashboardSources(
            usage=self.stores.usage,
            memory=self.stores.memory,
            config_summary=lambda: self.routing.summary,
            health=lambda: health_body(__version__, self.started_at, self.routing.loaded_at, self.routing.last_error)
            | {"store": self.stores.status() if self.stores else None},
        )

    async def _info_with_store(self, flow: http.HTTPFlow, body: dict[str, Any]) -> None:
        try:
            body["store"] = await self._off_loop(self.store_status)
        except Exception as e:  # info answers even when the store does not
            body["store"] = {"error": type(e).__name__}
        flow.response = json_response(200, body)

    def store_status(self) -> dict[str, object]:
        """Where the local file is and how much it holds: counts, never contents."""
        assert self.stores is not None
        status: dict[str, object] = self.stores.status()
        usage, memory = self.stores.usage, self.stores.memory
        if usage is not None:
            try:
                status["usage_calls"] = usage.count()
            except SharedServerUnavailable as e:  # the fleet's database is down: the rest still answers
                status["usage_calls"] = None
                status["usage_unavailable"] = str(e)
        if self.usage_status is not None:
            status["usage_writer"] = self.usage_status()
        if self.memory_status is not None:
            status["memory"] = self.memory_status()
        elif memory is not None:
            status["memory"] = memory.counts()
        return status

    def models(self, flow: http.HTTPFlow) -> http.Response:
        assert self.routing.config is not None
        created = int(self.routing.loaded_at)
        if detect_protocol(flow.request.path, flow.request.headers) is ClientProtocol.ANTHROPIC:
            return json_response(200, anthropic_models_body(self.routing.config, created))
        return json_response(200, openai_models_body(self.routing.config, created))
