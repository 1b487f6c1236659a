"""End-to-end embedded memory: the openai and anthropic SDKs through a real mitmdump, no keys, no account.

The config has no memory section and no Supermemory key: the default is the local memory, as on
a fresh machine. The fake upstream records every body it receives: what the proxy injected is
read there. Writes happen off the event loop after the answer, so the tests poll the store file
(with a deadline) rather than sleep.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from fake_upstream import FakeUpstream
from harness import ROOT, RunningProxy, running_proxy

from memory_routing.memory.redact import FENCE_OPEN

pytestmark = pytest.mark.e2e

KEY_ENV = {"MR_MEM_OPENAI_KEY": "sk-mem-openai-0201", "MR_MEM_ANTHROPIC_KEY": "sk-ant-mem-0202"}
STORE_NAME = "memory-routing-memory.sqlite3"
WAIT = 30.0
CONCURRENT_CALLS = 100


def memory_config(fake_url: str) -> dict:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    return {
        "model_list": [
            # Same model name as the provider's: the router leaves these bodies as they are.
            {"model_name": "gpt-4o", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_MEM_OPENAI_KEY"}},
            {"model_name": "claude-sonnet-4-5", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5", "api_base": fake_url, "api_key": "os.environ/MR_MEM_ANTHROPIC_KEY"}},
            # The anthropic SDK on a GPT alias: translated both ways.
            {"model_name": "gpt-for-claude", "litellm_params": {
                "model": "openai/gpt-4o", "api_base": f"{fake_url}/v1", "api_key": "os.environ/MR_MEM_OPENAI_KEY"}},
        ],
        "user_id_mappings": shipped["user_id_mappings"],
    }


@pytest.fixture(scope="module")
def workdir(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("memory")
    (workdir / "config.yaml").write_text(yaml.safe_dump(memory_config(fake.url)))
    return workdir


@pytest.fixture(scope="module")
def proxy(workdir: Path) -> Iterator[RunningProxy]:
    with running_proxy(workdir, workdir / "config.yaml", env=KEY_ENV) as running:
        yield running


def store_file(proxy: RunningProxy) -> Path:
    return proxy.confdir / STORE_NAME


def stored(proxy: RunningProxy, user: str, conversation: str | None = None) -> list[tuple[str, str]]:
    """(role, text) of the user's memories, read from the file by a connection of this process."""
    conn = sqlite3.connect(store_file(proxy), timeout=10)
    try:
        sql, args = "SELECT role, text FROM memories WHERE user_id = ?", [user]
        if conversation is not None:
            sql += " AND conversation_id = ?"
            args.append(conversation)
        return conn.execute(sql + " ORDER BY id", args).fetchall()
    finally:
        conn.close()


def wait_stored(proxy: RunningProxy, user: str, count: int, conversation: str | None = None) -> list[tuple[str, str]]:
    deadline = time.monotonic() + WAIT
    rows = stored(proxy, user, conversation)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the file, not ordering events
        rows = stored(proxy, user, conversation)
    assert len(rows) >= count, f"{user}: {len(rows)} of {count} memories stored: {rows}"
    return rows


def openai_client(proxy: RunningProxy, user: str, sent: list[bytes] | None = None, **headers: str) -> openai.OpenAI:
    hooks = {"request": [lambda request: sent.append(request.read())]} if sent is not None else {}
    return openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-client-unused", max_retries=0,
                         default_headers={"x-memory-user-id": user, **headers},
                         http_client=httpx.Client(event_hooks=hooks, timeout=WAIT))


def anthropic_client(proxy: RunningProxy, user: str, sent: list[bytes] | None = None, **headers: str) -> anthropic.Anthropic:
    hooks = {"request": [lambda request: sent.append(request.read())]} if sent is not None else {}
    return anthropic.Anthropic(base_url=proxy.gateway_url, api_key="sk-ant-client-unused", max_retries=0,
                               default_headers={"x-memory-user-id": user, **headers},
                               http_client=anthropic.DefaultHttpxClient(event_hooks=hooks, timeout=WAIT))


def ask(client: openai.OpenAI, text: str, conversation: str, **headers: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}],
        extra_headers={"x-memory-conversation-id": conversation, **headers})


def last_user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "\n".join(b.get("text", "") for b in content)


def test_a_fresh_machine_gets_local_memory(proxy: RunningProxy, upstream: FakeUpstream):
    info = json.loads(urllib.request.urlopen(f"{proxy.gateway_url}/memory-routing/info", timeout=WAIT).read())
    memory = info["store"]["memory"]
    assert memory["backend"] == "local" and info["config"]["memory"]["backend"] == "local"
    assert set(memory) >= {"memories", "users"}
    # Kept until deleted unless memory.retention_days says otherwise; the writer starts with the proxy.
    assert memory["retention_days"] is None and info["config"]["memory"]["retention_days"] is None
    assert memory["pruned"] == 0
    assert store_file(proxy).stat().st_mode & 0o777 == 0o600


def test_memory_survives_a_restart(fake: FakeUpstream, upstream: FakeUpstream, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(memory_config(fake.url)))
    with running_proxy(tmp_path, config, env=KEY_ENV) as first:
        assert ask(openai_client(first, "restart-user"), "My dog is called Rex and he loves frisbees", "r1")
        wait_stored(first, "restart-user", 2, "r1")
    with running_proxy(tmp_path, config, env=KEY_ENV) as second:
        upstream.reset()
        ask(openai_client(second, "restart-user"), "What is my dog called?", "r2")
    text = last_user_text(upstream.last().json)
    assert text.startswith(FENCE_OPEN) and "Rex and he loves frisbees" in text
    assert text.endswith("What is my dog called?")


def test_memory_of_one_user_never_reaches_another(proxy: RunningProxy, upstream: FakeUpstream):
    ask(openai_client(proxy, "alice"), "My secret project codename is Bluebird", "a1")
    wait_stored(proxy, "alice", 2, "a1")
    upstream.reset()
    ask(openai_client(proxy, "mallory"), "What is the secret project codename?", "m1")
    assert "Bluebird" not in upstream.last().body.decode()
    # The classifier's user id counts, not the header alone: no header is the shipped pattern's user.
    plain = openai.OpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-x", max_retries=0)
    plain.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "secret project codename?"}])
    assert "Bluebird" not in upstream.last().body.decode()
    ask(openai_client(proxy, "alice"), "What is the secret project codename?", "a2")
    assert "codename is Bluebird" in last_user_text(upstream.last().json)


def test_off_forwards_the_body_byte_identical_and_strips_the_header(proxy: RunningProxy, upstream: FakeUpstream):
    ask(openai_client(proxy, "offuser"), "I keep my bonsai tree on the balcony", "o1")
    wait_stored(proxy, "offuser", 2, "o1")
    sent: list[bytes] = []
    client = openai_client(proxy, "offuser", sent)
    upstream.reset()
    ask(client, "Where is my bonsai tree?", "o2", **{"x-memory-mode": "off"})
    assert upstream.last().body == sent[-1]
    assert "x-memory-mode" not in upstream.last().headers
    # The same call without the header gets the memory: the test above can fail.
    ask(client, "Where is my bonsai tree?", "o3")
    assert upstream.last().body != sent[-1] and FENCE_OPEN in last_user_text(upstream.last().json)


def test_an_invalid_mode_is_a_client_shaped_400(proxy: RunningProxy, upstream: FakeUpstream):
    client = anthropic_client(proxy, "modeuser")
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                               extra_headers={"x-memory-mode": "maybe"})
    assert "x-memory-mode" in raised.value.message
    assert upstream.requests == []


def test_a_tool_result_turn_is_untouched(proxy: RunningProxy, upstream: FakeUpstream):
    client = anthropic_client(proxy, "tooluser")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50,
                           messages=[{"role": "user", "content": "The weather in Paris matters for my picnic"}],
                           extra_headers={"x-memory-conversation-id": "t0"})
    wait_stored(proxy, "tooluser", 2, "t0")
    sent: list[bytes] = []
    client = anthropic_client(proxy, "tooluser", sent)
    upstream.reset()
    client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, extra_headers={"x-memory-conversation-id": "t1"},
        messages=[
            {"role": "user", "content": "What is the weather in Paris for my picnic?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "sunny, 24 C"}]},
        ])
    assert upstream.last().body == sent[-1]
    rows = wait_stored(proxy, "tooluser", 1, "t1")
    assert all("sunny, 24 C" not in text for _, text in rows)  # a raw tool output is never stored


def test_a_repeated_turn_is_byte_identical(proxy: RunningProxy, upstream: FakeUpstream):
    client = openai_client(proxy, "repeatuser")
    ask(client, "My favourite tea is a smoky lapsang souchong", "p1")
    wait_stored(proxy, "repeatuser", 2, "p1")
    upstream.reset()
    for _ in range(2):
        ask(client, "Which tea do I like best, lapsang?", "p2")
    first, second = upstream.requests
    assert FENCE_OPEN in last_user_text(first.json) and first.body == second.body


def test_forgetting_a_user(proxy: RunningProxy, upstream: FakeUpstream):
    client = openai_client(proxy, "forgetuser")
    ask(client, "My locker combination hint is the giraffe poster", "f1")
    wait_stored(proxy, "forgetuser", 2, "f1")
    ask(client, "Where is my locker combination hint?", "f2")
    assert "giraffe poster" in last_user_text(upstream.last().json)
    wait_stored(proxy, "forgetuser", 4)  # nothing of the user still queued
    # The same question again: a block cached for it before the delete must not come back.
    ask(client, "Tell me about the giraffe poster and my locker", "f3")
    assert "hint is the giraffe poster" in last_user_text(upstream.last().json)
    wait_stored(proxy, "forgetuser", 6)
    forgotten = httpx.delete(f"{proxy.gateway_url}/memory-routing/memories", params={"user_id": "forgetuser"},
                             timeout=WAIT)
    assert forgotten.status_code == 200, forgotten.text
    listed = httpx.get(f"{proxy.gateway_url}/memory-routing/memories", params={"user_id": "forgetuser"}, timeout=WAIT)
    assert listed.json()["total"] == 0
    assert stored(proxy, "forgetuser") == []
    assert b"giraffe" not in b"".join(p.read_bytes() for p in proxy.confdir.glob(STORE_NAME + "*"))
    upstream.reset()
    ask(client, "Tell me about the giraffe poster and my locker", "f3")
    assert "giraffe poster is" not in upstream.last().body.decode() and FENCE_OPEN not in upstream.last().body.decode()


def test_concurrent_calls_lose_no_memory(proxy: RunningProxy, upstream: FakeUpstream):
    async def call(client: openai.AsyncOpenAI, index: int) -> None:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"load note {index} zqload{index}"}],
            extra_headers={"x-memory-conversation-id": f"load-{index}", "x-memory-mode": "write"})

    async def all_calls() -> None:
        async with openai.AsyncOpenAI(base_url=f"{proxy.gateway_url}/v1", api_key="sk-x", max_retries=0, timeout=WAIT * 2,
                                      default_headers={"x-memory-user-id": "loaduser"}) as client:
            await asyncio.gather(*(call(client, i) for i in range(CONCURRENT_CALLS)))

    asyncio.run(asyncio.wait_for(all_calls(), WAIT * 3))
    rows = wait_stored(proxy, "loaduser", 2 * CONCURRENT_CALLS)
    humans = {text for role, text in rows if role == "user"}
    assert humans == {f"load note {i} zqload{i}" for i in range(CONCURRENT_CALLS)}


def test_translated_calls_get_memory_too(proxy: RunningProxy, upstream: FakeUpstream):
    client = anthropic_client(proxy, "translateduser")
    # Streamed and translated: the answer is read in the client's (Anthropic) events.
    with client.messages.stream(model="gpt-for-claude", max_tokens=50, extra_headers={"x-memory-conversation-id": "x1"},
                                messages=[{"role": "user", "content": "I am learning to play the cello"}]) as stream:
        answer = stream.get_final_text()
    rows = wait_stored(proxy, "translateduser", 2, "x1")
    assert ("assistant", answer) in rows and answer
    upstream.reset()
    client.messages.create(model="gpt-for-claude", max_tokens=50, extra_headers={"x-memory-conversation-id": "x2"},
                           messages=[{"role": "user", "content": "Which instrument am I learning, the cello?"}])
    body = upstream.last().json
    assert upstream.last().api_path.endswith("/chat/completions")  # OpenAI format upstream
    text = last_user_text(body)
    assert text.startswith(FENCE_OPEN) and "learning to play the cello" in text


def test_a_tool_loops_follow_up_carries_the_turns_block_byte_identical(proxy: RunningProxy, upstream: FakeUpstream):
    """The client resends its turn without the block; the proxy puts the turn's cached block back,
    so the provider sees the same history as in the turn's first request (its prompt cache matches)."""
    client = anthropic_client(proxy, "loopuser")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, extra_headers={"x-memory-conversation-id": "l0"},
                           messages=[{"role": "user", "content": "My picnic spot is the rose garden in Paris"}])
    wait_stored(proxy, "loopuser", 2, "l0")
    turn = {"role": "user", "content": [{"type": "text", "text": "Check the weather at my picnic spot in Paris"}]}
    upstream.reset()
    client.messages.create(model="claude-sonnet-4-5", max_tokens=50, extra_headers={"x-memory-conversation-id": "l1"},
                           messages=[turn])
    client.messages.create(
        model="claude-sonnet-4-5", max_tokens=50, extra_headers={"x-memory-conversation-id": "l1"},
        messages=[turn,
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": "get_weather",
                                                     "input": {"city": "Paris"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "sunny"}]}])
    first, follow_up = upstream.requests
    sent_turn = first.json["messages"][-1]
    assert FENCE_OPEN in sent_turn["content"][0]["text"] and "rose garden" in sent_turn["content"][0]["text"]
    assert follow_up.json["messages"][0] == sent_turn
    as_bytes = json.dumps(sent_turn, ensure_ascii=False, separators=(",", ":")).encode()
    assert as_bytes in first.body and as_bytes in follow_up.body
    assert follow_up.json["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "tu1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "sunny"}]}]


def logged_calls(proxy: RunningProxy, user: str) -> list[dict]:
    prefix = "memory-routing: routed "
    lines = [line.split(prefix, 1)[1] for line in proxy.log().splitlines() if prefix in line]
    return [call for call in map(json.loads, lines) if call.get("user_id") == user]


def test_the_flow_log_says_what_the_memory_did(proxy: RunningProxy, upstream: FakeUpstream):
    client = openai_client(proxy, "loguser")
    ask(client, "My bicycle is a green Brompton folding bike", "g1")
    wait_stored(proxy, "loguser", 2, "g1")
    ask(client, "What colour is my Brompton bicycle?", "g2")
    ask(client, "What colour is my Brompton bicycle?", "g3", **{"x-memory-mode": "off"})
    assert proxy.wait_for_log('"mode":"off"', WAIT)
    first, second, off = logged_calls(proxy, "loguser")[-3:]
    assert first["memory"] == {"backend": "local", "mode": "both", "recall": "none", "recalled": 0, "stored": True,
                               "recall_ms": 0.0}  # no memories yet: no search
    assert second["memory"]["recall"] == "injected" and second["memory"]["recalled"] >= 1
    assert second["memory"]["stored"] is True and second["memory"]["recall_ms"] >= 0
    assert off["memory"] == {"backend": "local", "mode": "off"}
    assert "Brompton" not in json.dumps([first, second, off])
