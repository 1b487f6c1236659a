"""The new human turn and the assistant's text, per client protocol, whole and streamed."""

from __future__ import annotations

import pytest

from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.memory.turns import (
    AnswerTextCollector,
    HumanTurn,
    assistant_text,
    earlier_human_turn,
    human_turns,
    new_human_turn,
)

BLOCK = f"{FENCE_OPEN}\n[2023-05-08] user: remembered\n{FENCE_CLOSE}\n"
IMAGE_OPENAI = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
IMAGE_ANTHROPIC = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}


def test_openai_string_and_parts() -> None:
    history = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "old"},
               {"role": "assistant", "content": "old answer"}]
    assert new_human_turn("openai", {"messages": [*history, {"role": "user", "content": "new question"}]}) == "new question"
    parts = [{"type": "text", "text": BLOCK + "look at"}, IMAGE_OPENAI, {"type": "text", "text": "this"}]
    assert new_human_turn("openai", {"messages": [{"role": "user", "content": parts}]}) == "look at\nthis"


def test_openai_not_a_human_turn() -> None:
    tool = {"role": "tool", "tool_call_id": "c1", "content": "file contents"}
    assert new_human_turn("openai", {"messages": [{"role": "user", "content": "q"}, tool]}) is None
    assert new_human_turn("openai", {"messages": [{"role": "assistant", "content": "a"}]}) is None
    assert new_human_turn("openai", {"messages": [{"role": "user", "content": [IMAGE_OPENAI]}]}) is None
    assert new_human_turn("openai", {"messages": []}) is None
    assert new_human_turn("openai", {}) is None
    assert new_human_turn("openai", {"messages": [{"role": "user", "content": BLOCK}]}) is None


def test_anthropic_blocks() -> None:
    last = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>CLAUDE.md says things</system-reminder>"},
        IMAGE_ANTHROPIC, {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}]}
    assert new_human_turn("anthropic", {"messages": [last]}) == "fix the bug"
    assert new_human_turn("anthropic", {"messages": [{"role": "user", "content": "plain"}]}) == "plain"


def test_anthropic_tool_result_is_not_a_human_turn() -> None:
    last = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ls output"}]},
        {"type": "text", "text": "<system-reminder>todo list changed</system-reminder>"}]}
    assert new_human_turn("anthropic", {"messages": [last]}) is None
    assert new_human_turn("anthropic", {"messages": [{"role": "assistant", "content": "x"}]}) is None


def test_gemini_parts() -> None:
    payload = {"systemInstruction": {"parts": [{"text": "sys"}]}, "contents": [
        {"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": "hello"}]},
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA"}}, {"text": "what is it"}]}]}
    assert new_human_turn("gemini", payload) == "what is it"
    assert new_human_turn("gemini", {"contents": [{"parts": [{"text": "no role"}]}]}) == "no role"
    fr = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"x": 1}}}]}
    assert new_human_turn("gemini", {"contents": [fr]}) is None
    assert new_human_turn("gemini", {"contents": [{"role": "model", "parts": [{"text": "x"}]}]}) is None


def test_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="unknown client protocol"):
        new_human_turn("cohere", {})


def test_assistant_text_whole_answers() -> None:
    openai = {"choices": [{"message": {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "Bash", "arguments": "{\"cmd\": \"rm -rf\"}"}}]}}]}
    assert assistant_text("openai", openai) == "Let me look.\n[tool: Bash]"
    anthropic = {"content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Reading."},
                             {"type": "tool_use", "id": "t", "name": "Read", "input": {"path": "/etc/passwd"}}]}
    assert assistant_text("anthropic", anthropic) == "Reading.\n[tool: Read]"
    gemini = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking...", "thought": True}, {"text": "Sure: "}, {"text": "done"},
        {"functionCall": {"name": "search", "args": {"q": "x"}}}]}}]}
    assert assistant_text("gemini", gemini) == "Sure: done\n[tool: search]"
    assert assistant_text("openai", {"choices": []}) == ""
    assert "/etc/passwd" not in assistant_text("anthropic", anthropic)


def test_openai_stream() -> None:
    c = AnswerTextCollector("openai")
    for event in [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
                  {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
                  {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
                  {"choices": [{"index": 0,
                                "delta": {"tool_calls": [{"index": 0, "id": "c",
                                                          "function": {"name": "Edit", "arguments": ""}}]}}]},
                  {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
                  {"choices": [], "usage": {"total_tokens": 3}}, "not a dict"]:
        c.feed(event)  # type: ignore[arg-type]
    assert c.text() == "Hello\n[tool: Edit]"


def test_anthropic_stream() -> None:
    c = AnswerTextCollector("anthropic")
    for event in [{"type": "message_start", "message": {"content": []}},
                  {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                  {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "One "}},
                  {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "two"}},
                  {"type": "content_block_stop", "index": 0},
                  {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "Grep", "input": {}}},
                  {"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"secret\""}},
                  {"type": "content_block_stop", "index": 1},
                  {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
                  {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "three"}},
                  {"type": "message_stop"}]:
        c.feed(event)
    assert c.text() == "One two\n[tool: Grep]\nthree"


def test_gemini_stream() -> None:
    c = AnswerTextCollector("gemini")
    for chunk in ["Par", "tial ", "answer"]:
        c.feed({"candidates": [{"content": {"role": "model", "parts": [{"text": chunk}]}}]})
    c.feed({"candidates": [{"content": {"parts": [{"functionCall": {"name": "lookup"}}]}, "finishReason": "STOP"}]})
    assert c.text() == "Partial answer\n[tool: lookup]"


def test_collector_caps_text() -> None:
    c = AnswerTextCollector("openai", max_chars=100)
    for _ in range(1000):
        c.feed({"choices": [{"index": 0, "delta": {"content": "abcdefghij"}}]})
    assert len(c.text()) == 100 and c.truncated
    default = AnswerTextCollector("anthropic")
    default.feed({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 100_000}})
    assert len(default.text()) == 16_000


def test_earlier_human_turn_of_a_tool_loop() -> None:
    openai_loop = {"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"}, {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}
    assert earlier_human_turn("openai", openai_loop) == (3, "weather in Paris?")
    anthropic_loop = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "read the file"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "body"},
                                     {"type": "text", "text": "<system-reminder>todo</system-reminder>"}]}]}
    assert earlier_human_turn("anthropic", anthropic_loop) == (0, "read the file")
    gemini_loop = {"contents": [
        {"role": "user", "parts": [{"text": "what time is it?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "clock", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "clock", "response": {"t": 1}}}]}]}
    assert earlier_human_turn("gemini", gemini_loop) == (0, "what time is it?")
    assert earlier_human_turn("anthropic", {"messages": anthropic_loop["messages"][1:]}) is None
    assert earlier_human_turn("openai", {"messages": "nope"}) is None


def test_a_long_human_turn_is_kept_by_its_start_cut_at_a_space():
    from memory_routing.memory.turns import MAX_TURN_CHARS

    words = "alpha beta gamma delta " * 5000  # about 115,000 characters
    turn = new_human_turn("openai", {"messages": [{"role": "user", "content": words}]})
    assert turn is not None and turn.endswith(" […]")
    assert MAX_TURN_CHARS - 256 <= len(turn) <= MAX_TURN_CHARS + len(" […]")
    assert words.startswith(turn[: -len(" […]")])
    assert turn[: -len(" […]")].split(" ")[-1] in {"alpha", "beta", "gamma", "delta"}  # no word cut in half
    short = new_human_turn("anthropic", {"messages": [{"role": "user", "content": "a short turn"}]})
    assert short == "a short turn"


# --- the human turn wherever it stands ----------------------------------------------------------


CLAUDE_CODE_SYSTEM = {"role": "system", "content": [{"type": "text", "text": "# Environment ...",
                                                     "cache_control": {"type": "ephemeral"}}]}


@pytest.mark.parametrize("trailing", [
    [{"role": "system", "content": "You are on a model Claude Code does not know."}],
    [CLAUDE_CODE_SYSTEM],
    [{"role": "developer", "content": "be brief"}, {"role": "system", "content": "x"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": []}],
    [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>todo</system-reminder>"}]}],
    [{"role": "assistant", "content": "{"}],  # a prefill, as the last message
    [{"role": "system", "content": "x"}, {"role": "assistant", "content": None}],
])
@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_trailing_system_developer_and_empty_messages_do_not_hide_a_new_turn(protocol, trailing) -> None:
    history = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "an answer"}]
    human = {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                         {"type": "text", "text": "my new question"}]}
    payload = {"messages": [*history, human, *trailing]}
    found = human_turns(protocol, payload)
    assert found.turns == (HumanTurn(0, "first question"), HumanTurn(2, "my new question")) and found.new
    assert new_human_turn(protocol, payload) == "my new question"
    assert earlier_human_turn(protocol, payload) is None


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_tool_results_after_the_human_turn_make_a_follow_up(protocol) -> None:
    if protocol == "openai":
        loop = [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}]
    else:
        loop = [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done",
                                              "cache_control": {"type": "ephemeral"}}]}]
    payload = {"messages": [{"role": "user", "content": "run it"}, {"role": "system", "content": "sys"}, *loop,
                            {"role": "system", "content": "sys again"}, {"role": "user", "content": ""}]}
    found = human_turns(protocol, payload)
    assert found.turns == (HumanTurn(0, "run it"),) and not found.new
    assert new_human_turn(protocol, payload) is None
    assert earlier_human_turn(protocol, payload) == (0, "run it")
    # The model's text answer after the turn is an answer too: the next human message opens a new turn.
    answered = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                             {"role": "system", "content": "s"}]}
    assert not human_turns(protocol, answered).new


def test_gemini_trailing_function_responses_and_empty_contents() -> None:
    human = {"role": "user", "parts": [{"text": "what time is it?"}]}
    assert human_turns("gemini", {"contents": [human, {"role": "user", "parts": []}]}).new
    assert human_turns("gemini", {"contents": [human, {"role": "model", "parts": [{"text": "It"}]}]}).new  # a prefill
    loop = [{"role": "model", "parts": [{"functionCall": {"name": "clock", "args": {}}}]},
            {"role": "function", "parts": [{"functionResponse": {"name": "clock", "response": {"t": 1}}}]},
            {"role": "user", "parts": []}]
    found = human_turns("gemini", {"contents": [human, *loop]})
    assert found.turns == (HumanTurn(0, "what time is it?"),) and not found.new
    assert human_turns("gemini", {"contents": human}).turns == (HumanTurn(0, "what time is it?"),)


def test_no_human_text_means_no_turns() -> None:
    assert human_turns("openai", {"messages": [{"role": "system", "content": "s"}]}).turns == ()
    assert human_turns("anthropic", {"messages": "nope"}).turns == ()
    assert human_turns("gemini", None).last is None


def test_client_reminders_are_cut_to_their_closing_tag_or_the_end() -> None:
    import random
    import re

    from memory_routing.memory.turns import _without_reminders

    reference = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)
    rnd = random.Random(3)
    pieces = ["<system-reminder>", "</system-reminder>", "abc ", "\n", "x", "<system", "reminder>", " ", "</"]
    for _ in range(5000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert _without_reminders(text) == reference.sub("", text), repr(text)
