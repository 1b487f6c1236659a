"""Addon that limits interception to LLM hosts and keeps mitmproxy from dialling early.

Forward mode: only LLM hosts (and the proxy's reserved host) are decrypted; every other
connection is tunnelled untouched, so the proxy never sees that traffic.
"""

from __future__ import annotations

import logging
import re

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy.proxy import mode_specs

from memory_routing.addons.local_endpoints import RESERVED_HOST
from memory_routing.mitm.modes import parsed_modes
from memory_routing.addons.routing_config import RoutingConfig

logger = logging.getLogger(__name__)


def allow_hosts_pattern(hosts: set[str] | frozenset[str]) -> str:
    """One regex for mitmproxy's allow_hosts, which it matches against "host:port"."""
    alternatives = "|".join(re.escape(host) for host in sorted(hosts))
    return rf"^(?:{alternatives})(?::\d+)?$"


def reverse_targets(modes: list[str]) -> set[str]:
    """The hosts behind reverse-mode listeners (the gateway): allow_hosts must let them through."""
    return {mode.address[0].lower() for mode in parsed_modes(modes) if isinstance(mode, mode_specs.ReverseMode)}


class InterceptScope:
    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self._applied: list[str] | None = None
        routing.subscribe(self._apply_after_reload)

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_intercept_llm_only",
            bool,
            True,
            """
            Decrypt only LLM hosts (the known APIs and every host in the config) by deriving
            mitmproxy's allow_hosts from the config. Set false to manage allow_hosts/ignore_hosts yourself.
            """,
        )

    def configure(self, updated) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            # Eager dials the client's original host before the addon can redirect the request.
            logger.info("memory-routing: using connection_strategy=lazy")
            ctx.options.update(connection_strategy="lazy")
        if {"memory_routing_intercept_llm_only", "mode", "ignore_hosts", "allow_hosts"} & set(updated):
            if ctx.options.memory_routing_intercept_llm_only and ctx.options.ignore_hosts:
                raise exceptions.OptionsError(
                    "memory-routing derives allow_hosts from the config, which mitmproxy cannot combine with "
                    "ignore_hosts; drop ignore_hosts or set memory_routing_intercept_llm_only=false"
                )
            self._apply()

    def _apply_after_reload(self) -> None:
        if self._applied is not None:  # before the first configure, options are not ready
            self._apply()

    def _apply(self) -> None:
        if not ctx.options.memory_routing_intercept_llm_only:
            return
        current = list(ctx.options.allow_hosts)
        if current and current != self._applied:
            logger.warning(
                "memory-routing: replacing allow_hosts with the LLM hosts from the config; "
                "set memory_routing_intercept_llm_only=false to set allow_hosts yourself"
            )
        hosts = self.routing.llm_hosts | {RESERVED_HOST} | reverse_targets(ctx.options.mode)
        wanted = [allow_hosts_pattern(hosts)]
        self._applied = wanted
        if current != wanted:
            ctx.options.update(allow_hosts=wanted)
