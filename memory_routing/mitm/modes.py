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
