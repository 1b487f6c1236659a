"""Which API dialect a client speaks, and errors written in that dialect.

SDKs parse error bodies in their own shape; an error in the wrong shape (or mitmproxy's HTML
page) surfaces to the user as an opaque parse failure, so every answer the proxy makes itself
goes through ``error_body``.
"""

from __future__ import annotations

import enum
import json
from typing import Protocol


class ClientProtocol(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


class HeaderGet(Protocol):
    def get(self, name: str, /) -> str | None: ...


def detect_protocol(path: str, headers: HeaderGet) -> ClientProtocol:
    """Guess from the path first (it names the API), then from dialect-specific headers."""
    route = path.split("?", 1)[0]
    if route.startswith("/v1/messages") or route.startswith("/anthropic/"):
        return ClientProtocol.ANTHROPIC
    if ":generateContent" in route or ":streamGenerateContent" in route or route.startswith("/v1beta/"):
        return ClientProtocol.GEMINI
    if headers.get("anthropic-version") is not None:
        return ClientProtocol.ANTHROPIC
    if headers.get("x-goog-api-key") is not None:
        return ClientProtocol.GEMINI
    return ClientProtocol.OPENAI


def gateway_path_protocol(path: str, headers: HeaderGet) -> ClientProtocol:
    """The dialect of a path on the gateway, model call or not: ``/api/...`` is Claude Code's
    own (telemetry, ``HEAD /api/hello``), the rest is told by ``detect_protocol``."""
    if path.startswith("/api/"):
        return ClientProtocol.ANTHROPIC
    return detect_protocol(path, headers)


# (OpenAI error type, Anthropic error type, Gemini status) for each HTTP status we answer with.
_ERROR_KINDS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "authentication_error", "UNAUTHENTICATED"),
    403: ("permission_error", "permission_error", "PERMISSION_DENIED"),
    404: ("not_found_error", "not_found_error", "NOT_FOUND"),
    405: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    413: ("invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    431: ("invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    500: ("server_error", "api_error", "INTERNAL"),
    502: ("server_error", "api_error", "UNAVAILABLE"),
    503: ("server_error", "overloaded_error", "UNAVAILABLE"),
    504: ("timeout_error", "timeout_error", "DEADLINE_EXCEEDED"),
    508: ("server_error", "api_error", "INTERNAL"),
}


def error_body(
    protocol: ClientProtocol,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    """The JSON error body a client of ``protocol`` expects for an HTTP ``status``."""
    openai_type, anthropic_type, gemini_status = _ERROR_KINDS.get(
        status, _ERROR_KINDS[500] if status >= 500 else _ERROR_KINDS[400]
    )
    payload: dict[str, object]
    if protocol is ClientProtocol.ANTHROPIC:
        payload = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    elif protocol is ClientProtocol.GEMINI:
        payload = {"error": {"code": status, "message": message, "status": gemini_status}}
    else:
        payload = {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    return json.dumps(payload).encode()
