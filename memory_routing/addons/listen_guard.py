"""Addon that refuses to expose the proxy beyond this machine without proxy authentication."""

from __future__ import annotations

import ipaddress
import sys

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
    """mitmproxy listens on every interface by default; this proxy holds API keys, so it won't.

    At start the refusal is the only thing printed and mitmdump exits 1 before it listens: an
    OptionsError raised while mitmproxy loads the script would be logged as ``error in script``
    with a traceback, and the listeners would open before the start-up error check exits.
    Once running (an option changed in mitmweb or by a script), the change is refused instead.
    """

    def __init__(self) -> None:
        self.is_running = False

    def running(self) -> None:
        self.is_running = True

    def configure(self, updated) -> None:
        try:
            self._check(updated)
        except exceptions.OptionsError as refusal:
            if self.is_running:
                raise
            # mitmproxy loads scripts in a task of its event loop: SystemExit ends the loop (and
            # the process) there and then, with nothing logged around it.
            print(refusal, file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    def _check(self, updated) -> None:
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
