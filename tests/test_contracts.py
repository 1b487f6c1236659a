"""Contracts with the private mitmproxy and LiteLLM pieces the proxy relies on.

Everything private is fenced in memory_routing/mitm/internals.py and
memory_routing/translate/litellm_internals.py (and tiktoken's registry, for LiteLLM's default
encoding, in memory_routing/routing/deferred_encoding.py); these tests pin what those modules assume
(signatures, attributes, behaviour on a small input) for the versions the lock file pins:
mitmproxy 12.x on Python 3.12+, 11.0.2 on 3.11, and the exact LiteLLM. When an upgrade moves
one of them, it fails here, by name, rather than in a user's request.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import inspect
import json
import re
import sys
import weakref
from pathlib import Path

import httpx
import tiktoken
import tiktoken.registry
from tiktoken_ext import openai_public
from mitmproxy.addons.proxyauth import ProxyAuth, parse_http_basic_auth
from mitmproxy.http import Headers
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow, tutils

from memory_routing.mitm import internals
from memory_routing.llm import litellm_internals
from litellm.llms.anthropic.experimental_pass_through.adapters.streaming_iterator import AnthropicStreamWrapper
from litellm.llms.vertex_ai.gemini.transformation import _transform_request_body
from litellm.types.utils import ModelResponseStream

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def pinned(package: str) -> list[str]:
    return re.findall(rf"^{package}==([0-9.]+)", LOCK.read_text(), re.M)


# --- versions ----------------------------------------------------------------------------

def test_the_pinned_versions_are_the_ones_under_test():
    mitmproxy_version = importlib.metadata.version("mitmproxy")
    if sys.version_info >= (3, 12):
        assert mitmproxy_version.startswith("12."), mitmproxy_version
    else:
        assert mitmproxy_version == "11.0.2"
    assert mitmproxy_version in pinned("mitmproxy")
    assert [importlib.metadata.version("litellm")] == pinned("litellm")


# --- mitmproxy ---------------------------------------------------------------------------

def test_error_page_renderers_take_status_and_message_and_render_html():
    assert list(inspect.signature(_http1.make_error_response).parameters)[:2] == ["status_code", "message"]
    assert list(inspect.signature(_http2.format_error).parameters)[:2] == ["status_code", "message"]
    page = _http1.make_error_response(502, "upstream gone")
    assert page.startswith(b"HTTP/1.1 502") and b"<html" in page and b"upstream gone" in page
    assert b"upstream gone" in _http2.format_error(502, "upstream gone")


def test_error_page_renderers_are_looked_up_at_call_time():
    # The page is replaced by rebinding the module attribute: that works only while mitmproxy
    # calls it through the module (a `from ... import` would keep the original).
    http_layer = sys.modules["mitmproxy.proxy.layers.http"]
    source = inspect.getsource(http_layer) + inspect.getsource(_http1) + inspect.getsource(_http2)
    assert "make_error_response(" in source and "format_error(" in source
    assert "from mitmproxy.proxy.layers.http._http1 import make_error_response" not in source


def test_error_page_renderers_can_be_replaced_and_restored():
    seen = []
    originals = internals.replace_error_page_renderers(
        lambda original, status, message: seen.append(("1", status, message)) or b"mine",
        lambda original, status, message: original(status, message),
    )
    try:
        assert _http1.make_error_response(504, "m") == b"mine"
        assert b"m" in _http2.format_error(504, "m")
    finally:
        internals.restore_error_page_renderers(originals)
    assert seen == [("1", 504, "m")]
    assert b"<html" in _http1.make_error_response(504, "m")


def test_assembled_http1_response_is_what_a_client_reads():
    from mitmproxy import http

    raw = internals.assemble_http1_response(http.Response.make(418, b"{}", {"content-type": "application/json"}))
    assert raw.startswith(b"HTTP/1.1 418") and raw.endswith(b"\r\n\r\n{}")


def test_server_connect_hook_data_names_the_server():
    assert "server" in {f.name for f in server_hooks.ServerConnectionHookData.__dataclass_fields__.values()}


def test_a_cancelled_connection_task_carries_its_reason():
    async def run() -> str:
        async def connection():
            task = internals.connection_task()
            assert task is not None
            internals.drop_connection(task, "memory-routing: read timeout")
            await asyncio.Event().wait()  # never set: only the cancellation ends this wait

        try:
            await asyncio.create_task(connection())
        except asyncio.CancelledError as e:
            return str(e.args[0] if e.args else "")
        return ""

    assert asyncio.run(asyncio.wait_for(run(), 5)) == "memory-routing: read timeout"


def test_proxyauth_keeps_a_per_connection_map_and_a_validator():
    auth = ProxyAuth()
    assert isinstance(auth.authenticated, weakref.WeakKeyDictionary)
    assert hasattr(auth, "validator")
    client = tflow.tclient_conn()
    internals.mark_authenticated(auth, client, ("someone", ""))
    assert auth.authenticated[client] == ("someone", "")
    assert parse_http_basic_auth("Basic dXNlcjpwYXNz")[1:] == ("user", "pass")


def test_request_target_is_rewritten_without_touching_host_header():
    request = tutils.treq(headers=Headers(host="client.example"))
    internals.set_request_target(request, "https", "api.example.com", 8443, "/v1/chat/completions?x=1")
    assert request.url == "https://api.example.com:8443/v1/chat/completions?x=1"
    assert request.headers["host"] == "client.example"


# --- LiteLLM -----------------------------------------------------------------------------

def test_gemini_request_body_signature_and_result():
    names = list(inspect.signature(_transform_request_body).parameters)
    assert names[:6] == ["messages", "model", "optional_params", "custom_llm_provider", "litellm_params", "cached_content"]
    body = litellm_internals.gemini_request_body(
        [{"role": "user", "content": "hi"}], "gemini-2.0-flash", {"temperature": 0.5}, {}
    )
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert body["generationConfig"]["temperature"] == 0.5


def test_gemini_model_response_from_a_small_answer():
    document = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hello"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
    }
    raw = httpx.Response(200, content=json.dumps(document).encode(), headers={"content-type": "application/json"})
    response = litellm_internals.gemini_model_response(document, "gemini-2.0-flash", {}, raw)
    assert response.choices[0].message.content == "hello"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == 3 and response.usage.completion_tokens == 1


def test_anthropic_chunk_parser_reads_a_text_delta():
    parse = litellm_internals.anthropic_chunk_parser(None)
    chunk = parse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    assert chunk.choices[0].delta.content == "hi"


def test_gemini_chunk_parser_reads_a_candidate():
    parse = litellm_internals.gemini_chunk_parser({})
    chunk = parse({"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}}]})
    assert chunk.choices[0].delta.content == "hi"


def test_anthropic_stream_wrapper_is_stepped_by_hand():
    assert inspect.iscoroutinefunction(AnthropicStreamWrapper.__anext__)
    assert {"completion_stream", "model", "tool_name_mapping"} <= set(inspect.signature(AnthropicStreamWrapper).parameters)
    stream = litellm_internals.SteppedAnthropicStream("gpt-4o-mini", None)
    first = ModelResponseStream(choices=[{"index": 0, "delta": {"role": "assistant", "content": "hi"}}])
    last = ModelResponseStream(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    events = stream.push(first) + stream.push(last) + stream.close()
    types = [event["type"] for event in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert any(e["type"] == "content_block_delta" and e["delta"].get("text") == "hi" for e in events)
    assert any(e["type"] == "message_delta" and e["delta"].get("stop_reason") == "end_turn" for e in events)
    assert stream.close() == []  # ended: nothing more


def test_price_table_version_changes_with_litellm_price_table():
    import litellm

    name = "memory-routing-contract-price-table"
    before = litellm_internals.price_table_version()
    assert litellm_internals.price_table_version() == before  # stable while nothing changes
    try:
        litellm.register_model({name: {"litellm_provider": "openai", "mode": "chat",
                                        "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
                               persist_across_reloads=False)
        assert litellm_internals.price_table_version() != before
    finally:
        litellm.model_cost.pop(name, None)
        litellm.open_ai_chat_completion_models.discard(name)
        litellm.get_model_info.cache_clear()


# --- tiktoken, as LiteLLM uses it (routing/deferred_encoding.py) ------------------------------

def test_tiktoken_get_encoding_answers_from_its_registry_first():
    marker = object()
    tiktoken.registry.ENCODINGS["memory-routing-contract"] = marker
    try:
        assert tiktoken.get_encoding("memory-routing-contract") is marker
    finally:
        del tiktoken.registry.ENCODINGS["memory-routing-contract"]


def test_tiktoken_encoding_builds_its_core_in_init_and_methods_read_it():
    arguments = {"name": "contract", "pat_str": r"\S+|\s+", "mergeable_ranks": {bytes([i]): i for i in range(256)},
                 "special_tokens": {}}
    assert "_core_bpe" in vars(tiktoken.Encoding(**arguments))
    for method in (tiktoken.Encoding.encode, tiktoken.Encoding.decode_bytes, tiktoken.Encoding.encode_ordinary):
        assert "self._core_bpe" in inspect.getsource(method)
    assert set(inspect.signature(tiktoken.Encoding).parameters) >= {"name", "pat_str", "mergeable_ranks", "special_tokens"}


def test_litellm_points_tiktoken_at_its_bundled_cl100k_table():
    # Set when LiteLLM is imported (above); the deferred build reads the table from there, offline.
    constructor = openai_public.ENCODING_CONSTRUCTORS["cl100k_base"]
    url = re.search(r'"(https://[^"]+cl100k_base\.tiktoken)"', inspect.getsource(constructor)).group(1)
    cached = Path(os.environ["TIKTOKEN_CACHE_DIR"], hashlib.sha1(url.encode()).hexdigest())
    assert cached.is_file() and cached.stat().st_size > 1_000_000
    assert "litellm" in str(cached)


# --- the keys LiteLLM takes in litellm_params (config/litellm_params.py) ------------------------

def test_litellm_params_allowlist_is_what_the_pinned_litellm_takes():
    import litellm
    from litellm.types.router import LiteLLM_Params
    from litellm.types.utils import all_litellm_params

    from memory_routing.config.litellm_params import LITELLM_PARAMS

    taken = (
        (set(inspect.signature(litellm.completion).parameters) - {"kwargs", "messages"})
        | set(LiteLLM_Params.model_fields)
        | {name for name in all_litellm_params if not name.startswith("_")}
        | set(litellm.OPENAI_CHAT_COMPLETION_PARAMS)
    )
    assert {"api_base", "api_key", "api_version", "custom_llm_provider", "rpm", "tpm", "extra_headers"} <= taken
    missing, gone = sorted(taken - LITELLM_PARAMS), sorted(LITELLM_PARAMS - taken)
    assert (missing, gone) == ([], []), f"update memory_routing/config/litellm_params.py: add {missing}, drop {gone}"


# --- mitmproxy's start-up, as the config holder reads it (config/holder.py) ---------------------

def test_proxyserver_says_whether_it_runs_yet():
    from mitmproxy.addons.proxyserver import Proxyserver

    server = Proxyserver()
    assert server.is_running is False
    server.running()
    assert server.is_running is True


def test_script_loader_lets_system_exit_out_of_a_scripts_configure():
    from mitmproxy.addons import script

    # The holder exits at start with SystemExit: the loader must catch Exception, not BaseException.
    source = inspect.getsource(script.Script.loadscript)
    assert "except Exception as e:" in source and "BaseException" not in source
