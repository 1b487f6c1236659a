"""The real Claude Code CLI (pinned from npm, `make node-clients`) doing agentic work through a
real mitmdump: on a GPT alias configured as docs/clients.md's recipe says, by base URL and by
proxy, and on an Anthropic alias passed through.

The fake upstream runs strict (it refuses what the real APIs refuse: unknown fields,
reasoning_effort on gpt-4o-mini, max_tokens above the model's cap, unpaired tool messages) and
as a tool-using model: it calls Bash with the command the prompt names, then answers in text
once the tool's result is back. The loop only finishes if every request in it was valid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from fake_upstream import AGENT_DONE, FakeUpstream
from harness import ROOT, RunningProxy, running_proxy, wait_until
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.llm.parameters import prompt_cache_key
from test_e2e_memory import STORE_NAME, without_cache_control
from test_e2e_routing import log_line_for

pytestmark = pytest.mark.e2e

NODE_DIR = ROOT / "tests" / "node"
CLAUDE_VERSION = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"]
# Bounds one `claude -p` run: start-up, a handful of calls, one tool run.
CLAUDE_TIMEOUT_SECONDS = 240
OPENAI_KEY = "sk-openai-recipe-0201"
ANTHROPIC_KEY = "sk-ant-recipe-0202"

# The recipe of docs/clients.md, verbatim ("Claude Code on a GPT (or Gemini, or local) model").
RECIPE_CONFIG = """
model_list:
  - model_name: gpt-4.1                        # what Claude Code will ask for
    litellm_params:
      model: openai/gpt-4.1
      api_key: os.environ/OPENAI_API_KEY
  - model_name: gpt-4o-mini                    # the small model Claude Code uses for chores
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: os.environ/OPENAI_API_KEY
"""
RECIPE_ENV = {
    "ANTHROPIC_MODEL": "gpt-4.1",
    "ANTHROPIC_DEFAULT_SONNET_MODEL": "gpt-4.1",
    "ANTHROPIC_DEFAULT_OPUS_MODEL": "gpt-4.1",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL": "gpt-4o-mini",
    "ANTHROPIC_AUTH_TOKEN": "unused",
    "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "1047576",  # gpt-4.1's window (LiteLLM's model table)
    "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "200000",
}
# What Claude Code prints about a model it does not know, unless told its window.
UNKNOWN_WINDOW_NOTICE = "assumes a context window"
# An Anthropic alias: same format, passed through.
PASS_THROUGH_CONFIG = {"model_name": "claude-sonnet-4.5", "litellm_params": {
    "model": "anthropic/claude-sonnet-4-5", "api_key": "os.environ/ANTHROPIC_API_KEY"}}
# Parameters OpenAI has no equivalent for: never sent to it.
ANTHROPIC_ONLY = ("thinking", "output_config", "context_management", "safeguards", "metadata", "reasoning_effort")


def claude_binary() -> Path | None:
    """The native binary npm placed in its platform package (the wrapper's postinstall, which
    copies it over the placeholder, is skipped: npm ci --ignore-scripts)."""
    for candidate in sorted((NODE_DIR / "node_modules" / "@anthropic-ai").glob("claude-code-*/claude")):
        try:
            done = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and CLAUDE_VERSION in done.stdout:
            return candidate
    return None


@pytest.fixture(scope="module")
def claude() -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: `make test` could not install the pinned Claude Code CLI")
    binary = claude_binary()
    if binary is None:
        pytest.skip(f"Claude Code {CLAUDE_VERSION} is not installed in tests/node: run `make node-clients`")
    return binary


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(strict=True, agent=True).start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def proxy(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    workdir = tmp_path_factory.mktemp("claude-code")
    config = yaml.safe_load(RECIPE_CONFIG)
    config["model_list"].append(PASS_THROUGH_CONFIG)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The recipe's aliases name no api_base: LiteLLM's default base URLs follow these variables,
    # which point the providers at the fake here.
    env = {
        "OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_BASE_URL": f"{fake.url}/v1", "ANTHROPIC_BASE_URL": fake.url,
    }
    # Claude Code's other calls to api.anthropic.com (telemetry, hello) through the forward
    # proxy must not leave the machine: a test-only block list answers them.
    blocked = ["--set", "block_list=|~d api.anthropic.com & !~u ^https?://api\\.anthropic\\.com/v1/messages|404"]
    with running_proxy(workdir, path, env=env, extra_args=blocked) as running:
        yield running


def run_claude(claude: Path, workdir: Path, prompt: str, env: dict[str, str], *,
               continue_session: bool = False) -> subprocess.CompletedProcess[str]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "dumb",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    return subprocess.run(
        # Running as root, --dangerously-skip-permissions is refused; allowing Bash is enough.
        [str(claude), "-p", prompt, "--allowedTools", "Bash", *(["--continue"] if continue_session else [])],
        capture_output=True, text=True, timeout=CLAUDE_TIMEOUT_SECONDS, env=base | env,
        cwd=workdir, stdin=subprocess.DEVNULL,
    )


def prompt_writing(target: Path) -> str:
    return f"Use the Bash tool to run exactly this command: echo hi > {target}"


def chat_requests(fake: FakeUpstream) -> list[dict]:
    return [r.json for r in list(fake.requests) if r.api_path.endswith("/chat/completions")]


def assert_agent_loop_on_gpt(
    done: subprocess.CompletedProcess[str], target: Path, fake: FakeUpstream, proxy: RunningProxy
) -> None:
    assert done.returncode == 0, f"claude failed:\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    assert target.read_text() == "hi\n"
    assert AGENT_DONE in done.stdout
    chats = chat_requests(fake)
    assert chats, "Claude Code's calls never reached the OpenAI upstream"
    memory_user = log_line_for(proxy, translated_to="openai")["user_id"]
    for body in chats:
        assert not set(ANTHROPIC_ONLY) & set(body), sorted(body)
        # The memory user id, never Claude Code's metadata.user_id (device and session ids).
        assert "user" not in body or body["user"] == memory_user
        # Never the session id LiteLLM reads out of metadata.user_id: the proxy's own hash, if any.
        assert "prompt_cache_key" not in body or re.fullmatch("[0-9a-f]{32}", body["prompt_cache_key"]), body
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        assert limit <= {"gpt-4o-mini": 16384, "gpt-4.1": 32768}[body["model"]]
    tool_results = [m for body in chats for m in body["messages"] if m.get("role") == "tool"]
    assert any("tool_call_id" in m for m in tool_results), "the tool's result never went back to the model"
    for request in fake.requests:
        assert request.headers.get("authorization") == f"Bearer {OPENAI_KEY}"
        assert "x-claude-code-session-id" not in request.headers  # Anthropic's to see, not OpenAI's


def test_claude_code_on_gpt_by_base_url(claude: Path, proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path):
    target = tmp_path / "by-base-url.txt"
    done = run_claude(claude, tmp_path, prompt_writing(target), RECIPE_ENV | {"ANTHROPIC_BASE_URL": proxy.gateway_url})
    assert_agent_loop_on_gpt(done, target, upstream, proxy)
    assert {body["model"] for body in chat_requests(upstream)} >= {"gpt-4.1"}
    line = log_line_for(proxy, alias="gpt-4.1", translated_to="openai")
    assert "context_management" in line["dropped"]
    assert UNKNOWN_WINDOW_NOTICE not in done.stdout + done.stderr


def test_claude_code_on_gpt_by_proxy(claude: Path, proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path):
    """By HTTPS_PROXY, on the recipe's small model: Claude Code's max_tokens (32000) is more than
    gpt-4o-mini writes, and OpenAI would refuse it."""
    target = tmp_path / "by-proxy.txt"
    env = RECIPE_ENV | {
        "HTTPS_PROXY": proxy.forward_url, "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
        "ANTHROPIC_MODEL": "gpt-4o-mini", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "128000",
    }
    done = run_claude(claude, tmp_path, prompt_writing(target), env)
    assert_agent_loop_on_gpt(done, target, upstream, proxy)
    assert {body["model"] for body in chat_requests(upstream)} == {"gpt-4o-mini"}
    line = log_line_for(proxy, alias="gpt-4o-mini", translated_to="openai")
    assert line["fitted"] == {"max_tokens": 16384} and "context_management" in line["dropped"]
    # Through the forward proxy too, nothing went anywhere but to the loopback fake.
    connects = [entry for entry in proxy.log().splitlines() if "server connect" in entry]
    assert connects and all("server connect 127.0.0.1:" in entry for entry in connects), connects


def test_claude_code_on_an_anthropic_alias_passes_through(
    claude: Path, proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
):
    target = tmp_path / "pass-through.txt"
    env = {
        "ANTHROPIC_BASE_URL": proxy.gateway_url, "ANTHROPIC_API_KEY": "sk-ant-client-0203",
        "ANTHROPIC_MODEL": "claude-sonnet-4.5", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-sonnet-4.5",
    }
    done = run_claude(claude, tmp_path, prompt_writing(target), env)
    assert done.returncode == 0, f"claude failed:\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    assert target.read_text() == "hi\n" and AGENT_DONE in done.stdout
    messages = [r for r in list(upstream.requests) if r.api_path.split("?", 1)[0] == "/v1/messages"]
    assert messages and all(r.json["model"] == "claude-sonnet-4-5" for r in messages)
    assert all(r.headers.get("x-api-key") == ANTHROPIC_KEY for r in messages)
    assert not chat_requests(upstream)


# --- the gateway's answers to Claude Code's other requests (no CLI needed) ------------------------


def test_gateway_answers_claude_codes_other_paths_quietly_and_in_shape(proxy: RunningProxy, upstream: FakeUpstream):
    with httpx.Client(base_url=proxy.gateway_url, timeout=20) as client:
        hello = client.head("/api/hello")
        assert hello.status_code == 200 and hello.content == b""
        telemetry = client.post("/api/event_logging/v2/batch", json={"events": []})
        assert telemetry.status_code == 200 and telemetry.json() == {}
        assert client.post("/api/event_logging/batch", json={}).status_code == 200
        unknown_api = client.get("/api/claude_cli/bootstrap")
        assert unknown_api.status_code == 404 and unknown_api.json()["type"] == "error"  # Anthropic's shape
        unknown_messages = client.get("/v1/messages/batches")
        assert unknown_messages.status_code == 404 and unknown_messages.json()["error"]["type"] == "not_found_error"
        unknown_openai = client.get("/v1/chat/unknown")
        assert unknown_openai.status_code == 404 and "param" in unknown_openai.json()["error"]  # OpenAI's shape
    assert upstream.requests == []


def test_the_answer_names_what_was_dropped(proxy: RunningProxy, upstream: FakeUpstream):
    body = {
        "model": "gpt-4o-mini", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
        "safeguards": {"home": "/home/alice", "cwd": "/home/alice/project"},
        "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "session_id": "s" * 36})},
    }
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "unused", "x-claude-code-session-id": "s" * 36}
    answer = httpx.post(f"{proxy.gateway_url}/v1/messages", json=body, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-memory-routing-dropped"] == "thinking,context_management,safeguards"
    sent = upstream.last().json
    assert sent["max_tokens"] == 16384 and "safeguards" not in sent and "/home/alice" not in upstream.last().body.decode()
    assert "device_id" not in upstream.last().body.decode() and "s" * 36 not in upstream.last().body.decode()
    memory_user = log_line_for(proxy, translated_to="openai")["user_id"]
    assert sent["prompt_cache_key"] == prompt_cache_key(memory_user, "s" * 36)
    assert "x-claude-code-session-id" not in upstream.last().headers


# --- memory across Claude Code sessions ---------------------------------------------------------

MEMORY_WAIT_SECONDS = 30.0


def wait_for_memory(proxy: RunningProxy, words: str) -> None:
    """Until a memory holding `words` is in the store file (the writer stores after the answer)."""
    def found() -> bool:
        conn = sqlite3.connect(proxy.confdir / STORE_NAME, timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM memories WHERE text LIKE ?", (f"%{words}%",)).fetchone()[0] > 0
        finally:
            conn.close()
    assert wait_until(found, MEMORY_WAIT_SECONDS), f"no memory holds {words!r}"


def recall_blocks_sent(requests: list) -> list[str]:
    """The recall blocks in the requests' messages, as the upstream received them."""
    blocks = []
    for request in requests:
        for message in request.json.get("messages", []):
            content = message.get("content")
            texts = [content] if isinstance(content, str) else [
                b.get("text", "") for b in content or [] if isinstance(b, dict)]
            for text in texts:
                if FENCE_OPEN in text:
                    blocks.append(text[text.index(FENCE_OPEN):text.index(FENCE_CLOSE) + len(FENCE_CLOSE)])
    return blocks


def assert_ran(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"claude failed:\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"


GPT_BY_BASE_URL = "by-base-url"
GPT_BY_PROXY = "by-proxy"


def gpt_env(proxy: RunningProxy, way: str) -> dict[str, str]:
    if way == GPT_BY_BASE_URL:
        return RECIPE_ENV | {"ANTHROPIC_BASE_URL": proxy.gateway_url}
    return RECIPE_ENV | {"HTTPS_PROXY": proxy.forward_url, "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert)}


@pytest.mark.parametrize(("told", "asked", "fact", "question"), [
    (GPT_BY_BASE_URL, GPT_BY_PROXY, "My favourite colour is teal, like the sea at Porto.", "What is my favourite colour?"),
    (GPT_BY_PROXY, GPT_BY_BASE_URL, "My cat is called Saffron and she sleeps on the piano.", "What is my cat called?"),
])
def test_claude_code_on_gpt_remembers_across_sessions(
    claude: Path, proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path, told: str, asked: str, fact: str,
    question: str,
):
    """Claude Code on a model it does not know appends a system message after the human's: the
    human turn is still found, stored in session 1 and recalled into session 2's request."""
    assert_ran(run_claude(claude, tmp_path / "one", fact, gpt_env(proxy, told)))
    wait_for_memory(proxy, fact)
    upstream.reset()
    assert_ran(run_claude(claude, tmp_path / "two", question, gpt_env(proxy, asked)))
    chats = [r for r in list(upstream.requests) if r.api_path.endswith("/chat/completions")]
    assert chats, "session 2 never reached the OpenAI upstream"
    assert any(fact in block for block in recall_blocks_sent(chats)), recall_blocks_sent(chats)


def test_claude_code_on_an_anthropic_alias_remembers_and_keeps_its_history_byte_identical(
    claude: Path, proxy: RunningProxy, upstream: FakeUpstream, tmp_path: Path
):
    """Session 2 gets session 1's fact; its next human turn (`claude -p --continue`) reaches the
    provider with session 2's user messages exactly as they were sent, the recall block included
    (Claude Code moves its cache_control markers to the newest message: they are left out of
    the comparison)."""
    env = {
        "ANTHROPIC_BASE_URL": proxy.gateway_url, "ANTHROPIC_API_KEY": "sk-ant-client-0204",
        "ANTHROPIC_MODEL": "claude-sonnet-4.5", "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-sonnet-4.5",
    }
    fact = "My bicycle is a green Brompton that I fold under my desk."
    assert_ran(run_claude(claude, tmp_path / "one", fact, env))
    wait_for_memory(proxy, fact)
    session = tmp_path / "two"
    upstream.reset()
    assert_ran(run_claude(claude, session, "Which bicycle do I ride?", env))
    main_loop = [r for r in list(upstream.requests) if r.api_path.split("?", 1)[0] == "/v1/messages"
                 and "Which bicycle do I ride?" in r.body.decode()]
    assert main_loop and any(fact in block for block in recall_blocks_sent(main_loop))
    upstream.reset()
    # Naming the command keeps the fake's agent on its path (a Bash call, then its final text).
    target = tmp_path / "colour.txt"
    done = run_claude(claude, session, f"And what colour is it? {prompt_writing(target)}", env, continue_session=True)
    assert_ran(done)
    assert target.read_text() == "hi\n"
    later = [r for r in list(upstream.requests) if r.api_path.split("?", 1)[0] == "/v1/messages"
             and "And what colour is it?" in r.body.decode()]
    assert later, "the continued session never reached the upstream"
    before = without_cache_control(main_loop[-1].json["messages"])
    after = without_cache_control(later[0].json["messages"])
    assert FENCE_OPEN in json.dumps(before[0]) and len(after) > len(before)
    # Claude Code rewrites its own assistant messages when it continues a session (it folds the
    # final text into the turn's first answer); what the human sent, blocks included, is resent as is.
    for index, message in enumerate(before):
        if message["role"] == "user":
            assert json.dumps(after[index]) == json.dumps(message), f"differs at messages[{index}]"
