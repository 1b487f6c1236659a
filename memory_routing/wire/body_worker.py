"""The worker process that reads large request bodies, so the proxy's event loop does not.

Pure and standalone: it imports only the standard library and runs as a script
(``python -I -S body_worker.py``), reading requests on stdin and answering on stdout.

Why a process: the C JSON codec holds the GIL for a whole call, so a thread would stall the
event loop just as long (tens to hundreds of ms for a 30 MB body). Why a skeleton: sending the
parsed document back would cost as much to unpickle. So the worker validates the body and
answers with its *skeleton* — the same JSON with every long string value replaced by a
placeholder string holding an unguessable per-request nonce — and the byte spans of those
strings in the body. The event loop parses the small skeleton, edits and encodes it, and puts
the original bytes back where the placeholders are (``large_bodies.LargeBody.splice``).

Request frame: ``REQUEST`` (body length, minimum literal length), then the body.
Answer frame: ``ANSWER`` (meta length, skeleton length), meta JSON, skeleton bytes, where meta
is ``{"nonce", "spans"}``, ``{"error": json's message}`` or ``{"unsupported": reason}``.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
import sys
from typing import Any, BinaryIO

REQUEST = struct.Struct("!QQ")
ANSWER = struct.Struct("!QQ")
# A JSON string literal, escapes included. In valid JSON no quote appears outside strings, so
# scanning literals from the start finds exactly the document's strings.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_KEY_FOLLOWS = re.compile(rb"[ \t\r\n]*:")
# An inline file (image, PDF) as a data URL: its header stays in the skeleton, for the
# translation to read the media type from and to split off as it does for any data URL.
_DATA_URL_HEAD = re.compile(rb'"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,')
_PLACEHOLDER_PREFIX = "large-body:"
# json's C parser gives up past the interpreter's recursion limit (about 1000 levels) with a
# RecursionError, not a ValueError: a body like 200 KB of "[" is still the client's mistake.
NESTED_TOO_DEEP = "its arrays and objects are nested too deeply (the proxy reads up to about 1000 levels)"


def placeholder(nonce: str, index: int) -> str:
    """The text standing for the index-th long string (fixed width: no index is another's prefix)."""
    return f"{_PLACEHOLDER_PREFIX}{nonce}:{index:08d}"


def new_nonce(source: bytes) -> str:
    while True:
        nonce = secrets.token_hex(16)
        if nonce.encode() not in source:
            return nonce


def skeletonize(source: bytes, min_literal: int) -> tuple[dict[str, Any], bytes]:
    """(meta, skeleton) for one body; see the module docstring."""
    if source[:4].count(0) or source[:3] == b"\xef\xbb\xbf" or source[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return {"unsupported": "not plain UTF-8 JSON"}, b""  # json.loads guesses UTF-16/32: the loop does
    nonce = new_nonce(source)
    pieces: list[bytes] = []
    spans: list[int] = []
    last = 0
    for match in _STRING_LITERAL.finditer(source):
        start, end = match.span()
        if end - start < min_literal or _KEY_FOLLOWS.match(source, end):
            continue  # keys stay: two equal long keys must still collapse into one
        try:
            json.loads(source[start:end])  # escapes, control characters, UTF-8
        except ValueError:
            return {"error": _error_of(source) or "the body is not JSON"}, b""
        head = _DATA_URL_HEAD.match(source, start, min(end, start + 256))
        if head is not None:
            start = head.end() - 1  # the comma
        # A span runs from the byte before what the placeholder stands for (the opening quote,
        # or a data URL's comma) to the closing quote; the skeleton keeps both.
        pieces.append(source[last:start + 1])
        pieces.append(placeholder(nonce, len(spans) // 2).encode() + b'"')
        spans += (start, end)
        last = end
    if not spans:
        # Nothing to leave out: the skeleton would be the body, which the loop parses as any body
        # (unless it is broken: then the loop need not see it at all).
        error = _error_of(source)
        return ({"unsupported": "no long strings"} if error is None else {"error": error}), b""
    pieces.append(source[last:])
    skeleton = b"".join(pieces)
    try:
        json.loads(skeleton)
    except (ValueError, RecursionError):
        # The skeleton fails where the body does; the body's own message has the right positions.
        return {"error": _error_of(source) or "the body is not JSON"}, b""
    return {"nonce": nonce, "spans": spans}, skeleton


def _error_of(source: bytes) -> str | None:
    try:
        json.loads(source)
    except ValueError as e:
        return str(e)
    except RecursionError:
        return NESTED_TOO_DEEP
    return None


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exact(stdin, REQUEST.size)
        if header is None:
            return  # the proxy closed the pipe: done
        length, min_literal = REQUEST.unpack(header)
        source = _read_exact(stdin, length)
        if source is None:
            return
        try:
            meta, skeleton = skeletonize(source, min_literal)
        except Exception as e:  # noqa: BLE001 - the proxy falls back to parsing in the loop
            meta, skeleton = {"unsupported": f"worker failed: {type(e).__name__}"}, b""
        encoded = json.dumps(meta).encode()
        stdout.write(ANSWER.pack(len(encoded), len(skeleton)) + encoded)
        stdout.write(skeleton)
        stdout.flush()


if __name__ == "__main__":
    main()
