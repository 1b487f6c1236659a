"""EmbeddedMemory / MemoryAnswers in mitmproxy's test harness: recall, injection, modes, storing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import pytest
from mitmproxy.http import Headers, Response
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons.routing_config import RoutingConfig
from router_stand_in import encode_edit
from memory_routing.flow_state import known_context
from memory_routing.addons.memory import (RECALL_HEADER, RECALL_MS_HEADER, EmbeddedMemory,
                                         derived_conversation_id)
from memory_routing.memory.records import NewMemory
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.memory.store import SQLiteMemoryStore

CONFIG = """
model_list:
  - model_name: gpt-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1', api_key: sk-config}
  - model_name: private-alias
    litellm_params: {model: openai/gpt-4o-mini, api_base: 'http://llm.internal:8000/v1'}
    memory: false
user_id_mappings:
  header_patterns:
    - {header: user-agent, pattern: '^curl/', user_id: curl}
memory:
  backend: local
  clients:
    - {header: user-agent, pattern: '^reader/', mode: read}
    - {user_id: quiet, mode: 'off'}
"""
PAST = 1683504000.0


@pytest.fixture
def store(tmp_path: Path):
    store = SQLiteMemoryStore(tmp_path / "memory.sqlite3")
    store.add_many([
        NewMemory("alice", "old", "cli", "m", "user", "My cat is called Miso and she loves tuna.", PAST),
        NewMemory("alice", "old", "cli", "m", "assistant", "Miso sounds lovely.", PAST),
        NewMemory("bob", "old", "cli", "m", "user", "My cat is called Pickles, a secret of bob.", PAST),
    ])
    yield store
    store.close()


@pytest.fixture
def harness(tmp_path: Path, store):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    routing = RoutingConfig()
    stores = SimpleNamespace(memory=store, before_close=[])
    memory = EmbeddedMemory(routing, stores)
    with taddons.context(routing, memory) as tctx:
        tctx.configure(routing, memory_routing_config=str(path))
        yield SimpleNamespace(memory=memory, routing=routing, store=store, tctx=tctx, config=path)
    memory.done()


def gateway_flow(path: str, payload: dict | bytes, **headers: str):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = tutils.treq(method=b"POST", path=path.encode(), content=body,
                          headers=Headers(host="memory-routing.localhost", content_type="application/json", **headers))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
    return flow


def memory_call(flow):
    """The memory's state of a call in flight (None: the memory does nothing for it)."""
    context = known_context(flow)
    return context.memory_call if context is not None else None


def run(memory: EmbeddedMemory, flow) -> None:
    pending = memory.request(flow)
    if pending is not None:
        asyncio.run(pending)
    # What the router does next: encode the memory's edit into the body (with its own changes).
    encode_edit(flow)


def openai_call(text: str, **headers: str):
    headers.setdefault("x_memory_user_id", "alice")
    return gateway_flow("/v1/chat/completions", {"model": "gpt-alias", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}, **headers)


def sent(flow) -> dict:
    return json.loads(flow.request.content)


def answer(h, flow, body: dict, status: int = 200) -> None:
    flow.response = Response.make(status, json.dumps(body).encode(), {"content-type": "application/json"})
    h.memory.answers.responseheaders(flow)
    h.memory.answers.response(flow)


def stored(h, user: str) -> list[tuple[str, str]]:
    assert h.memory.writer is None or h.memory.writer.flush(5)
    _, rows = h.store.list(user, limit=100)
    return sorted((m.role, m.text) for m in rows)


OPENAI_ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Tuna it is."}}]}


def test_openai_recall_is_injected_into_the_last_user_message(harness):
    flow = openai_call("What food does my cat Miso like?")
    run(harness.memory, flow)
    messages = sent(flow)["messages"]
    assert messages[0] == {"role": "system", "content": "be brief"}
    content = messages[-1]["content"]
    assert content.startswith(FENCE_OPEN + "\n") and content.endswith(FENCE_CLOSE + "\n\nWhat food does my cat Miso like?")
    assert "loves tuna" in content and "Pickles" not in content
    answer(harness, flow, OPENAI_ANSWER)
    assert flow.response.headers[RECALL_HEADER] == "injected"
    assert float(flow.response.headers[RECALL_MS_HEADER]) >= 0


def test_the_recall_headers_replace_any_the_upstream_sent(harness):
    flow = openai_call("What food does my cat Miso like?")
    run(harness.memory, flow)
    flow.response = Response.make(200, json.dumps(OPENAI_ANSWER).encode(), {
        "content-type": "application/json", "X-Memory-Routing-Recall": "forged", "x-memory-routing-recall-ms": "1"})
    harness.memory.answers.responseheaders(flow)
    assert flow.response.headers.get_all(RECALL_HEADER) == ["injected"]
    assert len(flow.response.headers.get_all(RECALL_MS_HEADER)) == 1
    assert flow.response.headers["content-type"] == "application/json"


def test_anthropic_block_goes_after_tool_results_and_leaves_cache_control_alone(harness):
    payload = {"model": "gpt-alias", "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
               "messages": [{"role": "user", "content": [
                   {"type": "text", "text": "Tell me about Miso the cat", "cache_control": {"type": "ephemeral"}}]}]}
    flow = gateway_flow("/v1/messages", payload, x_memory_user_id="alice")
    run(harness.memory, flow)
    body = sent(flow)
    assert body["system"] == payload["system"]
    blocks = body["messages"][-1]["content"]
    assert blocks[0]["type"] == "text" and blocks[0]["text"].startswith(FENCE_OPEN) and "cache_control" not in blocks[0]
    assert blocks[1] == payload["messages"][0]["content"][0]


def test_gemini_block_is_a_new_text_part(harness):
    flow = gateway_flow("/v1beta/models/gpt-alias:generateContent",
                        {"contents": [{"role": "user", "parts": [{"text": "Does Miso like tuna?"}]}]}, x_memory_user_id="alice")
    run(harness.memory, flow)
    parts = sent(flow)["contents"][-1]["parts"]
    assert parts[0]["text"].startswith(FENCE_OPEN) and parts[1] == {"text": "Does Miso like tuna?"}


def test_the_mode_header_is_stripped_and_off_forwards_the_body_byte_identical(harness):
    flow = openai_call("What food does my cat Miso like?", x_memory_mode="off")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before and "x-memory-mode" not in flow.request.headers
    assert memory_call(flow) is None


@pytest.mark.parametrize("value", ["sometimes", "read, write", ""])
def test_an_invalid_mode_is_answered_400_in_the_clients_shape(harness, value):
    flow = gateway_flow("/v1/messages", {"model": "gpt-alias", "messages": []}, x_memory_mode=value)
    run(harness.memory, flow)
    assert flow.response.status_code == 400
    body = json.loads(flow.response.content)
    assert body["type"] == "error" and "x-memory-mode" in body["error"]["message"]


def test_read_injects_but_does_not_store(harness):
    flow = openai_call("What does Miso like?", x_memory_mode="read")
    run(harness.memory, flow)
    assert FENCE_OPEN in sent(flow)["messages"][-1]["content"]
    answer(harness, flow, OPENAI_ANSWER)
    assert ("user", "What does Miso like?") not in stored(harness, "alice")


def test_write_stores_without_injecting(harness):
    flow = openai_call("What does Miso like?", x_memory_mode="WRITE", x_memory_conversation_id="conv-1",
                       user_agent="OpenAI/Python 1.99.0")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before
    answer(harness, flow, OPENAI_ANSWER)
    assert flow.response.headers.get(RECALL_HEADER) is None
    rows = stored(harness, "alice")
    assert ("user", "What does Miso like?") in rows and ("assistant", "Tuna it is.") in rows
    _, listed = harness.store.list("alice", conversation_id="conv-1")
    assert {(m.client, m.model) for m in listed} == {("OpenAI/Python", "gpt-alias")}


def test_client_defaults_from_the_config(harness):
    reader = openai_call("What does Miso like?", user_agent="reader/1.0", x_memory_conversation_id="r")
    run(harness.memory, reader)
    assert FENCE_OPEN in sent(reader)["messages"][-1]["content"]
    answer(harness, reader, OPENAI_ANSWER)
    assert ("user", "What does Miso like?") not in stored(harness, "alice")
    # The header overrides the client's default.
    writer = openai_call("Miso is nine years old", user_agent="reader/1.0", x_memory_mode="write")
    run(harness.memory, writer)
    answer(harness, writer, OPENAI_ANSWER)
    assert ("user", "Miso is nine years old") in stored(harness, "alice")
    quiet = openai_call("What does Miso like?", x_memory_user_id="quiet")
    before = quiet.request.raw_content
    run(harness.memory, quiet)
    assert quiet.request.raw_content == before and memory_call(quiet) is None


def test_a_tool_result_turn_is_untouched_and_its_text_answer_stored(harness):
    payload = {"model": "gpt-alias", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What does Miso like? check the file"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "cat.txt"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "SECRET FILE BODY"}]}]}
    flow = gateway_flow("/v1/messages", payload, x_memory_user_id="alice", x_memory_conversation_id="tools")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before
    answer(harness, flow, {"type": "message", "role": "assistant",
                           "content": [{"type": "text", "text": "She likes salmon, says the file."}]})
    assert flow.response.headers.get(RECALL_HEADER) is None
    _, rows = harness.store.list("alice", conversation_id="tools") if harness.memory.writer.flush(5) else (0, [])
    assert [(m.role, m.text) for m in rows] == [("assistant", "She likes salmon, says the file.")]
    # An answer of tool calls only, in a tool loop, is not stored.
    flow = gateway_flow("/v1/messages", payload, x_memory_user_id="alice", x_memory_conversation_id="tools2")
    run(harness.memory, flow)
    answer(harness, flow, {"content": [{"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}]})
    assert harness.memory.writer.flush(5) and harness.store.list("alice", conversation_id="tools2")[0] == 0


def test_a_repeated_turn_gets_a_byte_identical_body(harness):
    first, second = openai_call("Remind me what Miso eats"), openai_call("Remind me what Miso eats")
    run(harness.memory, first)
    # A memory written in between does not change the turn's block.
    harness.store.add_many([NewMemory("alice", "other", "c", "m", "user", "Miso eats tuna and also chicken", PAST)])
    run(harness.memory, second)
    assert FENCE_OPEN.encode() in first.request.raw_content
    assert first.request.raw_content == second.request.raw_content


def test_a_repeated_turn_is_answered_from_the_cache_on_the_loop_without_the_recall_threads(harness):
    first, retry = openai_call("Remind me what Miso eats"), openai_call("Remind me what Miso eats")
    run(harness.memory, first)
    # The retry must not wait on a recall thread: its block is the cached one, taken on the loop.
    harness.memory._pool.shutdown(wait=True)  # a submit would raise RuntimeError now
    assert harness.memory.request(retry) is None
    assert encode_edit(retry)  # the router's encode of the edit
    assert retry.request.raw_content == first.request.raw_content
    assert memory_call(retry).recall == "injected"


def test_memory_of_one_user_never_reaches_another(harness):
    for user in ("alice", "carol"):
        flow = openai_call("what is my cat called? Pickles?", x_memory_user_id=user)
        run(harness.memory, flow)
        text = sent(flow)["messages"][-1]["content"]
        assert "Pickles, a secret of bob" not in text
    flow = openai_call("what is my cat called? Pickles?", user_agent="curl/8.5", x_memory_user_id="bob")
    run(harness.memory, flow)
    assert "Pickles, a secret of bob" in sent(flow)["messages"][-1]["content"]


def test_streamed_answers_are_read_in_the_clients_format_after_the_router(harness):
    flow = openai_call("Miso chased a laser today", x_memory_conversation_id="s1")
    run(harness.memory, flow)
    flow.response = Response.make(200, b"", {"content-type": "text/event-stream"})
    seen = []
    flow.response.stream = lambda chunk: seen.append(chunk) or [chunk]  # the router's tap: a list of pieces
    harness.memory.answers.responseheaders(flow)
    events = [{"choices": [{"index": 0, "delta": {"content": part}}]} for part in ("She ", "was ", "fast.")]
    wire = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    out = [flow.response.stream(wire[i:i + 7]) for i in range(0, len(wire), 7)] + [flow.response.stream(b"")]
    assert b"".join(b"".join(piece) for piece in out) == wire  # passed on unchanged
    harness.memory.answers.response(flow)
    _, rows = harness.store.list("alice", conversation_id="s1") if harness.memory.writer.flush(5) else (0, [])
    assert sorted((m.role, m.text) for m in rows) == [("assistant", "She was fast."), ("user", "Miso chased a laser today")]


def test_errors_and_failed_answers_store_nothing(harness):
    flow = openai_call("Miso is asleep", x_memory_conversation_id="e1")
    run(harness.memory, flow)
    answer(harness, flow, {"error": {"message": "overloaded"}}, status=529)
    flow = openai_call("Miso is awake", x_memory_conversation_id="e1")
    run(harness.memory, flow)
    harness.memory.answers.error(flow)
    assert harness.memory.writer.flush(5) and harness.store.list("alice", conversation_id="e1")[0] == 0


def test_memory_false_aliases_and_other_backends_are_left_alone(harness, tmp_path):
    flow = gateway_flow("/v1/chat/completions", {"model": "private-alias", "messages": [
        {"role": "user", "content": "What does Miso like?"}]}, x_memory_user_id="alice")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before and memory_call(flow) is None
    harness.config.write_text(CONFIG.replace("backend: local", "backend: 'off'"))
    harness.routing.reload_if_changed()
    flow = openai_call("What does Miso like?", x_memory_mode="read")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before and "x-memory-mode" not in flow.request.headers


def test_an_internal_error_forwards_the_request_unchanged(harness, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("Miso loves tuna")  # a message holding contents must not be logged

    monkeypatch.setattr("memory_routing.addons.memory.new_human_turn", broken)
    flow = openai_call("What does Miso like?")
    before = flow.request.raw_content
    run(harness.memory, flow)
    assert flow.request.raw_content == before and flow.response is None
    assert "RuntimeError" in caplog.text and "tuna" not in caplog.text


def test_a_deleted_memory_is_not_served_from_the_block_cache(harness):
    flow = openai_call("What food does my cat Miso like?")
    run(harness.memory, flow)
    assert "loves tuna" in sent(flow)["messages"][-1]["content"]
    harness.store.forget_user("alice")
    delete = tflow.tflow(req=tutils.treq(method=b"DELETE", path=b"/memory-routing/memories?user_id=alice"))
    delete.response = Response.make(200, b"{}")
    harness.memory.request(delete)
    again = openai_call("What food does my cat Miso like?")
    run(harness.memory, again)
    assert FENCE_OPEN not in sent(again)["messages"][-1]["content"]


def test_the_writer_is_drained_before_the_store_closes(harness):
    assert harness.memory.stores.before_close == [harness.memory.close_writer]
    flow = openai_call("Miso turned ten", x_memory_conversation_id="d1", x_memory_mode="write")
    run(harness.memory, flow)
    answer(harness, flow, OPENAI_ANSWER)
    harness.memory.close_writer()
    assert harness.memory.writer is None
    assert harness.store.list("alice", conversation_id="d1")[0] == 2


def test_derived_conversation_id_follows_the_first_human_message():
    one = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello there"}]}
    later = {"messages": [*one["messages"], {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]}
    other = {"messages": [{"role": "user", "content": "something else"}]}
    assert derived_conversation_id("openai", one) == derived_conversation_id("openai", later)
    assert derived_conversation_id("openai", one) != derived_conversation_id("openai", other)
    gemini = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    assert derived_conversation_id("gemini", gemini) == derived_conversation_id("openai", one)


def test_status_shows_backend_and_counts_only(harness):
    status = harness.memory.status()
    assert status["backend"] == "local" and status["memories"] == 3 and status["users"] == 2
    assert "Miso" not in json.dumps(status)


TOOL_LOOPS = {
    # protocol path -> (first request's payload, the follow-up's extra messages, index of the turn)
    "openai": ("/v1/chat/completions", "messages", [
        {"role": "user", "content": "What does Miso like? check the file"}], [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "FILE BODY"}]),
    "anthropic": ("/v1/messages", "messages", [
        {"role": "user", "content": [{"type": "text", "text": "What does Miso like? check the file"}]}], [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "FILE BODY"}]}]),
    "gemini": ("/v1beta/models/gpt-alias:generateContent", "contents", [
        {"role": "user", "parts": [{"text": "What does Miso like? check the file"}]}], [
        {"role": "model", "parts": [{"functionCall": {"name": "read", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "read", "response": {"body": "FILE BODY"}}}]}]),
}


@pytest.mark.parametrize("protocol", sorted(TOOL_LOOPS))
def test_a_tool_loops_follow_up_gets_the_turns_block_back_without_a_search(harness, monkeypatch, protocol):
    path, key, turn, loop = TOOL_LOOPS[protocol]

    def call(items):
        payload = {key: items} if protocol == "gemini" else {"model": "gpt-alias", key: items}
        return gateway_flow(path, payload, x_memory_user_id="alice", x_memory_conversation_id=f"loop-{protocol}")

    first = call(turn)
    run(harness.memory, first)
    injected = sent(first)[key][-1]
    assert FENCE_OPEN in json.dumps(injected)

    def no_search(*args, **kwargs):
        raise AssertionError("a tool result is not a turn to search for")

    monkeypatch.setattr(harness.store, "search", no_search)
    follow_up = call(turn + loop)
    run(harness.memory, follow_up)
    body = sent(follow_up)[key]
    # Byte-identical: the same bytes as the first request's, at the same place in the body.
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    assert encode(body[0]) == encode(injected) and encode(injected).encode() in follow_up.request.content
    assert body[1:] == loop
    answer(harness, follow_up, OPENAI_ANSWER if protocol == "openai" else {"content": []})
    assert follow_up.response.headers[RECALL_HEADER] == "reinjected"
    # Another conversation's follow-up (its turn's block was never made) is forwarded as it came.
    other = gateway_flow(path, {**({} if protocol == "gemini" else {"model": "gpt-alias"}), key: turn + loop},
                         x_memory_user_id="alice", x_memory_conversation_id="elsewhere")
    before = other.request.raw_content
    run(harness.memory, other)
    assert other.request.raw_content == before


def log_fields(h, flow, body: dict, status: int = 200) -> dict:
    """The memory's flow-log field, as the call's record has it once the memory is done."""
    flow.response = Response.make(status, json.dumps(body).encode(), {"content-type": "application/json"})
    h.memory.answers.responseheaders(flow)
    h.memory.answers.response(flow)
    return known_context(flow).memory.log_fields()


def test_the_flow_log_says_what_the_memory_did_never_what_it_holds(harness):
    flow = openai_call("What food does my cat Miso like?")
    run(harness.memory, flow)
    fields = log_fields(harness, flow, OPENAI_ANSWER)
    assert fields.pop("recall_ms") >= 0
    # The block's size (4 characters a token, as its budget counts), for the usage rows to price.
    content = sent(flow)["messages"][-1]["content"]
    block = content[:content.index(FENCE_CLOSE) + len(FENCE_CLOSE)]
    assert fields.pop("block_tokens") == -(-len(block) // 4) > 0
    assert fields == {"backend": "local", "mode": "both", "recall": "injected", "recalled": 2, "stored": True}
    assert "Miso" not in repr(known_context(flow).memory)
    # Read only: nothing stored; a failed answer: nothing stored either.
    flow = openai_call("What food does my cat Miso like?", x_memory_mode="read")
    run(harness.memory, flow)
    assert log_fields(harness, flow, OPENAI_ANSWER)["stored"] is False
    flow = openai_call("Anything about Miso?")
    run(harness.memory, flow)
    assert log_fields(harness, flow, {"error": {"message": "overloaded"}}, status=529)["stored"] is False
    # Nothing relevant: searched, nothing injected.
    flow = openai_call("zebra xylophone quantum")
    run(harness.memory, flow)
    assert log_fields(harness, flow, OPENAI_ANSWER) | {"recall_ms": 0} == {
        "backend": "local", "mode": "both", "recall": "none", "recalled": 0, "stored": True, "recall_ms": 0}
    # Off: said so, nothing else.
    flow = openai_call("Anything about Miso?", x_memory_mode="off")
    run(harness.memory, flow)
    assert known_context(flow).memory.log_fields() == {"backend": "local", "mode": "off"}


def test_the_flow_log_of_a_tool_loop_follow_up(harness):
    path, key, turn, loop = TOOL_LOOPS["anthropic"]
    first = gateway_flow(path, {"model": "gpt-alias", key: turn}, x_memory_user_id="alice", x_memory_conversation_id="log")
    run(harness.memory, first)
    follow_up = gateway_flow(path, {"model": "gpt-alias", key: turn + loop}, x_memory_user_id="alice",
                             x_memory_conversation_id="log")
    run(harness.memory, follow_up)
    fields = log_fields(harness, follow_up, {"content": [{"type": "tool_use", "id": "t2", "name": "Bash", "input": {}}]})
    # Re-injected from the cache; an answer of tool calls only is not stored.
    assert fields["recall"] == "reinjected" and fields["recalled"] == 2 and fields["stored"] is False
    again = gateway_flow(path, {"model": "gpt-alias", key: turn + loop}, x_memory_user_id="alice",
                         x_memory_conversation_id="log")
    run(harness.memory, again)
    assert log_fields(harness, again, {"content": [{"type": "text", "text": "She likes salmon."}]})["stored"] is True


def test_retention_from_the_config_starts_with_the_proxy_and_shows_in_info(harness, tmp_path):
    harness.store.add_many([NewMemory("alice", "ancient", "cli", "m", "user", "a walrus story from long ago", 1000.0),
                            NewMemory("alice", "recent", "cli", "m", "user", "a fresh note on otters", time.time())])
    config = tmp_path / "retention.yaml"
    config.write_text(CONFIG.replace("memory:\n  backend: local\n", "memory:\n  backend: local\n  retention_days: 365\n"))
    harness.tctx.configure(harness.routing, memory_routing_config=str(config))
    assert harness.memory.writer is None
    harness.memory.running()
    writer = harness.memory.writer
    assert writer is not None and writer.retention_days == 365
    deadline = time.monotonic() + 30
    while writer.pruned == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the writer thread's first turn
    # The fixture's memories (2023) and the walrus are over a year old; the otters are not.
    assert [m.text for m in harness.store.list("alice")[1]] == ["a fresh note on otters"]
    status = harness.memory.status()
    assert status["retention_days"] == 365 and status["pruned"] == 4 and status["memories"] == 1


def test_the_answer_is_read_from_the_parse_the_router_made_and_a_translation_is_parsed_anew(harness, monkeypatch):
    from memory_routing.mitm import answer_json as answer_json_module

    decodes = []  # one per parse of an answer: each is recorded for the flow's other readers
    record = answer_json_module.set_answer_json
    monkeypatch.setattr(answer_json_module, "set_answer_json", lambda flow, parsed: decodes.append(1) or record(flow, parsed))
    flow = openai_call("Miso caught a moth", x_memory_conversation_id="p1")
    run(harness.memory, flow)
    flow.response = Response.make(200, json.dumps(OPENAI_ANSWER).encode(), {"content-type": "application/json"})
    harness.memory.answers.responseheaders(flow)
    parsed = answer_json_module.answer_json(flow)  # what the router's usage meter does
    assert parsed.document == OPENAI_ANSWER
    # Marked, to tell that parse from a second one the memory might make.
    shared = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "From the shared parse."}}]}
    record(flow, replace(parsed, document=shared))
    harness.memory.answers.response(flow)
    assert decodes == [1]  # the memory read that parse
    assert ("assistant", "From the shared parse.") in stored(harness, "alice")
    # A translated answer is new content: read in full, never from the upstream's parse.
    flow = openai_call("Miso caught a fly", x_memory_conversation_id="p2")
    run(harness.memory, flow)
    flow.response = Response.make(200, b'{"content": [{"type": "text", "text": "upstream format"}]}',
                                  {"content-type": "application/json"})
    harness.memory.answers.responseheaders(flow)
    answer_json_module.answer_json(flow)
    flow.response.content = json.dumps({"choices": [{"index": 0,
                                                     "message": {"role": "assistant", "content": "Quick cat."}}]}).encode()
    harness.memory.answers.response(flow)
    assert decodes == [1, 1, 1]
    assert ("assistant", "Quick cat.") in stored(harness, "alice")


def test_after_a_restart_a_turns_request_again_gets_its_kept_block_without_a_search(harness, monkeypatch):
    first = openai_call("Remind me what Miso eats")
    run(harness.memory, first)
    answer(harness, first, OPENAI_ANSWER)
    assert FENCE_OPEN.encode() in first.request.raw_content
    harness.memory.close_writer()  # as at shutdown: the kept block is written out
    restarted = EmbeddedMemory(harness.routing, SimpleNamespace(memory=harness.store, before_close=[]))
    monkeypatch.setattr("memory_routing.memory.recall.Recaller.search_block",
                        lambda *a, **k: pytest.fail("a kept turn is never searched again"))
    retry = openai_call("Remind me what Miso eats")
    assert restarted.request(retry) is None  # no recall thread: the block comes from the store
    encode_edit(retry)
    assert retry.request.raw_content == first.request.raw_content
    # The conversation's next turn: the first turn's message carries its block again, byte for byte.
    next_turn = gateway_flow("/v1/chat/completions", {"model": "gpt-alias", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "Remind me what Miso eats"},
        {"role": "assistant", "content": "Tuna it is."}, {"role": "user", "content": "thanks"}]},
        x_memory_user_id="alice")
    monkeypatch.undo()
    run(restarted, next_turn)
    assert sent(next_turn)["messages"][1] == sent(first)["messages"][1]
    content = sent(first)["messages"][1]["content"]
    block = content[:content.index(FENCE_CLOSE) + len(FENCE_CLOSE)]
    # A re-sent block is input the call pays for too: the usage rows price it as memory's cost.
    assert memory_call(next_turn).resent == 1 and memory_call(next_turn).block_tokens == -(-len(block) // 4)
    restarted.done()


def test_the_same_turn_sent_twice_at_once_gets_one_block(harness):
    first, second = openai_call("Remind me what Miso eats"), openai_call("Remind me what Miso eats")
    searches = [harness.memory.request(first), harness.memory.request(second)]  # both before either searched
    assert all(pending is not None for pending in searches)
    asyncio.run(searches[0])
    encode_edit(first)
    # A memory written in between would change the second search: the turn keeps the first block.
    harness.store.add_many([NewMemory("alice", "other", "c", "m", "user", "Miso eats tuna and also chicken", PAST)])
    asyncio.run(searches[1])
    encode_edit(second)
    assert FENCE_OPEN.encode() in first.request.raw_content
    assert second.request.raw_content == first.request.raw_content
