"""The addon set that ``addon.py`` hands to mitmproxy, wired to one shared config holder."""

from __future__ import annotations

from .cloudflare_guard import CloudflareGuard
from .gateway_auth import GatewayAuth
from .heap_freeze import HeapFreeze
from .in_flight import InFlightLimiter
from .intercept_scope import InterceptScope
from .listen_guard import ListenGuard
from .local_endpoints import LocalEndpoints
from .model_router import ModelRouter
from .providers import ProviderResolver
from .request_limits import RequestLimits
from .routing import RoutePlanner
from .routing_config import RoutingConfig
from .upstream_cookies import UpstreamCookies
from .upstream_failures import UpstreamFailures


def create_addons() -> list[object]:
    routing = RoutingConfig()
    cookies = UpstreamCookies()
    limiter = InFlightLimiter()
    # Order matters: options are checked and the config loaded before anything answers; the
    # gateway's credentials and the size limits are checked before anything is read from a
    # request; the local endpoints answer before the router rewrites; cookies are added and a
    # slot taken for the rewritten upstream; Cloudflare's pages are recognised after the router
    # chose to stream; the upstream watchdog starts counting once a request has its slot.
    return [
        ListenGuard(),
        routing,
        InterceptScope(routing),
        GatewayAuth(),
        RequestLimits(routing),
        LocalEndpoints(routing, status_sources={"cookies": cookies.status, "in_flight": limiter.status}),
        ModelRouter(routing, RoutePlanner(ProviderResolver())),
        cookies,
        limiter,
        CloudflareGuard(),
        UpstreamFailures(),
        HeapFreeze(),
    ]
