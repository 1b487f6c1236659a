"""Server-sent events decoded from a byte stream cut anywhere: the one SSE decoder (pure).

The translator of a streamed answer (llm.translation) and the memory's reader of a streamed
answer (addons.memory) both use it. WHATWG framing: blocks end with a blank line, data lines are
joined; \r\n and \r end lines too.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory_routing.errors import TranslationRefused

# An event longer than this (bytes) ends the stream with an error instead of growing the buffer.
SSE_EVENT_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str | None
    data: str


class SseDecoder:
    """Server-sent events from a byte stream cut anywhere (WHATWG framing, data lines joined)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._carriage_return = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        if self._carriage_return:
            chunk = b"\r" + chunk
            self._carriage_return = False
        if chunk.endswith(b"\r"):
            # The \n of a \r\n may be in the next chunk.
            chunk, self._carriage_return = chunk[:-1], True
        if b"\r" in chunk:  # most providers end lines with \n alone: no copies then
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SseEvent] = []
        if not self._buffer:
            # Nothing left over: the chunk's own blocks, as the loop below would cut them.
            *blocks, rest = chunk.split(b"\n\n")
            events = [event for block in blocks if (event := _parse_event(block)) is not None]
            chunk = rest
        self._buffer += chunk
        while (end := self._buffer.find(b"\n\n")) >= 0:
            block = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            if (event := _parse_event(block)) is not None:
                events.append(event)
        if len(self._buffer) > SSE_EVENT_LIMIT:
            raise TranslationRefused(502, f"an event of the provider's stream is over {SSE_EVENT_LIMIT} bytes")
        return events

    def close(self) -> list[SseEvent]:
        block, self._buffer = bytes(self._buffer), bytearray()
        event = _parse_event(block.strip(b"\n")) if block.strip() else None
        return [event] if event is not None else []


def _parse_event(block: bytes) -> SseEvent | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        # The usual event, one data line: what the general loop below gives, without its copies.
        return SseEvent(None, block[6:].decode("utf-8", "replace"))
    name: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        field_name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field_name == "event":
            name = value
        elif field_name == "data":
            data.append(value)
    return SseEvent(name, "\n".join(data)) if data else None
