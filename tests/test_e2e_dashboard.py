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
from memory_routing.wire.flow_log import PREFIX as FLOW_LOG_PREFIX
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


# --- the prompt cache, end to end: client, flow log, usage rows ---------------------------------

CACHE = {"read": 40_000, "write": 3000, "reasoning": 25}
CACHE_HEADERS = {"x-fake-cache": ",".join(f"{name}={value}" for name, value in CACHE.items()),
                 "x-memory-user-id": "carol", "x-memory-mode": "off"}


@pytest.fixture(scope="module")
def cache_proxy(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("e2e-dashboard-cache")
    fake_url = f"http://127.0.0.1:{fake.server.server_address[1]}"
    config = json.loads(dashboard_config(fake_url))
    config["model_list"].append({"model_name": "gem", "litellm_params": {
        "model": "gemini/gemini-2.5-flash", "api_base": fake_url, "api_key": "os.environ/MR_DASH_OPENAI_KEY"}})
    (workdir / "config.yaml").write_text(json.dumps(config))
    with running_proxy(workdir, workdir / "config.yaml", env=KEYS) as running:
        yield running


def flow_log_lines(proxy: RunningProxy) -> list[dict]:
    return [json.loads(line.split(FLOW_LOG_PREFIX, 1)[1]) for line in proxy.log().splitlines()
            if FLOW_LOG_PREFIX in line]


def litellm_figure(protocol: str, provider: str, model: str, usage: dict) -> float:
    """LiteLLM's own parse and price of an answer carrying this usage (tests/test_usage_cost.py)."""
    from test_usage_cost import Case, litellm_cost_of_whole

    return litellm_cost_of_whole(Case(protocol, provider, model, protocol, usage))


def test_cache_counts_reach_the_client_the_flow_log_and_the_priced_rows(cache_proxy: RunningProxy):
    gateway = cache_proxy.gateway_url
    gpt = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0, default_headers=CACHE_HEADERS)
    claude = anthropic.Anthropic(base_url=gateway, api_key="unused", max_retries=0, default_headers=CACHE_HEADERS)
    message = [{"role": "user", "content": "hello"}]
    whole = gpt.chat.completions.create(model="fast", messages=message)
    assert whole.usage.prompt_tokens_details.cached_tokens == CACHE["read"]
    chunks = list(gpt.chat.completions.create(model="fast", messages=message, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == CACHE["read"]
    assert claude.messages.create(model="smart", max_tokens=64, messages=message).usage.cache_read_input_tokens == CACHE["read"]
    with claude.messages.stream(model="smart", max_tokens=64, messages=message) as stream:
        assert stream.get_final_message().usage.cache_creation_input_tokens == CACHE["write"]
    # Claude Code on a GPT alias (translated): OpenAI's cached tokens come back in Anthropic's names.
    with claude.messages.stream(model="fast", max_tokens=64, messages=message) as stream:
        translated = stream.get_final_message().usage
    assert (translated.cache_read_input_tokens, translated.input_tokens) == (CACHE["read"], USAGE_IN)
    for stream in (False, True):
        suffix = "streamGenerateContent?alt=sse" if stream else "generateContent"
        answer = httpx.post(f"{gateway}/v1beta/models/gem:{suffix}", headers=CACHE_HEADERS | {"x-goog-api-key": "k"},
                            json={"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}, timeout=WAIT_S)
        assert answer.status_code == 200 and "cachedContentTokenCount" in answer.text

    # What each provider reported, as its API words it; in the proxy's counts the prompt holds the cache.
    openai_usage = {"prompt_tokens": USAGE_IN + CACHE["read"], "completion_tokens": USAGE_OUT + CACHE["reasoning"],
                    "prompt_tokens_details": {"cached_tokens": CACHE["read"]},
                    "completion_tokens_details": {"reasoning_tokens": CACHE["reasoning"]}}
    anthropic_usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                       "cache_read_input_tokens": CACHE["read"], "cache_creation_input_tokens": CACHE["write"]}
    gemini_usage = {"promptTokenCount": USAGE_IN + CACHE["read"], "cachedContentTokenCount": CACHE["read"],
                    "candidatesTokenCount": USAGE_OUT, "thoughtsTokenCount": CACHE["reasoning"],
                    "totalTokenCount": USAGE_IN + CACHE["read"] + USAGE_OUT + CACHE["reasoning"]}
    expected = {  # provider model -> (input, output, cache read, cache write, reasoning, LiteLLM's USD)
        "gpt-4o-mini": (USAGE_IN + CACHE["read"], USAGE_OUT + CACHE["reasoning"], CACHE["read"], None,
                        CACHE["reasoning"], litellm_figure("openai", "openai", "gpt-4o-mini", openai_usage)),
        "claude-sonnet-4-5": (USAGE_IN + CACHE["read"] + CACHE["write"], USAGE_OUT, CACHE["read"], CACHE["write"],
                              None, litellm_figure("anthropic", "anthropic", "claude-sonnet-4-5", anthropic_usage)),
        "gemini-2.5-flash": (USAGE_IN + CACHE["read"], USAGE_OUT + CACHE["reasoning"], CACHE["read"], None,
                             CACHE["reasoning"], litellm_figure("gemini", "gemini", "gemini-2.5-flash", gemini_usage)),
    }
    calls = Counter({"gpt-4o-mini": 3, "claude-sonnet-4-5": 2, "gemini-2.5-flash": 2})  # 3: the translated one

    lines = []
    deadline = time.monotonic() + WAIT_S
    while len(lines) < sum(calls.values()) and time.monotonic() < deadline:
        lines = flow_log_lines(cache_proxy)
        time.sleep(0.1)  # polling the log with a deadline, not ordering events
    assert Counter(line["provider_model"] for line in lines) == calls
    for line in lines:
        tokens = expected[line["provider_model"]][:5]
        assert (line["input_tokens"], line["output_tokens"], line["cache_read_tokens"], line["cache_write_tokens"],
                line["reasoning_tokens"]) == tokens, line

    with httpx.Client(base_url=gateway, timeout=WAIT_S) as api:
        wait_for_usage(api, sum(calls.values()))
        rows = api.get("/memory-routing/usage/recent", params={"limit": "20"}).json()["data"]
        totals = {row["key"]: row for row in api.get("/memory-routing/usage", params={"group_by": "model"}).json()["data"]}
    assert Counter(row["provider_model"] for row in rows) == calls
    for row in rows:
        tokens_in, _, read, write, _, usd = expected[row["provider_model"]]
        assert (row["input_tokens"], row["cache_read_tokens"], row["cached_tokens"], row["cache_write_tokens"]) == (
            tokens_in, read, read, write)
        assert row["cost_usd"] == pytest.approx(usd, rel=1e-9), row["provider_model"]
        assert row["cache_saved_usd"] is not None
    for model, count in calls.items():
        assert totals[model]["cost_usd"] == pytest.approx(count * expected[model][5], abs=1e-6)  # rounded to 6 places
        assert totals[model]["cache_hit_ratio"] == pytest.approx(read_share := CACHE["read"] / expected[model][0], abs=1e-4)
        assert 0 < read_share < 1


def test_what_a_recall_block_costs_is_recorded_per_memory_user(cache_proxy: RunningProxy, fake: FakeUpstream):
    import litellm

    from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
    from test_e2e_memory import openai_client, wait_stored

    # The fake counts 11 prompt tokens, and here 2,000 more read from the cache: the block's
    # tokens are priced from the uncached 11 first, the rest at the cache-read price.
    dora = openai_client(cache_proxy, "dora", **{"x-fake-cache": "read=2000"})

    def ask(text: str, conversation: str) -> None:
        dora.chat.completions.create(model="fast", messages=[{"role": "user", "content": text}],
                                     extra_headers={"x-memory-conversation-id": conversation})

    ask("My sailing boat is called Kittiwake and is moored in Falmouth", "sail-1")
    wait_stored(cache_proxy, "dora", 2, "sail-1")
    ask("Where is my sailing boat Kittiwake moored?", "sail-2")
    turn = fake.last().json["messages"][-1]["content"]
    assert turn.startswith(FENCE_OPEN) and "Falmouth" in turn
    block_tokens = -(-len(turn[:turn.index(FENCE_CLOSE) + len(FENCE_CLOSE)]) // 4)

    with httpx.Client(base_url=cache_proxy.gateway_url, timeout=WAIT_S) as api:
        deadline = time.monotonic() + WAIT_S
        while True:
            users = {row["key"]: row for row in api.get("/memory-routing/usage", params={"group_by": "user"}).json()["data"]}
            if users.get("dora", {}).get("calls") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # polling the store with a deadline, not ordering events
    dora_totals = users["dora"]
    prices = litellm.model_cost["gpt-4o-mini"]
    assert (dora_totals["memory_calls"], dora_totals["memory_tokens"]) == (1, block_tokens)
    assert block_tokens > USAGE_IN
    expected = USAGE_IN * prices["input_cost_per_token"] + (block_tokens - USAGE_IN) * prices["cache_read_input_token_cost"]
    assert dora_totals["memory_cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert 0 < dora_totals["memory_cost_usd"] < dora_totals["cost_usd"]
