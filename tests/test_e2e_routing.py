"""End-to-end routing: real mitmdump + the fake upstreams, driven by the real SDKs and curl."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from fake_upstream import USAGE_IN, USAGE_OUT, FakeUpstream
from harness import ROOT, RunningProxy, running_proxy

pytestmark = pytest.mark.e2e

KEYS = {
    "MR_E2E_OPENAI_KEY": "sk-e2e-config-openai-0001",
    "MR_E2E_ANTHROPIC_KEY": "sk-ant-e2e-config-0002",
    "MR_E2E_GEMINI_KEY": "g-e2e-config-0003",
    "MR_E2E_SM_KEY": "sm-e2e-config-0004",
}
CLIENT_OPENAI_KEY = "sk-client-openai-0005"
CLIENT_ANTHROPIC_KEY = "sk-ant-client-0006"
CLAUDE_CODE_UA = "claude-cli/2.1.0 (external, cli)"
JETBRAINS_UA = "OpenAIClientImpl/Java 2.8.1"
WAIT = 20
STREAM_WAIT = 10  # well below the fake upstream's own gate timeout


def routing_config(fake_url: str) -> dict:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    return {
        "model_list": [
            {"model_name": "gpt-alias", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_E2E_OPENAI_KEY"}},
            {"model_name": "claude-alias", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_E2E_ANTHROPIC_KEY"}},
            {"model_name": "claude-nokey", "litellm_params": {"model": "anthropic/claude-haiku-4-5", "api_base": fake_url}},
            {"model_name": "gemini-alias", "litellm_params": {
                "model": "gemini/gemini-2.5-flash", "api_base": fake_url, "api_key": "os.environ/MR_E2E_GEMINI_KEY"}},
            {"model_name": "no-memory", "memory": False, "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_E2E_OPENAI_KEY"}},
        ],
        "user_id_mappings": shipped["user_id_mappings"],
        "memory": {"api_key": "os.environ/MR_E2E_SM_KEY", "base_url": f"{fake_url}/v3"},
    }


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("routing")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(routing_config(fake.url), sort_keys=False))
    # Unaliased models resolve through LiteLLM, which honours these: point them at the fake.
    env = KEYS | {"OPENAI_BASE_URL": f"{fake.url}/v1", "ANTHROPIC_BASE_URL": fake.url, "GEMINI_API_BASE": fake.url}
    with running_proxy(workdir, config, env=env) as running:
        yield running


def trust(proxy: RunningProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.ca_cert))


def gateway_openai(proxy: RunningProxy, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key=CLIENT_OPENAI_KEY, max_retries=0, timeout=WAIT, **kwargs)


def gateway_anthropic(proxy: RunningProxy, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.gateway_url, api_key=CLIENT_ANTHROPIC_KEY, max_retries=0, timeout=WAIT, **kwargs)


def forward_http_client(proxy: RunningProxy) -> httpx.Client:
    return httpx.Client(proxy=proxy.forward_url, verify=trust(proxy), timeout=WAIT)


def routed_log_lines(proxy: RunningProxy) -> list[dict]:
    prefix = "memory-routing: routed "
    return [json.loads(line.split(prefix, 1)[1]) for line in proxy.log().splitlines() if prefix in line]


def log_line_for(proxy: RunningProxy, **match: object) -> dict:
    for _ in range(50):  # the line is written when the flow ends, maybe just after the client read it
        lines = [line for line in routed_log_lines(proxy) if all(line.get(k) == v for k, v in match.items())]
        if lines:
            return lines[-1]
        threading.Event().wait(0.1)
    raise AssertionError(f"no routed log line with {match}:\n{proxy.log()[-3000:]}")


def read_while_upstream_holds(upstream: FakeUpstream, read: Callable[[list], None]) -> list:
    """Run ``read(received)`` in a thread while the fake holds every stream after its first
    event; fail unless something reached the client before the upstream was released.
    Returns what was received by the time of the release, and the whole at the end."""
    upstream.hold_streams = True
    received: list = []
    reader = threading.Thread(target=read, args=(received,), daemon=True)
    reader.start()
    try:
        for _ in range(STREAM_WAIT * 20):
            if received or not reader.is_alive():
                break
            threading.Event().wait(0.05)
        assert received, "no event reached the client while the upstream held its stream"
        before_release = list(received)
    finally:
        upstream.release()
        reader.join(WAIT)
    return [before_release, received]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", str(WAIT), *args],
                          capture_output=True, text=True, timeout=WAIT + 10, check=True)


# --- OpenAI SDK --------------------------------------------------------------------------


def test_openai_sdk_on_gateway_alias(proxy: RunningProxy, upstream: FakeUpstream):
    answer = gateway_openai(proxy).chat.completions.create(
        model="gpt-alias", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-sm-user-id": "spoofed", "x-sm-other": "x"},
    )
    assert answer.choices[0].message.content == "Hello from OpenAI"
    seen = upstream.last()
    assert seen.path == f"/v3/{upstream.url}/v1/chat/completions"
    assert seen.via_supermemory and seen.json["model"] == "gpt-4o-mini"
    assert seen.headers["authorization"] == f"Bearer {KEYS['MR_E2E_OPENAI_KEY']}"
    assert seen.headers["x-supermemory-api-key"] == KEYS["MR_E2E_SM_KEY"]
    assert seen.headers["x-sm-user-id"] == "openai-python"
    assert "x-sm-other" not in seen.headers
    assert seen.headers["user-agent"].startswith("OpenAI/Python ")


def test_openai_sdk_streams_before_upstream_finishes(proxy: RunningProxy, upstream: FakeUpstream):
    def read(texts: list) -> None:
        stream = gateway_openai(proxy).chat.completions.create(
            model="gpt-alias", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        texts.extend(chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content)

    before_release, texts = read_while_upstream_holds(upstream, read)
    assert before_release == ["Hel"] and texts == ["Hel", "lo"]
    line = log_line_for(proxy, requested_model="gpt-alias", stream=True)
    assert (line["input_tokens"], line["output_tokens"]) == (USAGE_IN, USAGE_OUT)


def test_openai_format_for_claude_goes_to_anthropics_openai_endpoint(proxy: RunningProxy, upstream: FakeUpstream):
    gateway_openai(proxy).chat.completions.create(model="claude-alias", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.last()
    assert seen.api_path == "/v1/chat/completions" and seen.json["model"] == "claude-sonnet-4-5"
    assert seen.headers["authorization"] == f"Bearer {KEYS['MR_E2E_ANTHROPIC_KEY']}"


def test_unaliased_model_is_resolved_by_litellm(proxy: RunningProxy, upstream: FakeUpstream):
    body = b'{ "messages": [ {"role": "user", "content": "hi"} ],   "model": "gpt-4o" }'
    answer = httpx.post(
        f"{proxy.gateway_url}/v1/chat/completions", content=body, timeout=WAIT,
        headers={"content-type": "application/json", "authorization": f"Bearer {CLIENT_OPENAI_KEY}"},
    )
    assert answer.status_code == 200
    seen = upstream.last()
    assert seen.api_path == "/v1/chat/completions"
    assert seen.body == body  # unchanged model: the bytes pass as they came
    assert seen.headers["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"  # no config key: the client's


def test_embeddings_responses_and_completions(proxy: RunningProxy, upstream: FakeUpstream):
    client = gateway_openai(proxy)
    client.embeddings.create(model="gpt-alias", input="hi")
    assert upstream.last().api_path == "/v1/embeddings"
    client.responses.create(model="gpt-alias", input="hi")
    assert upstream.last().api_path == "/v1/responses"
    client.completions.create(model="gpt-alias", prompt="hi")
    assert (upstream.last().api_path, upstream.last().json["model"]) == ("/v1/completions", "gpt-4o-mini")


def test_model_without_memory_goes_direct(proxy: RunningProxy, upstream: FakeUpstream):
    gateway_openai(proxy).chat.completions.create(model="no-memory", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.last()
    assert seen.path == "/v1/chat/completions" and not seen.via_supermemory
    assert "x-supermemory-api-key" not in seen.headers
    assert seen.headers["x-sm-user-id"] == "openai-python"


# --- Anthropic SDK -----------------------------------------------------------------------


def test_anthropic_sdk_passes_client_key_when_config_has_none(proxy: RunningProxy, upstream: FakeUpstream):
    message = gateway_anthropic(proxy).messages.create(
        model="claude-nokey", max_tokens=20, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Claude-Code-Session-Id": "7d9f-session", "x-memory-user-id": "team.alpha"},
    )
    assert message.content[0].text == "Hello from Claude"
    seen = upstream.last()
    assert seen.path == f"/v3/{upstream.url}/v1/messages"
    assert seen.json["model"] == "claude-haiku-4-5"
    # anthropic 0.x sends x-api-key, 2.x a bearer token: either way, the client's own, unchanged.
    assert CLIENT_ANTHROPIC_KEY in (seen.headers.get("x-api-key"), seen.headers.get("authorization", "").removeprefix("Bearer "))
    assert seen.headers["x-sm-user-id"] == "team.alpha"
    assert seen.headers["x-sm-conversation-id"] == "7d9f-session"
    assert "x-memory-user-id" not in seen.headers


def test_anthropic_sdk_streams_before_upstream_finishes(proxy: RunningProxy, upstream: FakeUpstream):
    def read(events: list) -> None:
        with gateway_anthropic(proxy).messages.stream(
            model="claude-alias", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            events.extend(event.type for event in stream)

    before_release, events = read_while_upstream_holds(upstream, read)
    assert before_release == ["message_start"] and events[-1] == "message_stop"
    assert upstream.last().headers["x-api-key"] == KEYS["MR_E2E_ANTHROPIC_KEY"]
    line = log_line_for(proxy, requested_model="claude-alias", stream=True)
    assert (line["input_tokens"], line["output_tokens"]) == (USAGE_IN, USAGE_OUT)
    assert line["supermemory"] == {"x-supermemory-conversation-id": "conv-fake", "x-supermemory-context-tokens": "42"}


def test_anthropic_count_tokens(proxy: RunningProxy, upstream: FakeUpstream):
    result = gateway_anthropic(proxy).messages.count_tokens(model="claude-alias", messages=[{"role": "user", "content": "hi"}])
    assert result.input_tokens == USAGE_IN
    assert upstream.last().api_path == "/v1/messages/count_tokens"


@pytest.mark.parametrize("path", ["/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"])
def test_claude_code_paths_with_beta_query(proxy: RunningProxy, upstream: FakeUpstream, path: str):
    curl(f"{proxy.gateway_url}{path}", "-A", CLAUDE_CODE_UA, "-H", "anthropic-version: 2023-06-01",
         "-H", "authorization: Bearer sk-ant-oat01-subscription-token", "-H", "content-type: application/json",
         "-d", '{"model":"claude-nokey","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}')
    seen = upstream.last()
    assert seen.api_path == path
    assert seen.headers["authorization"] == "Bearer sk-ant-oat01-subscription-token"  # subscription login passes
    assert (seen.headers["user-agent"], seen.headers["x-sm-user-id"]) == (CLAUDE_CODE_UA, "claude-cli")


def test_unknown_model_is_404_listing_aliases(proxy: RunningProxy, upstream: FakeUpstream):
    with pytest.raises(openai.NotFoundError) as excinfo:
        gateway_openai(proxy).chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-alias, claude-alias" in excinfo.value.body["message"]
    assert upstream.requests == []


# --- Gemini and curl ---------------------------------------------------------------------


def test_gemini_generate_content_with_curl(proxy: RunningProxy, upstream: FakeUpstream):
    result = curl(
        f"{proxy.gateway_url}/v1beta/models/gemini-alias:generateContent?key=client-key",
        "-H", "content-type: application/json", "-d", '{"contents":[{"parts":[{"text":"hi"}]}]}',
    )
    assert json.loads(result.stdout)["candidates"][0]["content"]["parts"][0]["text"] == "Hello from Gemini"
    seen = upstream.last()
    assert seen.api_path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == KEYS["MR_E2E_GEMINI_KEY"]
    assert seen.headers["x-sm-user-id"] == "curl"


def test_refusal_log_line_drops_query_keys(proxy: RunningProxy, upstream: FakeUpstream):
    curl("-w", "%{http_code}", "-o", "/dev/null", f"{proxy.gateway_url}/v1/messages?beta=true&key=AIza-query-secret-0007",
         "-H", "content-type: application/json", "-d", '{"model": "gpt-alias"}')
    assert proxy.wait_for_log("memory-routing: refused POST /v1/messages?beta=true:")
    refusals = [line for line in proxy.log().splitlines() if "memory-routing: refused" in line]
    assert refusals and not any("AIza-query-secret-0007" in line for line in refusals)


def test_gemini_stream_generate_content(proxy: RunningProxy, upstream: FakeUpstream):
    result = curl(
        "-N", f"{proxy.gateway_url}/v1beta/models/gemini-alias:streamGenerateContent?alt=sse",
        "-H", "content-type: application/json", "-d", '{"contents":[{"parts":[{"text":"hi"}]}]}',
    )
    assert result.stdout.count("data: ") == 2
    assert upstream.last().api_path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


@pytest.mark.parametrize("user_agent, user_id", [(JETBRAINS_UA, "pycharm-ai"), (CLAUDE_CODE_UA, "claude-cli")])
def test_curl_with_real_client_user_agents(proxy: RunningProxy, upstream: FakeUpstream, user_agent: str, user_id: str):
    curl(f"{proxy.gateway_url}/v1/chat/completions", "-A", user_agent, "-H", "content-type: application/json",
         "-d", '{"model":"gpt-alias","messages":[{"role":"user","content":"hi"}]}')
    seen = upstream.last()
    assert seen.headers["x-sm-user-id"] == user_id
    assert seen.headers["user-agent"] == user_agent  # never rewritten


def test_claude_code_telemetry_gets_a_quiet_answer(proxy: RunningProxy, upstream: FakeUpstream):
    result = curl("-w", "%{http_code}", "-o", "/dev/null", "-A", CLAUDE_CODE_UA,
                  f"{proxy.gateway_url}/api/event_logging/batch", "-d", "{}")
    assert result.stdout == "200"
    assert upstream.requests == []


def test_chunked_request_body_is_rewritten_with_valid_framing(proxy: RunningProxy, upstream: FakeUpstream):
    curl(f"{proxy.gateway_url}/v1/chat/completions", "-H", "content-type: application/json",
         "-H", "transfer-encoding: chunked", "-d", '{"model":"gpt-alias","messages":[{"role":"user","content":"hi"}]}')
    seen = upstream.last()
    assert seen.json["model"] == "gpt-4o-mini"
    assert int(seen.headers["content-length"]) == len(seen.body)
    assert "transfer-encoding" not in seen.headers


# --- forward proxy -----------------------------------------------------------------------


def test_http2_client_through_the_forward_proxy(proxy: RunningProxy, upstream: FakeUpstream):
    result = curl("--http2", "-x", proxy.forward_url, "--cacert", str(proxy.ca_cert), "-w", "\n%{http_version}",
                  "https://api.openai.com/v1/chat/completions", "-H", "content-type: application/json",
                  "-H", f"authorization: Bearer {CLIENT_OPENAI_KEY}",
                  "-d", '{"model":"gpt-alias","messages":[{"role":"user","content":"hi"}]}')
    body, _, version = result.stdout.rpartition("\n")
    assert version == "2" and json.loads(body)["model"] == "gpt-4o-mini"
    seen = upstream.last()
    assert seen.headers["host"] == upstream.url.removeprefix("http://")
    assert seen.path == f"/v3/{upstream.url}/v1/chat/completions"


def test_openai_sdk_through_the_forward_proxy(proxy: RunningProxy, upstream: FakeUpstream):
    client = openai.OpenAI(api_key=CLIENT_OPENAI_KEY, max_retries=0, http_client=forward_http_client(proxy))
    client.chat.completions.create(model="gpt-alias", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.last()
    assert seen.path == f"/v3/{upstream.url}/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEYS['MR_E2E_OPENAI_KEY']}"
    # Unaliased: the client's own destination, through Supermemory.
    client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    seen = upstream.last()
    assert (seen.api_host, seen.api_path) == ("api.openai.com", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {CLIENT_OPENAI_KEY}"


def test_forward_proxy_refuses_to_carry_credentials_to_another_host(proxy: RunningProxy, upstream: FakeUpstream):
    client = openai.OpenAI(api_key=CLIENT_OPENAI_KEY, max_retries=0, http_client=forward_http_client(proxy))
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="claude-nokey", messages=[{"role": "user", "content": "hi"}])
    assert "will not send credentials meant for api.openai.com" in excinfo.value.body["message"]
    assert upstream.requests == []


def test_sdks_with_https_proxy_and_a_combined_ca_bundle(proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path):
    bundle = tmp_path / "bundle.pem"
    subprocess.run([sys.executable, "-m", "memory_routing.mitm.ca_bundle", "--confdir", str(proxy.confdir), "--out", str(bundle)],
                   check=True, capture_output=True, timeout=60, cwd=ROOT)
    script = textwrap.dedent(
        """
        import anthropic, openai
        o = openai.OpenAI(api_key="sk-client", max_retries=0, timeout=20)
        print(o.chat.completions.create(model="gpt-alias",
                                        messages=[{"role": "user", "content": "hi"}]).choices[0].message.content)
        a = anthropic.Anthropic(api_key="sk-ant-client", max_retries=0, timeout=20)
        print(a.messages.create(model="claude-alias", max_tokens=5, messages=[{"role": "user", "content": "hi"}]).content[0].text)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env |= {"HTTPS_PROXY": proxy.forward_url, "SSL_CERT_FILE": str(bundle)}
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Hello from OpenAI", "Hello from Claude"]
    assert [r.api_path for r in upstream.requests] == ["/v1/chat/completions", "/v1/messages"]


def test_non_llm_https_hosts_are_tunnelled_not_decrypted(proxy: RunningProxy, tmp_path: Path):
    # A TLS server with its own certificate: the client verifies *that* certificate, which only
    # works if the proxy passes the connection through instead of intercepting it.
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        listener.settimeout(WAIT)
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ndirect")

    server = threading.Thread(target=serve_once, daemon=True)
    server.start()
    try:
        result = curl("-x", proxy.forward_url, "--cacert", str(cert), f"https://localhost:{port}/")
    finally:
        server.join(WAIT)
        listener.close()
    assert result.stdout == "direct"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


# --- connections, log, secrets -----------------------------------------------------------


def test_requests_on_one_client_connection_share_one_upstream_connection(proxy: RunningProxy, upstream: FakeUpstream):
    with httpx.Client(timeout=WAIT) as http:  # one keep-alive connection to the gateway
        for _ in range(5):
            response = http.post(f"{proxy.gateway_url}/v1/chat/completions",
                                 json={"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200
    assert len(upstream.requests) == 5
    assert upstream.connections == 1
    assert {r.connection for r in upstream.requests} == {upstream.requests[0].connection}


def test_one_structured_log_line_per_routed_flow_and_no_secrets(proxy: RunningProxy, upstream: FakeUpstream):
    gateway_openai(proxy, default_headers={"x-memory-user-id": "log-check"}).chat.completions.create(
        model="gpt-alias", messages=[{"role": "user", "content": "hi"}]
    )
    line = log_line_for(proxy, user_id="log-check")
    assert line["requested_model"] == "gpt-alias" and line["provider"] == "openai"
    assert line["provider_model"] == "gpt-4o-mini" and line["status"] == 200
    assert line["latency_ms"] >= 0 and line["ttfb_ms"] >= 0
    assert (line["input_tokens"], line["output_tokens"]) == (USAGE_IN, USAGE_OUT)
    assert line["upstream_url"] == f"{upstream.url}/v3/{upstream.url}/v1/chat/completions"
    log = proxy.log()
    for secret in [*KEYS.values(), CLIENT_OPENAI_KEY, CLIENT_ANTHROPIC_KEY, "client-key"]:
        assert secret not in log
