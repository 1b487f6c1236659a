"""Client classification: custom header, then patterns in order, then the default."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest
from mitmproxy.http import Headers

from memory_routing.routing.classify import MATCH_PREFIX_LENGTH, Classifier, InvalidUserId
from memory_routing.config.schema import load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    return Classifier(load_config(ROOT / "config.yaml", environ={}).user_id_mappings)


def headers(**fields: str) -> Headers:
    return Headers(**{k.replace("_", "-"): v for k, v in fields.items()})


# User-Agent strings as today's clients send them (docs/clients.md, "Client detection").
REAL_USER_AGENTS = [
    ("claude-cli/2.1.0 (external, cli)", "claude-cli"),
    ("claude-cli/1.0.119 (external, sdk-cli)", "claude-cli"),
    ("claude-cli/2.0.31 (external, claude-vscode, agent-sdk/0.1.30)", "claude-cli"),
    ("OpenAIClientImpl/Java 2.8.1", "pycharm-ai"),
    ("GithubCopilot/1.155.0", "vscode-copilot"),
    ("GitHubCopilotChat/0.31.0", "vscode-copilot"),
    ("litellm/1.77.0", "litellm-client"),
    ("OpenAI/Python 1.109.1", "openai-python"),
    ("AsyncOpenAI/Python 2.54.0", "openai-python"),
    ("Anthropic/Python 0.68.0", "anthropic-python"),
    ("AsyncAnthropic/Python 0.68.0", "anthropic-python"),
    ("OpenAI/JS 5.23.1", "openai-js"),
    ("Anthropic/JS 0.65.0", "anthropic-js"),
    ("curl/8.5.0", "curl"),
]


@pytest.mark.parametrize("user_agent, user_id", REAL_USER_AGENTS)
def test_shipped_patterns_match_real_user_agents(shipped: Classifier, user_agent: str, user_id: str):
    identity = shipped.classify(headers(user_agent=user_agent))
    assert identity.user_id == user_id
    assert identity.is_default is False
    assert identity.custom_header_present is False
    assert identity.matched_rule is not None and identity.matched_rule.user_id == user_id


def test_every_shipped_pattern_is_exercised(shipped: Classifier):
    matched = {shipped.classify(headers(user_agent=ua)).matched_rule.index for ua, _ in REAL_USER_AGENTS}
    assert matched == {rule.index for rule in shipped.mappings.header_patterns}


def test_installed_sdks_user_agents_are_recognised(shipped: Classifier):
    # What the SDKs in our lock really send, rather than what we believe they send.
    sdk_agents = {
        openai.OpenAI(api_key="x").user_agent: "openai-python",
        openai.AsyncOpenAI(api_key="x").user_agent: "openai-python",
        anthropic.Anthropic(api_key="x").user_agent: "anthropic-python",
        anthropic.AsyncAnthropic(api_key="x").user_agent: "anthropic-python",
    }
    for user_agent, user_id in sdk_agents.items():
        assert shipped.classify(headers(user_agent=user_agent)).user_id == user_id, user_agent


@pytest.mark.parametrize(
    "user_agent",
    [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        "python-requests/2.32.3",
        "Claude Code/1.0",  # what the background documents assumed; no real client sends it
        "my-claude-cli/1.0",
        "",
    ],
)
def test_unknown_clients_get_the_default(shipped: Classifier, user_agent: str):
    identity = shipped.classify(headers(user_agent=user_agent))
    assert (identity.user_id, identity.is_default, identity.matched_rule) == ("default-dev", True, None)


def test_no_user_agent_at_all_gets_the_default(shipped: Classifier):
    assert shipped.classify(Headers()).is_default


def test_custom_header_wins_over_patterns(shipped: Classifier):
    identity = shipped.classify(headers(user_agent="claude-cli/2.1.0 (external, cli)", x_memory_user_id="proj:api@v2"))
    assert identity.user_id == "proj:api@v2"
    assert identity.custom_header_present is True
    assert identity.matched_rule is None
    assert identity.describe() == "custom header"


def test_header_names_are_case_insensitive(shipped: Classifier):
    assert shipped.classify(Headers([(b"X-Memory-User-Id", b"Team.A")])).user_id == "Team.A"
    assert shipped.classify(Headers([(b"USER-AGENT", b"curl/8.0")])).user_id == "curl"


def test_patterns_apply_in_config_order():
    mappings = parse_config(
        """
        user_id_mappings:
          header_patterns:
            - {header: x-client, pattern: 'tool', user_id: first}
            - {header: user-agent, pattern: 'tool', user_id: second}
        """,
        "cfg.yaml",
        {},
    ).user_id_mappings
    classifier = Classifier(mappings)
    both = classifier.classify(headers(x_client="tool", user_agent="tool"))
    assert both.user_id == "first" and both.describe() == "user_id_mappings.header_patterns[0]"
    assert classifier.classify(headers(user_agent="my tool")).user_id == "second"  # search, not match


@pytest.mark.parametrize(
    "value",
    ["has space", "", "x" * 129, "new\nline", "semi;colon", "ünicode", "a/b"],
)
def test_invalid_custom_user_id_is_refused(shipped: Classifier, value: str):
    with pytest.raises(InvalidUserId) as excinfo:
        shipped.classify(Headers([(b"x-memory-user-id", value.encode())]))
    assert str(excinfo.value) == "invalid x-memory-user-id header: use 1-128 characters from A-Z a-z 0-9 . _ : @ -"


def test_conflicting_custom_headers_are_refused(shipped: Classifier):
    with pytest.raises(InvalidUserId, match="sent more than once with different values"):
        shipped.classify(Headers([(b"x-memory-user-id", b"a"), (b"x-memory-user-id", b"b")]))


def test_longest_valid_user_id_is_accepted(shipped: Classifier):
    assert shipped.classify(headers(x_memory_user_id="x" * 128)).user_id == "x" * 128


def test_patterns_see_only_a_bounded_prefix():
    mappings = parse_config(
        "user_id_mappings: {header_patterns: [{pattern: 'needle', user_id: found}]}", "cfg.yaml", {}
    ).user_id_mappings
    classifier = Classifier(mappings)
    assert classifier.classify(headers(user_agent="a" * (MATCH_PREFIX_LENGTH - 6) + "needle")).user_id == "found"
    assert classifier.classify(headers(user_agent="a" * MATCH_PREFIX_LENGTH + "needle")).is_default
