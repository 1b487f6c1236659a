"""What a translated call keeps, fits and drops: Claude Code 2.1's request on other models."""

from __future__ import annotations

import json

import pytest

from memory_routing.wire.protocol import ClientProtocol
from memory_routing.llm.parameters import TargetModel, UnsupportedParams, fit_params, prompt_cache_key, target_model
from memory_routing.llm.translation import TranslationRefused, translate_request

CLAUDE_CODE_USER_ID = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "5" * 36})
# The main-loop call of Claude Code 2.1 (interactive: with safeguards).
CLAUDE_CODE_CALL = {
    "model": "gpt",
    "max_tokens": 32000,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "tools": [{"name": "Bash", "description": "Run a command",
               "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
    "thinking": {"type": "adaptive"},
    "output_config": {"effort": "high"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "metadata": {"user_id": CLAUDE_CODE_USER_ID},
    "safeguards": {"home": "/home/alice", "cwd": "/home/alice/secret-project", "rules": ["Bash(rm:*)"]},
    "temperature": 1,
}


def translated(model: str, provider: str = "openai", *, drop: bool = True, user_id: str | None = "alice",
               conversation_id: str | None = None, **changes):
    body = {**CLAUDE_CODE_CALL, **changes}
    result = translate_request(ClientProtocol.ANTHROPIC, provider, model, body, drop_params=drop, user_id=user_id,
                               conversation_id=conversation_id)
    return result, json.loads(result.body)


def test_claude_code_on_a_non_reasoning_gpt_drops_what_openai_has_no_equivalent_for():
    result, body = translated("gpt-4o-mini")
    assert result.dropped == ("thinking", "output_config", "context_management", "safeguards")
    for name in ("reasoning_effort", "thinking", "output_config", "context_management", "safeguards", "metadata"):
        assert name not in body
    assert "/home/alice" not in result.body.decode()
    # gpt-4o-mini writes at most 16384 tokens (LiteLLM's model table); OpenAI refuses more.
    assert body["max_tokens"] == 16384 and result.fitted == (("max_tokens", 16384),)
    assert body["user"] == "alice"
    assert body["tools"][0]["function"]["name"] == "Bash"


def test_reasoning_models_get_the_effort_mapped_not_dropped():
    result, body = translated("gpt-5")
    assert body["reasoning_effort"] == "high"
    assert result.dropped == ("context_management", "safeguards")
    assert body["max_completion_tokens"] == 32000 and result.fitted == ()  # gpt-5 writes up to 128000


def test_the_user_field_is_the_memory_user_id_or_nothing():
    _, body = translated("gpt-4o-mini", user_id=None)
    assert "user" not in body
    _, body = translated("gpt-4o-mini", user_id="u" * 65)  # longer than OpenAI's identifiers take
    assert "user" not in body
    _, body = translated("gpt-4o-mini", metadata={})  # the client sent none: none is made up
    assert "user" not in body
    assert "device_id" not in translated("gpt-4.1")[0].body.decode()


def test_claude_codes_session_id_never_becomes_the_prompt_cache_key():
    session_id = "5" * 36
    result, body = translated("gpt-4.1")  # LiteLLM would send the session id as prompt_cache_key
    assert "prompt_cache_key" not in body and session_id not in result.body.decode()
    # With a conversation id the proxy sends its own key: a hash, per memory user and conversation.
    result, body = translated("gpt-4.1", conversation_id=session_id)
    assert body["prompt_cache_key"] == prompt_cache_key("alice", session_id)
    assert len(body["prompt_cache_key"]) == 32 and session_id not in result.body.decode()
    assert translated("gpt-4.1", conversation_id="other")[1]["prompt_cache_key"] != body["prompt_cache_key"]
    assert translated("gpt-4.1", user_id="bob", conversation_id=session_id)[1]["prompt_cache_key"] != body["prompt_cache_key"]
    assert "prompt_cache_key" not in translated("gpt-4.1", user_id=None, conversation_id=session_id)[1]
    # A target without prompt caching by key gets none.
    assert "prompt_cache_key" not in translated("claude-sonnet-4-5", "anthropic", conversation_id=session_id)[1]


def test_an_openai_clients_own_prompt_cache_key_is_its_choice():
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "prompt_cache_key": "mine"}
    result = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-sonnet-4-5", body, user_id="alice",
                               drop_params=True, conversation_id="c1")
    assert result.dropped == ("prompt_cache_key",)  # Anthropic has none: dropped and said so
    assert "mine" not in result.body.decode()


def test_drop_params_false_refuses_naming_every_parameter():
    with pytest.raises(TranslationRefused) as refused:
        translated("gpt-4o-mini", drop=False)
    assert refused.value.status == 400
    for name in ("thinking", "output_config", "context_management", "safeguards"):
        assert name in refused.value.message
    # Nothing to drop: the strict alias sends the request as it is, max_tokens included.
    plain = {k: v for k, v in CLAUDE_CODE_CALL.items()
             if k not in ("thinking", "output_config", "context_management", "safeguards")}
    result = translate_request(ClientProtocol.ANTHROPIC, "openai", "gpt-4o-mini", plain, user_id="alice")
    assert json.loads(result.body)["max_tokens"] == 32000 and result.dropped == ()


def test_gemini_gets_the_same_treatment():
    result, body = translated("gemini-2.0-flash", "gemini")
    assert "safeguards" in result.dropped and "context_management" in result.dropped
    assert "thinking" in result.dropped  # gemini-2.0-flash does not reason
    assert body["generationConfig"]["max_output_tokens"] == 8192
    result, body = translated("gemini-2.5-flash", "gemini")
    assert "thinking" not in result.dropped and "thinkingConfig" in body["generationConfig"]


def test_an_openai_client_translated_to_anthropic_keeps_what_anthropic_takes():
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "user": "device-123",
            "safeguards": {"cwd": "/x"}}
    result = translate_request(ClientProtocol.OPENAI, "anthropic", "claude-sonnet-4-5", body, drop_params=True,
                               user_id="bob")
    sent = json.loads(result.body)
    assert result.dropped == ("safeguards",)
    assert sent["metadata"] == {"user_id": "bob"}


def test_fit_params_unknown_models_are_not_judged():
    unknown = TargetModel(supported=None, reasons=False, max_output_tokens=None)
    fitted = fit_params({"model": "x", "messages": [], "max_tokens": 10**6, "extra": 1}, unknown,
                        client=ClientProtocol.OPENAI, client_payload={}, drop=True, user_id=None,
                        not_params=frozenset({"model", "messages"}))
    assert fitted.completion["max_tokens"] == 10**6 and fitted.dropped == ()
    with pytest.raises(UnsupportedParams) as refused:
        fit_params({"reasoning_effort": "high"}, unknown, client=ClientProtocol.OPENAI, client_payload={},
                   drop=False, user_id=None, not_params=frozenset())
    assert refused.value.names == ("reasoning_effort",)


def test_target_model_reads_litellms_bundled_table():
    mini = target_model("openai", "gpt-4o-mini")
    assert mini.max_output_tokens == 16384 and not mini.reasons and "safeguards" not in (mini.supported or ())
    assert target_model("openai", "o3-mini").reasons
    nowhere = target_model("openai", "no-such-model-anywhere")
    assert nowhere.max_output_tokens is None
