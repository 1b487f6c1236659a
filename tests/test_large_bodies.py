"""Large bodies: the worker's skeleton, the splice back, the readable prefix, the fallback, and
the body parsed once for memory and router (wire.body_worker, wire.large_bodies, wire.request_json)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.flow_state import known_context, request_json_of
from memory_routing.wire import body_worker
from memory_routing.wire.body_worker import placeholder, skeletonize
from memory_routing.wire.large_bodies import BodyWorker, LargeBody, WorkerUnavailable
from memory_routing.addons.large_body_offload import LargeBodyOffload
from memory_routing.mitm.request_json import encode_json, request_json
from router_stand_in import encode_edit

MIN = 64  # a small minimum literal length keeps the documents small
LONG = "abc " * 40

ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def skeleton_of(document, *, min_literal: int = MIN, raw: bytes | None = None) -> tuple[dict, LargeBody | None, bytes]:
    source = raw if raw is not None else json.dumps(document, ensure_ascii=False).encode()
    meta, skeleton = skeletonize(source, min_literal)
    assert "error" not in meta and "unsupported" not in meta, meta
    return json.loads(skeleton), LargeBody(source, meta["nonce"], tuple(meta["spans"])), source


DOCUMENTS = [
    {"model": "m", "messages": [{"role": "user", "content": LONG}]},
    {"model": "m", "messages": [{"role": "user", "content": "quote \" backslash \\ newline \n tab \t " * 5}]},
    {"model": "m", "messages": [{"role": "user", "content": "é ü 日本語 😀 𝄞 " * 20}]},
    # nested: lists in dicts in lists, several long strings, one as the last element
    {"a": [{"b": [LONG, {"c": LONG + "x"}]}, LONG + "y"], "d": {"e": {"f": LONG + "z"}}, "g": [1, 2.5, None, True]},
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_skeleton_spliced_back_is_the_document(document):
    skeleton, large, _ = skeleton_of(document)
    assert large.count >= 1 and large.nonce not in json.dumps(document)
    assert len(json.dumps(skeleton)) < len(json.dumps(document))
    assert json.loads(large.splice(ENCODE(skeleton).encode())) == document
    assert large.materialize(skeleton) == document


def test_escaped_forms_survive_byte_for_byte():
    """\\u escapes, an escaped surrogate pair and \\/ are copied as they came (no re-encoding)."""
    raw = b'{"m":"x","t":"' + b"\\ud83d\\ude00 \\u00e9 \\/ \\\" " * 10 + b'"}'
    skeleton, large, _ = skeleton_of(None, raw=raw)
    out = large.splice(ENCODE({**skeleton, "m": "y"}).encode())
    assert b"\\ud83d\\ude00 \\u00e9 \\/" in out
    assert json.loads(out) == {**json.loads(raw), "m": "y"}


def test_keys_and_short_strings_stay_in_the_skeleton():
    document = {LONG: 1, "short": "s", "list": [LONG]}
    skeleton, large, _ = skeleton_of(document)
    assert LONG in skeleton and skeleton["short"] == "s" and skeleton["list"] == [large.placeholder(0)]


def test_invalid_bodies_get_jsons_own_message():
    for raw in (b'{"a": "' + b"x" * 100 + b'\\q"}',  # a bad escape inside a long string
                b'{"a": "' + b"x" * 100 + b'\xff"}',  # not UTF-8
                b'{"a": "' + b"x" * 100 + b'\x01"}',  # a raw control character
                b'{"a": "' + b"x" * 100 + b'" "b"}',  # broken structure around it
                b'{"a": "' + b"x" * 100):  # unterminated
        meta, _ = skeletonize(raw, MIN)
        with pytest.raises(ValueError) as expected:
            json.loads(raw)
        assert meta == {"error": str(expected.value)}


def test_what_the_worker_leaves_to_the_loop():
    assert "unsupported" in skeletonize(json.dumps({"a": LONG}).encode("utf-16"), MIN)[0]
    assert "unsupported" in skeletonize(b'{"a": "short"}', MIN)[0]


def test_the_nonce_never_occurs_in_the_body(monkeypatch):
    first, second = "a" * 32, "b" * 32
    nonces = iter([first, second])
    monkeypatch.setattr(body_worker.secrets, "token_hex", lambda n: next(nonces))
    meta, _ = skeletonize(json.dumps({"x": first, "y": LONG}).encode(), MIN)
    assert meta["nonce"] == second


def test_a_client_cannot_pull_a_string_in_with_a_lookalike_placeholder():
    """A guessed placeholder (any other nonce) is text like any other; the real nonce is new per body."""
    guess = placeholder("0" * 32, 0)
    document = {"messages": [{"content": LONG}, {"content": guess}, {"content": f"see {guess}"}]}
    skeleton, large, _ = skeleton_of(document)
    assert json.loads(large.splice(ENCODE(skeleton).encode())) == document
    assert skeleton_of(document)[1].nonce != large.nonce


def test_a_placeholder_inside_a_longer_string_is_spliced_in_the_proxys_own_encoding():
    """Memory's recall block goes before the human turn's text: one level of JSON escaping."""
    document = {"messages": [{"role": "user", "content": "quote \" and é " * 10}]}
    skeleton, large, _ = skeleton_of(document)
    skeleton["messages"][0]["content"] = "recalled \"facts\"\n\n" + skeleton["messages"][0]["content"]
    out = large.splice(ENCODE(skeleton).encode())
    assert json.loads(out)["messages"][0]["content"] == "recalled \"facts\"\n\n" + document["messages"][0]["content"]
    # Someone else's encoding may have nested it in another (a JSON string in a string), where
    # its escapes would need escaping again: refused...
    assert large.splice(ENCODE(skeleton).encode(), own_encoding=False) is None
    nested = ENCODE({"arguments": ENCODE({"text": skeleton["messages"][0]["content"]})}).encode()
    assert large.splice(nested, own_encoding=False) is None
    # ...unless its bytes hold no escape: then they read the same at any depth.
    plain = {"messages": [{"role": "user", "content": "plain words " * 20}]}
    skeleton, large, _ = skeleton_of(plain)
    nested = ENCODE({"arguments": ENCODE({"text": skeleton["messages"][0]["content"]})}).encode()
    assert json.loads(json.loads(large.splice(nested, own_encoding=False))["arguments"]) == {
        "text": plain["messages"][0]["content"]}


def test_a_data_url_keeps_its_header_in_the_skeleton():
    data = "data:image/png;base64," + "iVBORw0KGgo+/" * 40
    document = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data}}]}]}
    skeleton, large, _ = skeleton_of(document)
    url = skeleton["messages"][0]["content"][0]["image_url"]["url"]
    assert url == "data:image/png;base64," + large.placeholder(0)
    assert json.loads(large.splice(ENCODE(skeleton).encode())) == document
    assert large.materialize(skeleton) == document
    # the base64 alone, where a translation split the URL (Anthropic's "data" field)
    split = ENCODE({"source": {"media_type": "image/png", "data": url.split(",", 1)[1]}}).encode()
    assert json.loads(large.splice(split, own_encoding=False))["source"]["data"] == data.split(",", 1)[1]


def test_the_fallback_when_a_placeholder_went_missing_or_was_transformed():
    document = {"a": LONG, "b": LONG + "b"}
    skeleton, large, _ = skeleton_of(document)
    assert large.splice(ENCODE({"a": skeleton["a"]}).encode()) is None  # dropped
    assert large.splice(ENCODE({**skeleton, "a": skeleton["a"].upper()}).encode()) is None  # rewritten
    assert large.splice(ENCODE({**skeleton, "c": placeholder(large.nonce, 7)}).encode()) is None  # unknown index
    # encode_json then decodes in full: correct whatever was done to the skeleton.
    edited = {**skeleton, "b": "short now"}
    body, decoded = encode_json(large, edited, ENCODE)
    assert json.loads(body) == {**document, "b": "short now"} and decoded
    assert encode_json(large, skeleton, ENCODE) == (large.source.replace(b": ", b":").replace(b", ", b","), False)


def test_readable_is_a_bounded_prefix_that_never_shows_a_placeholder():
    text = "é😀\\\"" + "x" * 100
    skeleton, large, _ = skeleton_of({"t": text})
    assert large.readable(f"before {skeleton['t']} after") == f"before {text} after"  # short enough: whole
    assert large.readable("no placeholder") == "no placeholder"
    raw = json.dumps({"t": text}, ensure_ascii=False).encode()
    # Every cut: mid UTF-8 character, mid escape (\\", \\\\), mid surrogate pair (escaped form too).
    escaped = json.dumps({"t": "😀" * 40 + "x" * 100}).encode()  # "\\ud83d\\ude00" ...
    for source in (raw, escaped):
        _, large, _ = skeleton_of(None, raw=source)
        full = json.loads(source)["t"]
        for limit in range(1, 60):
            prefix = large.prefix(0, limit)
            assert full.startswith(prefix) and len(prefix.encode("utf-8", "surrogatepass")) <= limit
            assert not (prefix and "\ud800" <= prefix[-1] <= "\udfff")


def test_the_worker_process_round_trip_and_restart():
    source = json.dumps({"model": "m", "messages": [{"role": "user", "content": "é" * 100_000}]}).encode()

    async def scenario():
        worker = BodyWorker()
        try:
            answer = await worker.read(source)
            assert answer.large is not None and len(answer.skeleton) < 300
            assert json.loads(answer.large.splice(answer.skeleton)) == json.loads(source)
            assert (await worker.read(b'{"a": "' + b"x" * 100_000 + b'\\q"}')).error.startswith("Invalid \\escape")
            assert (await worker.read(b'{"a": 1}')).unsupported
            worker._process.kill()  # a worker found dead is started again
            await worker._process.wait()
            assert (await worker.read(source)).large is not None
            with pytest.raises(WorkerUnavailable):  # one that does not answer in time is stopped
                await worker.read(source, timeout=0.001)
            assert not worker.running and worker.failures == 1
            assert (await worker.read(source)).large is not None
        finally:
            await worker.aclose()

    asyncio.run(scenario())


# --- the addons: one parse per flow, the offload in front of memory --------------------------

CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
memory:
  backend: local
"""


@pytest.fixture
def offload(tmp_path: Path):
    from memory_routing.addons.memory import EmbeddedMemory
    from memory_routing.memory.store import SQLiteMemoryStore

    (tmp_path / "config.yaml").write_text(CONFIG)
    store = SQLiteMemoryStore(tmp_path / "memory.sqlite3")
    routing = RoutingConfig()
    addon = LargeBodyOffload(routing)
    memory = EmbeddedMemory(routing, SimpleNamespace(memory=store, before_close=[]))
    with taddons.context(routing, addon, memory) as tctx:
        tctx.configure(routing, memory_routing_config=str(tmp_path / "config.yaml"))
        tctx.configure(addon, memory_routing_offload_body_size="1k")
        yield SimpleNamespace(addon=addon, memory=memory, tctx=tctx)
    memory.done()
    store.close()


def chat_flow(payload: dict):
    request = tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=json.dumps(payload).encode(),
                          headers=Headers(host="memory-routing.localhost", content_type="application/json",
                                          x_memory_user_id="alice"))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def test_the_option_must_be_a_size_above_zero(offload):
    for bad in ("0", "-1", "lots"):
        with pytest.raises(exceptions.OptionsError, match="memory_routing_offload_body_size"):
            offload.tctx.configure(offload.addon, memory_routing_offload_body_size=bad)


def test_memory_sees_a_prefix_and_the_same_conversation_across_requests(offload):
    text = "My cat Miso likes tuna. " * 10_000

    async def scenario():
        flows = []
        for _ in range(2):
            flow = chat_flow({"model": "gpt-alias", "messages": [{"role": "user", "content": text}]})
            await offload.addon.request(flow)
            parsed = request_json_of(flow)
            assert parsed is not None and parsed.large is not None  # read by the worker
            assert request_json(flow) is parsed  # memory and router reuse it
            pending = offload.memory.request(flow)
            if pending is not None:
                await pending
            flows.append(flow)
        await offload.addon.worker.aclose()
        return flows

    first, second = asyncio.run(scenario())
    calls = [known_context(first).memory_call, known_context(second).memory_call]
    for call in calls:
        assert "large-body:" not in call.turn and call.turn.startswith("My cat Miso likes tuna.")
        assert call.turn.endswith("[…]") and len(call.turn) < 9000
    assert calls[0].conversation_id == calls[1].conversation_id


def test_a_small_body_is_parsed_once_and_left_in_the_loop(offload, monkeypatch):
    flow = chat_flow({"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]})
    assert offload.addon.request(flow) is None  # below the threshold: no worker
    loads = []
    real = json.loads
    monkeypatch.setattr("memory_routing.mitm.request_json.json.loads", lambda b: loads.append(1) or real(b))
    first = request_json(flow)
    assert request_json(flow) is first and loads == [1]
    flow.request.content = b'{"model": "other"}'  # a rewritten body is parsed again
    assert request_json(flow).payload == {"model": "other"} and loads == [1, 1]


# --- translation keeps placeholders whole (LiteLLM maps content strings through) ---------------

@pytest.mark.parametrize("client, provider, payload", [
    ("openai", "anthropic", {"model": "gpt-alias", "max_tokens": 10, "messages": [
        {"role": "system", "content": "S" * 200}, {"role": "user", "content": "é😀\"" * 100}]}),
    ("openai", "gemini", {"model": "gpt-alias", "messages": [{"role": "user", "content": "é😀\"" * 100}]}),
    ("anthropic", "openai", {"model": "claude-alias", "max_tokens": 10, "system": "S" * 200, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "é😀\"" * 100}]}]}),
    ("anthropic", "gemini", {"model": "claude-alias", "max_tokens": 10, "messages": [
        {"role": "user", "content": "é😀\"" * 100}]}),
    # inline images: the data URL is split into media type and base64, or built from them
    ("openai", "anthropic", {"model": "gpt-alias", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "iVBORw0KGgo+/" * 40}}]}]}),
    ("anthropic", "openai", {"model": "claude-alias", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo+/" * 40}}]}]}),
    ("anthropic", "gemini", {"model": "claude-alias", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo+/" * 40}}]}]}),
])
def test_a_placeholder_survives_each_translation_direction(client, provider, payload):
    from memory_routing.llm.translation import translate_request
    from memory_routing.wire.protocol import ClientProtocol

    protocol = ClientProtocol(client)
    skeleton, large, _ = skeleton_of(payload)
    whole = translate_request(protocol, provider, "m", payload)
    from_skeleton = translate_request(protocol, provider, "m", skeleton)
    spliced = large.splice(from_skeleton.body, own_encoding=False)
    assert spliced is not None, from_skeleton.body
    assert json.loads(spliced) == json.loads(whole.body)


def test_what_the_offload_leaves_to_the_loop(offload, monkeypatch, caplog):
    big = {"model": "gpt-alias", "messages": [{"role": "user", "content": "x" * 5000}]}
    flow = chat_flow(big)
    flow.request.path = "/v1/messages/count_tokens"  # a tokenizer must see every string
    assert offload.addon.request(flow) is None
    flow = chat_flow(big)
    flow.request.headers["content-encoding"] = "identity"
    assert offload.addon.request(flow) is None

    async def broken(source, **kwargs):
        raise RuntimeError("worker gone")

    monkeypatch.setattr(offload.addon.worker, "read", broken)
    flow = chat_flow(big)
    asyncio.run(offload.addon.request(flow))
    assert request_json_of(flow) is None and "parsed in the loop" in caplog.text
    assert request_json(flow).payload == big  # and so it is


def test_the_skeleton_modules_are_pure():
    """The worker runs with the standard library only (python -I -S); the splice needs no mitmproxy."""
    import subprocess
    import sys

    code = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
            "print(' '.join(m for m in ('litellm', 'mitmproxy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "memory_routing.wire.large_bodies",
                          "memory_routing.wire.body_worker"], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == []


def test_recall_goes_into_a_large_body_around_its_long_string(offload):
    from memory_routing.memory.records import NewMemory
    from memory_routing.memory.redact import FENCE_OPEN

    offload.memory.stores.memory.add_many([
        NewMemory("alice", "old", "cli", "m", "user", "My cat Miso loves tuna.", 1683504000.0)])
    question = "What does my cat Miso like? \"quoted\" é 😀\n" * 2000  # ~90 KB: a placeholder
    document = {"model": "gpt-alias", "messages": [{"role": "user", "content": question}]}
    flow = chat_flow(document)

    async def scenario():
        await offload.addon.request(flow)
        assert request_json_of(flow).large is not None
        pending = offload.memory.request(flow)
        if pending is not None:
            await pending
        await offload.addon.worker.aclose()

    client_bytes = flow.request.raw_content
    asyncio.run(scenario())
    assert known_context(flow).memory_call.recall == "injected"
    # The memory leaves the encoding to the router: one encode per request, with its changes.
    assert flow.request.raw_content is client_bytes and request_json_of(flow).edited
    assert encode_edit(flow)
    content = json.loads(flow.request.content)["messages"][0]["content"]
    assert content.startswith(FENCE_OPEN) and "loves tuna" in content and content.endswith("\n\n" + question)
    # the router's encoding of the same parse (a model rewrite) splices from the client's bytes again
    parsed = request_json(flow)
    assert parsed.large is not None and parsed.large.nonce in json.dumps(parsed.payload)
    body, decoded = encode_json(parsed.large, {**parsed.payload, "model": "gpt-4o-mini"}, ENCODE)
    assert not decoded and json.loads(body)["messages"][0]["content"] == content
