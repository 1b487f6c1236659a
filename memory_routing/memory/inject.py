"""The recall block: rendering memories within a token budget and putting them into the last user message.

The block goes into the last user message and nowhere else: the system prompt, the tools and the
earlier messages stay byte-identical, so the provider's prompt cache keeps matching them, and
`cache_control` markers are never added, removed or moved.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .records import Memory
from .redact import FENCE_CLOSE, FENCE_OPEN
from .turns import protocol_name

CHARS_PER_TOKEN = 4  # rough for English; no tokenizer needed for a budget
HEADER = "Notes from this user's earlier conversations (dated; may be outdated, use only if relevant):"
_ELLIPSIS = "…"


def _date(created_at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(created_at))


def _defenced(text: str) -> str:
    # A stored text that names our fence must not close (or open) the block early.
    return text.replace(FENCE_OPEN, "<memory-routing-recall >").replace(FENCE_CLOSE, "</memory-routing-recall >")


def render_line(memory: Memory) -> str:
    return f"[{_date(memory.created_at)}] {memory.role}: {_defenced(memory.text)}"


def render_block(memories: Sequence[Memory | Sequence[Memory]], budget_tokens: int) -> str:
    """The fenced block for `memories` within budget_tokens (see render_block_counted)."""
    return render_block_counted(memories, budget_tokens)[0]


def render_block_counted(memories: Sequence[Memory | Sequence[Memory]], budget_tokens: int) -> tuple[str, int]:
    """(the fenced block, how many memories it shows, a cut one included).

    The fenced block for `memories` in the order given (a nested sequence is a run of neighbouring
    turns, kept together and set apart by a blank line); "" when nothing fits or there is nothing.
    Each run's first line is `[YYYY-MM-DD] role: text`; later lines of the same date are `role: text`.

    Lines are added while the whole block stays within budget_tokens * 4 characters; a line that
    does not fit is cut with "…" when at least a useful part of it fits.
    """
    budget = budget_tokens * CHARS_PER_TOKEN
    frame = len(FENCE_OPEN) + len(HEADER) + len(FENCE_CLOSE) + 2
    room = budget - frame
    lines: list[str] = []
    shown = 0
    for group in memories:
        run = [group] if isinstance(group, Memory) else list(group)
        if not run or room <= 0:
            continue
        if lines:
            if room < 2:
                break
            lines.append("")
            room -= 1
        shown_date = None
        for memory in run:
            # The date opens a run and is repeated only when it changes: a run is mostly one
            # sitting, and the characters go to more memories instead.
            date = _date(memory.created_at)
            line = render_line(memory) if date != shown_date else f"{memory.role}: {_defenced(memory.text)}"
            shown_date = date
            if len(line) + 1 <= room:
                lines.append(line)
                room -= len(line) + 1
                shown += 1
            elif room > 80:
                lines.append(line[: room - 1 - len(_ELLIPSIS)] + _ELLIPSIS)
                room = 0
                shown += 1
                break
            else:
                room = 0
                break
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return "", 0
    return "\n".join([FENCE_OPEN, HEADER, *lines, FENCE_CLOSE]), shown


def inject_recall(protocol: Any, payload: dict, block: str, index: int = -1) -> dict:
    """A copy of `payload` with `block` at the start of the user message's text at `index` (the
    last by default); `payload` is not changed.

    Anthropic/OpenAI list content: a new text block (no cache_control) before the first text block
    (after any tool_result blocks, which must come first). String content: prefixed. Gemini: a new
    text part before the first text part of the content. Anything else is returned as it was.
    The same message and block always give the same bytes: a tool loop's follow-up requests
    re-inject the block into the turn's message (turns.earlier_human_turn) exactly as the turn's
    first request had it, so the provider's prompt cache matches past it.
    """
    name = protocol_name(protocol)
    if not block or not isinstance(payload, dict):
        return payload
    key = "contents" if name == "gemini" else "messages"
    items = payload.get(key)
    if not isinstance(items, list) or not -len(items) <= index < len(items) or not isinstance(items[index], dict):
        return payload
    index %= len(items)
    message = items[index]
    if name == "gemini":
        parts = message.get("parts")
        if message.get("role", "user") != "user" or not isinstance(parts, list):
            return payload
        new_parts = _insert_before_first_text(parts, {"text": block}, lambda p: isinstance(p.get("text"), str))
        return {**payload, "contents": [*items[:index], {**message, "parts": new_parts}, *items[index + 1:]]}
    if message.get("role") != "user":
        return payload
    content = message.get("content")
    if isinstance(content, str):
        new_content: Any = f"{block}\n\n{content}"
    elif isinstance(content, list):
        new_content = _insert_before_first_text(content, {"type": "text", "text": block},
                                                lambda b: b.get("type") == "text")
    else:
        return payload
    return {**payload, "messages": [*items[:index], {**message, "content": new_content}, *items[index + 1:]]}


def _insert_before_first_text(items: list, new_item: dict, is_text) -> list:
    for i, item in enumerate(items):
        if isinstance(item, dict) and is_text(item):
            return [*items[:i], new_item, *items[i:]]
    return [*items, new_item]
