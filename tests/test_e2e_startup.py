"""End-to-end: LiteLLM loads after start-up; /health answers before it, model calls wait for it.
A config error at start is one line and exit 1, before any listener is announced.

The test holds LiteLLM's import shut (a ``sitecustomize`` on the proxy's PYTHONPATH blocks
``import litellm`` until a gate file exists), so the order is fixed by the test, not by timing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from fake_upstream import FakeUpstream
from harness import RunningProxy, free_port, run_mitmdump_to_exit, running_proxy

pytestmark = pytest.mark.e2e

WAIT = 60
GATE_SITECUSTOMIZE = """\
import importlib.abc, os, sys, time

class _HoldLiteLLM(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "litellm":
            deadline = time.monotonic() + 120
            while not os.path.exists(os.environ["MR_TEST_LITELLM_GATE"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return None

sys.meta_path.insert(0, _HoldLiteLLM())
"""


def _health(proxy: RunningProxy) -> dict:
    return httpx.get(f"{proxy.gateway_url}/health", timeout=WAIT).json()


def test_health_answers_before_litellm_and_an_early_model_call_waits(fake: FakeUpstream, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE_SITECUSTOMIZE)
    gate = tmp_path / "litellm-gate"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "gpt-alias", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": f"{fake.url}/v1", "api_key": "sk-e2e-startup"}}]}))
    env = {"PYTHONPATH": str(site), "MR_TEST_LITELLM_GATE": str(gate)}
    with running_proxy(tmp_path, config, env=env, wait_for_litellm=False) as proxy:
        body = _health(proxy)
        assert body["status"] == "healthy"
        assert body["litellm_loaded"] is False

        answers: list[object] = []
        client = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-client", max_retries=0, timeout=WAIT)

        def call() -> None:
            try:
                answers.append(client.chat.completions.create(
                    model="gpt-alias", messages=[{"role": "user", "content": "hi"}]))
            except Exception as e:  # recorded, asserted below
                answers.append(e)

        assert body["calls_waiting_for_litellm"] == 0
        caller = threading.Thread(target=call)
        caller.start()
        # The call reaches the proxy and is held while LiteLLM cannot load: /health still
        # answers meanwhile and counts it. Only then does the import go on.
        deadline = time.monotonic() + WAIT
        while (held := _health(proxy))["calls_waiting_for_litellm"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held["calls_waiting_for_litellm"] == 1 and held["litellm_loaded"] is False
        assert caller.is_alive() and not answers
        gate.touch()
        caller.join(WAIT)
        assert not caller.is_alive()
        assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
        assert answers[0].choices[0].message.content
        deadline = time.monotonic() + WAIT
        while not _health(proxy)["litellm_loaded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        final = _health(proxy)
        assert final["litellm_loaded"] is True and final["calls_waiting_for_litellm"] == 0


@pytest.mark.parametrize(
    "config_text, message",
    [
        pytest.param(
            "model_list:\n  - model_name: a\n    litellm_params: {model: openai/gpt-4o, api_bsae: 'http://127.0.0.1:9/v1'}\n",
            "model_list[0].litellm_params.api_bsae: unknown key: LiteLLM takes no such parameter, did you mean `api_base`?",
            id="litellm-params-typo",
        ),
        pytest.param(
            "model_list:\n  - {model_name: a, litellm_params: {model: openai/gpt-4o}}\n"
            "user_id_mappings:\n  header_patterns:\n    - {pattern: 'a)', user_id: b}\n",
            "user_id_mappings.header_patterns[0].pattern: invalid regex: unbalanced parenthesis at position 1",
            id="invalid-regex",
        ),
    ],
)
def test_config_error_at_start_is_one_line_and_exit_1_before_listening(tmp_path: Path, config_text: str, message: str):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = run_mitmdump_to_exit(tmp_path, [
        "--listen-host", "127.0.0.1",
        "--mode", f"regular@{free_port()}",
        "--mode", f"reverse:http://127.0.0.1:{free_port()}@{free_port()}",
        "--set", f"memory_routing_config={config}",
    ])
    assert result.returncode == 1
    assert result.stderr == f"{config}: {message}\n"
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "listening at" not in output
    assert "Error logged during startup" not in output
