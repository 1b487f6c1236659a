"""End-to-end embedded memory: the openai and anthropic SDKs through a real mitmdump, no keys, no account.

The config has no memory section and no Supermemory key: the default is the local memory, as on
a fresh machine. The fake upstream records every body it receives: what the proxy injected is
read there. Writes happen off the event loop after the answer, so the tests poll the store file
(with a deadline) rather than sleep.
"""

from __future__ import annotations

import asyncio
import itertools
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

from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN

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


# --- a conversation's history stays byte-identical across human turns ------------------------------

TURN_BUDGET, CONVERSATION_BUDGET = 100, 200
# Each fact in a conversation of its own (no neighbours), long enough that one fills most of a
# 100-token block, tagged so that a test can count where it is shown.
FACTS = {
    "f1": "My dog Rex is a border collie who loves chasing frisbees in the park every single morning before "
          "breakfast, rain or shine, and he has worn out eleven frisbees this year alone",
    "f2": "My sister Jane moved to Lisbon last spring; she rides the old yellow trams to her new job at the "
          "aquarium and sends me postcards of the river every other week",
    "f3": "I take cello lessons every Tuesday evening with a teacher called Marguerite, who insists on slow "
          "scales for half an hour before any real music is allowed",
    "f4": "My car is a blue Volvo estate from 2009 that still runs perfectly, although the radio only picks up "
          "one station and the left rear window will not close",
}
# Turn 2 names Rex again (shown in turn 1: it must not be shown twice) and runs a tool loop.
QUESTIONS = [
    "Tell me something about Rex my dog and his frisbees",
    "Rex again, and where does my sister Jane live? Use the Bash tool to run exactly this command: echo hi > /dev/null",
    "What about my cello lessons with Marguerite?",
    "And how is my blue Volvo car doing?",
]
BASH_ANTHROPIC = {"name": "Bash", "description": "Run a command",
                  "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}
BASH_OPENAI = {"type": "function", "function": {"name": "Bash", "description": "Run a command", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}}}}


def history_config(fake_url: str) -> dict:
    config = memory_config(fake_url)
    config["model_list"].append({"model_name": "gemini-alias", "litellm_params": {
        "model": "gemini/gemini-2.5-flash", "api_base": fake_url, "api_key": "os.environ/MR_MEM_GEMINI_KEY"}})
    config["memory"] = {"budget_tokens": TURN_BUDGET, "conversation_budget_tokens": CONVERSATION_BUDGET}
    return config


HISTORY_ENV = KEY_ENV | {"MR_MEM_GEMINI_KEY": "gemini-mem-0203"}


def without_cache_control(value):
    if isinstance(value, dict):
        return {k: without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_cache_control(v) for v in value]
    return value


class ClientConversation:
    """One client's side of a conversation: what it resends each turn (never the recall blocks)."""

    def __init__(self, kind: str, user: str) -> None:
        self.kind, self.user = kind, user
        self.history: list[dict] = []

    def ask(self, proxy: RunningProxy, question: str, tools: bool) -> None:
        if self.kind == "gemini":
            self.history.append({"role": "user", "parts": [{"text": question}]})
            answer = self._post(proxy, "/v1beta/models/gemini-alias:generateContent",
                                {"systemInstruction": {"parts": [{"text": "Be helpful."}]}, "contents": self.history})
            self.history.append(answer["candidates"][0]["content"])
            return
        if self.kind == "openai":
            # As Claude Code does on a model it does not know: a system message after the human one.
            self.history += [{"role": "user", "content": question}, {"role": "system", "content": "Reply briefly."}]
        else:
            self.history.append({"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>the project uses tabs</system-reminder>"},
                {"type": "text", "text": question}]})
            if self.kind == "translated":
                self.history.append({"role": "system", "content": [{"type": "text", "text": "Reply briefly."}]})
        while True:
            answer = self._call(proxy, tools)
            if self.kind == "openai":
                message = answer["choices"][0]["message"]
                self.history.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
                calls = message.get("tool_calls") or []
                self.history += [{"role": "tool", "tool_call_id": c["id"], "content": "done"} for c in calls]
            else:
                self.history.append({"role": "assistant", "content": answer["content"]})
                calls = [b for b in answer["content"] if b["type"] == "tool_use"]
                if calls:
                    self.history.append({"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": c["id"], "content": "done"} for c in calls]})
            if not calls:
                return

    def _call(self, proxy: RunningProxy, tools: bool) -> dict:
        if self.kind == "openai":
            body: dict = {"model": "gpt-4o", "messages": self.history}
            if tools:
                body["tools"] = [BASH_OPENAI]
            return self._post(proxy, "/v1/chat/completions", body)
        # Claude Code's breakpoints: on the system prompt and on the newest message's last block only.
        messages = without_cache_control(self.history)
        last = messages[-1]["content"][-1]
        last["cache_control"] = {"type": "ephemeral"}
        body = {"model": "claude-sonnet-4-5" if self.kind == "anthropic" else "gpt-for-claude", "max_tokens": 100,
                "system": [{"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}}],
                "messages": messages}
        if tools:
            body["tools"] = [BASH_ANTHROPIC]
        return self._post(proxy, "/v1/messages", body)

    def _post(self, proxy: RunningProxy, path: str, body: dict) -> dict:
        headers = {"x-memory-user-id": self.user, "anthropic-version": "2023-06-01", "x-api-key": "unused"}
        answer = httpx.post(proxy.gateway_url + path, json=body, headers=headers, timeout=WAIT)
        assert answer.status_code == 200, answer.text
        return answer.json()


def seed_facts(proxy: RunningProxy, user: str) -> None:
    lines = [json.dumps({"user_id": user, "conversation_id": f"seed-{tag}", "role": "user", "text": f"[{tag}] {text}",
                         "created_at": 1_700_000_000 + i}) for i, (tag, text) in enumerate(FACTS.items())]
    imported = httpx.post(f"{proxy.gateway_url}/memory-routing/memories/import", content="\n".join(lines),
                          headers={"content-type": "application/x-ndjson"}, timeout=WAIT)
    assert imported.status_code == 200 and imported.json() == {"imported": len(FACTS)}, imported.text


def blocks_in(messages: list) -> list[str]:
    text = json.dumps(messages, ensure_ascii=False)
    found, start = [], text.find(json.dumps(FENCE_OPEN)[1:-1])
    while start >= 0:
        end = text.index(json.dumps(FENCE_CLOSE)[1:-1], start) + len(FENCE_CLOSE)
        found.append(json.loads(f'"{text[start:end]}"'))
        start = text.find(json.dumps(FENCE_OPEN)[1:-1], end)
    return found


@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini", "translated"])
def test_a_conversations_history_reaches_the_provider_byte_identical_across_turns_and_a_restart(
        kind: str, tmp_path: Path):
    """Every upstream request starts with exactly the messages the one before it sent (Anthropic:
    apart from the cache_control markers, which the client moves to its newest message), across
    human turns, a tool loop and a restart of the proxy; no memory is shown twice, and all blocks
    together stay within memory.conversation_budget_tokens."""
    strict = FakeUpstream(strict=True, agent=True).start()
    try:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(history_config(strict.url)))
        user = f"history-{kind}"
        conversation = ClientConversation(kind, user)
        with running_proxy(tmp_path, config, env=HISTORY_ENV) as first:
            seed_facts(first, user)
            for number, question in enumerate(QUESTIONS[:2]):
                conversation.ask(first, question, tools=number == 1 and kind != "gemini")
            wait_stored(first, user, len(FACTS) + 3)  # both human turns and an answer
        with running_proxy(tmp_path, config, env=HISTORY_ENV) as second:
            for question in QUESTIONS[2:]:
                conversation.ask(second, question, tools=False)
            logged = logged_calls(second, user)
        sent = [r.json for r in strict.requests]
    finally:
        strict.stop()
    key = "contents" if kind == "gemini" else "messages"
    canonical = without_cache_control if kind in ("anthropic", "translated") else (lambda value: value)
    assert len(sent) == (len(QUESTIONS) + (0 if kind == "gemini" else 1))
    for number, (before, after) in enumerate(itertools.pairwise(sent), 1):
        earlier, later = canonical(before[key]), canonical(after[key])
        assert len(later) > len(earlier)
        for index, message in enumerate(earlier):
            assert json.dumps(later[index], ensure_ascii=False) == json.dumps(message, ensure_ascii=False), (
                f"upstream request {number + 1} differs from request {number} at {key}[{index}]")
        assert canonical(after.get("system")) == canonical(before.get("system"))
    blocks = blocks_in(sent[-1][key])
    assert len(blocks) == 2, blocks  # turns 1 and 2; the budget is spent after them
    assert "[f1]" in blocks[0] and "[f2]" in blocks[1]
    for tag in FACTS:
        assert sum(block.count(f"[{tag}]") for block in blocks) <= 1, f"{tag} shown twice"
    assert sum(-(-len(block) // 4) for block in blocks) <= CONVERSATION_BUDGET
    assert [call["memory"]["recall"] for call in logged] == ["spent", "spent"]
    assert [call["memory"].get("resent") for call in logged] == [2, 2]


def test_a_forgotten_memory_leaves_the_blocks_re_sent_later(proxy: RunningProxy, upstream: FakeUpstream):
    """Deleting a memory through the API drops it from the kept block of an earlier turn: the next
    request re-sends that block without it (one prompt-cache miss, as docs/memory.md says)."""
    user = "forgetblockuser"
    client = openai_client(proxy, user)
    ask(client, "My locker code hint is the purple walrus poster", "fb0")
    ask(client, "My bike lock code hint is the purple walrus mug", "fb1")
    rows = wait_stored(proxy, user, 3)
    upstream.reset()
    turn = {"role": "user", "content": "Where is the purple walrus hint?"}
    client.chat.completions.create(model="gpt-4o", messages=[turn], extra_headers={"x-memory-conversation-id": "fb2"})
    block = last_user_text(upstream.last().json)
    assert "walrus poster" in block and "walrus mug" in block, block
    listed = httpx.get(f"{proxy.gateway_url}/memory-routing/memories", params={"user_id": user, "q": "poster"},
                       timeout=WAIT).json()["data"]
    [poster] = [m for m in listed if "walrus poster" in m["text"]]
    assert httpx.delete(f"{proxy.gateway_url}/memory-routing/memories/{poster['id']}", timeout=WAIT).status_code == 200
    client.chat.completions.create(
        model="gpt-4o", extra_headers={"x-memory-conversation-id": "fb2"},
        messages=[turn, {"role": "assistant", "content": "Hello from OpenAI"}, {"role": "user", "content": "thanks"}])
    resent = upstream.last().json["messages"][0]["content"]
    assert "walrus poster" not in resent and "walrus mug" in resent and FENCE_OPEN in resent
    assert rows  # stored before the deletion
