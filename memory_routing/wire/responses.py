"""Answers the proxy makes itself, as mitmproxy responses in the client's own dialect."""

from __future__ import annotations

import json

from mitmproxy import http

from memory_routing.wire.protocol import ClientProtocol, detect_protocol, error_body


def json_response(status: int, payload: object | bytes, extra_headers: dict[str, str] | None = None) -> http.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, indent=2).encode()
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    return http.Response.make(status, body, headers | (extra_headers or {}))


def error_response(
    flow: http.HTTPFlow,
    status: int,
    message: str,
    *,
    param: str | None = None,
    retryable: bool = False,
    protocol: ClientProtocol | None = None,
    headers: dict[str, str] | None = None,
) -> http.Response:
    """An error in the shape the client's SDK parses; ``x-should-retry: false`` unless retryable.

    ``protocol``: the client's dialect when known (after rewriting, the path no longer tells).
    """
    protocol = protocol or detect_protocol(flow.request.path, flow.request.headers)
    extra = ({} if retryable else {"x-should-retry": "false"}) | (headers or {})
    return json_response(status, error_body(protocol, status, message, param=param), extra)
