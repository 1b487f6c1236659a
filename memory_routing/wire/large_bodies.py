"""Large request bodies on the event loop side: the worker process and the splice (pure: no
mitmproxy, no LiteLLM).

``BodyWorker`` hands a body to the worker process (``body_worker``) and gets back its skeleton;
``LargeBody`` knows where each placeholder's original bytes are and puts them back into an
encoded document with one ``bytes.join`` (a copy, no parse). Code that needs the text of a long
string (memory's human turn) gets a bounded prefix from ``readable``, never the placeholder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from memory_routing.wire import body_worker
from memory_routing.wire.body_worker import ANSWER, REQUEST, placeholder
from memory_routing.errors import WorkerUnavailable as WorkerUnavailable  # re-exported

logger = logging.getLogger(__name__)

# A string value at least this long (bytes, quotes and escapes included) stays in the worker.
MIN_LITERAL = 64 * 1024
# How much of a long string memory sees (its recall query and its stored turn).
READABLE_PREFIX_BYTES = 8 * 1024
WORKER_TIMEOUT_S = 60.0
# The pipe is fed in pieces so that no single write copies the whole body on the loop.
_WRITE_PIECE = 1024 * 1024
_WORKER_SCRIPT = Path(body_worker.__file__)
_ELLIPSIS = " […]"




@dataclass(frozen=True, slots=True)
class WorkerAnswer:
    skeleton: bytes = b""
    large: LargeBody | None = None
    error: str | None = None  # the body is not JSON: json's own message
    unsupported: str | None = None  # the worker declined (e.g. UTF-16): parse it in the loop


@dataclass(frozen=True, slots=True)
class LargeBody:
    """The long strings of one body, left in the body's bytes and stood for by placeholders."""

    source: bytes
    nonce: str
    # Flattened (start, end) pairs: from the byte before a placeholder's bytes (the opening
    # quote, or a data URL's comma) to the byte after them (the closing quote).
    spans: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.spans) // 2

    def placeholder(self, index: int) -> str:
        return placeholder(self.nonce, index)

    def _inner(self, index: int) -> memoryview:
        """The bytes the placeholder stands for, as the client escaped them: valid inside any
        JSON string."""
        return memoryview(self.source)[self.spans[2 * index] + 1:self.spans[2 * index + 1] - 1]

    def _has_escapes(self, index: int) -> bool:
        return self.source.find(b"\\", self.spans[2 * index] + 1, self.spans[2 * index + 1] - 1) != -1

    @overload
    def _pattern(self, text: Literal[True]) -> re.Pattern[str]: ...
    @overload
    def _pattern(self, text: Literal[False]) -> re.Pattern[bytes]: ...
    def _pattern(self, text: bool) -> re.Pattern[str] | re.Pattern[bytes]:
        core = re.escape(placeholder(self.nonce, 0)[:-8]) + r"(\d{8})"
        return re.compile(core if text else core.encode())

    def splice(self, encoded: bytes, own_encoding: bool = True) -> bytes | None:
        """``encoded`` with each placeholder replaced by its original bytes; None when that is
        not safe and the document must be decoded fully instead.

        A placeholder inside a longer string is fine in a document the proxy encoded itself (one
        level of JSON escaping). In one someone else built (``own_encoding=False``: LiteLLM's
        translation) a string may have gone into a JSON text inside a string, where escapes
        would need escaping again: there a placeholder that is not a whole string is spliced
        only if its bytes hold no escape (base64 data, plain text). Every placeholder must still
        be there: a missing one means its text was transformed.
        """
        pieces: list[bytes | memoryview] = []
        seen = set()
        last = 0
        for match in self._pattern(text=False).finditer(encoded):
            index = int(match.group(1))
            start, end = match.span()
            if index >= self.count:
                return None
            if not (own_encoding or encoded[start - 1:start] == encoded[end:end + 1] == b'"'
                    or not self._has_escapes(index)):
                return None
            pieces.append(encoded[last:start])
            pieces.append(self._inner(index))
            seen.add(index)
            last = end
        if len(seen) != self.count:
            return None
        pieces.append(encoded[last:])
        return b"".join(pieces)

    def readable(self, text: str) -> str:
        """``text`` with each placeholder replaced by a bounded prefix of its string."""
        if self.nonce not in text:
            return text
        return self._pattern(text=True).sub(lambda m: self._readable(int(m.group(1))), text)

    def _readable(self, index: int) -> str:
        cut = self.spans[2 * index + 1] - self.spans[2 * index] - 2 > READABLE_PREFIX_BYTES
        return self.prefix(index) + (_ELLIPSIS if cut else "")

    def prefix(self, index: int, limit: int = READABLE_PREFIX_BYTES) -> str:
        """The start of the index-th string, decoded from at most ``limit`` bytes of it."""
        inner = self._inner(index)
        raw = bytes(inner[:limit])
        # A cut can split an escape (\\uD83D\\uDE00 is 12 bytes) or a UTF-8 character (4):
        # shorten until the piece decodes.
        for cut in range(len(raw), max(len(raw) - 13, -1), -1):
            try:
                text: str = json.loads(b'"' + raw[:cut] + b'"')
            except ValueError:
                continue
            if cut < len(inner) and text and "\ud800" <= text[-1] <= "\udbff":
                text = text[:-1]  # half of a pair cut off
            return text
        return ""

    def materialize(self, document: Any) -> Any:
        """The document with the original strings in place of the placeholders (the fallback:
        this decodes the long strings here, on the caller's thread)."""
        values: dict[int, str] = {}
        pattern = self._pattern(text=True)

        def value(index: int) -> str:
            if index not in values:
                values[index] = json.loads(b'"' + bytes(self._inner(index)) + b'"')
            return values[index]

        def walk(node: Any) -> Any:
            if isinstance(node, str):
                if self.nonce not in node:
                    return node
                return pattern.sub(lambda m: value(int(m.group(1))), node)
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            return node

        return walk(document)


class BodyWorker:
    """One worker process, started on the first large body; one body at a time."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self.bodies = 0  # read by the worker
        self.failures = 0
        self._closing: asyncio.subprocess.Process | None = None

    async def read(self, source: bytes, min_literal: int = MIN_LITERAL, timeout: float = WORKER_TIMEOUT_S) -> WorkerAnswer:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                answer = await asyncio.wait_for(self._exchange(source, min_literal), timeout)
            except BaseException as e:
                # The pipe is mid-message (a timeout, a cancelled request, a dead worker): start afresh.
                self.close()
                if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                    raise
                self.failures += 1
                raise WorkerUnavailable(f"{type(e).__name__}: {e}") from None
        self.bodies += 1
        return answer

    async def _exchange(self, source: bytes, min_literal: int) -> WorkerAnswer:
        process = await self._started()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(REQUEST.pack(len(source), min_literal))
        view = memoryview(source)
        for start in range(0, len(source), _WRITE_PIECE):
            process.stdin.write(view[start:start + _WRITE_PIECE])
            await process.stdin.drain()
        await process.stdin.drain()
        meta_size, skeleton_size = ANSWER.unpack(await process.stdout.readexactly(ANSWER.size))
        meta = json.loads(await process.stdout.readexactly(meta_size))
        skeleton = await process.stdout.readexactly(skeleton_size) if skeleton_size else b""
        if "error" in meta:
            return WorkerAnswer(error=str(meta["error"]))
        if "unsupported" in meta:
            return WorkerAnswer(unsupported=str(meta["unsupported"]))
        spans = tuple(int(i) for i in meta["spans"])
        large = LargeBody(source, str(meta["nonce"]), spans) if spans else None
        return WorkerAnswer(skeleton=skeleton, large=large)

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is None or self._process.returncode is not None:
            # -I -S: no site-packages, no environment; the worker needs the standard library only.
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(_WORKER_SCRIPT),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1024 * 1024,
            )
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def close(self) -> None:
        """Stop the worker now (a closed stdin would also end it)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
        self._closing = process

    async def aclose(self) -> None:
        """Stop the worker and reap it, so no pipe outlives the event loop."""
        self.close()
        process, self._closing = self._closing, None
        if process is not None:
            await process.wait()
