"""The call's record and its three views (flow-log line, usage row, mitmweb's comment), through
the whole stage list that addon.py hands to mitmproxy, in mitmproxy's test harness.

Each view must say what happened: stored only when the turn was stored, memory on when the
memory put a block into the call, the provider's cached tokens where it reported them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy.http import Headers, Response
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing import addons
from memory_routing.addons.local_stores import LocalStores
from memory_routing.addons.usage_log import UsageLog
from memory_routing.addons.memory import EmbeddedMemory
from memory_routing.memory.records import NewMemory
from memory_routing.mitm.pipeline import AddonPipeline
from memory_routing.wire import usage as usage_module

from test_large_bodies import CONFIG  # one alias with the proxy's own key, local memory

WAIT_S = 10.0
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Tuna it is."}}],
          "usage": {"prompt_tokens": 30, "completion_tokens": 4}}


class Proxy:
    def __init__(self, pipeline: AddonPipeline, log: Path) -> None:
        self.pipeline = pipeline
        self.log = log
        self.stores = next(s for s in pipeline.stages if isinstance(s, LocalStores))
        self.memory = next(s for s in pipeline.stages if isinstance(s, EmbeddedMemory))
        self.usage = next(s for s in pipeline.stages if isinstance(s, UsageLog))

    def call(self, text: str, answer: bytes, user: str = "alice"):
        """One chat call through every stage, answered with ``answer`` (a whole JSON body)."""
        body = json.dumps({"model": "gpt-alias", "messages": [{"role": "user", "content": text}]}).encode()
        request = tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body, headers=Headers(
            host="memory-routing.localhost", content_type="application/json", x_memory_user_id=user,
            user_agent="OpenAI/Python 1.99"))
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")

        async def run() -> None:
            for hook in ("requestheaders", "request"):
                pending = getattr(self.pipeline, hook)(flow)
                if pending is not None:
                    await pending
            assert flow.response is None and flow.request.host == "llm.internal", flow.response
            flow.response = Response.make(200, answer, {"content-type": "application/json"})
            for hook in ("responseheaders", "response"):
                pending = getattr(self.pipeline, hook)(flow)
                if pending is not None:
                    await pending

        asyncio.run(run())
        return flow

    def last_line(self) -> dict:
        return json.loads(self.log.read_text().splitlines()[-1])

    def stored(self, user: str) -> list[str]:
        writer = self.memory.writer
        assert writer is None or writer.flush(WAIT_S)
        _, rows = self.stores.memory.list(user, limit=100)
        return sorted(m.text for m in rows)

    def last_row(self):
        assert self.usage.recorder.flush(WAIT_S)
        return self.stores.usage.recent(1)[0]


@pytest.fixture
def proxy(tmp_path: Path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    pipeline = AddonPipeline(addons.create_stages())
    log = tmp_path / "flows.jsonl"
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, memory_routing_config=str(tmp_path / "config.yaml"),
                       memory_routing_store=str(tmp_path / "store.sqlite3"), memory_routing_flow_log=str(log))
        proxy = Proxy(pipeline, log)
        proxy.usage.running()
        yield proxy
        pipeline.done()


def test_stored_is_logged_only_for_a_turn_that_was_stored(proxy: Proxy):
    proxy.call("My cat Miso loves tuna.", json.dumps(ANSWER).encode())
    assert proxy.last_line()["memory"]["stored"] is True
    assert proxy.stored("alice") == ["My cat Miso loves tuna.", "Tuna it is."]
    assert proxy.last_row().memory_stored is True
    # A 200 whose body is not an answer: the memory cannot read it and stores nothing; the log,
    # the usage row and mitmweb's comment say so.
    flow = proxy.call("My dog Rex hates baths.", b"<html>upstream hiccup</html>")
    assert proxy.last_line()["memory"]["stored"] is False
    assert proxy.stored("alice") == ["My cat Miso loves tuna.", "Tuna it is."]
    assert proxy.last_row().memory_stored is False
    assert "not stored" in flow.comment


def test_mitmwebs_comment_says_memory_was_on_when_a_block_was_injected(proxy: Proxy):
    proxy.stores.memory.add_many([
        NewMemory("alice", "old", "cli", "m", "user", "My cat is called Miso and she loves tuna.", 1683504000.0)])
    flow = proxy.call("What food does my cat Miso like?", json.dumps(ANSWER).encode())
    assert proxy.last_line()["memory"]["recall"] == "injected"
    assert "memory off" not in flow.comment
    assert "memory on" in flow.comment and "recall injected" in flow.comment
    assert "gpt-alias → openai/gpt-4o-mini" in flow.comment
    assert "Miso" not in flow.comment  # what the memory did, never what it holds
    assert proxy.last_row().memory_injected is True


def test_cached_tokens_are_carried_into_the_log_line_and_the_usage_row(proxy: Proxy, monkeypatch):
    # The provider's answer parsing is the usage meter's job; what it reports must reach every view.
    reported = usage_module.Usage(30, 4, cache_read_tokens=24, cache_write_tokens=6, reasoning_tokens=2)
    monkeypatch.setattr(usage_module.UsageMeter, "finish", lambda self: reported)
    proxy.call("Hello there", json.dumps(ANSWER).encode())
    line = proxy.last_line()
    assert (line["input_tokens"], line["output_tokens"]) == (30, 4)
    assert (line["cache_read_tokens"], line["cache_write_tokens"], line["reasoning_tokens"]) == (24, 6, 2)
    row = proxy.last_row()
    assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (30, 4, 24)


def test_a_count_the_answer_did_not_give_is_null_in_the_log_line(proxy: Proxy):
    proxy.call("Hello there", json.dumps(ANSWER).encode())  # prompt and completion tokens only
    line = proxy.last_line()
    assert (line["input_tokens"], line["output_tokens"]) == (30, 4)
    assert (line["cache_read_tokens"], line["cache_write_tokens"], line["reasoning_tokens"]) == (None, None, None)


def test_a_translated_stream_is_decoded_once_and_its_answer_stored(tmp_path: Path, monkeypatch):
    """The router decodes the provider's stream to translate it; the memory reads the client's
    events as the translator builds them instead of decoding the translated bytes again."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_upstream import _anthropic_events
    from memory_routing.wire.sse import SseDecoder

    (tmp_path / "config.yaml").write_text(
        "model_list:\n  - model_name: claude-alias\n"
        "    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: sk-ant}\n    translate: always\n"
        "memory:\n  backend: local\n")
    decoders = []
    real_init = SseDecoder.__init__
    monkeypatch.setattr(SseDecoder, "__init__", lambda self: decoders.append(self) or real_init(self))
    pipeline = AddonPipeline(addons.create_stages())
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, memory_routing_config=str(tmp_path / "config.yaml"),
                       memory_routing_store=str(tmp_path / "store.sqlite3"), memory_routing_flow_log="")
        proxy = Proxy(pipeline, tmp_path / "none")
        body = json.dumps({"model": "claude-alias", "stream": True,
                           "messages": [{"role": "user", "content": "Say hello, please."}]}).encode()
        flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body, headers=Headers(
            host="memory-routing.localhost", content_type="application/json", x_memory_user_id="carol")))
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")

        async def run() -> list[bytes]:
            for hook in ("requestheaders", "request"):
                pending = getattr(pipeline, hook)(flow)
                if pending is not None:
                    await pending
            assert flow.response is None and flow.request.host == "api.anthropic.com", flow.response
            flow.response = Response.make(200, b"", {"content-type": "text/event-stream"})
            flow.response.stream = True
            pending = pipeline.responseheaders(flow)
            if pending is not None:
                await pending
            out: list[bytes] = []
            for name, data in _anthropic_events("claude-sonnet-4-5", "Hello from Claude"):
                out += flow.response.stream(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            out += flow.response.stream(b"")
            pending = pipeline.response(flow)
            if pending is not None:
                await pending
            return out

        client_stream = b"".join(asyncio.run(run()))
        chunks = [json.loads(line[6:]) for line in client_stream.split(b"\n") if line.startswith(b"data: {")]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello from Claude"
        assert proxy.stored("carol") == ["Hello from Claude", "Say hello, please."]
        assert len(decoders) == 1  # the translator's; the memory decoded nothing again
        pipeline.done()


def test_a_translated_whole_answer_is_parsed_once(tmp_path: Path, monkeypatch):
    """The usage meter, the translation and the memory read one parse of the provider's answer,
    and the memory reads the translation's own document, not a parse of the bytes it wrote."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fake_upstream import _anthropic_message

    (tmp_path / "config.yaml").write_text(
        "model_list:\n  - model_name: claude-alias\n"
        "    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: sk-ant}\n    translate: always\n"
        "memory:\n  backend: local\n")
    pipeline = AddonPipeline(addons.create_stages())
    with taddons.context(pipeline) as tctx:
        tctx.configure(pipeline, memory_routing_config=str(tmp_path / "config.yaml"),
                       memory_routing_store=str(tmp_path / "store.sqlite3"), memory_routing_flow_log="")
        proxy = Proxy(pipeline, tmp_path / "none")
        body = json.dumps({"model": "claude-alias", "messages": [{"role": "user", "content": "Say hello."}]}).encode()
        flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/chat/completions", content=body, headers=Headers(
            host="memory-routing.localhost", content_type="application/json", x_memory_user_id="dave")))
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://memory-routing.localhost")
        parses = []
        real_loads = json.loads

        def counting_loads(text, *args, **kwargs):
            if isinstance(text, (bytes, str)) and "Hello from Claude" in (text.decode() if isinstance(text, bytes) else text):
                parses.append(text)
            return real_loads(text, *args, **kwargs)

        async def run() -> None:
            for hook in ("requestheaders", "request"):
                pending = getattr(pipeline, hook)(flow)
                if pending is not None:
                    await pending
            assert flow.request.host == "api.anthropic.com", flow.response
            flow.response = Response.make(200, json.dumps(_anthropic_message("claude-sonnet-4-5")).encode(),
                                          {"content-type": "application/json"})
            monkeypatch.setattr(json, "loads", counting_loads)
            for hook in ("responseheaders", "response"):
                pending = getattr(pipeline, hook)(flow)
                if pending is not None:
                    await pending
            monkeypatch.setattr(json, "loads", real_loads)

        asyncio.run(run())
        answer = real_loads(flow.response.content)
        assert answer["choices"][0]["message"]["content"] == "Hello from Claude"
        assert proxy.stored("dave") == ["Hello from Claude", "Say hello."]
        assert len(parses) == 1
        pipeline.done()
