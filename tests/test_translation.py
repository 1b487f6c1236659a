"""Translation units: SSE framing, streams cut anywhere, errors mid-stream, request mapping."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fake_upstream import (
    USAGE_IN,
    USAGE_OUT,
    native_request_problem,
    _anthropic_events,
    _anthropic_tool_events,
    _gemini_events,
    _gemini_tool_events,
    _openai_chat_events,
    _openai_tool_events,
)
from memory_routing.llm.parameters import OUTPUT_LIMIT_PARAMS, target_model
from memory_routing.wire.protocol import ClientProtocol
from memory_routing.llm.translation import (
    ANTHROPIC_VERSION,
    TranslationRefused,
    translate_request,
)
from memory_routing.wire.sse import SseDecoder, SseEvent

ANTHROPIC_REQUEST = {"model": "alias", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], "stream": True}
OPENAI_REQUEST = {
    "model": "alias", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], "stream": True,
    "stream_options": {"include_usage": True},
}
TOOLS_ANTHROPIC = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def sse(events, line_end: str = "\n") -> bytes:
    text = ""
    for name, data in events:
        head = f"event: {name}{line_end}" if name else ""
        text += f"{head}data: {data if isinstance(data, str) else json.dumps(data)}{line_end}{line_end}"
    return text.encode()


def run_stream(translator, raw: bytes, piece: int) -> bytes:
    out = b""
    for i in range(0, len(raw), piece):
        out += b"".join(translator(raw[i:i + piece]))
    return out + b"".join(translator(b""))


def anthropic_events(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        events.append(payload)
    return events


def openai_chunks(raw: bytes) -> list[dict | str]:
    return [
        data if (data := block.removeprefix("data: ")) == "[DONE]" else json.loads(data)
        for block in raw.decode().split("\n\n") if block.strip()
    ]


def check_anthropic_order(events: list[dict]) -> None:
    """The order the anthropic SDK's accumulator insists on."""
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-2]["type"] == "message_delta"
    open_block = None
    for streamed in events[1:-2]:
        if streamed["type"] == "content_block_start":
            assert open_block is None
            open_block = streamed["index"]
        elif streamed["type"] == "content_block_delta":
            assert streamed["index"] == open_block
        elif streamed["type"] == "content_block_stop":
            assert streamed["index"] == open_block
            open_block = None
    assert open_block is None


def test_sse_decoder_handles_every_line_ending_and_split():
    raw = b"event: a\r\ndata: 1\r\n\r\n: comment\n\ndata: x\ndata: y\n\nevent: b\rdata: 2\r\r"
    for piece in range(1, len(raw) + 1):
        decoder = SseDecoder()
        events = [e for i in range(0, len(raw), piece) for e in decoder.feed(raw[i:i + piece])] + decoder.close()
        assert events == [SseEvent("a", "1"), SseEvent(None, "x\ny"), SseEvent("b", "2")], piece


@pytest.mark.parametrize("provider, events, text", [
    ("openai", _openai_chat_events("gpt-4o"), "Hello"),
    ("gemini", _gemini_events("gemini-2.5-pro"), "Hello from Gemini"),
])
@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_anthropic_client_stream_survives_any_chunking(provider, events, text, piece):
    translated = translate_request(ClientProtocol.ANTHROPIC, provider, "m", dict(ANTHROPIC_REQUEST))
    raw = sse(events, "\r\n" if provider == "gemini" else "\n")
    out = anthropic_events(run_stream(translated.answer.stream_translator(), raw, piece))
    check_anthropic_order(out)
    assert "".join(e["delta"]["text"] for e in out if e["type"] == "content_block_delta") == text
    assert out[-2]["delta"]["stop_reason"] == "end_turn"
    assert out[-2]["usage"]["output_tokens"] == USAGE_OUT


@pytest.mark.parametrize("provider, events", [
    ("openai", _openai_tool_events("gpt-4o", TOOLS_ANTHROPIC)),
    ("gemini", _gemini_tool_events("gemini-2.5-pro", TOOLS_ANTHROPIC)),
])
def test_anthropic_client_stream_of_a_tool_call(provider, events):
    request = dict(ANTHROPIC_REQUEST, tools=TOOLS_ANTHROPIC)
    translated = translate_request(ClientProtocol.ANTHROPIC, provider, "m", request)
    out = anthropic_events(run_stream(translated.answer.stream_translator(), sse(events), 5))
    check_anthropic_order(out)
    tool = next(e["content_block"] for e in out
                if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use")
    arguments = "".join(e["delta"].get("partial_json", "") for e in out if e["type"] == "content_block_delta")
    assert tool["name"] == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    assert out[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize("piece", [1, 13, 100_000])
def test_openai_client_stream_from_anthropic(piece):
    translated = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", dict(OPENAI_REQUEST))
    chunks = openai_chunks(run_stream(translated.answer.stream_translator(), sse(_anthropic_events("claude-x")), piece))
    assert chunks[-1] == "[DONE]"
    body = [c for c in chunks if isinstance(c, dict)]
    assert body[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in body if c["choices"]) == "Hello from Claude"
    assert [c["choices"][0]["finish_reason"] for c in body if c["choices"]][-1] == "stop"
    assert body[-1]["choices"] == [] and body[-1]["usage"]["prompt_tokens"] == USAGE_IN
    assert len({c["id"] for c in body}) == 1


def test_openai_client_stream_of_a_tool_call_from_anthropic():
    translated = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", dict(OPENAI_REQUEST))
    raw = sse(_anthropic_tool_events("claude-x", TOOLS_ANTHROPIC))
    body = [c for c in openai_chunks(run_stream(translated.answer.stream_translator(), raw, 9)) if isinstance(c, dict)]
    calls = [call for c in body if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["id"] == "toolu_fake" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(call["function"]["arguments"] for call in calls)) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in body if c["choices"]][-1] == "tool_calls"


def test_an_error_event_mid_stream_reaches_the_client_in_its_shape():
    translated = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", dict(OPENAI_REQUEST))
    events = [*_anthropic_events("claude-x")[:3],
              ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    translator = translated.answer.stream_translator()
    chunks = openai_chunks(run_stream(translator, sse(events), 100_000))
    assert chunks[-1] == {"error": {"message": "anthropic: Overloaded", "type": "server_error", "param": None, "code": None}}
    assert translator(b"more") == []  # nothing after the error

    anthropic_side = translate_request(ClientProtocol.ANTHROPIC, "openai", "gpt-4o", dict(ANTHROPIC_REQUEST))
    raw = sse([*_openai_chat_events("gpt-4o")[:1], (None, {"error": {"message": "boom", "type": "server_error"}})])
    out = anthropic_events(run_stream(anthropic_side.answer.stream_translator(), raw, 100_000))
    assert out[-1] == {"type": "error", "error": {"type": "api_error", "message": "openai: boom"}}


def test_whole_answers_and_errors():
    translated = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", {**OPENAI_REQUEST, "stream": False})
    answer = json.loads(translated.answer.body(200, "application/json", json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "max_tokens",
        "content": [{"type": "text", "text": "cut"}], "usage": {"input_tokens": 3, "output_tokens": 4}}).encode()))
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "cut"}
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (3, 4)
    error = json.loads(translated.answer.body(529, "application/json",
                                              b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'))
    assert error == {"error": {"message": "anthropic: busy", "type": "server_error", "param": None, "code": None}}
    html = json.loads(translated.answer.body(502, "text/html", b"<html>Bad gateway</html>"))
    assert html["error"]["message"] == "anthropic: HTTP 502: <html>Bad gateway</html>"
    with pytest.raises(TranslationRefused):
        translated.answer.body(200, "text/plain", b"not json")


def test_request_mapping_refuses_what_cannot_be_sent():
    with pytest.raises(TranslationRefused, match="logit_bias"):
        translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", {**OPENAI_REQUEST, "logit_bias": {"1": 1}})
    dropped = translate_request(
        ClientProtocol.OPENAI, "anthropic", "claude-x", {**OPENAI_REQUEST, "logit_bias": {"1": 1}}, drop_params=True)
    assert "logit_bias" not in json.loads(dropped.body)
    with pytest.raises(TranslationRefused, match="does not download images"):
        translate_request(ClientProtocol.ANTHROPIC, "gemini", "g",
                          {**ANTHROPIC_REQUEST, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}}]}]})
    with pytest.raises(TranslationRefused, match="messages"):
        translate_request(ClientProtocol.OPENAI, "anthropic", "claude-x", {"model": "x", "messages": []})


def test_openai_developer_role_becomes_system_where_the_target_has_none():
    # Found by the property test below: LiteLLM's completion() maps it before a provider's
    # transform, and the proxy calls the transforms itself.
    payload = {"model": "m", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    anthropic_body = json.loads(translate_request(ClientProtocol.OPENAI, "anthropic", "claude-sonnet-4-5", payload).body)
    assert anthropic_body["system"] == [{"type": "text", "text": "Be brief."}]
    gemini_body = json.loads(translate_request(ClientProtocol.OPENAI, "gemini", "gemini-2.5-flash", payload).body)
    assert gemini_body["system_instruction"] == {"parts": [{"text": "Be brief."}]}
    o_series = json.loads(translate_request(ClientProtocol.OPENAI, "openai", "o4-mini", payload).body)
    assert o_series["messages"][0]["role"] == "developer"  # OpenAI's reasoning models know it


def test_a_conversation_translation_leaves_empty_or_assistant_first_is_refused_in_words():
    with pytest.raises(TranslationRefused, match="nothing to send to openai") as refused:
        translate_request(ClientProtocol.ANTHROPIC, "openai", "gpt-4o-mini",
                          {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": []}]})
    assert refused.value.status == 400
    with pytest.raises(TranslationRefused, match="start with a user message; this one starts with 'assistant'"):
        translate_request(ClientProtocol.OPENAI, "anthropic", "claude-sonnet-4-5",
                          {"model": "m",
                           "messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hi"}]})


# --- translations the strict fake (the real APIs' rules) accepts ------------------------------
#
# The judge is fake_upstream.native_request_problem, the check the strict fake applies to what
# reaches it: a translation is right when the provider would take it. Garbage in may give
# garbage out (the provider's 400 then reaches the client in its shape); a request its own API
# accepts must become one the provider accepts, or be refused with a message.

CLIENT_ROUTES = {ClientProtocol.OPENAI: "/v1/chat/completions", ClientProtocol.ANTHROPIC: "/v1/messages"}
CLIENT_HEADERS = {"anthropic-version": ANTHROPIC_VERSION}
TARGETS = {
    "openai": ["gpt-4o-mini", "gpt-4.1", "o4-mini"],
    "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5"],
    "gemini": ["gemini-2.5-flash", "gemini-2.0-flash"],
}


def provider_route(provider: str, model: str, stream: bool) -> str:
    if provider == "openai":
        return "/v1/chat/completions"
    if provider == "anthropic":
        return "/v1/messages"
    return f"/v1beta/models/{model}:{'streamGenerateContent' if stream else 'generateContent'}"


def client_problem(client: ClientProtocol, payload: dict) -> str | None:
    return native_request_problem(CLIENT_ROUTES[client], CLIENT_HEADERS, payload)


def provider_problem(provider: str, model: str, payload: dict, translated) -> str | None:
    route = provider_route(provider, model, payload.get("stream") is True)
    return native_request_problem(route, dict(translated.headers), json.loads(translated.body))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "image_url", "thinking"])},
    optional={"text": json_values, "source": json_values, "id": json_values, "name": json_values,
              "input": json_values, "content": json_values, "tool_use_id": json_values, "image_url": json_values},
)
conversation = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "bogus"])},
        optional={"content": st.one_of(st.text(max_size=20), st.lists(blocks, max_size=3), json_values),
                  "tool_calls": json_values, "tool_call_id": json_values},
    ),
    min_size=1, max_size=4,
)
extras = st.dictionaries(
    st.sampled_from(["system", "tools", "tool_choice", "max_tokens", "temperature", "stop", "stop_sequences", "n", "top_p"]),
    json_values, max_size=3,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from([
        (ClientProtocol.ANTHROPIC, "openai"), (ClientProtocol.ANTHROPIC, "gemini"),
        (ClientProtocol.OPENAI, "anthropic"), (ClientProtocol.OPENAI, "gemini"),
    ]),
    messages=conversation, extra=extras, stream=st.booleans(),
)
def test_any_request_is_refused_with_a_message_or_translated_for_the_provider(pair, messages, extra, stream):
    client, provider = pair
    payload = {"model": "m", "messages": messages, "stream": stream, **extra}
    valid = client_problem(client, payload) is None  # the judge itself answers any JSON, never raises
    # A model neither LiteLLM's table nor the fake knows: no output cap to keep (the strict alias
    # sends the client's max_tokens as it is; see the well-formed test below).
    model = "model-x"
    try:
        translated = translate_request(client, provider, model, payload)
    except TranslationRefused as e:
        assert 400 <= e.status < 600 and e.message
        return
    problem = provider_problem(provider, model, payload, translated)
    assert not (valid and problem), f"a request {client.value} accepts became one {provider} refuses: {problem}"


def objects_with(*keys: str):
    """Objects with any of ``keys``, each holding any JSON value (a wrongly typed field)."""
    return st.fixed_dictionaries({}, optional={key: json_values for key in keys})


near_miss_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "model"]) | json_values}, optional={
        "content": st.lists(objects_with("type", "text") | json_values, max_size=2) | json_values,
        "parts": st.lists(json_values, max_size=2) | json_values,
        "tool_calls": st.lists(objects_with("id", "type", "function") | json_values, max_size=2) | json_values,
        "tool_call_id": json_values,
    }) | json_values,
    min_size=1, max_size=3,
)
near_miss_bodies = st.fixed_dictionaries({"messages": near_miss_messages, "contents": near_miss_messages}, optional={
    "model": json_values, "max_tokens": json_values,
    "tools": st.lists(objects_with("type", "function", "name", "input_schema") | json_values, max_size=2) | json_values,
})


@settings(max_examples=300, deadline=None)
@given(route=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1beta/models/g:generateContent"]),
       payload=json_values | near_miss_bodies | near_miss_bodies.map(
           lambda body: {k: v for k, v in body.items() if k != "contents"})
       | near_miss_bodies.map(lambda body: {k: v for k, v in body.items() if k not in ("messages", "model", "max_tokens")}))
def test_the_judge_answers_any_json_without_raising(route, payload):
    # The strict fake calls it on whatever arrives: a crash would drop the connection instead of
    # answering the provider's 400.
    problem = native_request_problem(route, CLIENT_HEADERS, payload)
    assert problem is None or (isinstance(problem, str) and problem)


# Well-formed requests of each client API, with what a translation must carry over: system
# text, multi-part content, tool definitions, tool calls answered by their results, sampling
# parameters, stop sequences, output caps beyond the target's, streaming.
words = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=16).filter(str.strip)
tool_names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
tool_arguments = st.dictionaries(st.sampled_from(["city", "days", "units"]), words | st.integers(0, 30), max_size=2)
TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
openai_content = words | st.lists(st.builds(lambda t: {"type": "text", "text": t}, words), min_size=1, max_size=2)
anthropic_text = words | st.lists(st.builds(lambda t: {"type": "text", "text": t}, words), min_size=1, max_size=2)


@st.composite
def openai_requests(draw) -> dict:
    tools = draw(st.lists(tool_names, max_size=3, unique=True))
    messages: list[dict] = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(openai_content)})
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(openai_content)})
        answer = draw(st.sampled_from(["text", "tool_calls", "none"] if tools else ["text", "none"]))
        if answer == "text":
            messages.append({"role": "assistant", "content": draw(words)})
        elif answer == "tool_calls":
            calls = [
                {"id": f"call_{turn}_{i}", "type": "function",
                 "function": {"name": draw(st.sampled_from(tools)), "arguments": json.dumps(draw(tool_arguments))}}
                for i in range(draw(st.integers(1, 2)))
            ]
            messages.append({"role": "assistant", "content": draw(st.none() | words), "tool_calls": calls})
            messages.extend({"role": "tool", "tool_call_id": call["id"], "content": draw(words)} for call in calls)
    payload: dict = {"model": "alias", "messages": messages}
    if tools:
        payload["tools"] = [
            {"type": "function", "function": {"name": name, "description": draw(words), "parameters": TOOL_SCHEMA}}
            for name in tools
        ]
        if draw(st.booleans()):
            payload["tool_choice"] = draw(st.sampled_from(
                ["auto", "none", "required", {"type": "function", "function": {"name": tools[0]}}]))
    optional = {
        "temperature": st.floats(0, 1), "top_p": st.floats(0.01, 1), "max_tokens": st.integers(1, 200_000),
        "max_completion_tokens": st.integers(1, 200_000), "stop": st.lists(words, min_size=1, max_size=4),
        "stream": st.booleans(), "stream_options": st.just({"include_usage": True}), "seed": st.integers(0, 99),
        "presence_penalty": st.floats(-2, 2), "user": words, "n": st.just(1),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        payload[key] = draw(optional[key])
    if "stream_options" in payload:
        payload["stream"] = True
    return payload


@st.composite
def anthropic_requests(draw) -> dict:
    tools = draw(st.lists(tool_names, max_size=3, unique=True))
    messages: list[dict] = []
    open_calls: list[str] = []
    for turn in range(draw(st.integers(1, 3))):
        results = [{"type": "tool_result", "tool_use_id": call, "content": draw(anthropic_text)} for call in open_calls]
        extra_text = draw(st.lists(st.builds(lambda t: {"type": "text", "text": t}, words), max_size=1))
        messages.append({"role": "user", "content": results + extra_text if results else draw(anthropic_text)})
        open_calls = []
        answer = draw(st.sampled_from(["text", "tool_use", "none"] if tools else ["text", "none"]))
        if answer == "text":
            messages.append({"role": "assistant", "content": draw(anthropic_text)})
        elif answer == "tool_use":
            open_calls = [f"toolu_{turn}_{i}" for i in range(draw(st.integers(1, 2)))]
            lead = draw(st.lists(st.builds(lambda t: {"type": "text", "text": t}, words), max_size=1))
            uses = [{"type": "tool_use", "id": call, "name": draw(st.sampled_from(tools)), "input": draw(tool_arguments)}
                    for call in open_calls]
            messages.append({"role": "assistant", "content": lead + uses})
    if open_calls:
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call, "content": draw(anthropic_text)} for call in open_calls]})
    payload: dict = {"model": "alias", "max_tokens": draw(st.integers(1, 200_000)), "messages": messages}
    if tools:
        payload["tools"] = [{"name": name, "description": draw(words), "input_schema": TOOL_SCHEMA} for name in tools]
        if draw(st.booleans()):
            payload["tool_choice"] = draw(st.sampled_from(
                [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": tools[0]}]))
    optional = {
        "system": anthropic_text, "temperature": st.floats(0, 1), "top_p": st.floats(0.01, 1),
        "top_k": st.integers(1, 500), "stop_sequences": st.lists(words, min_size=1, max_size=4),
        "stream": st.booleans(), "metadata": st.builds(lambda u: {"user_id": u}, words),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        payload[key] = draw(optional[key])
    return payload


well_formed = st.one_of(
    st.tuples(st.just(ClientProtocol.OPENAI), openai_requests()),
    st.tuples(st.just(ClientProtocol.ANTHROPIC), anthropic_requests()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=well_formed, provider=st.sampled_from(sorted(TARGETS)), pick=st.integers(0, 2), drop_params=st.booleans(),
    user_id=st.none() | st.from_regex(r"[a-z0-9][a-z0-9._-]{0,11}", fullmatch=True),
    conversation_id=st.none() | st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
)
def test_a_well_formed_request_becomes_one_the_provider_accepts(case, provider, pick, drop_params, user_id, conversation_id):
    client, payload = case
    assert client_problem(client, payload) is None  # the generator's own check: its API takes it
    model = TARGETS[provider][pick % len(TARGETS[provider])]
    try:
        translated = translate_request(client, provider, model, payload, drop_params=drop_params,
                                       user_id=user_id, conversation_id=conversation_id)
        event(f"{client.value} -> {provider}: translated")  # --hypothesis-show-statistics
    except TranslationRefused as e:
        event(f"{client.value} -> {provider}: refused")
        # Only a parameter the target lacks, with drop_params off: the message names the remedy.
        assert not drop_params and e.status == 400 and "drop_params" in e.message, e.message
        return
    problem = provider_problem(provider, model, payload, translated)
    cap = target_model(provider, model).max_output_tokens
    if not drop_params and cap is not None and any(
        isinstance(payload.get(key), int) and payload[key] > cap for key in OUTPUT_LIMIT_PARAMS
    ):
        # A strict alias sends the client's output limit as it is, the provider judges it (see
        # test_claude_code_fit): its refusal names that limit, and nothing else.
        assert problem is None or " is too large: " in problem, problem
        return
    assert problem is None, f"{client.value} -> {provider}/{model}: {problem}\n{translated.body.decode()}"


def test_openai_client_on_gemini_native():
    translated = translate_request(ClientProtocol.OPENAI, "gemini", "gemini-2.5-pro", {
        **OPENAI_REQUEST, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    })
    body = json.loads(translated.body)
    assert body["system_instruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert body["tools"][0]["function_declarations"][0]["name"] == "get_weather"
    assert "stream" not in body and "model" not in body  # Gemini names both in the URL

    raw = sse(_gemini_tool_events("gemini-2.5-pro", body["tools"]), "\r\n")
    chunks = openai_chunks(run_stream(translated.answer.stream_translator(), raw, 11))
    data = [c for c in chunks if isinstance(c, dict)]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in data if c["choices"]) == "Let me check."
    calls = [call for c in data if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_weather" and json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [c["choices"][0]["finish_reason"] for c in data if c["choices"]][-1] == "tool_calls"
    assert data[-1]["usage"] == {"prompt_tokens": USAGE_IN, "completion_tokens": USAGE_OUT, "total_tokens": USAGE_IN + USAGE_OUT}
    assert chunks[-1] == "[DONE]"

    whole = json.loads(translated.answer.body(200, "application/json", json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hi there"}]}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}).encode()))
    assert whole["choices"][0]["message"]["content"] == "Hi there"
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["prompt_tokens"] == 5
