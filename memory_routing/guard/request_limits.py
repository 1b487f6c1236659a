"""Addon that refuses oversized or ambiguous model calls before they are routed: 431 for
headers, 413 for bodies, 400 for a second Host header.

Both answers come in the client's own error shape, with ``x-should-retry: false`` (the same
request will never fit). A body announced by Content-Length is refused as soon as its headers
arrive; a chunked one once it has been read (mitmproxy reads a request whole before its
``request`` hook; its own ``body_size_limit`` option caps that memory, and its refusal is also
answered in the client's shape).
"""

from __future__ import annotations

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.utils import human

from memory_routing.local.endpoints import is_gateway
from memory_routing.routing.model_calls import parse_model_call
from memory_routing.wire.responses import error_response, fail_closed
from memory_routing.config.holder import RoutingConfig


_FAILED = "the proxy could not check this request's size; its log has the details"


class RequestLimits:
    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.max_body = 0
        self.max_headers = 0

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
                else:
                    self.max_headers = size

    @fail_closed(500, _FAILED)
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self._applies(flow):
            return
        fields = flow.request.headers.fields
        hosts = size = 0
        for name, value in fields:  # one pass: this runs on every model call
            size += len(name) + len(value)
            if len(name) == 4 and name.lower() == b"host":
                hosts += 1
        if hosts > 1:
            # Two Host headers let two parsers disagree about where a request goes; h2 <= 4.4.0
            # passes them on from HTTP/2 (CVE-2026-71554) and mitmproxy 12.2 ships h2 4.3.0.
            flow.response = error_response(flow, 400, "the request has more than one Host header")
            return
        if self.max_headers and size + 4 * len(fields) > self.max_headers:
            flow.response = error_response(
                flow, 431,
                f"the request headers are larger than this proxy accepts ({human.pretty_size(self.max_headers)}, "
                "memory_routing_max_header_size)",
            )
            return
        length = flow.request.headers.get("content-length", "")
        if self.max_body and length.isdigit() and int(length) > self.max_body:
            flow.response = self._too_large(flow, int(length))

    @fail_closed(500, _FAILED)
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not self.max_body or flow.request.raw_content is None:
            return
        size = len(flow.request.raw_content)
        if size > self.max_body and self._applies(flow):
            flow.response = self._too_large(flow, size)

    def _applies(self, flow: http.HTTPFlow) -> bool:
        if is_gateway(flow):
            return True
        return (
            flow.request.host.lower() in self.routing.llm_hosts
            and parse_model_call(flow.request.method, flow.request.path) is not None
        )

    def _too_large(self, flow: http.HTTPFlow, size: int) -> http.Response:
        return error_response(
            flow, 413,
            f"the request body ({human.pretty_size(size)}) is larger than this proxy accepts "
            f"({human.pretty_size(self.max_body)}, memory_routing_max_body_size)",
        )
