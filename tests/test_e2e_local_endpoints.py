"""End-to-end: a real ``mitmdump -s addon.py`` answering its local endpoints, driven by real clients."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from harness import ROOT, RunningProxy, free_port, run_mitmdump_to_exit, running_proxy, wait_until

pytestmark = pytest.mark.e2e

CURL_TIMEOUT = 30
CONFIG = """\
model_list:
  - model_name: claude-sonnet-4.5
    litellm_params: {model: anthropic/claude-sonnet-4-5, api_key: os.environ/MR_E2E_UNSET_KEY}
  - model_name: gpt-4o
    litellm_params: {model: openai/gpt-4o}
user_id_mappings:
  header_patterns:
    - {header: user-agent, pattern: '^claude-cli/', user_id: claude-cli}
    - {header: user-agent, pattern: 'OpenAIClientImpl/Java', user_id: pycharm-ai}
  default_user_id: default-dev
memory:
  api_key: sm-e2e-inline-secret
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("e2e")
    config = workdir / "config.yaml"
    config.write_text(CONFIG)
    with running_proxy(workdir, config) as running:
        yield running


def curl(*args: str) -> tuple[int, dict]:
    """Run curl and return (status, JSON body)."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", "--write-out", "\n%{http_code}", *args],
        capture_output=True, text=True, timeout=CURL_TIMEOUT, check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_health_through_the_forward_proxy(proxy: RunningProxy):
    status, body = curl("-x", proxy.forward_url, "http://memory-routing.localhost/health")
    assert status == 200
    assert body["status"] == "healthy"


def test_info_through_the_forward_proxy_over_https(proxy: RunningProxy):
    status, body = curl(
        "-x", proxy.forward_url, "--cacert", str(proxy.ca_cert),
        "-A", "OpenAIClientImpl/Java 2.8.1",
        "https://memory-routing.localhost/memory-routing/info",
    )
    assert status == 200
    assert (body["user_id"], body["listener"], body["is_default"]) == ("pycharm-ai", "forward", False)



def test_a_base_url_set_to_the_forward_proxy_listener_is_told_where_the_gateway_is(proxy: RunningProxy):
    # mitmproxy alone answers such a request with its HTML "destination unknown" page (502).
    client = openai.OpenAI(base_url=f"{proxy.forward_url}/v1", api_key="sk-client", max_retries=0, timeout=20)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 421
    message = raised.value.body["message"]
    assert "forward-proxy listener" in message and f"OPENAI_BASE_URL={proxy.gateway_url}/v1" in message
    status, body = curl("-X", "POST", f"{proxy.forward_url}/v1/messages", "-H", "content-type: application/json",
                        "-H", "anthropic-version: 2023-06-01", "-d", '{"model": "claude-sonnet-4.5", "max_tokens": 5}')
    assert status == 421 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert proxy.gateway_url in body["error"]["message"]


def test_a_path_the_gateway_does_not_serve_is_404_naming_the_calls_and_the_proxys_own_pages(proxy: RunningProxy):
    status, body = curl(f"{proxy.gateway_url}/")
    assert status == 404
    message = body["error"]["message"]
    assert message.startswith("GET / is not a model call this gateway serves")
    assert "POST /v1/chat/completions" in message and "GET /health" in message and "dashboard at /memory-routing/" in message

def test_info_on_the_gateway(proxy: RunningProxy):
    status, body = curl(f"{proxy.gateway_url}/memory-routing/info", "-H", "User-Agent: claude-cli/2.1.0 (external, cli)")
    assert status == 200
    assert body["user_id"] == "claude-cli"
    assert body["matched_pattern"] == {"header": "user-agent", "pattern": "^claude-cli/", "user_id": "claude-cli"}
    assert body["listener"] == "gateway"
    summary = body["config"]
    assert [m["model_name"] for m in summary["models"]] == ["claude-sonnet-4.5", "gpt-4o"]
    assert summary["models"][0]["api_key"] == "os.environ/MR_E2E_UNSET_KEY (unset)"
    assert "sm-e2e-inline-secret" not in json.dumps(body)


def test_custom_header_on_the_gateway(proxy: RunningProxy):
    status, body = curl(f"{proxy.gateway_url}/memory-routing/info", "-H", "x-memory-user-id: project-x")
    assert status == 200
    assert (body["user_id"], body["custom_header_present"]) == ("project-x", True)


def test_invalid_user_id_is_400_in_openai_shape(proxy: RunningProxy):
    status, body = curl(f"{proxy.gateway_url}/memory-routing/info", "-H", "x-memory-user-id: bad/id")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "x-memory-user-id" in body["error"]["message"]


def test_models_with_the_openai_sdk_on_the_gateway(proxy: RunningProxy):
    client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-e2e", max_retries=0, timeout=20)
    assert [m.id for m in client.models.list()] == ["claude-sonnet-4.5", "gpt-4o"]


def test_models_with_the_anthropic_sdk_on_the_gateway(proxy: RunningProxy):
    client = anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-e2e", max_retries=0, timeout=20)
    assert [m.id for m in client.models.list()] == ["claude-sonnet-4.5", "gpt-4o"]


def test_models_with_the_openai_sdk_through_the_forward_proxy(proxy: RunningProxy):
    trust_mitm_ca = ssl.create_default_context(cafile=str(proxy.ca_cert))
    http_client = httpx.Client(proxy=proxy.forward_url, verify=trust_mitm_ca, timeout=20)
    client = openai.OpenAI(
        base_url="https://memory-routing.localhost/v1", api_key="sk-e2e", max_retries=0, http_client=http_client
    )
    assert [m.id for m in client.models.list()] == ["claude-sonnet-4.5", "gpt-4o"]


def test_unknown_path_on_the_reserved_host_is_404(proxy: RunningProxy):
    status, body = curl("-x", proxy.forward_url, "http://memory-routing.localhost/v1/chat/completions")
    assert status == 404
    assert body["error"]["type"] == "not_found_error"


class _EchoUpstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"upstream": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_other_hosts_keep_their_own_health_endpoint(proxy: RunningProxy):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, body = curl("-x", proxy.forward_url, f"http://127.0.0.1:{server.server_port}/health")
    finally:
        server.shutdown()
        thread.join(10)
    assert (status, body) == (200, {"upstream": True, "path": "/health"})


def test_config_edits_are_reloaded_and_broken_edits_keep_the_last_good(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with running_proxy(tmp_path, config) as proxy:
        config.write_text(CONFIG.replace("model_name: gpt-4o", "model_name: gpt-4.1"))
        models_url = f"{proxy.gateway_url}/v1/models"
        assert wait_until(lambda: "gpt-4.1" in [m["id"] for m in curl(models_url)[1]["data"]], timeout=15)
        assert [m["id"] for m in curl(models_url)[1]["data"]] == ["claude-sonnet-4.5", "gpt-4.1"]

        config.write_text(CONFIG.replace("pattern: '^claude-cli/'", "pattern: '^claude-cli/('"))
        assert proxy.wait_for_log("keeping the last good config")
        _, info = curl(f"{proxy.gateway_url}/memory-routing/info", "-A", "claude-cli/2.1.0 (external, cli)")
        assert info["user_id"] == "claude-cli"  # still the last good patterns
        assert info["config"]["last_reload_error"].startswith(
            f"{config}: user_id_mappings.header_patterns[0].pattern: invalid regex"
        )
        # Fixed again: the watcher (still running) installs it. That an unchanged broken file is
        # reported once, not on every poll, is test_addons' (reload_if_changed called twice):
        # here no wait could prove that a poll happened in between.
        config.write_text(CONFIG)
        assert wait_until(lambda: proxy.log().count(f"{config}: reloaded (2 models)") == 2, timeout=15)  # the 1st: gpt-4.1
        _, info = curl(f"{proxy.gateway_url}/memory-routing/info")
        assert info["config"]["last_reload_error"] is None
        assert [m["id"] for m in curl(models_url)[1]["data"]] == ["claude-sonnet-4.5", "gpt-4o"]
        assert proxy.log().count("keeping the last good config") == 1
        assert proxy.process.poll() is None


def test_bad_config_stops_start_with_file_and_key_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("user_id_mappings:\n  header_patterns:\n    - {pattern: ok, user_id: a}\n    - {pattern: 'a)', user_id: b}\n")
    result = run_mitmdump_to_exit(
        tmp_path, ["--listen-host", "127.0.0.1", "--mode", f"regular@{free_port()}", "--set", f"memory_routing_config={bad}"]
    )
    assert result.returncode != 0
    assert f"{bad}: user_id_mappings.header_patterns[1].pattern: invalid regex: unbalanced parenthesis" in (
        result.stdout + result.stderr
    )


def test_refuses_to_listen_beyond_loopback_without_auth(tmp_path: Path):
    result = run_mitmdump_to_exit(
        tmp_path,
        ["--mode", f"regular@{free_port()}", "--set", f"memory_routing_config={ROOT / 'config.yaml'}"],
    )
    assert result.returncode != 0
    assert "refusing to listen on every interface" in result.stdout + result.stderr
