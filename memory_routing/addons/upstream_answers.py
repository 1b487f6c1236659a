"""Addon that turns an upstream answer which is not what the API promises into an error in the
client's own shape.

An SDK parses JSON (or an event stream); an nginx "502 Bad Gateway" page in front of a
self-hosted model, a captive portal's login page or a truncated body reach it as an opaque parse
failure. So, for routed calls:

- An error status (4xx/5xx) with a page that is not JSON: the same status, in the client's
  shape, with a short reason (the status line and the server's name; never the page itself).
- A success whose head says neither JSON nor an event stream (text/html where a stream was
  asked for, too): 502 with ``x-should-retry: false`` (the same request gets the same page).
- A success read whole whose body does not parse as JSON: 502 likewise.

The flow-log line says so (``error``, ``upstream_status``), and memory stores nothing: the
answer is replaced before memory looks at it (this stage runs before memory and the router).
Cloudflare's pages are left to CloudflareGuard. A translated call's error is written in the
provider's shape, which the router then translates like any provider error.
"""

from __future__ import annotations

import logging
import re

from mitmproxy import http

from memory_routing.flow_state import context_of, known_context, route_of
from memory_routing.mitm.answer_json import answer_json
from memory_routing.upstream.cloudflare_pages import is_cloudflare_error_head
from memory_routing.wire.responses import error_response

logger = logging.getLogger(__name__)

# A whole answer up to this size is parsed here when nothing else would parse it (larger ones
# only get the cheap check of their first and last bytes).
_PARSED_UP_TO = 256 * 1024
# A Server header shown in the message: a short product token, nothing that could carry markup.
_SERVER_NAME = re.compile(r"[A-Za-z0-9._/ ()-]{1,40}")
# Seconds or an HTTP date: passed on as the upstream sent it.
_RETRY_AFTER = re.compile(r"[A-Za-z0-9 ,:]{1,40}")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(media: str) -> bool:
    """application/json, application/problem+json, application/x-ndjson and the like."""
    return media.endswith("json")


def unexpected_head(status: int, content_type: str) -> bool:
    """From the head alone: is this answer certainly not what a model API sends?"""
    media = media_type(content_type)
    if not media or is_json_type(media):
        return False  # no type: judged by its body, if it is read whole
    if status < 400:
        return media != "text/event-stream"
    return True


def looks_like_json(body: bytes) -> bool:
    """The cheap check: a JSON document's first and last bytes (no parse)."""
    text = body.strip()
    return bool(text) and (text[:1], text[-1:]) in ((b"{", b"}"), (b"[", b"]"))


class UpstreamAnswerCheck:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or route_of(flow) is None or flow.request.method == "HEAD":
            return
        content_type = response.headers.get("content-type", "")
        if not unexpected_head(response.status_code, content_type):
            return
        headers = {name.lower(): value for name, value in response.headers.items()}
        if is_cloudflare_error_head(response.status_code, headers):
            return  # CloudflareGuard answers Cloudflare's own pages
        what = f"a {media_type(content_type)} page"
        self._replace(flow, response.status_code, what, _server_of(headers))
        replacement = flow.response
        assert replacement is not None
        replacement.stream = False  # the upstream's page is read whole, then dropped
        # mitmproxy writes the upstream's body into the response it holds once it has read it:
        # response() puts the error body back.
        context_of(flow).replaced_answer = replacement.raw_content or b""

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        context = known_context(flow)
        if context is not None and context.replaced_answer is not None:
            # The upstream's page, read by mitmproxy into the response, goes: the error body returns.
            response.content, context.replaced_answer = context.replaced_answer, None
            return
        if (route_of(flow) is None or response.stream or flow.request.method == "HEAD"
                or response.status_code in (204, 304)):
            return
        content_type = response.headers.get("content-type", "")
        media = media_type(content_type)
        if media and not is_json_type(media):
            return  # an event stream read whole, or a Cloudflare page: not this stage's
        raw = response.raw_content or b""
        if "content-encoding" not in response.headers and not looks_like_json(raw):
            readable = False
        elif len(raw) <= _PARSED_UP_TO:
            readable = answer_json(flow).error is None  # the usage meter and memory share it
        else:
            return
        if readable:
            return
        headers = {name.lower(): value for name, value in response.headers.items()}
        if is_cloudflare_error_head(response.status_code, headers):
            return
        what = "a body that is not valid JSON" if media else "a body that is not JSON (and no content-type)"
        self._replace(flow, response.status_code, what, _server_of(headers))

    def _replace(self, flow: http.HTTPFlow, status: int, what: str, server: str) -> None:
        route = route_of(flow)
        assert route is not None and flow.response is not None
        host = flow.request.pretty_host
        status_line = f"{status} {flow.response.reason or ''}".strip()
        by = f" (server: {server})" if server else ""
        answer_status = status if status >= 400 else 502
        expected = "the API's JSON error" if status >= 400 else "the API's JSON"
        message = f"{host} answered {status_line}{by} with {what}, not {expected}"
        translation = route.decision.translation
        # A translated call's error is written as its provider would: the router translates it.
        protocol = translation.target_protocol if translation is not None else route.client_protocol
        logger.warning(f"memory-routing: {message}; the client gets {answer_status} in its own error shape")
        context_of(flow).note(error=message, upstream_status=status)
        # An error status keeps the upstream's retry semantics (the SDK judges the status and
        # its retry-after); a success that is not JSON will be the same page next time.
        retry_after = flow.response.headers.get("retry-after", "")
        kept = {"retry-after": retry_after} if status >= 400 and _RETRY_AFTER.fullmatch(retry_after) else None
        flow.response = error_response(
            flow, answer_status, message, retryable=status >= 400, protocol=protocol, headers=kept)


def _server_of(headers: dict[str, str]) -> str:
    server = headers.get("server", "")
    return server if _SERVER_NAME.fullmatch(server) else ""
