"""Addon that refuses oversized or ambiguous model calls before they are routed: 431 for
headers, 413 for bodies, 400 for a second Host header or a control character (NUL, CR, LF) in
a header value.

On the gateway (reverse mode) mitmproxy replaces every Host header with the target's before any
hook runs, which would hide a second one; so this addon sets ``keep_host_header`` (unless the
user set it) and does that rewrite itself, after counting the client's Host headers.

All answers come in the client's own error shape, with ``x-should-retry: false`` (the same
request will never fit). The body limit is enforced by mitmproxy itself: the body size option
sets mitmproxy's ``body_size_limit`` (unless that was set explicitly), which refuses a body
announced by Content-Length from its headers alone, before reading it and before answering
``Expect: 100-continue``, and stops reading a chunked body once it passes the limit. A hook
could only answer after mitmproxy had read the body whole. mitmproxy's refusal is an HTML page;
the ``error`` hook registers the client-shaped 413 in its place (see addons/error_pages).
"""

from __future__ import annotations


from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.utils import human

from memory_routing.mitm.flows import is_gateway, routed_call
from memory_routing.addons.error_pages import ErrorPageOverrides
from memory_routing.wire.responses import error_response, fail_closed
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.wire.header_values import CONTROL_IN_RAW_VALUE


# mitmproxy's HTTP/1 parser passes NUL and a bare CR inside a header value through, and would
# forward them raw (CONTROL_IN_RAW_VALUE says why that matters).

# mitmproxy's body_size_limit also kills answers (before any hook could stream them): never set
# it below this, so an unstreamed answer of up to 64 MiB still passes. Requests between the
# limit and this are read whole and refused by the request hook.
BODY_SIZE_LIMIT_FLOOR = 64 * 1024 * 1024

# The text of mitmproxy's refusal (mitmproxy/proxy/layers/http, check_body_size).
BODY_SIZE_LIMIT_TEXT = "Request body exceeds mitmproxy's body_size_limit"
_FAILED = "the proxy could not check this request's size; its log has the details"


class RequestLimits:
    def __init__(self, routing: RoutingConfig, pages: ErrorPageOverrides | None = None) -> None:
        self.routing = routing
        self.pages = pages
        self.max_body = 0
        self.max_headers = 0
        # The body_size_limit value this addon set (None: the user's, or unset).
        self._set_body_size_limit: str | None = None
        # Whether this addon set keep_host_header, and so rewrites the gateway's Host itself.
        self._rewrites_gateway_host = False

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_max_body_size", str, "32m",
            "Largest request body of a model call (k/m/g suffixes); larger ones get 413. 0: no limit.",
        )
        loader.add_option(
            "memory_routing_max_header_size", str, "64k",
            "Largest total size of a model call's request headers (k/m suffixes); larger ones get 431. 0: no limit.",
        )

    def configure(self, updated) -> None:
        if "keep_host_header" in updated and "keep_host_header" in ctx.options:
            self._take_gateway_host_rewrite()
        for option in ("memory_routing_max_body_size", "memory_routing_max_header_size"):
            if option in updated:
                try:
                    size = human.parse_size(getattr(ctx.options, option)) or 0
                except ValueError:
                    raise exceptions.OptionsError(
                        f"{option}: {getattr(ctx.options, option)!r} is not a size (e.g. 32m, 512k, 1048576)"
                    ) from None
                if option == "memory_routing_max_body_size":
                    self.max_body = size
                    self._apply_body_size_limit()
                else:
                    self.max_headers = size

    def _take_gateway_host_rewrite(self) -> None:
        if ctx.options.keep_host_header:
            return  # set by the user (the client's Host goes upstream), or already by this addon
        self._rewrites_gateway_host = True
        ctx.options.update(keep_host_header=True)

    def _apply_body_size_limit(self) -> None:
        if "body_size_limit" not in ctx.options:
            return  # mitmproxy's core addons are not loaded (a test harness)
        current = ctx.options.body_size_limit
        if current and current != self._set_body_size_limit:
            return  # the user's own body_size_limit: theirs to choose
        wanted = str(max(self.max_body, BODY_SIZE_LIMIT_FLOOR)) if self.max_body else None
        self._set_body_size_limit = wanted
        if current != wanted:
            ctx.options.update(body_size_limit=wanted)

    @fail_closed(500, _FAILED)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self._applies(flow):
            return
        fields = flow.request.headers.fields
        hosts = size = 0
        control_in = None
        length = b""
        for name, value in fields:  # one pass: this runs on every model call
            size += len(name) + len(value)
            if len(name) == 4 and name.lower() == b"host":
                hosts += 1
            elif not length and len(name) == 14 and name.lower() == b"content-length":
                length = value
            if control_in is None and CONTROL_IN_RAW_VALUE.search(value):
                control_in = name
        if control_in is not None:
            # The name is a token (mitmproxy's parser checked it), safe to echo; the value is not.
            flow.response = error_response(
                flow, 400,
                f"the request header {control_in.decode('ascii', 'replace')!r} contains a control character "
                "(NUL, CR or LF) in its value; such a request is never forwarded",
            )
            return
        if hosts > 1:
            # Two Host headers let two parsers disagree about where a request goes; h2 <= 4.4.0
            # passes them on from HTTP/2 (CVE-2026-71554) and mitmproxy 12.2 ships h2 4.3.0.
            flow.response = error_response(flow, 400, "the request has more than one Host header")
            return
        if self._rewrites_gateway_host and is_gateway(flow) and flow.server_conn.address is not None:
            # What mitmproxy does in reverse mode without keep_host_header (http layer).
            host, port = flow.server_conn.address[:2]
            flow.request.host_header = url.hostport("https" if flow.server_conn.tls else "http", host, port)
        if self.max_headers and size + 4 * len(fields) > self.max_headers:
            flow.response = error_response(
                flow, 431,
                f"the request headers are larger than this proxy accepts ({human.pretty_size(self.max_headers)}, "
                "memory_routing_max_header_size)",
            )
            return
        if self.max_body and length.isdigit() and int(length) > self.max_body:
            flow.response = self._too_large(flow, int(length))

    @fail_closed(500, _FAILED)
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self.max_body or flow.request.raw_content is None:
            return
        size = len(flow.request.raw_content)
        if size > self.max_body and self._applies(flow):
            flow.response = self._too_large(flow, size)

    def error(self, flow: http.HTTPFlow) -> None:
        if self.pages is None or flow.error is None or not flow.error.msg.startswith(BODY_SIZE_LIMIT_TEXT):
            return
        length = flow.request.headers.get("content-length", "")
        limit = self.max_body or human.parse_size(ctx.options.body_size_limit or "0") or 0
        size = f"{human.pretty_size(int(length))}, announced" if length.isdigit() else f"more than {human.pretty_size(limit)}"
        # Every flow gets a parseable answer here, model call or not: the alternative is
        # mitmproxy's HTML page.
        answer = error_response(
            flow, 413,
            f"the request body ({size}) is larger than this proxy accepts "
            f"({human.pretty_size(limit)}, memory_routing_max_body_size)",
        )
        self.pages.register(flow.error.msg, answer)

    def _applies(self, flow: http.HTTPFlow) -> bool:
        return is_gateway(flow) or routed_call(flow, self.routing.llm_hosts) is not None

    def _too_large(self, flow: http.HTTPFlow, size: int) -> http.Response:
        return error_response(
            flow, 413,
            f"the request body ({human.pretty_size(size)}) is larger than this proxy accepts "
            f"({human.pretty_size(self.max_body)}, memory_routing_max_body_size)",
        )
