"""What one model call does with the embedded memory: read (recall), write (store), both or neither.

Pure logic. The client's ``x-memory-mode`` header wins; without it the first matching
``memory.clients`` rule of the config gives the client's default; without one, both.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from memory_routing.config.schema import MemoryClientRule
from memory_routing.errors import InvalidMemoryMode as InvalidMemoryMode  # re-exported
from memory_routing.routing.classify import MATCH_PREFIX_LENGTH

MODE_HEADER = "x-memory-mode"


class MemoryMode(enum.Enum):
    OFF = "off"
    READ = "read"
    WRITE = "write"
    BOTH = "both"

    @property
    def reads(self) -> bool:
        return self in (MemoryMode.READ, MemoryMode.BOTH)

    @property
    def writes(self) -> bool:
        return self in (MemoryMode.WRITE, MemoryMode.BOTH)




class HeaderLookup(Protocol):
    def get_all(self, name: str) -> list[str]: ...


def mode_from_header(values: Sequence[str]) -> MemoryMode | None:
    """The mode the client asked for (None: it did not ask); raises InvalidMemoryMode."""
    if not values:
        return None
    distinct = {value.strip().lower() for value in values}
    if len(distinct) > 1:
        raise InvalidMemoryMode(f"invalid {MODE_HEADER} header: sent more than once with different values")
    (value,) = distinct
    try:
        return MemoryMode(value)
    except ValueError:
        # The value is not echoed back: it may be huge or hold control characters.
        raise InvalidMemoryMode(f"invalid {MODE_HEADER} header: use off, read, write or both") from None


def client_default(rules: Sequence[MemoryClientRule], user_id: str, headers: HeaderLookup) -> MemoryMode:
    """The first rule naming this memory user id or matching its header; both when none does."""
    for rule in rules:
        if rule.user_id is not None:
            if rule.user_id == user_id:
                return MemoryMode(rule.mode)
            continue
        assert rule.header is not None and rule.regex is not None
        # Matched on a bounded prefix, like the classifier's patterns.
        if any(rule.regex.search(value[:MATCH_PREFIX_LENGTH]) for value in headers.get_all(rule.header)):
            return MemoryMode(rule.mode)
    return MemoryMode.BOTH
