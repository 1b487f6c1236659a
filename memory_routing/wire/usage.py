"""Token usage read from a response body as it passes (SSE events or one JSON document).

Pure logic. The meter sees copies of the chunks the proxy forwards; it never holds up or
alters the stream, and it keeps at most a bounded amount of data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JSON_BODY_LIMIT = 4 * 1024 * 1024  # larger non-streamed bodies are not parsed for usage
_PARTIAL_PARSE_FROM = 2048  # from this size on, only the usage objects of a JSON answer are decoded
_DECODER = json.JSONDecoder()
SSE_LINE_LIMIT = 1024 * 1024  # an event line longer than this is skipped


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


class UsageMeter:
    def __init__(self, event_stream: bool) -> None:
        self.event_stream = event_stream
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self._pending = bytearray()
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self.event_stream:
            if len(self._pending) + len(chunk) > JSON_BODY_LIMIT:
                self._overflow = True
                self._pending.clear()
            if not self._overflow:
                self._pending += chunk
            return
        if not self._pending and b'"usage' not in chunk:
            # No line of this chunk can mention usage (none began in an earlier chunk): only
            # its unfinished last line is kept. Most events of a stream take this path.
            rest = chunk[chunk.rfind(b"\n") + 1:]
            if rest and len(rest) <= SSE_LINE_LIMIT:
                self._pending += rest
            return
        self._pending += chunk
        *lines, rest = self._pending.split(b"\n")
        self._pending = bytearray(rest if len(rest) <= SSE_LINE_LIMIT else b"")
        for line in lines:
            if line.startswith(b"data:"):
                self._read_event(line[5:].strip())

    def read_whole(self, body: bytes, parsed: Callable[[], Any]) -> None:
        """A whole (unstreamed) JSON answer: a small one's usage is taken from ``parsed()``, the
        parse the other readers of the answer share (mitm.answer_json); a large one's usage
        objects alone are decoded here, not the whole completion."""
        if self.event_stream or not body or len(body) > JSON_BODY_LIMIT or b'"usage' not in body:
            return
        if len(body) >= _PARTIAL_PARSE_FROM:
            self._read_document(body)
        else:
            self._take_document(parsed())

    def finish(self) -> Usage:
        if self._pending and not self._overflow:
            if self.event_stream:
                if self._pending.startswith(b"data:"):
                    self._read_event(bytes(self._pending[5:]).strip())
            else:
                self._read_document(bytes(self._pending))
        self._pending.clear()
        return Usage(self.input_tokens, self.output_tokens)

    def _read_event(self, data: bytes) -> None:
        # Most events are content deltas without usage: only those that mention it are parsed.
        if b'"usage' in data:
            self._read_document(data)

    def _read_document(self, data: bytes) -> None:
        if b'"usage' not in data:
            return
        if self.event_stream or len(data) < _PARTIAL_PARSE_FROM:
            try:
                document = json.loads(data)
            except ValueError:
                return
            self._take_document(document)
            return
        # A large answer: decode only the usage objects, not the whole completion.
        text = data.decode("utf-8", "replace")
        for key in ('"usage"', '"usageMetadata"'):
            position = text.rfind(key)
            opening = text.find("{", position + len(key)) if position >= 0 else -1
            if opening < 0 or text[position + len(key):opening].strip() != ":":
                continue
            try:
                usage, _ = _DECODER.raw_decode(text, opening)
            except ValueError:
                continue
            self._take({key.strip('"'): usage})

    def _take_document(self, document: Any) -> None:
        for item in document if isinstance(document, list) else [document]:
            if isinstance(item, dict):
                self._take(item)

    def _take(self, obj: dict[str, Any]) -> None:
        # OpenAI chat/completions, embeddings; Anthropic message and message_delta; Responses.
        for usage in (
            obj.get("usage"),
            _get(obj, "message", "usage"),  # Anthropic message_start
            _get(obj, "response", "usage"),  # OpenAI Responses response.completed
        ):
            if isinstance(usage, dict):
                self._set(
                    _first_int(usage, "input_tokens", "prompt_tokens"),
                    _first_int(usage, "output_tokens", "completion_tokens"),
                )
        gemini = obj.get("usageMetadata")
        if isinstance(gemini, dict):
            self._set(_first_int(gemini, "promptTokenCount"), _first_int(gemini, "candidatesTokenCount"))

    def _set(self, input_tokens: int | None, output_tokens: int | None) -> None:
        # Later events carry running totals: the latest value wins.
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens


def _get(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _first_int(mapping: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
