"""A request's headers indexed once by lower-cased name, for the lookups of the hot path.

mitmproxy's ``Headers.get_all`` re-encodes the name and scans every field on each call;
routing looks up a dozen names per request, so the fields are read once instead.
Pure logic: works on the raw ``(name, value)`` byte pairs.
"""

from __future__ import annotations

from collections.abc import Iterable


class HeaderIndex:
    __slots__ = ("_values",)

    def __init__(self, fields: Iterable[tuple[bytes, bytes]]) -> None:
        values: dict[str, list[bytes]] = {}
        for name, value in fields:
            key = name.decode("utf-8", "surrogateescape").lower()
            if key in values:
                values[key].append(value)
            else:
                values[key] = [value]
        self._values = values

    def get_all(self, name: str) -> list[str]:
        # Decoded on demand, as mitmproxy's Headers decode them, so values compare equal.
        return [value.decode("utf-8", "surrogateescape") for value in self._values.get(name, ())]

    def get(self, name: str, default: str | None = None) -> str | None:
        found = self._values.get(name)
        return found[0].decode("utf-8", "surrogateescape") if found else default

    def __contains__(self, name: object) -> bool:
        return name in self._values
