"""The addon set that ``addon.py`` hands to mitmproxy, wired to one shared config holder."""

from __future__ import annotations

from .listen_guard import ListenGuard
from .local_endpoints import LocalEndpoints
from .routing_config import RoutingConfig


def create_addons() -> list[object]:
    routing = RoutingConfig()
    # Order matters: the guard and the config are configured before anything answers.
    return [ListenGuard(), routing, LocalEndpoints(routing)]
