"""A translated answer tells the client its prompt cache and reasoning counts, in its own names.

Claude Code on a GPT alias must see ``cache_read_input_tokens``; an OpenAI client on Claude or
Gemini ``prompt_tokens_details.cached_tokens``. Whole answers and streams say the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_translation import anthropic_events, openai_chunks, run_stream, sse

from memory_routing.llm.translation import translate_request
from memory_routing.wire.protocol import ClientProtocol

ANTHROPIC_REQUEST = {"model": "alias", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
OPENAI_REQUEST = dict(ANTHROPIC_REQUEST, stream_options={"include_usage": True})

OPENAI_USAGE = {"prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
                "prompt_tokens_details": {"cached_tokens": 8000}, "completion_tokens_details": {"reasoning_tokens": 40}}
ANTHROPIC_USAGE = {"input_tokens": 100, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 50_000,
                   "output_tokens": 300}
GEMINI_USAGE = {"promptTokenCount": 5000, "cachedContentTokenCount": 4000, "candidatesTokenCount": 20,
                "thoughtsTokenCount": 30, "totalTokenCount": 5050}


def openai_answer(stream: bool) -> Any:
    base = {"id": "c1", "created": 1, "model": "gpt-4o-mini"}
    if not stream:
        return base | {"object": "chat.completion", "usage": OPENAI_USAGE, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}]}
    chunk = base | {"object": "chat.completion.chunk"}
    return [(None,
             chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]}),
            (None, chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            (None, chunk | {"choices": [], "usage": OPENAI_USAGE}), (None, "[DONE]")]


def anthropic_answer(stream: bool) -> Any:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": ANTHROPIC_USAGE}
    if not stream:
        return message
    start = message | {"content": [], "stop_reason": None, "usage": ANTHROPIC_USAGE | {"output_tokens": 1}}
    return [("message_start", {"type": "message_start", "message": start}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta",
             {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 300}}),
            ("message_stop", {"type": "message_stop"})]


def gemini_answer(stream: bool) -> Any:
    last = {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
            "usageMetadata": GEMINI_USAGE}
    if not stream:
        return last
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
             "usageMetadata": GEMINI_USAGE | {"candidatesTokenCount": 1, "totalTokenCount": 5031}}
    return [(None, first), (None, last)]


ANSWERS = {"openai": openai_answer, "anthropic": anthropic_answer, "gemini": gemini_answer}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


def client_usage(client: ClientProtocol, provider: str, stream: bool) -> dict[str, Any]:
    request = dict(ANTHROPIC_REQUEST if client is ClientProtocol.ANTHROPIC else OPENAI_REQUEST, stream=stream)
    answer = translate_request(client, provider, MODELS[provider], request).answer
    if not stream:
        return json.loads(answer.body(200, "application/json", json.dumps(ANSWERS[provider](False)).encode()))["usage"]
    raw = run_stream(answer.stream_translator(), sse(ANSWERS[provider](True)), 9)
    if client is ClientProtocol.ANTHROPIC:
        return next(event["usage"] for event in anthropic_events(raw) if event["type"] == "message_delta")
    return [chunk for chunk in openai_chunks(raw) if isinstance(chunk, dict) and chunk.get("usage")][-1]["usage"]


@pytest.mark.parametrize("provider, expected", [
    # Anthropic's input_tokens is the uncached part; the reads beside it.
    ("openai", {"input_tokens": 2000, "cache_read_input_tokens": 8000, "output_tokens": 100}),
    ("gemini", {"input_tokens": 1000, "cache_read_input_tokens": 4000, "output_tokens": 50}),
])
def test_claude_code_on_another_provider_sees_its_cache_reads_in_the_stream(provider, expected):
    usage = client_usage(ClientProtocol.ANTHROPIC, provider, stream=True)
    assert {key: usage.get(key) for key in expected} == expected


@pytest.mark.parametrize("provider, cached, reasoning, write", [
    ("anthropic", 50_000, None, 2000),
    ("gemini", 4000, 30, None),
])
def test_an_openai_client_sees_cached_and_reasoning_tokens_in_the_stream(provider, cached, reasoning, write):
    usage = client_usage(ClientProtocol.OPENAI, provider, stream=True)
    assert usage.get("prompt_tokens_details", {}).get("cached_tokens") == cached
    assert usage.get("completion_tokens_details", {}).get("reasoning_tokens") == reasoning
    assert usage.get("cache_creation_input_tokens") == write


@pytest.mark.parametrize("client, provider", [
    (ClientProtocol.ANTHROPIC, "openai"), (ClientProtocol.ANTHROPIC, "gemini"),
    (ClientProtocol.OPENAI, "anthropic"), (ClientProtocol.OPENAI, "gemini"),
])
def test_whole_and_streamed_answers_tell_the_same_cache_counts(client, provider):
    whole, streamed = client_usage(client, provider, False), client_usage(client, provider, True)
    if client is ClientProtocol.ANTHROPIC:
        keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        assert {k: whole.get(k) or 0 for k in keys} == {k: streamed.get(k) or 0 for k in keys}
    else:
        assert (whole["prompt_tokens"], whole["completion_tokens"]) == (streamed["prompt_tokens"], streamed["completion_tokens"])
        assert whole["prompt_tokens_details"]["cached_tokens"] == streamed["prompt_tokens_details"]["cached_tokens"]
        assert (whole.get("completion_tokens_details", {}).get("reasoning_tokens") or None) == \
            streamed.get("completion_tokens_details", {}).get("reasoning_tokens")
