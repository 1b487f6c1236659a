"""End-to-end: calls through a real mitmdump show up in the dashboard page, in headless Chromium.

The SDKs call the gateway (the fake upstream answers); the usage rows they leave are read back
by the page at /memory-routing/ on the same gateway. Deleting a memory in the page deletes it in
the store, and the page never asks for anything outside its own origin.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from browser import chromium_page
from fake_upstream import USAGE_IN, USAGE_OUT, FakeUpstream
from harness import RunningProxy, running_proxy
from test_e2e_translation import fake  # noqa: F401 - the strict fake upstream, module-scoped

pytestmark = pytest.mark.e2e

WAIT_S = 20.0
KEYS = {"MR_DASH_OPENAI_KEY": "sk-dash-openai-0201", "MR_DASH_ANTHROPIC_KEY": "sk-ant-dash-0202"}


def dashboard_config(fake_url: str) -> str:
    return json.dumps({
        "model_list": [
            {"model_name": "fast", "litellm_params": {
                "model": "openai/gpt-4o-mini", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_DASH_OPENAI_KEY"}},
            {"model_name": "smart", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url,
                "api_key": "os.environ/MR_DASH_ANTHROPIC_KEY"}},
            {"model_name": "smart-for-openai-clients", "translate": "always", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url,
                "api_key": "os.environ/MR_DASH_ANTHROPIC_KEY"}},
        ],
        "user_id_mappings": {"default_user_id": "default-dev"},
    })


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("e2e-dashboard")
    config = workdir / "config.yaml"
    config.write_text(dashboard_config(f"http://127.0.0.1:{fake.server.server_address[1]}"))
    with running_proxy(workdir, config, env=KEYS) as running:
        yield running


def make_calls(proxy: RunningProxy) -> Counter:
    """Real SDK calls through the gateway; returns the calls made per provider model."""
    gateway = proxy.gateway_url
    alice = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                          # alice's memories are exactly the three the test imports below
                          default_headers={"x-memory-user-id": "alice", "x-memory-mode": "off"})
    for n in range(3):
        alice.chat.completions.create(model="fast", messages=[{"role": "user", "content": f"hello {n}"}])
    alice.chat.completions.create(model="smart-for-openai-clients", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    bob = anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0,
                              default_headers={"x-memory-user-id": "bob"})
    bob.messages.create(model="smart", max_tokens=64, messages=[{"role": "user", "content": "hello"}])
    with bob.messages.stream(model="smart", max_tokens=64, messages=[{"role": "user", "content": "again"}]) as stream:
        assert stream.get_final_message().usage.output_tokens == USAGE_OUT
    return Counter({"gpt-4o-mini": 3, "claude-sonnet-4-5": 3, "no-such-model": 1})


def wait_for_usage(client: httpx.Client, calls: int) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while True:
        totals = client.get("/memory-routing/usage", params={"group_by": "user"}).json()["data"]
        if sum(row["calls"] for row in totals) >= calls or time.monotonic() > deadline:
            return totals
        time.sleep(0.1)  # polling the store with a deadline, not ordering events


def test_dashboard_shows_the_calls_and_deletes_memories(proxy: RunningProxy, tmp_path: Path):
    per_model = make_calls(proxy)
    with httpx.Client(base_url=proxy.gateway_url, timeout=WAIT_S) as api:
        totals = wait_for_usage(api, sum(per_model.values()))
        assert {row["key"]: row["calls"] for row in totals} == {"alice": 5, "bob": 2}
        imported = api.post("/memory-routing/memories/import", headers={"content-type": "application/x-ndjson"},
                            content="\n".join(json.dumps({
                                "user_id": "alice", "conversation_id": "conv-1", "client": "OpenAI/Python",
                                "model": "fast", "role": role, "text": text, "created_at": time.time() - 60,
                            }) for role, text in [("user", "The staging database moved to db-2.internal."),
                                                  ("assistant", "Noted: staging is on db-2.internal now."),
                                                  ("user", "We deploy with make release on Fridays.")]))
        assert imported.status_code == 200, imported.text
        memories = api.get("/memory-routing/memories", params={"user_id": "alice"}).json()
        assert memories["total"] == 3
        target = next(m["id"] for m in memories["data"] if "Fridays" in m["text"])
        info = api.get("/memory-routing/info").json()["store"]
        assert info["usage_calls"] == 7 and info["memory"]["memories"] >= 3
        assert info["path"] == str(proxy.confdir / "memory-routing-memory.sqlite3")

    origin = proxy.gateway_url
    with chromium_page(tmp_path) as browser:
        page = browser.page
        response = page.goto(f"{origin}/memory-routing/", wait_until="load")
        assert response is not None and response.status == 200

        # Tokens per memory user: every answered call carried the fake's usage.
        tokens = {user: value for user, value in page.eval_on_selector_all(
            "#tokens-chart rect.bar", "els => els.map(e => [e.dataset.user, Number(e.dataset.value)])")}
        assert tokens == {"alice": 4 * (USAGE_IN + USAGE_OUT), "bob": 2 * (USAGE_IN + USAGE_OUT)}
        # Calls and errors per model: the refused call counts as an error of the model asked for.
        calls = {model: count for model, count in page.eval_on_selector_all(
            "#model-chart rect[data-calls]", "els => els.map(e => [e.dataset.model, Number(e.dataset.calls)])")}
        assert calls == dict(per_model)
        errors = sum(page.eval_on_selector_all("#model-chart rect[data-errors]",
                                               "els => els.map(e => Number(e.dataset.errors))"))
        assert errors == 1
        assert page.locator("#recent-calls tbody tr").count() == 7
        assert page.locator("#recent-calls").get_by_text("translated → anthropic").count() == 1
        for secret in KEYS.values():
            assert secret not in page.content()

        # The memory browser: delete one of alice's memories by clicking; it is gone from the store.
        if page.locator("#memory-user").input_value() != "alice":
            with page.expect_navigation():
                page.select_option("#memory-user", "alice")
        assert page.locator("#memory-list li").count() == 3
        page.click(f"#memory-{target} button.delete")
        page.locator("#memory-message").wait_for()
        assert page.locator("#memory-message").text_content() == f"Deleted memory {target}."
        page.locator(f"#memory-{target}").wait_for(state="detached")
        with httpx.Client(base_url=origin, timeout=WAIT_S) as api:
            left = api.get("/memory-routing/memories", params={"user_id": "alice"}).json()
        assert left["total"] == 2 and target not in {m["id"] for m in left["data"]}

        page.goto(f"{origin}/memory-routing/", wait_until="load")
        shot = browser.screenshot(tmp_path / "dashboard.png")
        if copy_to := os.environ.get("DASHBOARD_SCREENSHOT"):
            shutil.copyfile(shot, copy_to)

        assert browser.requests
        assert browser.requests_leaving(origin) == []
        assert browser.console_errors == []


def test_usage_api_through_the_forward_proxy(proxy: RunningProxy):
    with httpx.Client(proxy=proxy.forward_url, timeout=WAIT_S) as client:
        answer = client.get("http://memory-routing.localhost/memory-routing/usage", params={"group_by": "model"})
        assert answer.status_code == 200
        assert {row["key"] for row in answer.json()["data"]} >= {"gpt-4o-mini", "claude-sonnet-4-5"}
        page = client.get("http://memory-routing.localhost/memory-routing/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
