"""Replace mitmproxy's HTML error page with the client's own error shape, flow by flow.

When an upstream cannot be reached (or times out, or mitmproxy refuses a body), mitmproxy
writes its own ``text/html`` page straight to the client: the ``error`` hook cannot answer
instead (mitmproxy PR #7999 proposes that and is not merged in 11.x or 12.x). SDKs cannot
parse that page and retry blindly. So the module functions that render the page are wrapped:
the ``error`` hook registers the answer for one failure, keyed by the identity of the message
string mitmproxy hands both to ``flow.error`` and to the page renderer, and every failure that
registered nothing still gets mitmproxy's page. Some messages are constants ("server closed
connection"), shared by every flow that fails that way, and other flows may fail between a
flow's hook and its page: answers for one message are kept in arrival order, first come first
served.

Hand-written because mitmproxy has no supported way to do this; kept to the two renderers
and checked against mitmproxy 11.0.2 and 12.x by the end-to-end tests.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from mitmproxy import http

from memory_routing.mitm.internals import (
    ErrorPageRenderers,
    assemble_http1_response,
    replace_error_page_renderers,
    restore_error_page_renderers,
)

# Registered answers whose failure never reached a renderer (the client was already gone)
# are dropped oldest-first past this many.
PENDING_LIMIT = 1024
# mitmproxy renders the page right after the error hook; an answer older than this was for a
# failure that never got a page (the client had left) and must not go to another client.
STALE_SECONDS = 5.0


class ErrorPageOverrides:
    def __init__(self) -> None:
        # id(message) -> (message, answers in arrival order); the message is held so its id
        # stays unique.
        self._pending: collections.OrderedDict[int, tuple[str, collections.deque[tuple[float, http.Response]]]] = (
            collections.OrderedDict()
        )
        self._originals: ErrorPageRenderers | None = None

    def register(self, message: str, answer: http.Response) -> None:
        """Send ``answer`` instead of mitmproxy's page for the failure whose text is ``message``
        (the very object in ``flow.error.msg``)."""
        entry = self._pending.get(id(message))
        if entry is None or entry[0] is not message:
            entry = self._pending[id(message)] = (message, collections.deque(maxlen=PENDING_LIMIT))
        entry[1].append((time.monotonic(), answer))
        while len(self._pending) > PENDING_LIMIT:
            self._pending.popitem(last=False)

    def install(self) -> None:
        if self._originals is not None:
            return

        def page(original: Callable[..., bytes], status_code: int, message: str) -> bytes:
            answer = self._take(message)
            if answer is None:
                return original(status_code, message)
            answer.headers["connection"] = "close"  # mitmproxy closes the connection next
            return assemble_http1_response(answer)

        def body(original: Callable[..., bytes], status_code: int, message: str) -> bytes:
            # HTTP/2: mitmproxy writes the status and a text/html content-type itself; only
            # the body can be replaced.
            answer = self._take(message)
            return original(status_code, message) if answer is None else answer.raw_content or b""

        self._originals = replace_error_page_renderers(page, body)

    def uninstall(self) -> None:
        if self._originals is not None:
            restore_error_page_renderers(self._originals)
            self._originals = None
        self._pending.clear()

    def _take(self, message: object) -> http.Response | None:
        entry = self._pending.get(id(message))
        if entry is None or entry[0] is not message:
            return None
        answers = entry[1]
        oldest_usable = time.monotonic() - STALE_SECONDS
        answer = None
        while answers and answer is None:
            registered_at, candidate = answers.popleft()
            if registered_at >= oldest_usable:
                answer = candidate
        if not answers:
            del self._pending[id(message)]
        return answer
