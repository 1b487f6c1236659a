"""Cost with the prompt cache and reasoning, per protocol, whole and streamed, against LiteLLM.

Each case is a provider's answer as it arrives (one JSON document, or its server-sent events
cut into small chunks). The proxy's figure: the usage meter reads the answer, the recorder
prices the counts. LiteLLM's figure: LiteLLM parses the same answer with its own provider
transforms (for a stream, its chunk parsers and stream_chunk_builder) and prices it with
completion_cost. The two must be equal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from memory_routing.call_record import CallRecord, MemoryOutcome
from memory_routing.dashboard.recorder import UsageRecorder
from memory_routing.wire.usage import Usage, UsageMeter

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@dataclass(frozen=True)
class Case:
    name: str
    provider: str
    model: str
    protocol: str  # openai | responses | anthropic | gemini
    usage: dict[str, Any]  # the provider's own usage object (Gemini: usageMetadata)
    expected_usd: float | None = None  # the figure, where it names one


CASES = [
    # Issue 21: "shown as $0.0048; LiteLLM's price table gives $0.0273".
    Case("anthropic-issue-example", "anthropic", "claude-sonnet-4-5", "anthropic",
         {"input_tokens": 100, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 50000,
          "output_tokens": 300}, 0.0273),
    # Over 200k prompt tokens (cache included): every part at the tier's prices.
    Case("anthropic-above-200k", "anthropic", "claude-sonnet-4-5", "anthropic",
         {"input_tokens": 1000, "cache_creation_input_tokens": 60_000, "cache_read_input_tokens": 150_000,
          "output_tokens": 2000}),
    Case("anthropic-no-cache", "anthropic", "claude-haiku-4-5", "anthropic",
         {"input_tokens": 1234, "output_tokens": 56}),
    # Issue 21: "8,000 of 10,000 prompt tokens cached ... $0.00156 instead of $0.00096".
    Case("openai-issue-example", "openai", "gpt-4o-mini", "openai",
         {"prompt_tokens": 10_000, "completion_tokens": 100, "total_tokens": 10_100,
          "prompt_tokens_details": {"cached_tokens": 8000}}, 0.00096),
    Case("openai-reasoning", "openai", "o3-mini", "openai",
         {"prompt_tokens": 20_000, "completion_tokens": 3000, "total_tokens": 23_000,
          "prompt_tokens_details": {"cached_tokens": 12_800},
          "completion_tokens_details": {"reasoning_tokens": 2500}}),
    Case("responses-reasoning", "openai", "gpt-5", "responses",
         {"input_tokens": 9000, "input_tokens_details": {"cached_tokens": 4096}, "output_tokens": 800,
          "output_tokens_details": {"reasoning_tokens": 640}, "total_tokens": 9800}),
    Case("gemini-cached-thoughts", "gemini", "gemini-2.5-flash", "gemini",
         {"promptTokenCount": 5000, "cachedContentTokenCount": 4000, "candidatesTokenCount": 20,
          "thoughtsTokenCount": 30, "totalTokenCount": 5050}),
    Case("gemini-above-200k", "gemini", "gemini-2.5-pro", "gemini",
         {"promptTokenCount": 250_000, "cachedContentTokenCount": 200_000, "candidatesTokenCount": 900,
          "thoughtsTokenCount": 100, "totalTokenCount": 251_000}),
]


# --- the providers' answers ----------------------------------------------------------------------

def whole_answer(case: Case) -> dict[str, Any]:
    if case.protocol == "anthropic":
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": case.model,
                "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": case.usage}
    if case.protocol == "openai":
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": case.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": case.usage}
    if case.protocol == "responses":
        return {"id": "resp_1", "object": "response", "model": case.model, "status": "completed",
                "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]}],
                "usage": case.usage}
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP"}],
            "usageMetadata": case.usage, "modelVersion": case.model}


def stream_events(case: Case) -> list[dict[str, Any]]:
    if case.protocol == "anthropic":
        # As Anthropic streams: the prompt's counts (cache included) in message_start, the
        # output's final count in message_delta.
        start_usage = {**case.usage, "output_tokens": 1}
        return [
            {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                  "model": case.model, "content": [], "stop_reason": None,
                                                  "usage": start_usage}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": case.usage["output_tokens"]}},
            {"type": "message_stop"},
        ]
    if case.protocol == "openai":
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": case.model}
        return [
            chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]},
            chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            chunk | {"choices": [], "usage": case.usage},
        ]
    if case.protocol == "responses":
        return [
            {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
            {"type": "response.output_text.delta", "delta": "Hello"},
            {"type": "response.completed", "response": whole_answer(case)},
        ]
    # Gemini: every chunk carries the running usage; the last one the final counts.
    early = {key: value for key, value in case.usage.items() if key != "candidatesTokenCount"}
    return [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
         "usageMetadata": early | {"candidatesTokenCount": 1, "totalTokenCount": case.usage["totalTokenCount"] - 19}},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
         "usageMetadata": case.usage},
    ]


def sse(events: list[dict[str, Any]], line_end: str) -> bytes:
    return b"".join(
        (f"event: {event['type']}{line_end}" if "type" in event else "").encode()
        + f"data: {json.dumps(event)}{line_end}{line_end}".encode()
        for event in events
    )


# --- LiteLLM's figure ------------------------------------------------------------------------------

def litellm_cost_of_whole(case: Case) -> float:
    import httpx
    import litellm
    from litellm.llms.anthropic.chat.transformation import AnthropicConfig
    from litellm.responses.utils import ResponseAPILoggingUtils
    from litellm.types.utils import ModelResponse

    from memory_routing.llm.litellm_internals import gemini_model_response

    document = whole_answer(case)
    raw = httpx.Response(200, content=json.dumps(document).encode(), headers={"content-type": "application/json"})
    if case.protocol == "responses":
        usage = ResponseAPILoggingUtils._transform_response_api_usage_to_chat_usage(document["usage"])
        prompt, completion = litellm.cost_per_token(model=case.model, custom_llm_provider=case.provider,
                                                    usage_object=usage)
        return prompt + completion
    if case.protocol == "anthropic":
        response = AnthropicConfig().transform_parsed_response(
            completion_response=document, raw_response=raw, model_response=ModelResponse())
    elif case.protocol == "gemini":
        response = gemini_model_response(document, case.model, {}, raw)
    else:
        response = ModelResponse(**document)
    return litellm.completion_cost(completion_response=response, model=case.model, custom_llm_provider=case.provider)


def litellm_cost_of_stream(case: Case) -> float:
    import litellm
    from litellm.types.utils import ModelResponseStream

    from memory_routing.llm.litellm_internals import anthropic_chunk_parser, gemini_chunk_parser

    if case.protocol == "responses":
        return litellm_cost_of_whole(case)  # its stream ends with the whole response
    parse = (anthropic_chunk_parser({}) if case.protocol == "anthropic"
             else gemini_chunk_parser({}) if case.protocol == "gemini"
             else lambda event: ModelResponseStream(**event))
    chunks = [chunk for event in stream_events(case) if (chunk := parse(event)) is not None]
    response = litellm.stream_chunk_builder(chunks)
    return litellm.completion_cost(completion_response=response, model=case.model, custom_llm_provider=case.provider)


# --- the proxy's figure ------------------------------------------------------------------------------

def routed_record(provider: str, model: str, **fields: Any) -> CallRecord:
    """A routed call's record with the provider, model and counts given (the rest does not price)."""
    return CallRecord(at=1_700_000_000.0, user_id="alice", client="", client_protocol="openai",
                      requested_model=model, route="routed", status=200, latency_ms=1.0,
                      provider=provider, provider_model=model, **fields)


def proxy_cost(case: Case, usage: Usage) -> float | None:
    """The cost the usage recorder stores for a call record with these counts."""
    record = routed_record(case.provider, case.model, input_tokens=usage.input_tokens,
                           output_tokens=usage.output_tokens, cache_read_tokens=usage.cache_read_tokens,
                           cache_write_tokens=usage.cache_write_tokens, reasoning_tokens=usage.reasoning_tokens)
    return UsageRecorder(lambda: None)._prices(record).cost_usd


def metered_whole(case: Case) -> Usage:
    body = json.dumps(whole_answer(case)).encode()
    meter = UsageMeter(event_stream=False)
    meter.read_whole(body, lambda: json.loads(body))
    return meter.finish()


def metered_stream(case: Case, piece: int) -> Usage:
    body = sse(stream_events(case), "\r\n" if case.protocol == "gemini" else "\n")
    meter = UsageMeter(event_stream=True)
    for start in range(0, len(body), piece):
        meter.feed(body[start:start + piece])
    return meter.finish()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_whole_answer_costs_what_litellm_says(case: Case):
    expected = litellm_cost_of_whole(case)
    if case.expected_usd is not None:
        assert expected == pytest.approx(case.expected_usd, rel=1e-9)
    assert proxy_cost(case, metered_whole(case)) == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize("piece", [5, 4096])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_streamed_answer_costs_what_litellm_says(case: Case, piece: int):
    expected = litellm_cost_of_stream(case)
    assert expected == pytest.approx(litellm_cost_of_whole(case), rel=1e-9)
    assert proxy_cost(case, metered_stream(case, piece)) == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_cache_and_reasoning_counts_are_read(case: Case):
    usage = metered_stream(case, 7)
    assert usage == metered_whole(case)
    raw = case.usage
    read = raw.get("cache_read_input_tokens", raw.get("cachedContentTokenCount",
                   raw.get("prompt_tokens_details", raw.get("input_tokens_details", {})).get("cached_tokens")))
    reasoning = raw.get("thoughtsTokenCount", raw.get("completion_tokens_details",
                        raw.get("output_tokens_details", {})).get("reasoning_tokens"))
    assert (usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (
        read, raw.get("cache_creation_input_tokens"), reasoning)
    if case.protocol == "anthropic":  # its input_tokens leaves the cache out; the proxy's count has it all
        assert usage.input_tokens == raw["input_tokens"] + (read or 0) + (raw.get("cache_creation_input_tokens") or 0)


def test_the_recorder_prices_the_cache_saving_and_the_recall_block():
    # Sonnet 4.5: $3 input, $3.75 cache write, $0.30 cache read, $15 output per million tokens.
    record = routed_record("anthropic", "claude-sonnet-4-5", input_tokens=52_100, output_tokens=300,
                           cache_read_tokens=50_000, cache_write_tokens=2000,
                           memory=MemoryOutcome("both", "injected", block_tokens=80))
    prices = UsageRecorder(lambda: None)._prices(record)
    assert prices.cost_usd == pytest.approx(0.0273, rel=1e-9)
    # Without the cache all 52,100 prompt tokens at $3: 0.1563 + 0.0045 output.
    assert prices.cache_saved_usd == pytest.approx(0.1608 - 0.0273, rel=1e-9)
    # The block's 80 tokens are new input: 80 × $3 per million.
    assert prices.memory_cost_usd == pytest.approx(80 * 3e-6, rel=1e-9)
