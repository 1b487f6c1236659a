"""Token usage read from bodies as they pass, whatever the chunking."""

from __future__ import annotations

import json

import pytest

from memory_routing.wire.usage import JSON_BODY_LIMIT, Usage, UsageMeter

ANTHROPIC_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n'
)
OPENAI_SSE = (
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\r\n\r\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}\r\n\r\n'
    b"data: [DONE]\r\n\r\n"
)
RESPONSES_SSE = (b'event: response.completed\n'
                 b'data: {"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":2}}}\n\n')
GEMINI_SSE = (
    b'data: {"candidates":[],"usageMetadata":{"promptTokenCount":5}}\n\n'
    b'data: {"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":8}}\n\n'
)


def meter_over(body: bytes, chunk_size: int, event_stream: bool = True) -> Usage:
    meter = UsageMeter(event_stream)
    for start in range(0, len(body), chunk_size):
        meter.feed(body[start:start + chunk_size])
    return meter.finish()


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 100_000])
@pytest.mark.parametrize(
    "body, usage",
    [(ANTHROPIC_SSE, Usage(25, 15)), (OPENAI_SSE, Usage(9, 4)), (RESPONSES_SSE, Usage(3, 2)), (GEMINI_SSE, Usage(5, 8))],
)
def test_event_streams_split_anywhere(body: bytes, usage: Usage, chunk_size: int):
    assert meter_over(body, chunk_size) == usage


def test_last_event_without_trailing_newline():
    assert meter_over(b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}', 5) == Usage(1, 2)


def test_json_documents():
    anthropic = json.dumps({"type": "message", "usage": {"input_tokens": 4, "output_tokens": 6}}).encode()
    gemini_array = json.dumps([{"usageMetadata": {"promptTokenCount": 1}},
                               {"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 3}}]).encode()
    assert meter_over(anthropic, 3, event_stream=False) == Usage(4, 6)
    assert meter_over(gemini_array, 3, event_stream=False) == Usage(1, 3)


def test_garbage_and_oversized_bodies_give_no_usage():
    assert meter_over(b"data: not json\n\n<html>", 4) == Usage()
    assert meter_over(b"{broken", 4, event_stream=False) == Usage()
    big = b'{"usage":{"prompt_tokens":1},"pad":"' + b"x" * JSON_BODY_LIMIT + b'"}'
    assert meter_over(big, 65536, event_stream=False) == Usage()


def test_large_answers_read_only_the_usage_object():
    big = json.dumps({"choices": [{"message": {"content": "x" * 100_000, "usage": "not this one"}}],
                      "usage": {"prompt_tokens": 12, "completion_tokens": 34, "details": {"cached": 1}}}).encode()
    gemini = json.dumps({"candidates": [{"text": "y" * 5000}],
                         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}).encode()
    anthropic = json.dumps({"content": [{"text": "z" * 5000}], "usage": {"input_tokens": 5, "output_tokens": 6}}).encode()
    assert meter_over(big, 4096, event_stream=False) == Usage(12, 34)
    assert meter_over(gemini, 4096, event_stream=False) == Usage(3, 4)
    assert meter_over(anthropic, 4096, event_stream=False) == Usage(5, 6)


_DECODE = object()


def whole(body: bytes, document=_DECODE) -> tuple[Usage, int]:
    """read_whole over `body`, the shared parse being `document` (default: `body` decoded);
    also how often that parse was asked for."""
    asked = []
    meter = UsageMeter(event_stream=False)
    meter.read_whole(body, lambda: asked.append(1) or (json.loads(body) if document is _DECODE else document))
    return meter.finish(), len(asked)


def test_a_whole_small_answer_takes_its_usage_from_the_shared_parse():
    anthropic = json.dumps({"type": "message", "usage": {"input_tokens": 4, "output_tokens": 6}}).encode()
    assert whole(anthropic) == (Usage(4, 6), 1)
    # The parse handed over is what counts (the memory reads the same one): not a second decode.
    assert whole(anthropic, document={"usage": {"input_tokens": 9}}) == (Usage(9, None), 1)
    gemini_array = json.dumps([{"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 3}}]).encode()
    assert whole(gemini_array) == (Usage(1, 3), 1)


def test_a_whole_answer_is_not_parsed_for_usage_it_cannot_have():
    assert whole(b'{"choices": []}') == (Usage(), 0)  # no "usage" in it: nothing to read
    assert whole(b"") == (Usage(), 0)
    big = json.dumps({"content": [{"text": "z" * 5000}], "usage": {"input_tokens": 5, "output_tokens": 6}}).encode()
    assert whole(big) == (Usage(5, 6), 0)  # a large one: only its usage object is decoded
    oversized = b'{"usage":{"prompt_tokens":1},"pad":"' + b"x" * JSON_BODY_LIMIT + b'"}'
    assert whole(oversized) == (Usage(), 0)
    # Not JSON: the shared parse holds no document, which gives no usage.
    assert whole(b'{"usage": broken', document=None) == (Usage(), 1)
