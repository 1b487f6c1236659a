"""Addon that refuses to expose the proxy beyond this machine without proxy authentication."""

from __future__ import annotations

import ipaddress

from mitmproxy import ctx
from mitmproxy import exceptions

from memory_routing.mitm.modes import parsed_modes


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
        # "any" accepts every user name and password: no authentication at all.
        if ctx.options.proxyauth and ctx.options.proxyauth != "any":
            return
        for mode in parsed_modes(ctx.options.mode):
            host = mode.listen_host(ctx.options.listen_host)
            if not is_loopback(host):
                where = host or "every interface"
                why = "with --proxyauth any (which accepts anyone)" if ctx.options.proxyauth else "without proxy authentication"
                raise exceptions.OptionsError(
                    f"memory-routing: refusing to listen on {where} (mode {mode.full_spec!r}) {why}: "
                    f"anyone who can reach it could spend your API keys. Use --listen-host 127.0.0.1, or set "
                    f"--proxyauth user:password (or @htpasswd-file, or ldap:…) to expose it deliberately."
                )
