"""The pure judgements behind UpstreamAnswerCheck and UpstreamFailures' unreachable hosts."""

from __future__ import annotations

import pytest

from memory_routing.addons.upstream_answers import looks_like_json, unexpected_head
from memory_routing.addons.upstream_failures import unreachable_reason


@pytest.mark.parametrize("status, content_type, unexpected", [
    (200, "application/json", False),
    (200, "application/json; charset=utf-8", False),
    (200, "application/x-ndjson", False),
    (200, "text/event-stream; charset=utf-8", False),
    (200, "", False),  # no type: judged by the body
    (200, "text/html", True),
    (200, "text/plain", True),
    (502, "text/html", True),
    (429, "text/plain; charset=utf-8", True),
    (400, "application/problem+json", False),
    (500, "text/event-stream", True),
])
def test_unexpected_head(status: int, content_type: str, unexpected: bool) -> None:
    assert unexpected_head(status, content_type) is unexpected


@pytest.mark.parametrize("body, json_like", [
    (b'{"a": 1}', True), (b" [1]\n", True), (b"", False), (b"<html></html>", False),
    (b'{"a": 1', False), (b"OK", False),
])
def test_looks_like_json(body: bytes, json_like: bool) -> None:
    assert looks_like_json(body) is json_like


@pytest.mark.parametrize("text, reason", [
    ("[Errno -2] Name or service not known", "does not resolve"),
    ("[Errno -3] Temporary failure in name resolution", "does not resolve"),
    ("[Errno 111] Connect call failed ('127.0.0.1', 9)", "refused"),
    ("Multiple exceptions: [Errno 111] Connection refused, [Errno 99] Cannot assign", "refused"),
    ("[Errno 101] Network is unreachable", "network cannot reach"),
    ("server closed connection", None),
    ("memory-routing: connect timeout after 10 s", None),
])
def test_unreachable_reason(text: str, reason: str | None) -> None:
    found = unreachable_reason(text)
    assert (found is None) if reason is None else (found is not None and reason in found)
