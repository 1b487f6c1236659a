"""Edges a new user hit (issue 24) end to end: a real mitmdump between real clients and a fake
upstream. Each case asserts what the client sees (an error in its own protocol's shape, never a
traceback, an HTML page or a hang) and what the proxy logs."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml
from fake_upstream import FAULT_HEADER, FakeUpstream
from harness import RunningProxy, free_port, running_proxy, wait_until

pytestmark = pytest.mark.e2e

KEYS = {"MR_EDGE_OPENAI_KEY": "sk-edge-openai-2401", "MR_EDGE_ANTHROPIC_KEY": "sk-ant-edge-2402",
        "MR_EDGE_GEMINI_KEY": "AIza-edge-2403"}
WAIT = 20
# 200 KB of opening brackets: deeper than any JSON parser's recursion can follow.
DEEP_JSON = b"[" * 200_000


REFUSED_PORT = free_port()  # nothing listens here
# Where a model that matches no alias goes: the proxy honours the providers' base URL variables
# (a machine without network, made of a name that never resolves and a port nobody listens on).
NO_NETWORK_ENV = {"ANTHROPIC_BASE_URL": "http://no-such-host.invalid",
                  "OPENAI_BASE_URL": f"http://127.0.0.1:{REFUSED_PORT}/v1"}


def edges_config(fake_url: str, refused_port: int) -> dict:
    return {
        "model_list": [
            {"model_name": "gpt-alias", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_EDGE_OPENAI_KEY"}},
            {"model_name": "claude-alias", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_EDGE_ANTHROPIC_KEY"}},
            {"model_name": "gemini-alias", "litellm_params": {
                "model": "gemini/gemini-2.5-flash", "api_base": fake_url, "api_key": "os.environ/MR_EDGE_GEMINI_KEY"}},
            {"model_name": "refused-alias", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{refused_port}/v1",
                "api_key": "os.environ/MR_EDGE_OPENAI_KEY"}},
            {"model_name": "refused-claude", "litellm_params": {
                "model": "anthropic/claude-haiku-4-5", "api_base": f"http://127.0.0.1:{refused_port}",
                "api_key": "os.environ/MR_EDGE_ANTHROPIC_KEY"}},
            {"model_name": "dns-claude", "litellm_params": {
                "model": "anthropic/claude-haiku-4-5", "api_base": "http://no-such-host.invalid",
                "api_key": "os.environ/MR_EDGE_ANTHROPIC_KEY"}},
        ],
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("edges")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(edges_config(fake.url, REFUSED_PORT), sort_keys=False))
    # A 64 KiB offload threshold: the 200 KB body takes the worker-process path too.
    args = ["--set", "memory_routing_offload_body_size=64k"]
    with running_proxy(workdir, config, env=KEYS | NO_NETWORK_ENV, extra_args=args) as running:
        yield running


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as written (raw bytes: duplicate headers and all) and read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    return int(lines[0].split()[1]), headers, body


def assert_shape(answer: httpx.Response | tuple[int, dict[str, str], bytes], status: int, protocol: str) -> str:
    """The answer is ``status`` in ``protocol``'s error shape; returns its message."""
    if isinstance(answer, tuple):
        code, headers, body = answer
    else:  # an httpx response (the SDKs' too)
        code, headers, body = answer.status_code, answer.headers, answer.content
    assert code == status, body[:500]
    assert headers["content-type"] == "application/json", body[:500]
    document = json.loads(body)
    if protocol == "anthropic":
        assert document["type"] == "error" and set(document["error"]) == {"type", "message"}
        return document["error"]["message"]
    if protocol == "gemini":
        assert set(document["error"]) == {"code", "message", "status"} and document["error"]["code"] == status
        return document["error"]["message"]
    assert set(document["error"]) == {"message", "type", "param", "code"}
    return document["error"]["message"]


# --- 4. deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("path, protocol", [
    ("/v1/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
])
@pytest.mark.parametrize("offloaded", [False, True], ids=["in-loop", "worker"])
def test_deeply_nested_json_is_400_in_the_clients_shape(
    proxy: RunningProxy, upstream: FakeUpstream, path: str, protocol: str, offloaded: bool
):
    # Under the 64 KiB threshold the loop parses the body; over it, the worker process does.
    body = DEEP_JSON if offloaded else DEEP_JSON[:60_000]
    answer = httpx.post(f"{proxy.gateway_url}{path}", content=body, timeout=WAIT,
                        headers={"content-type": "application/json"})
    message = assert_shape(answer, 400, protocol)
    assert "nested" in message
    assert answer.headers["x-should-retry"] == "false"
    assert not upstream.requests
    log = proxy.log()
    assert "RecursionError" not in log and "Traceback" not in log


# --- 6. two Host headers ----------------------------------------------------------------------------


def two_hosts_request(target: str) -> bytes:
    body = json.dumps({"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]}).encode()
    return (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_two_host_headers_are_refused_on_the_gateway(proxy: RunningProxy, upstream: FakeUpstream):
    answer = raw_exchange(proxy.gateway_port, two_hosts_request("/v1/chat/completions"))
    assert "more than one Host header" in assert_shape(answer, 400, "openai")
    assert not upstream.requests


def test_two_host_headers_are_refused_on_the_forward_proxy(proxy: RunningProxy, upstream: FakeUpstream):
    answer = raw_exchange(proxy.forward_port, two_hosts_request(f"{upstream.url}/v1/chat/completions"))
    assert answer[0] == 400
    assert not upstream.requests


# --- 8. an upstream that cannot be reached at all -------------------------------------------------


def routed_attempts(proxy: RunningProxy, model: str) -> int:
    """How many calls for ``model`` the proxy routed (one log line each, failed ones included)."""
    prefix = "memory-routing: routed "
    return sum(
        1 for line in proxy.log().splitlines()
        if prefix in line and json.loads(line.split(prefix, 1)[1])["requested_model"] == model
    )


def test_unresolvable_provider_host_is_not_retried_and_names_what_to_fix(proxy: RunningProxy, upstream: FakeUpstream):
    # Claude Code's situation: its default model has no alias and goes to Anthropic's own API,
    # whose name does not resolve without a network. The SDK retries what it may (2 by default).
    client = anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client", timeout=WAIT)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    response = caught.value.response
    message = assert_shape(response, 502, "anthropic")
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers
    assert "no-such-host.invalid" in message and "does not resolve" in message
    assert "matched no alias" in message and "gpt-alias, claude-alias" in message
    assert wait_until(lambda: routed_attempts(proxy, "claude-sonnet-4-5") >= 1)
    assert routed_attempts(proxy, "claude-sonnet-4-5") == 1  # the SDK gave up at once


def test_unresolvable_alias_host_names_the_alias(proxy: RunningProxy, upstream: FakeUpstream):
    client = anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client", timeout=WAIT)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="dns-claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = assert_shape(caught.value.response, 502, "anthropic")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "no-such-host.invalid" in message and "the alias 'dns-claude'" in message
    assert routed_attempts(proxy, "dns-claude") == 1


@pytest.mark.parametrize("model, aliased", [("gpt-4o", False), ("refused-alias", True)])
def test_refused_connection_is_not_retried(proxy: RunningProxy, upstream: FakeUpstream, model: str, aliased: bool):
    client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-client", timeout=WAIT)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    message = assert_shape(caught.value.response, 502, "openai")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert f"127.0.0.1:{REFUSED_PORT}" in message or "127.0.0.1" in message
    assert "refused the connection" in message
    assert ("the alias 'refused-alias'" if aliased else "matched no alias") in message
    assert wait_until(lambda: routed_attempts(proxy, model) >= 1)
    assert routed_attempts(proxy, model) == 1


def test_claude_code_without_network_gives_up_at_once(proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path):
    """The real CLI on its default model (no alias: Anthropic's own API, which does not resolve
    here). With a retryable 502 it tried 11 times per call, with backoff, for over 2 minutes."""
    from test_e2e_claude_code import claude_binary, run_claude

    binary = claude_binary()
    if binary is None:
        pytest.skip("the pinned Claude Code CLI is not installed in tests/node: run `make node-clients`")
    before = {model: routed_attempts(proxy, model) for model in routed_models(proxy)}
    done = run_claude(binary, tmp_path, "say hi", {"ANTHROPIC_BASE_URL": proxy.gateway_url,
                                                   "ANTHROPIC_API_KEY": "sk-ant-client-2404"})
    assert done.returncode != 0
    assert "no-such-host.invalid" in done.stdout + done.stderr
    tried = {model: routed_attempts(proxy, model) - before.get(model, 0) for model in routed_models(proxy)}
    tried = {model: count for model, count in tried.items() if count and model.startswith("claude")}
    assert tried and all(count == 1 for count in tried.values()), tried


def routed_models(proxy: RunningProxy) -> set[str]:
    prefix = "memory-routing: routed "
    return {json.loads(line.split(prefix, 1)[1])["requested_model"]
            for line in proxy.log().splitlines() if prefix in line}


# --- 5. an upstream's answer that is not the API's JSON ---------------------------------------------


def routed_line(proxy: RunningProxy, user: str) -> dict:
    prefix = "memory-routing: routed "
    lines = [json.loads(line.split(prefix, 1)[1]) for line in proxy.log().splitlines() if prefix in line]
    mine = [line for line in lines if line["user_id"] == user]
    assert mine, f"no routed line for {user}"
    return mine[-1]


def stored_rows(proxy: RunningProxy, user: str) -> int:
    with sqlite3.connect(proxy.confdir / "memory-routing-memory.sqlite3", timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM memories WHERE user_id = ?", (user,)).fetchone()[0]


def post(proxy: RunningProxy, path: str, payload: dict, fault: str, user: str) -> httpx.Response:
    return httpx.post(f"{proxy.gateway_url}{path}", json=payload, timeout=WAIT,
                      headers={FAULT_HEADER: fault, "x-memory-user-id": user})


CHAT = {"model": "gpt-alias", "messages": [{"role": "user", "content": "remember that my cat is called Tom"}]}
MESSAGES = {"model": "claude-alias", "max_tokens": 5,
            "messages": [{"role": "user", "content": "remember that my dog is called Rex"}]}


@pytest.mark.parametrize("fault", ["page=502", "page-chunked=502"])
def test_an_html_error_page_becomes_the_clients_error_with_the_upstreams_status(
    proxy: RunningProxy, upstream: FakeUpstream, fault: str
):
    answer = post(proxy, "/v1/chat/completions", CHAT, fault, "page-user")
    message = assert_shape(answer, 502, "openai")
    assert "502 Bad Gateway" in message and "nginx" in message and "text/html" in message
    assert "<" not in message and "x-should-retry" not in answer.headers  # the SDK judges a 502 as ever
    assert wait_until(lambda: "502 Bad Gateway" in routed_line(proxy, "page-user").get("error", ""))


def test_an_html_error_page_reaches_an_anthropic_sdk_in_its_shape(proxy: RunningProxy, upstream: FakeUpstream):
    client = anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client", max_retries=0, timeout=WAIT)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**MESSAGES, extra_headers={FAULT_HEADER: "page=503"})
    assert "503 Service Unavailable" in assert_shape(caught.value.response, 503, "anthropic")
    assert caught.value.response.headers["retry-after"] == "7"  # the upstream's, kept for the SDK


def test_a_translated_calls_html_error_page_reaches_the_client_in_its_shape(proxy: RunningProxy, upstream: FakeUpstream):
    answer = post(proxy, "/v1/messages", MESSAGES | {"model": "gpt-alias"}, "page=502", "translated-page-user")
    message = assert_shape(answer, 502, "anthropic")
    assert "502 Bad Gateway" in message and "<" not in message


@pytest.mark.parametrize("fault, stream", [("not-json", False), ("page=200", False), ("page=200", True)])
def test_a_success_that_is_not_json_is_a_502_and_never_stored(
    proxy: RunningProxy, upstream: FakeUpstream, fault: str, stream: bool
):
    user = f"not-json-{fault.replace('=', '')}-{stream}"
    good = post(proxy, "/v1/chat/completions", CHAT, "", f"{user}-control")
    assert good.status_code == 200  # the control: memory stores this one
    assert wait_until(lambda: stored_rows(proxy, f"{user}-control") > 0)
    answer = post(proxy, "/v1/chat/completions", CHAT | {"stream": stream}, fault, user)
    message = assert_shape(answer, 502, "openai")
    assert answer.headers["x-should-retry"] == "false" and "not the API's JSON" in message
    assert wait_until(lambda: "not the API's JSON" in routed_line(proxy, user).get("error", ""))
    line = routed_line(proxy, user)
    assert line["status"] == 502 and line["upstream_status"] == 200
    assert line["memory"]["stored"] is False
    # The control call's turn is in the file; this one's never is (the writer is flushed by then).
    post(proxy, "/v1/chat/completions", CHAT, "", f"{user}-after")
    assert wait_until(lambda: stored_rows(proxy, f"{user}-after") > 0)
    assert stored_rows(proxy, user) == 0


# --- 7. a damaged store file -------------------------------------------------------------------------


def test_a_damaged_store_file_keeps_every_readable_row_and_says_so(fake: FakeUpstream, tmp_path: Path):
    from test_memory_store import corrupt_page_holding

    from memory_routing.call_record import CallRecord
    from memory_routing.dashboard.recorder import usage_row
    from memory_routing.dashboard.usage_rows import SQLiteUsageStore
    from memory_routing.memory.records import NewMemory
    from memory_routing.memory.store import SQLiteMemoryStore

    path = tmp_path / "store.sqlite3"
    store = SQLiteMemoryStore(path)
    store.add_many([NewMemory("alice", "c1", "test", "gpt-4o", "user", f"memory number {i:04d} " + "x" * 300, 1.7e9)
                    for i in range(1000)])
    conn = store.open_connection()
    SQLiteUsageStore(conn).insert(
        [usage_row(CallRecord(at=1.7e9, user_id="alice", client="", client_protocol="openai", requested_model="gpt-alias",
                              route="routed", status=200, latency_ms=1.0), None, 1.7e9)] * 300)
    conn.close()
    store.close()
    corrupt_page_holding(path, b"memory number 0500 ")  # one page in the middle of the memories

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(edges_config(fake.url, REFUSED_PORT), sort_keys=False))
    with running_proxy(tmp_path, config, env=KEYS, extra_args=["--set", f"memory_routing_store={path}"]) as proxy:
        health = httpx.get(f"{proxy.gateway_url}/health", timeout=WAIT).json()
        recovered = health["store_recovered"]
        saved = recovered["rows_saved"]
        assert 980 <= saved["memories"] < 1000 and saved["usage_calls"] == 300
        # The windows of consecutive turns (memory/windows.py) are rows of their own, saved too.
        assert recovered["total_rows_saved"] == saved["memories"] + saved["memory_windows"] + 300
        assert recovered["damaged_file"].startswith(str(path) + ".corrupt-")
        assert Path(recovered["damaged_file"]).exists()
        assert f"saved {recovered['total_rows_saved']} rows" in proxy.log()
        # The saved memories are the proxy's again: the dashboard's API counts them.
        info = httpx.get(f"{proxy.gateway_url}/memory-routing/info", timeout=WAIT).json()
        assert info["store"]["recovered"]["total_rows_saved"] == recovered["total_rows_saved"]
