"""Every private or undocumented LiteLLM piece the translation uses, in one place.

LiteLLM's public API is ``litellm.completion()`` and its proxy: both make the HTTP call
themselves. The proxy forwards the request itself (mitmproxy streams it), so it needs LiteLLM's
request/response transforms without the call; several live only in private functions or in
classes that expect to be driven by LiteLLM's own loop. Each is wrapped here with why, and
tests/test_contracts.py checks their signatures and their behaviour on a small input for the
pinned version: an upgrade that moves one fails there, loudly, not in a user's request.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# The resolver sets LiteLLM's offline environment before the first import.
from memory_routing.llm import litellm  # isort: skip

from litellm.llms.anthropic.chat.handler import ModelResponseIterator as _AnthropicChunkParser
from litellm.llms.anthropic.chat.transformation import ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY
from litellm.llms.anthropic.experimental_pass_through.adapters.streaming_iterator import AnthropicStreamWrapper
from litellm.llms.gemini.chat.transformation import GoogleAIStudioGeminiConfig
from litellm.llms.vertex_ai.gemini.transformation import _transform_request_body
from litellm.llms.vertex_ai.gemini.vertex_and_google_ai_studio_gemini import (
    ModelResponseIterator as _GeminiChunkParser,
)
from litellm.types.utils import ModelResponse, ModelResponseStream
from litellm.utils import get_model_cost_mutation_generation as _price_table_generation

__all__ = [
    "ANTHROPIC_TOOL_NAME_REVERSE_MAP_KEY",
    "CallDetails",
    "SteppedAnthropicStream",
    "anthropic_chunk_parser",
    "gemini_chunk_parser",
    "gemini_model_response",
    "gemini_request_body",
    "price_table_version",
]


class CallDetails:
    """The part of LiteLLM's logging object its Gemini parsers read: the call's parameters.

    LiteLLM's real Logging object starts callbacks and threads per call; the parsers only
    look up ``optional_params`` (to know a function call was requested) and report to
    ``post_call``, which has nothing to report to here.
    """

    def __init__(self, optional_params: dict[str, Any]) -> None:
        self.optional_params = optional_params

    def post_call(self, *args: Any, **kwargs: Any) -> None:
        return None


def gemini_request_body(messages: list, model: str, optional: dict, litellm_params: dict) -> dict[str, Any]:
    """Gemini's generateContent body. Private: GoogleAIStudioGeminiConfig.transform_request
    only exists on LiteLLM's HTTP handler path, which builds the URL and auth itself."""
    return dict(_transform_request_body(messages, model, optional, "gemini", litellm_params, None))


def gemini_model_response(document: dict, model: str, optional_params: dict, raw_response: Any) -> ModelResponse:
    """A Gemini answer as LiteLLM's ModelResponse. Private: the public transform_response also
    expects LiteLLM's logging object and request data of its own HTTP call."""
    return GoogleAIStudioGeminiConfig()._transform_google_generate_content_to_openai_model_response(
        completion_response=document,
        model_response=ModelResponse(),
        model=model,
        logging_obj=CallDetails(optional_params),
        raw_response=raw_response,
    )


def anthropic_chunk_parser(tool_name_reverse_map: dict[str, str] | None):
    """Anthropic stream event (parsed JSON) -> ModelResponseStream. The handler's iterator is
    internal to LiteLLM's HTTP path; its chunk_parser is the per-event step we need."""
    return _AnthropicChunkParser(None, sync_stream=True, tool_name_reverse_map=tool_name_reverse_map).chunk_parser


def gemini_chunk_parser(optional_params: dict[str, Any]):
    """Gemini stream event (parsed JSON) -> ModelResponseStream (as anthropic_chunk_parser)."""
    return _GeminiChunkParser(None, sync_stream=True, logging_obj=CallDetails(optional_params)).chunk_parser


def price_table_version() -> tuple[int, int]:
    """A value that changes whenever LiteLLM's price table does, for prices derived from it.

    Undocumented (litellm.utils, not re-exported): LiteLLM bumps the counter on every change of
    ``litellm.model_cost`` it makes (register_model, a reloaded map) so that whoever memoizes
    what it derived from the table can tell; its own Fireworks provider keys a memo on it. A
    table replaced wholesale is a new object, hence its id as well.
    """
    return id(litellm.model_cost), _price_table_generation()


class _DataWanted:
    """What the Anthropic wrapper's coroutine waits on when it has read every chunk so far."""

    def __await__(self):
        yield self


class _PushedChunks:
    """An async iterator over chunks pushed from outside; it suspends (never blocks) when empty."""

    def __init__(self) -> None:
        self.chunks: deque[ModelResponseStream] = deque()
        self.ended = False

    def __aiter__(self) -> _PushedChunks:
        return self

    async def __anext__(self) -> ModelResponseStream:
        while not self.chunks:
            if self.ended:
                raise StopAsyncIteration
            await _DataWanted()
        return self.chunks.popleft()


class SteppedAnthropicStream:
    """LiteLLM's AnthropicStreamWrapper (OpenAI chunks -> Anthropic events), driven chunk by chunk.

    The wrapper only offers an async iterator that pulls from another: mitmproxy hands the
    proxy one chunk at a time in a synchronous callback. Its ``__anext__`` coroutine is stepped
    by hand: when it waits for a chunk that has not arrived, it is kept suspended until the next
    push, so its state (open content blocks, held stop reason) carries over exactly as in
    LiteLLM's own proxy.
    """

    def __init__(self, model: str, tool_name_mapping: dict[str, str] | None) -> None:
        self._chunks = _PushedChunks()
        self._wrapper = AnthropicStreamWrapper(self._chunks, model=model, tool_name_mapping=tool_name_mapping)
        self._waiting = None  # the wrapper's suspended __anext__ coroutine

    def push(self, chunk: ModelResponseStream) -> list[dict]:
        self._chunks.chunks.append(chunk)
        return self._drain()

    def close(self) -> list[dict]:
        self._chunks.ended = True
        return self._drain()

    def _drain(self) -> list[dict]:
        out: list[dict] = []
        while True:
            step, self._waiting = self._waiting or self._wrapper.__anext__(), None
            try:
                step.send(None)
            except StopIteration as done:
                if isinstance(done.value, dict):
                    out.append(done.value)
                continue
            except StopAsyncIteration:
                return out
            self._waiting = step
            return out
