"""What the memory stores."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

# The memory's errors live in the one hierarchy (memory_routing.errors); re-exported here.
from memory_routing.errors import MemoryRecordError as MemoryRecordError
from memory_routing.errors import MemoryStoreClosedError as MemoryStoreClosedError
from memory_routing.errors import MemoryStoreError as MemoryStoreError
from memory_routing.errors import MemoryTimeoutError as MemoryTimeoutError


_TEXT_FIELDS = ("user_id", "conversation_id", "client", "model", "role", "text")


@dataclass(frozen=True, slots=True)
class NewMemory:
    """One turn to store: the human's turn or the assistant's answer."""

    user_id: str
    conversation_id: str
    client: str
    model: str
    role: str
    text: str
    created_at: float  # seconds since the epoch (UTC)


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored turn, with the id the store gave it."""

    id: int
    user_id: str
    conversation_id: str
    client: str
    model: str
    role: str
    text: str
    created_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Memory:
        """Parses one exported line; an import gives rows new ids, so "id" may be absent."""
        fields = _parse_object(line)
        raw_id = fields.get("id", 0)
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            raise MemoryRecordError("memory line: 'id' must be an integer")
        new = _new_memory_from(fields)
        return cls(id=raw_id, **asdict(new))

    def as_new(self) -> NewMemory:
        return NewMemory(self.user_id, self.conversation_id, self.client, self.model,
                         self.role, self.text, self.created_at)


def memories_of_lines(lines: Iterable[str]) -> list[NewMemory]:
    """The memories of exported lines (blank lines skipped), for an import; a bad line raises
    MemoryRecordError naming its line number, before anything is stored."""
    memories: list[NewMemory] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            memories.append(Memory.from_json(line).as_new())
        except MemoryRecordError as e:
            raise MemoryRecordError(f"line {number}: {e}") from None
    return memories


def _parse_object(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise MemoryRecordError(f"memory line is not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise MemoryRecordError("memory line must be a JSON object")
    return value


def _new_memory_from(fields: dict[str, Any]) -> NewMemory:
    values: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = fields.get(name, "" if name in ("client", "model", "conversation_id") else None)
        if not isinstance(value, str):
            raise MemoryRecordError(f"memory line: {name!r} must be a string")
        values[name] = value
    if not values["user_id"]:
        raise MemoryRecordError("memory line: 'user_id' must not be empty")
    created_at = fields.get("created_at")
    if not isinstance(created_at, (int, float)) or isinstance(created_at, bool):
        raise MemoryRecordError("memory line: 'created_at' must be a number")
    return NewMemory(created_at=float(created_at), **values)


@dataclass(frozen=True, slots=True)
class BlockLine:
    """One line of a recall block: the memory it shows, the run of neighbouring turns it belongs
    to (runs are set apart by a blank line), the memory's date and the rest of the line
    (``role: text``, cut with "…" when it was the line that did not fit)."""

    memory_id: int
    run: int
    date: str
    body: str


@dataclass(frozen=True, slots=True)
class KeptBlock:
    """A turn's recall block to keep: the store puts it back into later requests of the conversation."""

    user_id: str
    turn_key: bytes
    lines: tuple[BlockLine, ...]
    created_at: float
