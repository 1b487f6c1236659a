"""The text worth remembering of a model call, per client protocol ("openai", "anthropic", "gemini").

Only the new human turn of a request (not the history the client resends each time), and the
assistant's final text with tool calls as a short trace (not raw tool outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .redact import FENCE_OPEN, strip_recall_block

MAX_ANSWER_CHARS = 16_000
# A human turn longer than this (a pasted file, a log) is kept and searched by its start only:
# redacting, indexing and searching a megabyte holds the GIL for seconds, and no recall block
# (about 4,000 characters) could show more of it anyway.
MAX_TURN_CHARS = 16_000
_CUT_MARK = " […]"

# Claude Code puts its own reminders (CLAUDE.md, todo state, hook output) into user messages:
# they are the client talking, not the human, and would be re-stored in every conversation.
_REMINDER_OPEN, _REMINDER_CLOSE = "<system-reminder>", "</system-reminder>"


def protocol_name(protocol: Any) -> str:
    """The protocol's name ("openai", "anthropic", "gemini") from that string or the ClientProtocol enum."""
    name = getattr(protocol, "value", protocol)  # the ClientProtocol enum or its value
    if name not in ("openai", "anthropic", "gemini"):
        raise ValueError(f"unknown client protocol {protocol!r} (expected openai, anthropic or gemini)")
    return str(name)


def _clean(text: str) -> str:
    # Every human message of the history is read on every request (a long Claude Code session
    # resends hundreds of kilobytes of reminders): str.find, and the regular expressions only
    # where their markers are.
    if _REMINDER_OPEN in text:
        text = _without_reminders(text)
    if FENCE_OPEN in text:
        text = strip_recall_block(text)
    return text.strip()


def _without_reminders(text: str) -> str:
    """``text`` without its <system-reminder> elements, each to its closing tag (an unclosed one to the end)."""
    kept, position = [], 0
    while (start := text.find(_REMINDER_OPEN, position)) >= 0:
        kept.append(text[position:start])
        end = text.find(_REMINDER_CLOSE, start + len(_REMINDER_OPEN))
        if end < 0:
            return "".join(kept)
        position = end + len(_REMINDER_CLOSE)
    kept.append(text[position:])
    return "".join(kept)


def _join(texts: list[str]) -> str | None:
    cleaned = [t for t in (_clean(text) for text in texts) if t]
    return bounded_turn("\n".join(cleaned)) if cleaned else None


def bounded_turn(text: str, limit: int = MAX_TURN_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, at a space where one is near, marked when cut.

    Cutting at whitespace keeps a credential-shaped token whole, so redaction still sees it.
    """
    if len(text) <= limit:
        return text
    space = max(text.rfind(" ", limit - 256, limit), text.rfind("\n", limit - 256, limit))
    return text[:space if space > 0 else limit] + _CUT_MARK


@dataclass(frozen=True, slots=True)
class HumanTurn:
    """A message holding human text: its position in ``messages`` (``contents`` for Gemini) and its text."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class HumanTurns:
    """Every message of a request that holds human text, in order, and whether the last one is new.

    ``new``: nothing follows the last human message but what a client appends to a turn it
    opens (system or developer messages, empty messages, an assistant prefill as the very last
    message). A tool call or a tool result after it means the model has answered it already:
    the request is a tool loop's follow-up of that turn.
    """

    turns: tuple[HumanTurn, ...]
    new: bool

    @property
    def last(self) -> HumanTurn | None:
        return self.turns[-1] if self.turns else None


_NO_TURNS = HumanTurns((), False)
# Roles that never hold the human's words; a client may append them after the human's message
# (Claude Code appends a system message on a model it does not know).
_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_TOOL_RESULT_ROLES = frozenset({"tool", "function"})


def human_turns(protocol: Any, payload: Any) -> HumanTurns:
    """The request's human turns (see HumanTurns); none for anything that is not a conversation.

    The human turn is the last message holding user text, wherever it stands: trailing
    system/developer messages, tool results and empty messages do not hide it. Images and other
    media are left out of the text, and so are client reminders and the recall block this proxy
    injected.
    """
    name = protocol_name(protocol)
    if not isinstance(payload, dict):
        return _NO_TURNS
    items = payload.get("contents" if name == "gemini" else "messages")
    if name == "gemini" and isinstance(items, dict):  # a single Content is accepted by the API too
        items = [items]
    if not isinstance(items, list):
        return _NO_TURNS
    turns: list[HumanTurn] = []
    answered = False  # a tool call, a tool result or an answer follows the last human turn
    for index, item in enumerate(items):
        kind, text = _message_kind(name, item, last=index == len(items) - 1)
        if text is not None:
            turns.append(HumanTurn(index, text))
            answered = False
        elif kind == "answer":
            answered = True
    return HumanTurns(tuple(turns), bool(turns) and not answered)


def _message_kind(name: str, item: Any, last: bool) -> tuple[str, str | None]:
    """("human" and its text) | ("answer", None): a tool call/result or the model's answer |
    ("aside", None): what a client appends to a turn (instructions, empty messages, a prefill)."""
    if not isinstance(item, dict):
        return "aside", None
    if name == "gemini":
        role = item.get("role", "user")
        parts = item.get("parts")
        if isinstance(parts, dict):
            parts = [parts]
        parts = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
        if role in _TOOL_RESULT_ROLES or any("functionResponse" in p or "functionCall" in p for p in parts):
            text = _join([p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]) \
                if role == "user" else None
            return ("human", text) if text is not None else ("answer", None)
        if role == "user":
            text = _join([p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")])
            return ("human", text) if text is not None else ("aside", None)
        return ("aside", None) if last or not parts else ("answer", None)  # the model's turn (a prefill when last)
    role = item.get("role")
    content = item.get("content")
    if role in _INSTRUCTION_ROLES:
        return "aside", None
    if role in _TOOL_RESULT_ROLES:
        return "answer", None
    if role == "assistant":
        if item.get("tool_calls") or item.get("function_call") or (isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") in ("tool_use", "server_tool_use") for b in content)):
            return "answer", None
        return ("aside", None) if last or not content else ("answer", None)
    if role != "user":
        return "aside", None
    if isinstance(content, str):
        text = _join([content])
        return ("human", text) if text is not None else ("aside", None)
    if not isinstance(content, list):
        return "aside", None
    # OpenAI parts are {"type": "text", "text": ...}; Anthropic text blocks have the same shape,
    # and tool_result / image / document blocks are left out.
    text = _join([block["text"] for block in content
                  if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)])
    if text is not None:
        return "human", text
    tool_result = any(isinstance(block, dict) and block.get("type") == "tool_result" for block in content)
    return ("answer", None) if tool_result else ("aside", None)


def new_human_turn(protocol: Any, payload: dict[str, Any]) -> str | None:
    """The text of the human turn this request opens (see human_turns); None when it opens none
    (a tool loop's follow-up, or no human text at all)."""
    found = human_turns(protocol, payload)
    return found.last.text if found.new and found.last is not None else None


def earlier_human_turn(protocol: Any, payload: dict[str, Any]) -> tuple[int, str] | None:
    """(index, text) of the human turn a tool loop's follow-up request answers; None when the
    request opens a new turn or holds no human text."""
    found = human_turns(protocol, payload)
    if found.new or found.last is None:
        return None
    return found.last.index, found.last.text


def _tool_trace(name: Any) -> str:
    return f"[tool: {name}]" if isinstance(name, str) and name else "[tool]"


def assistant_text(protocol: Any, answer: dict[str, Any]) -> str:
    """The text of a whole (not streamed) answer, tool calls as `[tool: name]`; "" when there is none."""
    name = protocol_name(protocol)
    collector = AnswerTextCollector(name)
    if not isinstance(answer, dict):
        return ""
    if name == "openai":
        choices = answer.get("choices")
        message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                collector.add_text(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        collector.add_text(part["text"])
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    function = call.get("function")
                    collector.add_tool(function.get("name") if isinstance(function, dict) else None)
    elif name == "anthropic":
        for block in answer.get("content") or []:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                collector.add_text(block["text"])
            elif block.get("type") in ("tool_use", "server_tool_use"):
                collector.add_tool(block.get("name"))
    else:
        collector.feed(answer)  # a streamed Gemini chunk is a whole GenerateContentResponse
    return collector.text()


class AnswerTextCollector:
    """Accumulates an answer's text from parsed stream events, up to MAX_ANSWER_CHARS.

    OpenAI: chat.completion.chunk dicts (choices[0].delta). Anthropic: message stream events
    (content_block_start / content_block_delta). Gemini: streamed GenerateContentResponse dicts.
    """

    def __init__(self, protocol: Any, max_chars: int = MAX_ANSWER_CHARS) -> None:
        self.protocol = protocol_name(protocol)
        self.max_chars = max_chars
        self.truncated = False
        self._pieces: list[str] = []
        self._size = 0
        self._text_open = False  # the last piece is text that deltas extend

    def add_text(self, text: str) -> None:
        if not text:
            return
        room = self.max_chars - self._size
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text, self.truncated = text[:room], True
        if self._text_open:
            self._pieces[-1] += text
        else:
            self._pieces.append(text)
            self._text_open = True
        self._size += len(text)

    def add_tool(self, name: Any) -> None:
        trace = _tool_trace(name)
        if self._size + len(trace) > self.max_chars:
            self.truncated = True
            return
        self._pieces.append(trace)
        self._size += len(trace)
        self._text_open = False

    def feed(self, event: dict[str, Any]) -> None:
        """Takes one parsed event; anything it does not recognise is ignored."""
        if not isinstance(event, dict):
            return
        if self.protocol == "openai":
            for choice in event.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                if isinstance(delta.get("content"), str):
                    self.add_text(delta["content"])
                for call in delta.get("tool_calls") or []:
                    function = call.get("function") if isinstance(call, dict) else None
                    # The name comes once, in the call's first chunk; later chunks carry arguments.
                    if isinstance(function, dict) and function.get("name"):
                        self.add_tool(function["name"])
        elif self.protocol == "anthropic":
            kind = event.get("type")
            if kind == "content_block_start":
                block = event.get("content_block")
                if isinstance(block, dict):
                    if block.get("type") in ("tool_use", "server_tool_use"):
                        self.add_tool(block.get("name"))
                    elif block.get("type") == "text":
                        self._text_open = False
                        self.add_text(block.get("text") or "")
            elif kind == "content_block_delta":
                delta = event.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                    self.add_text(delta["text"])
            elif kind == "content_block_stop":
                self._text_open = False
        else:
            candidates = event.get("candidates")
            if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
                return
            content = candidates[0].get("content")
            for part in (content.get("parts") if isinstance(content, dict) else None) or []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    self.add_text(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    self.add_tool(part["functionCall"].get("name"))

    def text(self) -> str:
        """The answer so far: text pieces and tool traces, one per line, without our recall block."""
        return strip_recall_block("\n".join(piece.strip() for piece in self._pieces if piece.strip())).strip()
