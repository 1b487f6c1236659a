"""Addon that refuses to expose the proxy beyond this machine without proxy authentication."""

from __future__ import annotations

import ipaddress

from mitmproxy import ctx
from mitmproxy import exceptions

from .modes import parsed_modes


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ListenGuard:
    """mitmproxy listens on every interface by default; this proxy holds API keys, so it won't."""

    def configure(self, updated) -> None:
        if not {"listen_host", "mode", "proxyauth"} & set(updated):
            return
        if ctx.options.proxyauth:
            return
        for mode in parsed_modes(ctx.options.mode):
            host = mode.listen_host(ctx.options.listen_host)
            if not is_loopback(host):
                where = host or "every interface"
                raise exceptions.OptionsError(
                    f"memory-routing: refusing to listen on {where} (mode {mode.full_spec!r}) without proxy "
                    f"authentication: anyone who can reach it could spend your API keys. "
                    f"Use --listen-host 127.0.0.1, or set --proxyauth to expose it deliberately."
                )
