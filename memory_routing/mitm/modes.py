"""mitmproxy's ``mode`` option, parsed once for the addons that need the listeners."""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy.proxy import mode_specs


def parsed_modes(specs: Iterable[str]) -> list[mode_specs.ProxyMode]:
    """The listeners' modes; a malformed spec is skipped, since mitmproxy itself reports it."""
    modes = []
    for spec in specs:
        try:
            modes.append(mode_specs.ProxyMode.parse(spec))
        except ValueError:
            continue
    return modes


def own_listeners(specs: Iterable[str], listen_host: str) -> frozenset[tuple[str, int]]:
    """(host, port) of every listener of this proxy, loopback names folded to 127.0.0.1."""
    return frozenset(
        (loopback_alias(mode.listen_host(listen_host) or "127.0.0.1"), port)
        for mode in parsed_modes(specs)
        if (port := mode.listen_port())
    )


def gateway_urls(specs: Iterable[str], listen_host: str) -> list[str]:
    """The base URL of each gateway (reverse-mode) listener, for messages that point a client to it."""
    return [
        f"http://{mode.listen_host(listen_host) or '127.0.0.1'}:{mode.listen_port()}"
        for mode in parsed_modes(specs)
        if isinstance(mode, mode_specs.ReverseMode) and mode.listen_port()
    ]


def loopback_alias(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "::1", "[::1]", "0.0.0.0", "") else host
