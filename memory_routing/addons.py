"""The addon set that ``addon.py`` hands to mitmproxy, wired to one shared config holder."""

from __future__ import annotations

from .intercept_scope import InterceptScope
from .listen_guard import ListenGuard
from .local_endpoints import LocalEndpoints
from .model_router import ModelRouter
from .providers import ProviderResolver
from .routing import RoutePlanner
from .routing_config import RoutingConfig


def create_addons() -> list[object]:
    routing = RoutingConfig()
    # Order matters: options are checked and the config loaded before anything answers, and
    # the local endpoints answer before the router looks at a request.
    return [
        ListenGuard(),
        routing,
        InterceptScope(routing),
        LocalEndpoints(routing),
        ModelRouter(routing, RoutePlanner(ProviderResolver())),
    ]
