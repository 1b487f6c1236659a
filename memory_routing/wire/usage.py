"""Token usage read from a response body as it passes (SSE events or one JSON document).

Pure logic. The meter sees copies of the chunks the proxy forwards; it never holds up or
alters the stream, and it keeps at most a bounded amount of data.

The counts follow LiteLLM's ``Usage`` (which prices them), whatever the provider's own form:
``input_tokens`` is every prompt token, cache reads and cache writes included (Anthropic
reports those apart from its ``input_tokens``; OpenAI and Gemini count them in), and
``output_tokens`` every generated token, reasoning included (Gemini reports its thoughts
apart unless its candidates count them). The cache and reasoning counts are parts of those.
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
    """One answer's tokens; None: the answer did not say."""

    input_tokens: int | None = None  # all of the prompt, cached parts included
    output_tokens: int | None = None  # all of the answer, reasoning included
    cache_read_tokens: int | None = None  # prompt tokens read from the provider's cache
    cache_write_tokens: int | None = None  # prompt tokens written to it (Anthropic's cache_creation)
    reasoning_tokens: int | None = None  # output tokens spent thinking


class UsageMeter:
    def __init__(self, event_stream: bool) -> None:
        self.event_stream = event_stream
        self.input_tokens: int | None = None  # as the provider counts it (see _input_excludes_cache)
        self.output_tokens: int | None = None
        self.cache_read_tokens: int | None = None
        self.cache_write_tokens: int | None = None
        self.reasoning_tokens: int | None = None
        # Anthropic's input_tokens leaves out the cache reads and writes it reports beside it.
        self._input_excludes_cache = False
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
            unfinished = chunk[chunk.rfind(b"\n") + 1:]
            if unfinished and len(unfinished) <= SSE_LINE_LIMIT:
                self._pending += unfinished
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
        input_tokens = self.input_tokens
        if input_tokens is not None and self._input_excludes_cache:
            input_tokens += (self.cache_read_tokens or 0) + (self.cache_write_tokens or 0)
        return Usage(input_tokens, self.output_tokens, self.cache_read_tokens, self.cache_write_tokens,
                     self.reasoning_tokens)

    def _read_event(self, data: bytes | bytearray) -> None:
        # Most events are content deltas without usage: only those that mention it are parsed.
        if b'"usage' in data:
            self._read_document(data)

    def _read_document(self, data: bytes | bytearray) -> None:
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
                self._take_usage(usage)
        gemini = obj.get("usageMetadata")
        if isinstance(gemini, dict):
            self._take_gemini(gemini)

    def _take_usage(self, usage: dict[str, Any]) -> None:
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            # OpenAI chat: prompt_tokens counts the cached part. OpenAI-compatible servers (LiteLLM's
            # proxy among them) may add Anthropic's names for the cache counts.
            prompt_details = _dict(usage, "prompt_tokens_details")
            cache_read = _first_int(prompt_details, "cached_tokens")
            cache_write = _first_int(usage, "cache_creation_input_tokens")
            self._set(
                _first_int(usage, "prompt_tokens"),
                _first_int(usage, "completion_tokens"),
                cache_read if cache_read is not None else _first_int(usage, "cache_read_input_tokens"),
                cache_write if cache_write is not None
                else _first_int(prompt_details, "cache_creation_tokens", "cache_write_tokens"),
                _first_int(_dict(usage, "completion_tokens_details"), "reasoning_tokens"),
            )
            return
        cache_read = _first_int(usage, "cache_read_input_tokens")
        cache_write = _first_int(usage, "cache_creation_input_tokens")
        if cache_read is not None or cache_write is not None:
            self._input_excludes_cache = True  # Anthropic
        else:
            cache_read = _first_int(_dict(usage, "input_tokens_details"), "cached_tokens")  # Responses
        self._set(
            _first_int(usage, "input_tokens"),
            _first_int(usage, "output_tokens"),
            cache_read,
            cache_write,
            _first_int(_dict(usage, "output_tokens_details"), "reasoning_tokens"),
        )

    def _take_gemini(self, metadata: dict[str, Any]) -> None:
        # As LiteLLM reads it (VertexGeminiConfig._calculate_usage): the tool-use prompt is
        # billed as prompt, and thoughts are output unless the candidates count already holds
        # them (prompt + candidates + tool use == total).
        prompt = _first_int(metadata, "promptTokenCount")
        candidates = _first_int(metadata, "candidatesTokenCount")
        thoughts = _first_int(metadata, "thoughtsTokenCount")
        tool_use = _first_int(metadata, "toolUsePromptTokenCount") or 0
        output = candidates
        if thoughts and (prompt or 0) + (candidates or 0) + tool_use != _first_int(metadata, "totalTokenCount"):
            output = (candidates or 0) + thoughts
        self._set(None if prompt is None else prompt + tool_use, output,
                  _first_int(metadata, "cachedContentTokenCount"), None, thoughts)

    def _set(self, input_tokens: int | None, output_tokens: int | None, cache_read: int | None = None,
             cache_write: int | None = None, reasoning: int | None = None) -> None:
        # Later events carry running totals: the latest value wins.
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
        if cache_read is not None:
            self.cache_read_tokens = cache_read
        if cache_write is not None:
            self.cache_write_tokens = cache_write
        if reasoning is not None:
            self.reasoning_tokens = reasoning


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _first_int(mapping: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
