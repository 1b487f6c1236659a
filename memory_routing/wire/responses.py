"""Answers the proxy makes itself, as mitmproxy responses in the client's own dialect."""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from mitmproxy import http

from memory_routing.errors import ProxyRefusal
from memory_routing.wire.protocol import ClientProtocol, detect_protocol, error_body

logger = logging.getLogger(__name__)

Hook = TypeVar("Hook", bound=Callable[..., Any])


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


def refusal_response(
    refusal: ProxyRefusal,
    flow: http.HTTPFlow,
    *,
    protocol: ClientProtocol | None = None,
    headers: dict[str, str] | None = None,
) -> http.Response:
    """The one rendering of a ProxyRefusal: its status, message and param in the client's shape."""
    return error_response(
        flow, refusal.status, refusal.message, param=refusal.param, retryable=refusal.retryable,
        protocol=protocol, headers=headers,
    )


def fail_closed(status: int, message: str) -> Callable[[Hook], Hook]:
    """For the hooks of addons that enforce something (authentication, limits, routing).

    mitmproxy logs an exception raised in a hook and lets the request go on: for these addons
    that would mean unauthenticated, unlimited or half-rewritten. An unexpected exception
    answers the client instead (``status`` and ``message`` in its shape), so the request never
    goes upstream. A hook that returns an awaitable is guarded while it is awaited too.
    """

    def decorate(hook: Hook) -> Hook:
        @functools.wraps(hook)
        def guarded(addon: object, flow: http.HTTPFlow) -> Any:
            try:
                result = hook(addon, flow)
            except Exception:
                _refuse_after_failure(flow, hook, status, message)
                return None
            # Most hooks return None; inspect.isawaitable costs an ABC check (~2 µs) per call.
            if result is not None and inspect.isawaitable(result):
                return _guard_awaitable(result, flow, hook, status, message)
            return result

        return guarded  # type: ignore[return-value]

    return decorate


async def _guard_awaitable(result: Any, flow: http.HTTPFlow, hook: Callable[..., Any], status: int, message: str) -> None:
    try:
        await result
    except Exception:
        _refuse_after_failure(flow, hook, status, message)


def _refuse_after_failure(flow: http.HTTPFlow, hook: Callable[..., Any], status: int, message: str) -> None:
    logger.exception(f"memory-routing: {hook.__qualname__} failed; the request is answered {status}, not forwarded")
    try:
        flow.response = error_response(flow, status, message, retryable=status >= 500)
    except Exception:  # the request itself is what broke: answer in OpenAI's shape, the most common
        flow.response = json_response(
            status, error_body(ClientProtocol.OPENAI, status, message), {"x-should-retry": "false"}
        )
