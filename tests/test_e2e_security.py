"""Exposure and secrets end to end: proxy authentication on both listeners, refusal to listen
beyond loopback without it, secrets kept out of logs and sent only to their own host."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from fake_upstream import FakeUpstream
from harness import RunningProxy, run_mitmdump_to_exit, running_proxy

pytestmark = pytest.mark.e2e

PROXY_USER, PROXY_PASSWORD = "alice", "proxy-pass-7781"
SECRETS = {
    "MR_SEC_OPENAI_KEY": "sk-sec-config-openai-7701",
    "MR_SEC_ANTHROPIC_KEY": "sk-ant-sec-config-7702",
    "MR_SEC_GEMINI_KEY": "AIza-sec-config-7703",
    "MR_SEC_SM_KEY": "sm-sec-config-7704",
}
CLIENT_KEY = "sk-client-own-7705"
CLIENT_GEMINI_KEY = "AIza-client-own-7706"
COOKIE_VALUE = "cfcookievalue7707"
WAIT = 20


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def other_host() -> Iterator[FakeUpstream]:
    """A second upstream on another loopback address: the memory router's host."""
    upstream = FakeUpstream(host="127.0.0.2").start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, other_host: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("security")
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [
            {"model_name": "gpt-alias", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "os.environ/MR_SEC_OPENAI_KEY"}},
            {"model_name": "gpt-own-key", "memory": False, "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1"}},
            {"model_name": "claude-alias", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake.url, "api_key": "os.environ/MR_SEC_ANTHROPIC_KEY"}},
            {"model_name": "gemini-alias", "memory": False, "litellm_params": {
                "model": "gemini/gemini-2.5-flash", "api_base": fake.url, "api_key": "os.environ/MR_SEC_GEMINI_KEY"}},
            {"model_name": "gemini-own-key", "memory": False, "litellm_params": {
                "model": "gemini/gemini-2.5-pro", "api_base": fake.url}},
        ],
        "memory": {"api_key": "os.environ/MR_SEC_SM_KEY", "base_url": f"{other_host.url}/v3"},
    }, sort_keys=False))
    # Debug logging: the most mitmproxy and the addon ever print.
    args = ["--set", f"proxyauth={PROXY_USER}:{PROXY_PASSWORD}", "--set", "termlog_verbosity=debug",
            "--set", "flow_detail=1"]
    with running_proxy(workdir, config, env=SECRETS, extra_args=args) as running:
        yield running


def gateway(proxy: RunningProxy, path: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{proxy.gateway_url}{path}", json=body, headers=headers, timeout=WAIT)


def test_gateway_requires_proxy_auth_in_the_clients_shape(proxy: RunningProxy, upstream: FakeUpstream):
    answer = gateway(proxy, "/v1/chat/completions", {"model": "gpt-alias", "messages": []},
                     authorization=f"Bearer {CLIENT_KEY}")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert "Proxy-Authorization" in answer.json()["error"]["message"]
    wrong = gateway(proxy, "/v1/messages", {"model": "claude-alias", "messages": []},
                    **{"proxy-authorization": basic(PROXY_USER, "wrong")})
    assert wrong.status_code == 401 and wrong.json()["type"] == "error"
    assert not upstream.requests


def test_gateway_proxy_auth_leaves_the_api_key_header_to_the_client(proxy: RunningProxy, upstream: FakeUpstream):
    answer = gateway(proxy, "/v1/chat/completions", {"model": "gpt-own-key", "messages": []},
                     authorization=f"Bearer {CLIENT_KEY}", **{"proxy-authorization": basic(PROXY_USER, PROXY_PASSWORD)})
    assert answer.status_code == 200, answer.text
    seen = upstream.last().headers
    assert seen["authorization"] == f"Bearer {CLIENT_KEY}"
    assert "proxy-authorization" not in seen


def test_forward_proxy_uses_proxy_authorization(proxy: RunningProxy, upstream: FakeUpstream):
    with httpx.Client(proxy=proxy.forward_url, timeout=WAIT) as client:
        refused = client.get("http://memory-routing.localhost/health")
    assert refused.status_code == 407
    authed_url = proxy.forward_url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
    with httpx.Client(proxy=authed_url, timeout=WAIT) as client:
        assert client.get("http://memory-routing.localhost/health").status_code == 200


@pytest.mark.parametrize("auth", [None, "any"])
def test_refuses_to_listen_beyond_loopback_without_real_auth(tmp_path: Path, auth: str | None):
    args = ["--listen-host", "0.0.0.0", "--mode", "reverse:http://memory-routing.localhost@0"]
    if auth:
        args += ["--set", f"proxyauth={auth}"]
    result = run_mitmdump_to_exit(tmp_path, args)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "refusing to listen on 0.0.0.0" in output and "anyone who can reach it could spend your API keys" in output
    # The reason alone: no script error, no traceback, and nothing listened.
    assert result.stderr.strip().startswith("memory-routing: refusing to listen on 0.0.0.0"), result.stderr
    for noise in ("error in script", "Traceback", "listening at", "Error logged during startup"):
        assert noise not in output, output


def test_secrets_go_only_to_their_own_host_and_never_into_logs(
    proxy: RunningProxy, upstream: FakeUpstream, other_host: FakeUpstream
):
    other_host.reset()
    auth = {"proxy-authorization": basic(PROXY_USER, PROXY_PASSWORD)}
    # Memory on: through the router on the other host, with the Supermemory key.
    assert gateway(proxy, "/v1/chat/completions", {"model": "gpt-alias", "messages": []},
                   **auth, **{"x-fake-set-cookie": f"__cf_bm={COOKIE_VALUE}; Path=/"}).status_code == 200
    routed = other_host.last()
    assert routed.via_supermemory and routed.headers["x-supermemory-api-key"] == SECRETS["MR_SEC_SM_KEY"]
    assert routed.headers["authorization"] == f"Bearer {SECRETS['MR_SEC_OPENAI_KEY']}"
    assert gateway(proxy, "/v1/messages", {"model": "claude-alias", "messages": [], "max_tokens": 5},
                   **auth).status_code == 200
    # Memory off: straight to the provider's host, which must see neither the memory key nor
    # another provider's key.
    upstream.reset()
    assert httpx.post(f"{proxy.gateway_url}/v1beta/models/gemini-alias:generateContent",
                      json={"contents": []}, headers=auth, timeout=WAIT).status_code == 200
    assert httpx.post(f"{proxy.gateway_url}/v1beta/models/gemini-own-key:generateContent?key={CLIENT_GEMINI_KEY}",
                      json={"contents": []}, headers=auth, timeout=WAIT).status_code == 200
    direct = upstream.requests
    assert [r.headers.get("x-goog-api-key") for r in direct] == [SECRETS["MR_SEC_GEMINI_KEY"], CLIENT_GEMINI_KEY]
    for request in direct:
        assert "key=" not in request.path
        assert not any(secret in json.dumps(request.headers) for name, secret in SECRETS.items()
                       if name != "MR_SEC_GEMINI_KEY")
    # Errors and the info endpoint name where secrets come from, never their values.
    info = httpx.get(f"{proxy.gateway_url}/memory-routing/info", headers=auth, timeout=WAIT).text
    refused = gateway(proxy, "/v1/chat/completions", {"model": "nope", "messages": []}, **auth).text
    log = proxy.log()
    for secret in [*SECRETS.values(), CLIENT_KEY, CLIENT_GEMINI_KEY, COOKIE_VALUE, PROXY_PASSWORD,
                   base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()]:
        assert secret not in log, f"{secret} in the log"
        assert secret not in info and secret not in refused
    assert "gemini-2.5-pro:generateContent" in log  # the log did see those flows


def test_proxy_auth_from_the_environment_guards_both_listeners(fake: FakeUpstream, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "gpt-alias", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "sk-x"}}]}))
    env = {"MEMORY_ROUTING_PROXYAUTH": f"{PROXY_USER}:{PROXY_PASSWORD}"}
    with running_proxy(tmp_path, config, env=env) as running:
        with httpx.Client(proxy=running.forward_url, timeout=WAIT) as client:
            assert client.get("http://memory-routing.localhost/health").status_code == 407
        refused = gateway(running, "/v1/chat/completions", {"model": "gpt-alias", "messages": []})
        assert refused.status_code == 401
        with httpx.Client(proxy=running.forward_url.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@"),
                          timeout=WAIT) as client:
            assert client.get("http://memory-routing.localhost/health").status_code == 200
        assert PROXY_PASSWORD not in running.log()
