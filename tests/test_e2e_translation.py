"""End-to-end translation: a real mitmdump between the SDKs and fake upstreams of another format.

The fake upstream runs strict: it refuses, like the real APIs, any body that is not a valid
native request (required fields, roles, unknown keys), so every answer here means the proxy
sent a valid request. The SDKs' own parsers judge what comes back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
import yaml

from fake_upstream import TOOL_ARGUMENTS, USAGE_IN, USAGE_OUT, FakeUpstream
from harness import ROOT, RunningProxy, running_proxy
from test_e2e_routing import log_line_for

pytestmark = pytest.mark.e2e

KEYS = {
    "MR_TR_OPENAI_KEY": "sk-tr-config-openai-0101",
    "MR_TR_ANTHROPIC_KEY": "sk-ant-tr-config-0102",
    "MR_TR_GEMINI_KEY": "g-tr-config-0103",
    "MR_TR_SM_KEY": "sm-tr-config-0104",
}
CLAUDE_CODE_UA = "claude-cli/2.1.0 (external, cli)"
WAIT = 20
STREAM_WAIT = 10
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather", "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER_TOOL_OPENAI = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# A small valid PNG, inline: translated calls never make the proxy download an image.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(strict=True).start()
    try:
        yield upstream
    finally:
        upstream.stop()


def translation_config(fake_url: str) -> dict:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    return {
        "model_list": [
            {"model_name": "gpt-for-claude-code", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_TR_OPENAI_KEY"}},
            {"model_name": "gemini-for-claude-code", "litellm_params": {
                "model": "gemini/gemini-2.5-pro", "api_base": fake_url, "api_key": "os.environ/MR_TR_GEMINI_KEY"}},
            # Anthropic has an OpenAI-compatible endpoint: translate: always asks for the native one.
            {"model_name": "claude-for-pycharm", "translate": "always", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_TR_ANTHROPIC_KEY"}},
            # drop_params: false restores LiteLLM's strict refusal of what the provider does not take.
            {"model_name": "claude-strict", "translate": "always", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_TR_ANTHROPIC_KEY",
                "drop_params": False}},
            {"model_name": "claude-compat", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_TR_ANTHROPIC_KEY"}},
            {"model_name": "gpt-never", "translate": "never", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_TR_OPENAI_KEY"}},
            {"model_name": "gpt-client-key", "litellm_params": {"model": "openai/gpt-4o", "api_base": f"{fake_url}/v1"}},
        ],
        "user_id_mappings": shipped["user_id_mappings"],
        "memory": {"api_key": "os.environ/MR_TR_SM_KEY", "base_url": f"{fake_url}/v3"},
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("translation")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(translation_config(fake.url), sort_keys=False))
    with running_proxy(workdir, config, env=KEYS) as running:
        yield running


def claude_code(proxy: RunningProxy) -> anthropic.Anthropic:
    """The anthropic SDK as Claude Code uses it: base URL on the gateway, its own User-Agent."""
    return anthropic.Anthropic(
        base_url=proxy.gateway_url, api_key="sk-ant-claude-code-0105", max_retries=0, timeout=WAIT,
        default_headers={"user-agent": CLAUDE_CODE_UA, "x-claude-code-session-id": "session-0106"},
    )


def pycharm(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.gateway_url}/v1", api_key="sk-client-pycharm-0107", max_retries=0, timeout=WAIT,
        default_headers={"user-agent": "OpenAIClientImpl/Java 2.8.1"},
    )


CONVERSATION_ANTHROPIC = [
    {"role": "user", "content": [
        {"type": "text", "text": "What is in this picture, and what is the weather in Paris?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]},
    {"role": "assistant", "content": [
        {"type": "text", "text": "A pixel. Checking the weather."},
        {"type": "tool_use", "id": "toolu_earlier", "name": "get_weather", "input": {"city": "Paris"}},
    ]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_earlier", "content": "sunny, 21 C"}]},
    {"role": "assistant", "content": "It is sunny."},
    {"role": "user", "content": "And in Lyon?"},
]


# --- Claude Code (anthropic SDK) on a GPT model -------------------------------------------------


def test_anthropic_sdk_on_gpt_non_streaming(proxy: RunningProxy, upstream: FakeUpstream):
    message = claude_code(proxy).messages.create(
        model="gpt-for-claude-code", max_tokens=64, system="Answer briefly.",
        stop_sequences=["END"], messages=CONVERSATION_ANTHROPIC,
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "Hello from OpenAI"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (USAGE_IN, USAGE_OUT)

    seen = upstream.last()
    assert seen.via_supermemory and seen.api_path == "/v1/chat/completions"  # no ?beta, no /v1/messages
    assert seen.headers["authorization"] == f"Bearer {KEYS['MR_TR_OPENAI_KEY']}"
    assert "x-api-key" not in seen.headers and "anthropic-version" not in seen.headers
    assert seen.headers["x-sm-user-id"] == "claude-cli"
    assert seen.headers["x-sm-conversation-id"] == "session-0106"
    assert seen.headers["x-supermemory-api-key"] == KEYS["MR_TR_SM_KEY"]
    body = seen.json
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 64
    assert body["stop"] == ["END"]
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert body["messages"][0]["content"] == "Answer briefly."
    image = body["messages"][1]["content"][1]
    assert image == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert body["messages"][2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "toolu_earlier", "content": "sunny, 21 C"}
    line = log_line_for(proxy, alias="gpt-for-claude-code", stream=False)
    assert (line["client_protocol"], line["translated_to"], line["status"]) == ("anthropic", "openai", 200)
    assert (line["input_tokens"], line["output_tokens"]) == (USAGE_IN, USAGE_OUT)
    assert line["supermemory"]["x-supermemory-conversation-id"] == "conv-fake"


def test_anthropic_sdk_on_gpt_streaming(proxy: RunningProxy, upstream: FakeUpstream):
    with claude_code(proxy).messages.stream(
        model="gpt-for-claude-code", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == "Hello"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == USAGE_OUT
    body = upstream.last().json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    line = log_line_for(proxy, alias="gpt-for-claude-code", stream=True)
    assert (line["input_tokens"], line["output_tokens"], line["translated_to"]) == (USAGE_IN, USAGE_OUT, "openai")


def test_anthropic_sdk_on_gpt_tool_use(proxy: RunningProxy, upstream: FakeUpstream):
    client = claude_code(proxy)
    message = client.messages.create(
        model="gpt-for-claude-code", max_tokens=64, tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "auto"}, messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert message.stop_reason == "tool_use"
    call = next(block for block in message.content if block.type == "tool_use")
    assert (call.name, call.input, call.id) == ("get_weather", TOOL_ARGUMENTS, "call_fake")
    sent = upstream.last().json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL_ANTHROPIC["input_schema"]
    assert sent["tool_choice"] == "auto"

    with client.messages.stream(
        model="gpt-for-claude-code", max_tokens=64, tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    streamed_call = next(block for block in final.content if block.type == "tool_use")
    assert (streamed_call.name, streamed_call.input) == ("get_weather", TOOL_ARGUMENTS)
    assert final.stop_reason == "tool_use"


def test_anthropic_sdk_on_gemini(proxy: RunningProxy, upstream: FakeUpstream):
    client = claude_code(proxy)
    message = client.messages.create(
        model="gemini-for-claude-code", max_tokens=32, system="Be brief.", messages=CONVERSATION_ANTHROPIC,
    )
    assert message.content[0].text == "Hello from Gemini"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (USAGE_IN, USAGE_OUT)
    seen = upstream.last()
    assert seen.api_path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert seen.headers["x-goog-api-key"] == KEYS["MR_TR_GEMINI_KEY"] and "authorization" not in seen.headers
    body = seen.json
    assert body["system_instruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user", "model", "user"]
    assert body["contents"][0]["parts"][1]["inline_data"] == {"data": PNG, "mime_type": "image/png"}
    assert body["contents"][1]["parts"][1]["function_call"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert body["contents"][2]["parts"][0]["function_response"]["name"] == "get_weather"

    with client.messages.stream(
        model="gemini-for-claude-code", max_tokens=32, tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert upstream.last().api_path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert final.content[0].text == "Let me check."
    call = next(block for block in final.content if block.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", TOOL_ARGUMENTS)
    assert final.stop_reason == "tool_use"


# --- PyCharm (openai SDK) on a Claude model -----------------------------------------------------


def test_openai_sdk_on_claude_non_streaming(proxy: RunningProxy, upstream: FakeUpstream):
    completion = pycharm(proxy).chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, temperature=0.3, messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "Describe this."},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_earlier", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
            {"role": "tool", "tool_call_id": "call_earlier", "content": "sunny"},
            {"role": "user", "content": "Thanks. Anything else?"},
        ], tools=[WEATHER_TOOL_OPENAI],
    )
    # With tools offered the fake answers with a tool call: check the plain-text answer below.
    assert completion.object == "chat.completion"
    seen = upstream.last()
    assert seen.api_path == "/v1/messages" and seen.via_supermemory
    assert seen.headers["x-api-key"] == KEYS["MR_TR_ANTHROPIC_KEY"] and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["x-sm-user-id"] == "pycharm-ai"
    body = seen.json
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 64
    assert body["system"] == [{"type": "text", "text": "You are terse."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "user"] or [
        m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": PNG}}
    assert body["messages"][1]["content"][0] == {"type": "tool_use", "id": "call_earlier", "name": "get_weather",
                                                 "input": {"city": "Paris"}}
    assert body["messages"][2]["content"][0]["type"] == "tool_result"

    plain = pycharm(proxy).chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.choices[0].message.content == "Hello from Claude"
    assert plain.choices[0].finish_reason == "stop"
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (USAGE_IN, USAGE_OUT)


def test_openai_sdk_on_claude_streaming(proxy: RunningProxy, upstream: FakeUpstream):
    stream = pycharm(proxy).chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Claude"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (USAGE_IN, USAGE_OUT)
    assert upstream.last().json["stream"] is True
    # Without include_usage, no choice-less chunk: code that reads choices[0] keeps working.
    quiet = list(pycharm(proxy).chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert all(c.choices for c in quiet)


def test_openai_sdk_on_claude_tool_use(proxy: RunningProxy, upstream: FakeUpstream):
    client = pycharm(proxy)
    completion = client.chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, tools=[WEATHER_TOOL_OPENAI], tool_choice="auto",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_fake", "function", "get_weather", TOOL_ARGUMENTS)
    sent = upstream.last().json
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL_OPENAI["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "auto"}

    chunks = list(client.chat.completions.create(
        model="claude-for-pycharm", max_tokens=64, tools=[WEATHER_TOOL_OPENAI], stream=True,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ))
    arguments = "".join(
        call.function.arguments or "" for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or ())
    )
    names = [call.function.name for c in chunks if c.choices
             for call in (c.choices[0].delta.tool_calls or ()) if call.function.name]
    assert names == ["get_weather"] and json.loads(arguments) == TOOL_ARGUMENTS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- streaming behaviour, errors, settings ------------------------------------------------------


def test_translated_events_reach_the_client_while_the_upstream_still_streams(proxy: RunningProxy, upstream: FakeUpstream):
    upstream.hold_streams = True
    received: list[str] = []

    def read() -> None:
        with claude_code(proxy).messages.stream(
            model="gpt-for-claude-code", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for event in stream:
                received.append(event.type)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(STREAM_WAIT * 20):
            if "content_block_delta" in received or not reader.is_alive():
                break
            threading.Event().wait(0.05)
        # The first upstream event holds the first words: they are out before the rest is sent.
        assert "content_block_delta" in received, received
        assert "message_stop" not in received
    finally:
        upstream.release()
        reader.join(WAIT)
    assert received[-1] == "message_stop"


@pytest.mark.parametrize("status", [429, 500])
def test_provider_errors_come_back_in_the_clients_shape(proxy: RunningProxy, upstream: FakeUpstream, status: int):
    with pytest.raises(anthropic.APIStatusError) as anthropic_error:
        claude_code(proxy).messages.create(
            model="gpt-for-claude-code", max_tokens=8, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-fault": f"status={status}"},
        )
    assert anthropic_error.value.status_code == status
    assert anthropic_error.value.body["type"] == "error"
    assert anthropic_error.value.body["error"]["message"] == f"openai: fake {status}"

    with pytest.raises(openai.APIStatusError) as openai_error:
        pycharm(proxy).chat.completions.create(
            model="claude-for-pycharm", max_tokens=8, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-fault": f"status={status}"},
        )
    assert openai_error.value.status_code == status
    assert openai_error.value.body["message"] == f"anthropic: fake {status}"


def test_a_request_the_provider_cannot_take_is_refused_before_it_leaves(proxy: RunningProxy, upstream: FakeUpstream):
    with pytest.raises(openai.BadRequestError) as excinfo:
        pycharm(proxy).chat.completions.create(
            model="claude-strict", max_tokens=8, logit_bias={"50256": -100},
            messages=[{"role": "user", "content": "hi"}],
        )
    assert "logit_bias" in excinfo.value.body["message"]
    with pytest.raises(openai.BadRequestError) as remote:
        pycharm(proxy).chat.completions.create(
            model="claude-for-pycharm", max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://192.0.2.1/cat.png"}}]}],
        )
    assert "does not download images" in remote.value.body["message"]
    assert upstream.requests == []


def test_translate_never_and_compatible_endpoints_pass_through(proxy: RunningProxy, upstream: FakeUpstream):
    with pytest.raises(anthropic.BadRequestError) as excinfo:
        claude_code(proxy).messages.create(model="gpt-never", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "translate: never" in excinfo.value.body["error"]["message"]
    # Anthropic's OpenAI-compatible endpoint serves chat/completions: no translation by default.
    answer = pycharm(proxy).chat.completions.create(model="claude-compat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from OpenAI"  # the fake's chat/completions answer
    assert upstream.last().api_path == "/v1/chat/completions"


def test_client_key_moves_to_the_providers_header_when_the_config_has_none(proxy: RunningProxy, upstream: FakeUpstream):
    claude_code(proxy).messages.create(model="gpt-client-key", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    seen = upstream.last()
    assert seen.headers["authorization"] == "Bearer sk-ant-claude-code-0105"
    assert "x-api-key" not in seen.headers


def test_claude_codes_token_count_is_answered_by_litellms_tokenizer(proxy: RunningProxy, upstream: FakeUpstream):
    count = claude_code(proxy).messages.count_tokens(
        model="gpt-for-claude-code", system="Be brief.", tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "What is the weather in Paris today? " * 20}],
    )
    short = claude_code(proxy).messages.count_tokens(
        model="gpt-for-claude-code", messages=[{"role": "user", "content": "hi"}])
    assert 0 < short.input_tokens < 20 < count.input_tokens
    assert upstream.requests == []  # OpenAI has no such endpoint: counted locally


def test_curl_stream_is_well_formed_sse(proxy: RunningProxy, upstream: FakeUpstream):
    raw = httpx.post(
        f"{proxy.gateway_url}/v1/messages", timeout=WAIT,
        headers={"anthropic-version": "2023-06-01", "x-api-key": "k", "accept-encoding": "gzip"},
        json={"model": "gpt-for-claude-code", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in raw.headers
    blocks = [block for block in raw.text.split("\n\n") if block.strip()]
    names = [block.splitlines()[0].removeprefix("event: ") for block in blocks]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    for block in blocks:
        event, data = block.splitlines()
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert upstream.last().headers["accept-encoding"] == "identity"
