"""The addons in mitmproxy's own test harness (taddons, tflow, tutils)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import textwrap
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy import hooks
from mitmproxy.addons.proxyauth import ProxyAuth
from mitmproxy.http import Headers
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from memory_routing.addons import routing_config
from memory_routing.addons.listen_guard import ListenGuard
from memory_routing.addons.local_endpoints import RESERVED_HOST, LocalEndpoints
from memory_routing.addons.routing_config import RoutingConfig

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
model_list:
  - model_name: fast
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/MR_TEST_KEY}
  - model_name: smart
    litellm_params: {model: anthropic/claude-sonnet-4-5}
user_id_mappings:
  header_patterns:
    - {header: user-agent, pattern: '^claude-cli/', user_id: claude-cli}
memory:
  api_key: sm-secret-inline-value
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def bump_mtime(path: Path) -> None:
    # Some filesystems keep coarse mtimes: make each write distinguishable.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def gateway_flow(path: str, method: str = "GET", **headers: str):
    flow = tflow.tflow(req=tutils.treq(method=method.encode(), path=path.encode(), headers=Headers(**headers)))
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    return flow


def forward_flow(host: str, path: str, **headers: str):
    return tflow.tflow(req=tutils.treq(host=host, port=80, path=path.encode(), headers=Headers(**headers)))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write(tmp_path / "config.yaml", CONFIG)


@pytest.fixture
def loaded(config_file: Path):
    routing = RoutingConfig()
    endpoints = LocalEndpoints(routing)
    with taddons.context(routing, endpoints) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
        yield routing, endpoints


# --- RoutingConfig ----------------------------------------------------------------------


def test_config_option_loads_the_file(loaded):
    routing, _ = loaded
    assert routing.config.aliases == ("fast", "smart")
    assert routing.classifier is not None
    assert routing.summary["models"][0]["api_key"] == "os.environ/MR_TEST_KEY (unset)"


def test_bad_config_at_start_is_an_options_error(tmp_path: Path):
    bad = write(tmp_path / "bad.yaml", "user_id_mappings: {header_patterns: [{pattern: '(', user_id: a}]}")
    routing = RoutingConfig()
    with taddons.context(routing) as tctx:
        with pytest.raises(exceptions.OptionsError) as excinfo:
            tctx.configure(routing, memory_routing_config=str(bad))
    assert str(excinfo.value) == (
        f"{bad}: user_id_mappings.header_patterns[0].pattern: invalid regex: "
        "missing ), unterminated subpattern at position 0"
    )


def test_unset_env_var_is_logged_as_warning(config_file: Path, caplog: pytest.LogCaptureFixture):
    routing = RoutingConfig()
    with caplog.at_level(logging.WARNING), taddons.context(routing) as tctx:
        tctx.configure(routing, memory_routing_config=str(config_file))
    warnings = [r for r in caplog.records if r.name == routing_config.__name__]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert warnings[0].getMessage() == (
        f"{config_file}: model_list[0].litellm_params.api_key: environment variable MR_TEST_KEY is not set"
    )


def test_changed_file_is_reloaded(loaded, config_file: Path):
    routing, _ = loaded
    write(config_file, CONFIG.replace("name: smart", "name: smarter"))
    bump_mtime(config_file)
    routing.reload_if_changed()
    assert routing.config.aliases == ("fast", "smarter")
    assert routing.last_error is None


def test_broken_edit_keeps_last_good_config_and_logs_one_error(
    loaded, config_file: Path, caplog: pytest.LogCaptureFixture
):
    routing, _ = loaded
    good = routing.config
    write(config_file, CONFIG.replace("user_id_mappings:\n", "user_id_mappings:\n  default_user_id: 'not valid'\n"))
    bump_mtime(config_file)
    with caplog.at_level(logging.ERROR):
        routing.reload_if_changed()
        routing.reload_if_changed()  # unchanged since: no second error
    assert routing.config is good
    expected = f"{config_file}: user_id_mappings.default_user_id: invalid user id 'not valid'"
    assert routing.last_error.startswith(expected)
    assert routing.summary["last_reload_error"] == routing.last_error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(expected) and "keeping the last good config" in errors[0]


def test_deleted_file_keeps_last_good_config(loaded, config_file: Path):
    routing, _ = loaded
    good = routing.config
    config_file.unlink()
    routing.reload_if_changed()
    assert routing.config is good
    assert "cannot read" in routing.last_error


def test_empty_config_at_start_is_an_options_error(tmp_path: Path):
    empty = write(tmp_path / "empty.yaml", "")
    routing = RoutingConfig()
    with taddons.context(routing) as tctx:
        with pytest.raises(exceptions.OptionsError) as excinfo:
            tctx.configure(routing, memory_routing_config=str(empty))
    assert str(excinfo.value).startswith(f"{empty}: model_list: the config is empty")


@pytest.mark.parametrize("text", ["", "model_list: []\n"], ids=["truncated", "empty-model-list"])
def test_config_emptied_while_running_keeps_the_last_good_one(
    loaded, config_file: Path, caplog: pytest.LogCaptureFixture, text: str
):
    routing, endpoints = loaded
    good = routing.config
    config_file.write_text(text)
    bump_mtime(config_file)
    with caplog.at_level(logging.ERROR):
        routing.reload_if_changed()
    assert routing.config is good and routing.config.aliases == ("fast", "smart")
    assert routing.last_error.startswith(f"{config_file}: model_list: the config ")
    assert any("keeping the last good config" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert answer(endpoints, gateway_flow("/health"))["config_error"] == routing.last_error


def test_running_watcher_reloads_without_being_asked(config_file: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(routing_config, "RELOAD_POLL_SECONDS", 0.05)

    async def scenario() -> tuple[str, ...]:
        routing = RoutingConfig()
        with taddons.context(routing) as tctx:
            tctx.configure(routing, memory_routing_config=str(config_file))
            routing.running()
            write(config_file, CONFIG.replace("name: fast", "name: quick"))
            bump_mtime(config_file)
            for _ in range(100):  # at most 5 s
                await asyncio.sleep(0.05)
                if "quick" in routing.config.aliases:
                    break
            routing.done()
            return routing.config.aliases

    assert asyncio.run(scenario()) == ("quick", "smart")


# --- LocalEndpoints ---------------------------------------------------------------------


def answer(endpoints: LocalEndpoints, flow) -> dict:
    endpoints.request(flow)
    assert flow.response is not None, "the endpoint did not answer"
    assert flow.response.headers["content-type"] == "application/json"
    return json.loads(flow.response.content)


def test_health_on_gateway(loaded):
    _, endpoints = loaded
    body = answer(endpoints, gateway_flow("/health"))
    assert body["status"] == "healthy"
    assert body["config_error"] is None


def test_info_on_gateway_classifies_own_headers_and_hides_secrets(loaded):
    _, endpoints = loaded
    flow = gateway_flow(
        "/memory-routing/info",
        user_agent="claude-cli/2.1.0 (external, cli)",
        authorization="Bearer sk-client-secret",
        x_api_key="sk-ant-client-secret",
        cookie="__cf_bm=cookie-secret",
    )
    body = answer(endpoints, flow)
    assert flow.response.status_code == 200
    assert body["user_id"] == "claude-cli"
    assert body["matched_pattern"] == {"header": "user-agent", "pattern": "^claude-cli/", "user_id": "claude-cli"}
    assert body["custom_header_present"] is False and body["is_default"] is False
    assert body["listener"] == "gateway"
    assert body["request_headers"]["authorization"] == "[redacted]"
    assert body["config"]["memory"] == {
        "backend": "supermemory", "budget_tokens": 2000, "deadline_ms": 50.0, "retention_days": None, "clients": [],
        "active": True, "enabled": None, "base_url": "https://api.supermemory.ai/v3",
        "api_key": "set inline in the config",
    }
    text = flow.response.get_text()
    for secret in ("sk-client-secret", "sk-ant-client-secret", "cookie-secret", "sm-secret-inline-value"):
        assert secret not in text


def test_info_with_invalid_user_id_is_400_in_the_clients_shape(loaded):
    _, endpoints = loaded
    openai_flow = gateway_flow("/memory-routing/info", x_memory_user_id="bad id")
    body = answer(endpoints, openai_flow)
    assert openai_flow.response.status_code == 400
    assert openai_flow.response.headers["x-should-retry"] == "false"
    assert body == {
        "error": {
            "message": "invalid x-memory-user-id header: use 1-128 characters from A-Z a-z 0-9 . _ : @ -",
            "type": "invalid_request_error", "param": None, "code": None,
        }
    }
    anthropic_flow = gateway_flow("/memory-routing/info", x_memory_user_id="bad id", anthropic_version="2023-06-01")
    body = answer(endpoints, anthropic_flow)
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"


def test_models_in_openai_and_anthropic_shapes(loaded):
    _, endpoints = loaded
    openai_body = answer(endpoints, gateway_flow("/v1/models"))
    assert openai_body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in openai_body["data"]] == [
        ("fast", "model", "openai"), ("smart", "model", "anthropic"),
    ]
    anthropic_body = answer(endpoints, gateway_flow("/v1/models?limit=20", anthropic_version="2023-06-01"))
    assert [m["id"] for m in anthropic_body["data"]] == ["fast", "smart"]
    assert anthropic_body["has_more"] is False and anthropic_body["first_id"] == "fast"


def test_reserved_host_answers_through_forward_proxy(loaded):
    _, endpoints = loaded
    body = answer(endpoints, forward_flow(RESERVED_HOST, "/memory-routing/info", user_agent="claude-cli/2.1.0 (external, cli)"))
    assert body["user_id"] == "claude-cli" and body["listener"] == "forward"


def test_unknown_path_on_reserved_host_is_404_never_forwarded(loaded):
    _, endpoints = loaded
    flow = forward_flow(RESERVED_HOST, "/v1/chat/completions")
    body = answer(endpoints, flow)
    assert flow.response.status_code == 404
    assert "no local endpoint /v1/chat/completions" in body["error"]["message"]


def test_other_hosts_and_gateway_model_calls_pass_untouched(loaded):
    _, endpoints = loaded
    for flow in (forward_flow("api.openai.com", "/health"), gateway_flow("/v1/chat/completions", method="POST")):
        before = flow.request.copy()
        endpoints.request(flow)
        assert flow.response is None
        assert flow.request.data == before.data


def test_local_endpoints_answer_get_only(loaded):
    _, endpoints = loaded
    flow = gateway_flow("/health", method="POST")
    body = answer(endpoints, flow)
    assert flow.response.status_code == 405
    assert body["error"]["message"] == "/health answers GET only"


# --- ListenGuard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen_host, mode",
    [("", "regular@8080"), ("0.0.0.0", "regular@8080"), ("127.0.0.1", "reverse:http://x@0.0.0.0:8764"),
     ("192.168.1.2", "regular@8080")],
)
def test_listen_guard_refuses_non_loopback_without_auth(listen_host: str, mode: str, capsys: pytest.CaptureFixture[str]):
    guard = ListenGuard()
    with taddons.context(ProxyAuth(), guard) as tctx:
        # At start: the reason alone on stderr, then exit 1 (before mitmproxy listens).
        with pytest.raises(SystemExit) as excinfo:
            tctx.configure(guard, listen_host=listen_host, mode=[mode])
        assert excinfo.value.code == 1
        assert capsys.readouterr().err.startswith("memory-routing: refusing to listen on ")
        # Once running, the option change is refused and the proxy goes on.
        guard.running()
        with pytest.raises(exceptions.OptionsError, match=r"refusing to listen on .* without proxy authentication"):
            tctx.configure(guard, listen_host=listen_host, mode=[mode])


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_listen_guard_allows_loopback(listen_host: str):
    guard = ListenGuard()
    with taddons.context(ProxyAuth(), guard) as tctx:
        tctx.configure(guard, listen_host=listen_host, mode=["regular@8080", "reverse:http://x@8764"])


def test_listen_guard_allows_exposure_with_proxy_auth():
    guard = ListenGuard()
    with taddons.context(ProxyAuth(), guard) as tctx:
        tctx.configure(guard, listen_host="0.0.0.0", mode=["regular@8080"], proxyauth="user:pass")


def test_proxyauth_from_a_file_sets_mitmproxys_option_and_allows_exposure(tmp_path: Path):
    from memory_routing.addons.proxyauth_secret import ProxyAuthSecret

    secret_file = write(tmp_path / "proxyauth", "alice:pw-from-file\n")
    secret, guard = ProxyAuthSecret(environ={}), ListenGuard()
    with taddons.context(ProxyAuth(), secret, guard) as tctx:
        tctx.configure(secret, memory_routing_proxyauth_file=str(secret_file))
        assert tctx.options.proxyauth == "alice:pw-from-file"
        tctx.configure(guard, listen_host="0.0.0.0", mode=["regular@8080"])


def test_proxyauth_from_the_environment():
    from memory_routing.addons.proxyauth_secret import ProxyAuthSecret

    secret = ProxyAuthSecret(environ={"MEMORY_ROUTING_PROXYAUTH": "bob:pw-from-env"})
    with taddons.context(ProxyAuth(), secret) as tctx:
        tctx.configure(secret, listen_host="127.0.0.1")
        assert tctx.options.proxyauth == "bob:pw-from-env"


def test_proxyauth_file_errors_do_not_echo_the_secret(tmp_path: Path):
    from memory_routing.addons.proxyauth_secret import ProxyAuthSecret

    secret = ProxyAuthSecret(environ={})
    with taddons.context(ProxyAuth(), secret) as tctx:
        with pytest.raises(exceptions.OptionsError, match="cannot read"):
            tctx.configure(secret, memory_routing_proxyauth_file=str(tmp_path / "missing"))
        two_lines = write(tmp_path / "two", "alice:pw-secret\nbob:x\n")
        with pytest.raises(exceptions.OptionsError, match="must hold one line") as excinfo:
            tctx.configure(secret, memory_routing_proxyauth_file=str(two_lines))
        assert "pw-secret" not in str(excinfo.value)


def test_heap_is_frozen_once_running():
    import gc

    from memory_routing.addons.heap_freeze import HeapFreeze

    gc.unfreeze()
    try:
        with taddons.context(HeapFreeze()) as tctx:
            tctx.master.addons.trigger(hooks.RunningHook())
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("option", ["memory_routing_connect_timeout", "memory_routing_read_timeout"])
@pytest.mark.parametrize("value", [0, -1])
def test_upstream_timeouts_must_be_positive(option: str, value: int):
    from memory_routing.addons.upstream_failures import UpstreamFailures

    with taddons.context(UpstreamFailures()) as tctx:
        with pytest.raises(exceptions.OptionsError, match=option):
            tctx.configure(tctx.master.addons.get("upstreamfailures"), **{option: value})
        tctx.configure(tctx.master.addons.get("upstreamfailures"), **{option: 5})
