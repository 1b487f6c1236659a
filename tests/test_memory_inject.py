"""Rendering the recall block and injecting it into the last user message, per protocol."""

from __future__ import annotations

import copy
import json

from memory_routing.memory.inject import inject_blocks, inject_recall, render_block
from memory_routing.memory.records import Memory
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN, strip_recall_block
from memory_routing.memory.turns import new_human_turn

MAY_8_2023 = 1683504000.0


def mem(i: int, text: str, role: str = "user", at: float = MAY_8_2023) -> Memory:
    return Memory(i, "u", "c", "cli", "m", role, text, at)


BLOCK = render_block([mem(1, "I like tea")], 1000)


def test_render_block_fence_dates_and_order() -> None:
    block = render_block([[mem(1, "first"), mem(2, "second", "assistant")], mem(3, "third", at=MAY_8_2023 + 86400 * 400)], 1000)
    lines = block.split("\n")
    assert lines[0] == FENCE_OPEN and lines[-1] == FENCE_CLOSE
    assert lines[2:-1] == ["[2023-05-08] user: first", "assistant: second", "", "[2024-06-11] user: third"]
    assert render_block([], 1000) == "" and render_block([[]], 1000) == ""


def test_render_block_respects_budget() -> None:
    memories = [mem(i, f"memory number {i} " + "x" * 200) for i in range(100)]
    for budget in (100, 250, 1000):
        block = render_block(memories, budget)
        assert len(block) <= budget * 4
        assert block.startswith(FENCE_OPEN) and block.endswith(FENCE_CLOSE)
    assert render_block([mem(1, "y" * 100_000)], 1000).count("y") < 4000
    assert render_block(memories, 10) == ""


def test_render_block_neutralises_fences_in_text() -> None:
    block = render_block([mem(1, f"look:\n{FENCE_CLOSE}\nnot the end"), mem(2, "after")], 1000)
    assert block.count(FENCE_CLOSE) == 1 and block.endswith(FENCE_CLOSE)
    assert "after" in block
    assert strip_recall_block(block + "\nquestion") == "question"


def test_openai_string_and_list() -> None:
    payload = {"model": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q?"}]}
    frozen = copy.deepcopy(payload)
    out = inject_recall("openai", payload, BLOCK)
    assert payload == frozen
    assert out["messages"][0] == {"role": "system", "content": "sys"}
    assert out["messages"][-1]["content"] == BLOCK + "\n\nq?"
    assert new_human_turn("openai", out) == "q?"
    parts = {"messages": [{"role": "user",
                           "content": [{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "q"}]}]}
    out = inject_recall("openai", parts, BLOCK)
    assert [p.get("text") for p in out["messages"][0]["content"]] == [None, BLOCK, "q"]
    assert parts["messages"][0]["content"][1] == {"type": "text", "text": "q"} and len(parts["messages"][0]["content"]) == 2


def test_anthropic_never_touches_system_or_cache_control() -> None:
    payload = {
        "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "old", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": "r"},
                {"type": "text", "text": "now this", "cache_control": {"type": "ephemeral"}}]}]}
    frozen = copy.deepcopy(payload)
    out = inject_recall("anthropic", payload, BLOCK)
    assert payload == frozen
    assert out["system"] == frozen["system"] and out["messages"][:2] == frozen["messages"][:2]
    content = out["messages"][-1]["content"]
    assert content[0]["type"] == "tool_result"
    assert content[1] == {"type": "text", "text": BLOCK}
    assert content[2] == frozen["messages"][-1]["content"][1]
    assert str(out).count("cache_control") == str(frozen).count("cache_control")
    string = inject_recall("anthropic", {"messages": [{"role": "user", "content": "hi"}]}, BLOCK)
    assert string["messages"][0]["content"] == BLOCK + "\n\nhi"


def test_gemini_last_content() -> None:
    payload = {"systemInstruction": {"parts": [{"text": "sys"}]},
               "contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [{"text": "b"}]},
                            {"role": "user", "parts": [{"inlineData": {"data": "AA"}}, {"text": "c"}]}]}
    frozen = copy.deepcopy(payload)
    out = inject_recall("gemini", payload, BLOCK)
    assert payload == frozen
    assert out["systemInstruction"] == frozen["systemInstruction"] and out["contents"][:2] == frozen["contents"][:2]
    assert out["contents"][-1]["parts"] == [{"inlineData": {"data": "AA"}}, {"text": BLOCK}, {"text": "c"}]
    assert new_human_turn("gemini", out) == "c"


def test_nothing_to_inject_into() -> None:
    tool_turn = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "x", "content": "r"}]}
    assert inject_recall("openai", tool_turn, BLOCK) == tool_turn
    assert inject_recall("openai", {"messages": [{"role": "user", "content": "q"}]}, "") == {
        "messages": [{"role": "user", "content": "q"}]}
    model_last = {"contents": [{"role": "model", "parts": [{"text": "x"}]}]}
    assert inject_recall("gemini", model_last, BLOCK) == model_last


def test_injection_is_deterministic() -> None:
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}
    assert inject_recall("anthropic", payload, BLOCK) == inject_recall("anthropic", payload, BLOCK)


def test_render_block_repeats_the_date_when_it_changes() -> None:
    block = render_block([[mem(1, "monday"), mem(2, "tuesday", at=MAY_8_2023 + 86400), mem(3, "again", at=MAY_8_2023 + 86401)]],
                         1000)
    assert block.split("\n")[2:-1] == ["[2023-05-08] user: monday", "[2023-05-09] user: tuesday", "user: again"]


def test_injecting_into_an_earlier_message_gives_the_first_requests_bytes() -> None:
    """A tool loop's follow-up gets the block in the turn's message exactly as the turn's first request had it."""
    turn = {"role": "user", "content": [{"type": "text", "text": "read the file", "cache_control": {"type": "ephemeral"}}]}
    first = inject_recall("anthropic", {"messages": [turn]}, BLOCK)
    follow_up = {"messages": [turn, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "R", "input": {}}]},
                              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]}
    out = inject_recall("anthropic", follow_up, BLOCK, 0)
    assert json.dumps(out["messages"][0]) == json.dumps(first["messages"][0])
    assert out["messages"][1:] == follow_up["messages"][1:] and follow_up["messages"][0] == turn
    gemini = {"contents": [{"role": "user", "parts": [{"text": "q"}]}, {"role": "model", "parts": [{"text": "a"}]}]}
    assert inject_recall("gemini", gemini, BLOCK, 0)["contents"][0]["parts"] == [{"text": BLOCK}, {"text": "q"}]
    assert inject_recall("gemini", gemini, BLOCK, 1) == gemini  # not a user's content
    assert inject_recall("openai", {"messages": [{"role": "user", "content": "q"}]}, BLOCK, 5) == {
        "messages": [{"role": "user", "content": "q"}]}


def test_blocks_go_into_their_messages_wherever_the_cache_markers_are() -> None:
    def turn(text: str, marked: bool) -> dict:
        block = {"type": "text", "text": text}
        return {"role": "user", "content": [{"type": "text", "text": "<system-reminder>r</system-reminder>"},
                                            {**block, "cache_control": {"type": "ephemeral"}} if marked else block]}

    answer = {"role": "assistant", "content": [{"type": "text", "text": "a"}]}
    first = inject_blocks("anthropic", {"messages": [turn("q1", True)]}, {0: BLOCK})
    later = inject_blocks("anthropic", {"messages": [turn("q1", False), answer, turn("q2", True)]},
                          {0: BLOCK, 2: BLOCK + "2"})
    def unmark(message: dict) -> dict:
        return {**message, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in message["content"]]}

    assert unmark(later["messages"][0]) == unmark(first["messages"][0])
    assert later["messages"][0]["content"][0] == {"type": "text", "text": BLOCK}
    assert later["messages"][2]["content"][0]["text"] == BLOCK + "2" and later["messages"][1] is answer
    system_last = {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}
    assert inject_blocks("openai", system_last, {0: BLOCK, 1: BLOCK})["messages"] == [
        {"role": "user", "content": f"{BLOCK}\n\nq"}, {"role": "system", "content": "s"}]
    assert inject_blocks("openai", system_last, {}) is system_last
