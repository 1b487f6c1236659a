"""Config loading: good configs parse into typed objects; every bad one names file and key."""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from pathlib import Path

import pytest

from memory_routing.config.schema import (
    DEFAULT_SUPERMEMORY_BASE_URL,
    ConfigError,
    Secret,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def parse(text: str, environ: dict[str, str] | None = None):
    return parse_config(textwrap.dedent(text), "cfg.yaml", environ or {})


def test_shipped_config_loads_with_no_keys_set():
    config = load_config(ROOT / "config.yaml", environ={})
    assert config.aliases == ("claude-sonnet-4.5", "claude-haiku-4.5", "gpt-4o", "gemini-2.5-pro")
    assert config.memory.active is False
    assert config.memory.api_key == Secret(value=None, env_var="SUPERMEMORY_API_KEY")
    assert all(alias.api_key is None for alias in config.models)
    assert config.user_id_mappings.custom_header == "x-memory-user-id"
    assert config.user_id_mappings.default_user_id == "default-dev"


def test_background_config_loads_unchanged():
    env = {"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-openai-test", "SUPERMEMORY_API_KEY": "sm-test"}
    config = load_config(DATA / "background_config.yaml", environ=env)
    assert config.aliases == ("claude-sonnet-4.5", "claude-sonnet-4.5-memory", "gpt-4o")
    assert config.general.master_key == Secret(value="sk-1234", env_var=None)
    memory_alias = config.model("claude-sonnet-4.5-memory")
    assert memory_alias.api_base == "https://api.supermemory.ai/v3/https://api.anthropic.com"
    assert memory_alias.extra_headers == (("x-supermemory-api-key", Secret("sm-test", "SUPERMEMORY_API_KEY")),)
    assert config.model("gpt-4o").provider_hint == "openai"
    assert config.model("claude-sonnet-4.5").provider_hint == "anthropic"
    rules = config.user_id_mappings.header_patterns
    assert [(r.header, r.pattern, r.user_id) for r in rules] == [
        ("user-agent", "OpenAIClientImpl/Java", "pycharm-ai"),
        ("user-agent", "Claude Code/.*", "claude-cli"),
        ("user-agent", "vscode/.*", "vscode-copilot"),
    ]
    assert any("litellm_backend_url" in w for w in config.warnings)


def test_env_references_resolve_at_every_depth():
    config = parse(
        """
        model_list:
          - model_name: a
            litellm_params:
              model: os.environ/MODEL
              api_base: os.environ/BASE
              api_key: os.environ/KEY
              extra_headers:
                x-supermemory-api-key: os.environ/SM
                anthropic-beta: tools-2024
              metadata:
                tags: [os.environ/TAG, plain]
                nested: {deep: os.environ/DEEP}
        general_settings:
          master_key: os.environ/MASTER
          database_url: os.environ/DB
        memory:
          base_url: os.environ/SM_BASE
        """,
        {
            "MODEL": "openai/gpt-4o", "BASE": "https://example.test/v1", "KEY": "k1", "SM": "s1",
            "TAG": "t1", "DEEP": "d1", "MASTER": "m1", "DB": "db1", "SM_BASE": "https://sm.test/v3/",
        },
    )
    alias = config.model("a")
    assert alias.model == "openai/gpt-4o"
    assert alias.api_base == "https://example.test/v1"
    assert alias.api_key == Secret("k1", "KEY")
    assert alias.extra_headers == (
        ("x-supermemory-api-key", Secret("s1", "SM")),
        ("anthropic-beta", Secret("tools-2024", None)),
    )
    assert alias.other_params["metadata"] == {"tags": ["t1", "plain"], "nested": {"deep": "d1"}}
    assert alias.unset_env_vars == ()
    assert config.general.master_key == Secret("m1", "MASTER")
    assert config.general.other["database_url"] == "db1"
    assert config.memory.base_url == "https://sm.test/v3"
    # Parsed and shown as "(set)", but this proxy does not check it: said at start, never silent.
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith("cfg.yaml: general_settings.master_key: not enforced")


def test_unset_env_var_is_a_warning_and_marks_the_alias():
    config = parse(
        """
        model_list:
          - model_name: a
            litellm_params:
              model: anthropic/claude-sonnet-4-5
              api_key: os.environ/ANTHROPIC_API_KEY
              extra_headers:
                x-custom: os.environ/CUSTOM_HEADER
        """
    )
    alias = config.model("a")
    assert alias.api_key == Secret(None, "ANTHROPIC_API_KEY")
    assert not alias.api_key.is_set
    assert alias.unset_env_vars == ("ANTHROPIC_API_KEY", "CUSTOM_HEADER")
    assert config.warnings == (
        "cfg.yaml: model_list[0].litellm_params.api_key: environment variable ANTHROPIC_API_KEY is not set",
        "cfg.yaml: model_list[0].litellm_params.extra_headers.x-custom: environment variable CUSTOM_HEADER is not set",
    )


def test_secrets_never_show_in_repr_or_str():
    config = parse(
        """
        model_list:
          - model_name: a
            litellm_params: {model: gpt-4o, api_key: sk-inline-secret, extra_headers: {x-k: os.environ/K}}
        memory: {api_key: sm-inline-secret}
        general_settings: {master_key: master-inline-secret}
        """,
        {"K": "env-secret-value"},
    )
    text = repr(config) + str(config.model("a").api_key) + str(config.memory.api_key)
    for secret in ("sk-inline-secret", "env-secret-value", "sm-inline-secret", "master-inline-secret"):
        assert secret not in text


def test_memory_section():
    assert parse("memory: {api_key: os.environ/SM}", {"SM": "x"}).memory.active is True
    assert parse("memory: {api_key: os.environ/SM, enabled: false}", {"SM": "x"}).memory.active is False
    off = parse("memory: {api_key: os.environ/SM, enabled: true}")
    assert off.memory.active is False and off.memory.backend == "local"
    assert off.warnings[-1] == "cfg.yaml: memory.enabled: memory is enabled but memory.api_key is not set: using the local memory"
    assert parse("{}").memory.base_url == DEFAULT_SUPERMEMORY_BASE_URL


def test_memory_backend_defaults_to_supermemory_with_a_key_else_local():
    assert parse("{}").memory.backend == "local"
    assert parse("memory: {api_key: os.environ/SM}").memory.backend == "local"
    with_key = parse("memory: {api_key: os.environ/SM}", {"SM": "x"}).memory
    assert (with_key.backend, with_key.active, with_key.local) == ("supermemory", True, False)
    assert parse("memory: {api_key: os.environ/SM, enabled: false}", {"SM": "x"}).memory.backend == "off"
    # An explicit backend wins over the key.
    local = parse("memory: {backend: local, api_key: os.environ/SM}", {"SM": "x"}).memory
    assert (local.backend, local.active, local.local, local.backend_configured) == ("local", False, True, True)
    off = parse("memory: {backend: 'off', api_key: os.environ/SM}", {"SM": "x"}).memory
    assert (off.backend, off.active, off.local) == ("off", False, False)
    unkeyed = parse("memory: {backend: supermemory, api_key: os.environ/SM}")
    assert (unkeyed.memory.backend, unkeyed.memory.active) == ("supermemory", False)
    assert "memory.api_key: environment variable SM is not set: memory (Supermemory) is off" in unkeyed.warnings[-1]


def test_shipped_config_gives_local_memory_without_keys():
    memory = load_config(ROOT / "config.yaml", environ={}).memory
    assert (memory.backend, memory.budget_tokens, memory.deadline_ms, memory.retention_days) == ("local", 2000, 50.0, None)
    assert load_config(ROOT / "config.yaml", environ={"SUPERMEMORY_API_KEY": "k"}).memory.backend == "supermemory"


def test_memory_budget_deadline_and_client_defaults():
    memory = parse(
        """
        memory:
          backend: local
          budget_tokens: 500
          deadline_ms: 20.5
          retention_days: 90
          clients:
            - {header: User-Agent, pattern: '^curl/', mode: read}
            - {pattern: 'Java', mode: 'off'}
            - {user_id: claude-cli, mode: write}
        """
    ).memory
    assert (memory.budget_tokens, memory.deadline_ms, memory.retention_days) == (500, 20.5, 90.0)
    assert memory.conversation_budget_tokens == 4000  # the default
    first, second, third = memory.clients
    assert (first.header, first.pattern, first.mode, first.user_id) == ("user-agent", "^curl/", "read", None)
    assert first.regex.search("curl/8.5") and first.rule_name == "memory.clients[0]"
    assert (second.header, second.mode) == ("user-agent", "off")
    assert (third.user_id, third.mode, third.header, third.regex) == ("claude-cli", "write", None, None)
    warned = parse("memory: {backend: 'off', clients: [{user_id: a, mode: read}]}")
    assert warned.warnings[-1] == "cfg.yaml: memory.clients: only the local memory reads these; the backend is off"


def test_defaults_and_case_insensitive_header_names():
    config = parse(
        """
        user_id_mappings:
          custom_header: X-Project-Id
          header_patterns:
            - {pattern: 'Foo', user_id: foo}
            - {header: X-Client, pattern: 'Bar', user_id: bar}
        """
    )
    mappings = config.user_id_mappings
    assert mappings.custom_header == "x-project-id"
    assert [r.header for r in mappings.header_patterns] == ["user-agent", "x-client"]
    assert mappings.default_user_id == "default-dev"


def test_duplicate_alias_keeps_first_and_warns():
    config = parse(
        """
        model_list:
          - {model_name: a, litellm_params: {model: gpt-4o}}
          - {model_name: a, litellm_params: {model: gpt-4o-mini}}
        """
    )
    assert config.model("a").model == "gpt-4o"
    assert config.warnings == ("cfg.yaml: model_list[1].model_name: duplicate alias 'a': the first entry is used",)


def test_unknown_top_level_section_is_a_warning():
    config = parse("router_settings: {}\nsomething_else: 1\n")
    assert config.warnings == ("cfg.yaml: something_else: unknown section, ignored",)


def test_config_objects_are_frozen():
    config = parse("model_list: [{model_name: a, litellm_params: {model: gpt-4o}}]")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model("a").model = "other"  # type: ignore[misc]


BAD_CONFIGS = [
    pytest.param(
        """
        user_id_mappings:
          header_patterns:
            - {header: user-agent, pattern: ok, user_id: a}
            - {header: user-agent, pattern: 'a)', user_id: b}
        """,
        "cfg.yaml: user_id_mappings.header_patterns[1].pattern: invalid regex: unbalanced parenthesis at position 1",
        id="invalid-regex",
    ),
    pytest.param("- a\n- b\n", "cfg.yaml: the top level must be a mapping, got list", id="top-level-list"),
    pytest.param(
        "model_list: {a: 1}", "cfg.yaml: model_list: must be a list, got dict", id="model-list-not-list"
    ),
    pytest.param(
        "model_list: [{model_name: a}]", "cfg.yaml: model_list[0].litellm_params: required", id="no-litellm-params"
    ),
    pytest.param(
        "model_list: [{litellm_params: {model: gpt-4o}}]",
        "cfg.yaml: model_list[0].model_name: required",
        id="no-model-name",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {api_key: x}}]",
        "cfg.yaml: model_list[0].litellm_params.model: required: the provider model, e.g. anthropic/claude-sonnet-4-5",
        id="no-model",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_base: 'ftp://x'}}]",
        "cfg.yaml: model_list[0].litellm_params.api_base: must be an http:// or https:// URL, got 'ftp://x'",
        id="bad-api-base",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_key: 12}}]",
        "cfg.yaml: model_list[0].litellm_params.api_key: must be a string, got int",
        id="api-key-not-string",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_key: \"sk\\nInjected: 1\"}}]",
        "cfg.yaml: model_list[0].litellm_params.api_key: contains a line break or NUL, which cannot be sent in a header",
        id="api-key-with-newline",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_key: os.environ/1BAD}}]",
        "cfg.yaml: model_list[0].litellm_params.api_key: 'os.environ/1BAD' does not name a valid environment variable",
        id="bad-env-var-name",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, extra_headers: {'bad header': x}}}]",
        "cfg.yaml: model_list[0].litellm_params.extra_headers.bad header: not a valid HTTP header name",
        id="bad-extra-header-name",
    ),
    pytest.param(
        "model_list: [{model_name: a, litellm_params: {model: gpt-4o, extra_headers: [x]}}]",
        "cfg.yaml: model_list[0].litellm_params.extra_headers: must be a mapping, got list",
        id="extra-headers-not-mapping",
    ),
    pytest.param(
        "user_id_mappings: {header_patterns: [{pattern: x, user_id: 'has space'}]}",
        "cfg.yaml: user_id_mappings.header_patterns[0].user_id: invalid user id 'has space': "
        "use 1-128 characters from A-Z a-z 0-9 . _ : @ -",
        id="bad-pattern-user-id",
    ),
    pytest.param(
        "user_id_mappings: {header_patterns: [{pattern: x}]}",
        "cfg.yaml: user_id_mappings.header_patterns[0].user_id: required",
        id="missing-pattern-user-id",
    ),
    pytest.param(
        "user_id_mappings: {header_patterns: [{user_id: x}]}",
        "cfg.yaml: user_id_mappings.header_patterns[0].pattern: required",
        id="missing-pattern",
    ),
    pytest.param(
        "user_id_mappings: {header_patterns: [{pattern: x, user_id: y, headr: user-agent}]}",
        "cfg.yaml: user_id_mappings.header_patterns[0].headr: unknown key, did you mean `header`? "
        "(expected one of: header, pattern, user_id)",
        id="misspelt-pattern-key",
    ),
    pytest.param(
        "user_id_mappings: {defualt_user_id: x}",
        "cfg.yaml: user_id_mappings.defualt_user_id: unknown key, did you mean `default_user_id`? "
        "(expected one of: custom_header, default_user_id, header_patterns)",
        id="misspelt-mappings-key",
    ),
    pytest.param(
        "user_id_mappings: {custom_header: 'x memory'}",
        "cfg.yaml: user_id_mappings.custom_header: not a valid HTTP header name: 'x memory'",
        id="bad-custom-header",
    ),
    pytest.param(
        "user_id_mappings: {default_user_id: ''}",
        "cfg.yaml: user_id_mappings.default_user_id: invalid user id '': use 1-128 characters from A-Z a-z 0-9 . _ : @ -",
        id="empty-default-user-id",
    ),
    pytest.param(
        "user_id_mappings: {header_patterns: {pattern: x}}",
        "cfg.yaml: user_id_mappings.header_patterns: must be a list, got dict",
        id="patterns-not-list",
    ),
    pytest.param(
        "memory: {enabled: 'yes please'}",
        "cfg.yaml: memory.enabled: must be true or false, got 'yes please'",
        id="memory-enabled-not-bool",
    ),
    pytest.param(
        "memory: {base_url: 'api.supermemory.ai'}",
        "cfg.yaml: memory.base_url: must be an http:// or https:// URL, got 'api.supermemory.ai'",
        id="memory-base-url-no-scheme",
    ),
    pytest.param(
        "memory: {apikey: x}",
        "cfg.yaml: memory.apikey: unknown key, did you mean `api_key`? (expected one of: api_key, backend, base_url, "
        "budget_tokens, clients, conversation_budget_tokens, deadline_ms, enabled, retention_days)",
        id="misspelt-memory-key",
    ),
    pytest.param("memory: {backend: sqlite}", "cfg.yaml: memory.backend: must be one of local, supermemory, off, got 'sqlite'",
                 id="memory-backend-unknown"),
    pytest.param("memory: {conversation_budget_tokens: -1}",
                 "cfg.yaml: memory.conversation_budget_tokens: must be a whole number from 0 to 1000000, got -1",
                 id="memory-conversation-budget-negative"),
    pytest.param("memory: {budget_tokens: 10}",
                 "cfg.yaml: memory.budget_tokens: must be a whole number from 50 to 100000, got 10", id="memory-budget-small"),
    pytest.param("memory: {budget_tokens: '1000'}",
                 "cfg.yaml: memory.budget_tokens: must be a whole number from 50 to 100000, got '1000'", id="memory-budget-str"),
    pytest.param("memory: {retention_days: 0}",
                 "cfg.yaml: memory.retention_days: must be a number of days from 1 to 36500 (or null: keep memories "
                 "until deleted), got 0", id="memory-retention-zero"),
    pytest.param("memory: {retention_days: '90'}",
                 "cfg.yaml: memory.retention_days: must be a number of days from 1 to 36500 (or null: keep memories "
                 "until deleted), got '90'", id="memory-retention-str"),
    pytest.param("memory: {deadline_ms: 0}",
                 "cfg.yaml: memory.deadline_ms: must be a number of milliseconds from 1 to 10000, got 0", id="memory-deadline"),
    pytest.param("memory: {clients: {user_id: a}}", "cfg.yaml: memory.clients: must be a list, got dict",
                 id="memory-clients-not-list"),
    pytest.param("memory: {clients: [{user_id: a, mode: never}]}",
                 "cfg.yaml: memory.clients[0].mode: must be one of off, read, write, both, got 'never'", id="memory-client-mode"),
    pytest.param("memory: {clients: [{mode: read}]}",
                 "cfg.yaml: memory.clients[0]: give either user_id (a memory user id) or pattern (with header, default "
                 "user-agent)", id="memory-client-no-match"),
    pytest.param("memory: {clients: [{user_id: a, pattern: b, mode: read}]}",
                 "cfg.yaml: memory.clients[0]: give either user_id (a memory user id) or pattern (with header, default "
                 "user-agent)", id="memory-client-both-matches"),
    pytest.param("memory: {clients: [{user_id: a, header: x-a, mode: read}]}",
                 "cfg.yaml: memory.clients[0].header: goes with pattern, not with user_id", id="memory-client-header-with-user"),
    pytest.param("memory: {clients: [{pattern: '(', mode: read}]}",
                 "cfg.yaml: memory.clients[0].pattern: invalid regex: missing ), unterminated subpattern at position 0",
                 id="memory-client-bad-regex"),
    pytest.param("memory: {clients: [{user_id: 'a b', mode: read}]}",
                 "cfg.yaml: memory.clients[0].user_id: invalid user id 'a b': use 1-128 characters from A-Z a-z 0-9 . _ : @ -",
                 id="memory-client-bad-user"),
    pytest.param("memory: {clients: [{pattern: x, mode: read, when: now}]}",
                 "cfg.yaml: memory.clients[0].when: unknown key (expected one of: header, mode, pattern, user_id)",
                 id="memory-client-unknown-key"),
    pytest.param(
        "model_list:\n  - model_name: a\n   litellm_params: {}\n",
        "cfg.yaml: line 3, column 4: invalid YAML: expected <block end>, but found '<block mapping start>'",
        id="invalid-yaml",
    ),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_bad_config_names_file_and_key_path(text: str, message: str):
    with pytest.raises(ConfigError) as excinfo:
        parse(text)
    assert str(excinfo.value) == message


def test_unreadable_file_names_the_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing)
    assert str(excinfo.value) == f"{missing}: cannot read: No such file or directory"


def test_non_utf8_file_names_the_file(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"default_user_id: caf\xe9\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"{path}: not UTF-8 text: invalid continuation byte at byte 20"


@pytest.mark.parametrize(
    "text, state",
    [("", "is empty"), ("\n# all commented out\n", "has no models"), ("model_list: []\n", "has no models"),
     ("memory: {enabled: false}\n", "has no models")],
    ids=["empty-file", "only-comments", "empty-model-list", "no-model-list"],
)
def test_config_without_models_names_the_file(tmp_path: Path, text: str, state: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == (
        f"{path}: model_list: the config {state}; a proxy config needs at least one model_list entry "
        "(model_name and litellm_params.model)"
    )


# --- unknown keys name the closest known one (issue 24.1) ----------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(
            "model_list: [{model_name: a, litellm_params: {model: gpt-4o, api_bsae: 'http://llm.internal/v1'}}]",
            "cfg.yaml: model_list[0].litellm_params.api_bsae: unknown key: LiteLLM takes no such parameter, "
            "did you mean `api_base`?",
            id="litellm-params-api-bsae",
        ),
        pytest.param(
            "model_list: [{model_name: a, litellm_params: {model: gpt-4o, custom_llm_provder: openai}}]",
            "cfg.yaml: model_list[0].litellm_params.custom_llm_provder: unknown key: LiteLLM takes no such "
            "parameter, did you mean `custom_llm_provider`?",
            id="litellm-params-provider",
        ),
        pytest.param(
            "model_list: [{model_name: a, translte: never, litellm_params: {model: gpt-4o}}]",
            "cfg.yaml: model_list[0].translte: unknown key, did you mean `translate`? "
            "(expected one of: litellm_params, memory, model_info, model_name, translate)",
            id="model-entry-key",
        ),
        pytest.param(
            "model_list: [{model_name: a, litellm_params: {model: gpt-4o}}]\nmemroy: {backend: local}\n",
            "cfg.yaml: memroy: unknown section, did you mean `memory`? "
            "(expected one of: general_settings, memory, model_list, storage, user_id_mappings)",
            id="top-level-section",
        ),
        pytest.param(
            "memory: {clients: [{user_id: a, mdoe: read}]}",
            "cfg.yaml: memory.clients[0].mdoe: unknown key, did you mean `mode`? "
            "(expected one of: header, mode, pattern, user_id)",
            id="memory-client-key",
        ),
    ],
)
def test_misspelt_key_is_an_error_naming_the_closest_known_key(text: str, message: str):
    with pytest.raises(ConfigError) as excinfo:
        parse(text)
    assert str(excinfo.value) == message


def test_litellm_params_take_what_litellm_takes_and_keep_it_for_litellm():
    alias = parse(
        """
        model_list:
          - model_name: a
            litellm_params:
              model: vertex_ai/gemini-2.5-pro
              vertex_project: my-project
              vertex_location: us-central1
              rpm: 10
              temperature: 0.2
              metadata: {team: a}
              drop_params: false
        """
    ).model("a")
    assert dict(alias.other_params) == {
        "vertex_project": "my-project", "vertex_location": "us-central1", "rpm": 10, "temperature": 0.2,
        "metadata": {"team": "a"}, "drop_params": False,
    }
    assert alias.drop_params is False


def test_a_far_off_unknown_key_is_named_without_a_guess():
    with pytest.raises(ConfigError) as excinfo:
        parse("model_list: [{model_name: a, litellm_params: {model: gpt-4o, zzzqqq: 1}}]")
    assert str(excinfo.value) == (
        "cfg.yaml: model_list[0].litellm_params.zzzqqq: unknown key: LiteLLM takes no such parameter"
    )


# --- YAML booleans where a mode is expected (issue 24.2) -----------------------------------


def test_yaml_booleans_read_as_the_mode_they_spell():
    # YAML 1.1 reads unquoted off/no as false and on/yes as true.
    config = parse(
        """
        model_list:
          - {model_name: a, translate: off, litellm_params: {model: gpt-4o}}
        memory:
          backend: off
          clients:
            - {user_id: a, mode: off}
            - {user_id: b, mode: on}
            - {user_id: c, mode: no}
        """
    )
    assert config.model("a").translate == "never"
    assert config.memory.backend == "off"
    assert [rule.mode for rule in config.memory.clients] == ["off", "both", "off"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("memory: {backend: on}", "cfg.yaml: memory.backend: must be one of local, supermemory, off, got true"),
        ("model_list: [{model_name: a, translate: yes, litellm_params: {model: gpt-4o}}]",
         "cfg.yaml: model_list[0].translate: must be one of auto, always, never, got true"),
    ],
    ids=["backend-on", "translate-yes"],
)
def test_a_yaml_true_where_no_mode_means_on_names_the_choices(text: str, message: str):
    with pytest.raises(ConfigError) as excinfo:
        parse(text)
    assert str(excinfo.value) == message


def test_shipped_config_examples_load_when_uncommented():
    text = (ROOT / "config.yaml").read_text()
    uncommented = text.replace("  # clients:", "  clients:").replace("  #   - ", "    - ").replace(
        "  # retention_days:", "  retention_days:").replace("  # backend:", "  backend:")
    assert uncommented != text
    memory = parse_config(uncommented, "config.yaml", {}).memory
    assert [(rule.pattern, rule.user_id, rule.mode) for rule in memory.clients] == [
        ("^curl/", None, "read"), (None, "pycharm-ai", "off"),
    ]
    assert (memory.backend, memory.retention_days) == ("local", 365.0)


def test_misspelt_key_on_reload_keeps_the_last_good_config(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from mitmproxy.test import taddons

    from memory_routing.addons.routing_config import RoutingConfig

    path = tmp_path / "config.yaml"
    good_text = "model_list: [{model_name: a, litellm_params: {model: openai/gpt-4o, api_base: 'http://llm.internal/v1'}}]\n"
    path.write_text(good_text)
    routing = RoutingConfig()
    with taddons.context(routing) as tctx:
        tctx.configure(routing, memory_routing_config=str(path))
        good = routing.config
        path.write_text(good_text.replace("api_base", "api_bsae"))
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        with caplog.at_level(logging.ERROR):
            routing.reload_if_changed()
    assert routing.config is good and good.model("a").api_base == "http://llm.internal/v1"
    expected = (f"{path}: model_list[0].litellm_params.api_bsae: unknown key: LiteLLM takes no such parameter, "
                "did you mean `api_base`?")
    assert routing.last_error == expected
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"{expected} (keeping the last good config)"
    ]
