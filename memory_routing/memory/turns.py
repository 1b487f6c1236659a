"""The text worth remembering of a model call, per client protocol ("openai", "anthropic", "gemini").

Only the new human turn of a request (not the history the client resends each time), and the
assistant's final text with tool calls as a short trace (not raw tool outputs).
"""

from __future__ import annotations

import re
from typing import Any

from .redact import strip_recall_block

MAX_ANSWER_CHARS = 16_000
# A human turn longer than this (a pasted file, a log) is kept and searched by its start only:
# redacting, indexing and searching a megabyte holds the GIL for seconds, and no recall block
# (about 4,000 characters) could show more of it anyway.
MAX_TURN_CHARS = 16_000
_CUT_MARK = " […]"

# Claude Code puts its own reminders (CLAUDE.md, todo state, hook output) into user messages:
# they are the client talking, not the human, and would be re-stored in every conversation.
_CLIENT_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)


def protocol_name(protocol: Any) -> str:
    """The protocol's name ("openai", "anthropic", "gemini") from that string or the ClientProtocol enum."""
    name = getattr(protocol, "value", protocol)  # the ClientProtocol enum or its value
    if name not in ("openai", "anthropic", "gemini"):
        raise ValueError(f"unknown client protocol {protocol!r} (expected openai, anthropic or gemini)")
    return name


def _clean(text: str) -> str:
    return strip_recall_block(_CLIENT_REMINDER.sub("", text)).strip()


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


def new_human_turn(protocol: Any, payload: dict) -> str | None:
    """The human's text in the request's last message; None unless it is a user message holding text.

    A last message of tool results only (a tool loop's next request) is not a new human turn.
    Images and other media are left out, and so is the recall block this proxy injected.
    """
    name = protocol_name(protocol)
    if not isinstance(payload, dict):
        return None
    if name == "gemini":
        contents = payload.get("contents")
        if isinstance(contents, dict):  # a single Content is accepted by the API too
            contents = [contents]
        if not isinstance(contents, list) or not contents or not isinstance(contents[-1], dict):
            return None
        last = contents[-1]
        if last.get("role", "user") != "user":
            return None
        parts = last.get("parts")
        if isinstance(parts, dict):
            parts = [parts]
        if not isinstance(parts, list):
            return None
        return _join([p["text"] for p in parts
                      if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")])
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "user":  # OpenAI tool results come as role "tool"
        return None
    content = last.get("content")
    if isinstance(content, str):
        return _join([content])
    if not isinstance(content, list):
        return None
    # OpenAI parts are {"type": "text", "text": ...}; Anthropic text blocks have the same shape,
    # and tool_result / image / document blocks are left out.
    return _join([block["text"] for block in content
                  if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)])


def earlier_human_turn(protocol: Any, payload: dict) -> tuple[int, str] | None:
    """(index in messages / contents, text) of the last message holding human text, for a tool
    loop's follow-up request (whose last message holds only tool results); None when there is none.

    That message is the turn the loop answers: the one the recall block went into on the turn's
    first request.
    """
    name = protocol_name(protocol)
    key = "contents" if name == "gemini" else "messages"
    items = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(items, list):
        return None
    for index in range(len(items) - 1, -1, -1):
        text = new_human_turn(name, {key: [items[index]]})
        if text is not None:
            return index, text
    return None


def _tool_trace(name: Any) -> str:
    return f"[tool: {name}]" if isinstance(name, str) and name else "[tool]"


def assistant_text(protocol: Any, answer: dict) -> str:
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

    def feed(self, event: dict) -> None:
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
