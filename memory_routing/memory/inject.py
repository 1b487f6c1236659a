"""The recall block: rendering memories within a token budget and putting blocks into user messages.

A block goes into its turn's user message and nowhere else: the system prompt and the tools stay
byte-identical, every earlier turn carries its own block again exactly as first sent
(memory/blocks.py), so the provider's prompt cache keeps matching, and `cache_control` markers are
never added, removed or moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .records import BlockLine, Memory
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
    """The fenced block for `memories` within budget_tokens (see block_lines)."""
    return render_lines(block_lines(memories, budget_tokens))


def render_block_counted(memories: Sequence[Memory | Sequence[Memory]], budget_tokens: int) -> tuple[str, int]:
    """(the fenced block, how many memories it shows, a cut one included)."""
    lines = block_lines(memories, budget_tokens)
    return render_lines(lines), len(lines)


def block_lines(memories: Sequence[Memory | Sequence[Memory]], budget_tokens: int) -> tuple[BlockLine, ...]:
    """The lines of the fenced block for `memories` in the order given (a nested sequence is a run
    of neighbouring turns, kept together and set apart by a blank line); () when nothing fits.

    Lines are added while the whole block (render_lines) stays within budget_tokens * 4
    characters; a line that does not fit is cut with "…" when at least a useful part of it fits.
    """
    budget = budget_tokens * CHARS_PER_TOKEN
    frame = len(FENCE_OPEN) + len(HEADER) + len(FENCE_CLOSE) + 2
    room = budget - frame
    lines: list[BlockLine] = []
    run_index = -1
    for group in memories:
        run = [group] if isinstance(group, Memory) else list(group)
        if not run or room <= 0:
            continue
        if lines:
            if room < 2:
                break
            room -= 1  # the blank line before this run (dropped again if the run shows nothing)
        run_index += 1
        shown_date = None
        for memory in run:
            date = _date(memory.created_at)
            body = f"{memory.role}: {_defenced(memory.text)}"
            line = _line(date, body, date != shown_date)
            shown_date = date
            if len(line) + 1 <= room:
                lines.append(BlockLine(memory.id, run_index, date, body))
                room -= len(line) + 1
            elif room > 80:
                cut = line[: room - 1 - len(_ELLIPSIS)] + _ELLIPSIS
                lines.append(BlockLine(memory.id, run_index, date, cut[len(line) - len(body):]))
                room = 0
                break
            else:
                room = 0
                break
    return tuple(lines)


def _line(date: str, body: str, dated: bool) -> str:
    # The date opens a run and is repeated only when it changes: a run is mostly one sitting,
    # and the characters go to more memories instead.
    return f"[{date}] {body}" if dated else body


def render_lines(lines: Sequence[BlockLine]) -> str:
    """The fenced block showing `lines`; "" for none. The same lines always give the same text, so
    a block kept as lines is re-sent byte for byte, and one that lost a line (a forgotten memory)
    still reads right: each run's first line carries its date."""
    if not lines:
        return ""
    out: list[str] = [FENCE_OPEN, HEADER]
    previous: BlockLine | None = None
    for line in lines:
        new_run = previous is None or line.run != previous.run
        if new_run and previous is not None:
            out.append("")
        out.append(_line(line.date, line.body, previous is None or new_run or line.date != previous.date))
        previous = line
    out.append(FENCE_CLOSE)
    return "\n".join(out)


def inject_recall(protocol: Any, payload: dict[str, Any], block: str, index: int = -1) -> dict[str, Any]:
    """A copy of `payload` with `block` at the start of the user message's text at `index` (the
    last by default); `payload` is not changed. See inject_blocks."""
    items = payload.get("contents" if protocol_name(protocol) == "gemini" else "messages") \
        if isinstance(payload, dict) else None
    if not isinstance(items, list) or not -len(items) <= index < len(items):
        return payload
    return inject_blocks(protocol, payload, {index % len(items): block})


def inject_blocks(protocol: Any, payload: dict[str, Any], blocks: Mapping[int, str]) -> dict[str, Any]:
    """A copy of `payload` with each block at the start of the text of the user message at its
    index (of messages / contents); `payload` is not changed, nor is any other message.

    Anthropic/OpenAI list content: a new text block (no cache_control) before the first text block
    (after any tool_result blocks, which must come first). String content: prefixed. Gemini: a new
    text part before the first text part of the content. Anything else is left as it was.
    Where the block goes depends on the message alone, never on its cache_control markers: the
    same message and block always give the same bytes, so a turn's block is put back into later
    requests (memory/blocks.py) exactly as the provider first saw it.
    """
    name = protocol_name(protocol)
    key = "contents" if name == "gemini" else "messages"
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list):
        return payload
    changed = list(items)
    for index, block in blocks.items():
        if block and 0 <= index < len(items) and isinstance(items[index], dict):
            changed[index] = _with_block(name, items[index], block)
    if all(new is old for new, old in zip(changed, items, strict=True)):
        return payload
    return {**payload, key: changed}


def _with_block(name: str, message: dict[str, Any], block: str) -> dict[str, Any]:
    if name == "gemini":
        parts = message.get("parts")
        if message.get("role", "user") != "user" or not isinstance(parts, list):
            return message
        return {**message, "parts": _insert_before_first_text(parts, {"text": block},
                                                              lambda p: isinstance(p.get("text"), str))}
    if message.get("role") != "user":
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": f"{block}\n\n{content}"}
    if isinstance(content, list):
        return {**message, "content": _insert_before_first_text(content, {"type": "text", "text": block},
                                                                lambda b: b.get("type") == "text")}
    return message


def _insert_before_first_text(items: list[Any], new_item: dict[str, Any],
                              is_text: Callable[[dict[str, Any]], bool]) -> list[Any]:
    for i, item in enumerate(items):
        if isinstance(item, dict) and is_text(item):
            return [*items[:i], new_item, *items[i:]]
    return [*items, new_item]
