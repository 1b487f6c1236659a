"""Every private mitmproxy piece the proxy relies on, in one place, each with why.

mitmproxy's addon API (hooks, options, flow attributes) serves almost everything; these are
the four gaps. tests/test_contracts.py checks each against the pinned versions (mitmproxy 12.x
on Python 3.12+, 11.0.2 on 3.11), so an upgrade that moves one fails there, loudly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mitmproxy import connection
from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1, _http2

ErrorPageRenderers = tuple[Callable[..., bytes], Callable[..., bytes]]


# --- 1. mitmproxy's own error page -------------------------------------------------------
# When an upstream fails, mitmproxy writes a text/html page to the client itself; the error
# hook cannot answer instead (mitmproxy PR #7999 proposes it; not in 11.x or 12.x). The two
# module functions that render the page are the only place to put the client's error shape.

def replace_error_page_renderers(
    http1_page: Callable[[Callable[..., bytes], int, str], bytes],
    http2_body: Callable[[Callable[..., bytes], int, str], bytes],
) -> ErrorPageRenderers:
    """Route mitmproxy's HTTP/1 page and HTTP/2 error body through ``http1_page(original,
    status, message)`` / ``http2_body(original, status, message)``; returns the originals."""
    originals = (_http1.make_error_response, _http2.format_error)
    original_page, original_body = originals

    def make_error_response(status_code, message: str = "") -> bytes:
        return http1_page(original_page, status_code, message)

    def format_error(status_code, message: str) -> bytes:
        return http2_body(original_body, status_code, message)

    _http1.make_error_response = make_error_response
    _http2.format_error = format_error
    return originals


def restore_error_page_renderers(originals: ErrorPageRenderers) -> None:
    _http1.make_error_response, _http2.format_error = originals


def assemble_http1_response(response: http.Response) -> bytes:
    """The bytes of a whole HTTP/1 response, as mitmproxy writes it (what make_error_response returns)."""
    return http1.assemble_response(response)


# --- 2. dropping one upstream connection -------------------------------------------------
# mitmproxy has no connect or read timeout of its own (it waits for the OS), and no API to
# close one server connection: flow.kill() closes the client's side. The server_connect hook
# runs inside the task that connects and then reads that connection, so cancelling that task
# is how a connection that timed out is dropped; mitmproxy turns the cancel message into the
# connection's error.

def connection_task() -> asyncio.Task[Any] | None:
    """From inside the server_connect hook: the task that owns this server connection."""
    return asyncio.current_task()


def drop_connection(task: asyncio.Task[Any], reason: str) -> None:
    if not task.done():
        task.cancel(reason)


# --- 3. telling ProxyAuth a connection is checked elsewhere ------------------------------
# ProxyAuth answers 407 on every connection it has no entry for. On the gateway (reverse mode)
# the proxy checks Proxy-Authorization per request itself; ProxyAuth offers no option to leave
# one mode alone, so its per-connection map is filled in for those connections.

def mark_authenticated(proxyauth: Any, client: connection.Client, entry: tuple[str, str]) -> None:
    proxyauth.authenticated[client] = entry


# --- 4. rewriting a request's target in one step -----------------------------------------
# request.scheme/host/port/path are public, but each setter rewrites the Host header (three
# times per routed request, on the hot path); the router sets the Host header itself.

def set_request_target(request: http.Request, scheme: str, host: str, port: int, path: str) -> None:
    data = request.data
    data.scheme = scheme.encode()
    data.host = host
    data.port = port
    data.path = path.encode()
