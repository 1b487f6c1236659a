"""Addon that answers Cloudflare's own error pages in the client's protocol, with retry-after.

An SDK that gets an HTML page back cannot parse it and retries at once; one that gets its own
error shape and a retry-after backs off, which is what a queue at Cloudflare's edge needs.
"""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from memory_routing.upstream.cloudflare_pages import CLOUDFLARE_STATUSES, classify_cloudflare_error, is_cloudflare_error_head
from memory_routing.flow_state import context_of, route_of
from memory_routing.wire.responses import error_response

logger = logging.getLogger(__name__)

LOG_BURST_SECONDS = 60.0


class CloudflareGuard:
    def __init__(self) -> None:
        # Per upstream host: when the burst's first refusal was logged, and how many followed.
        self._bursts: dict[str, tuple[float, int]] = {}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Cloudflare's pages (challenges included) come as 403/429/503: anything else is skipped
        # before the headers are read.
        if (
            flow.response is not None and route_of(flow) is not None
            and flow.response.status_code in CLOUDFLARE_STATUSES
        ):
            headers = {k.lower(): v for k, v in flow.response.headers.items()}
            if is_cloudflare_error_head(flow.response.status_code, headers):
                flow.response.stream = False  # Cloudflare's pages are small: read them whole

    def response(self, flow: http.HTTPFlow) -> None:
        route = route_of(flow)
        if (
            route is None or flow.response is None or flow.response.stream
            or flow.response.status_code not in CLOUDFLARE_STATUSES
        ):
            return
        headers = {k.lower(): v for k, v in flow.response.headers.items()}
        refusal = classify_cloudflare_error(flow.response.status_code, headers, flow.response.raw_content or b"")
        if refusal is None:
            return
        host = flow.request.host
        message = refusal.message(host)
        self._log_once_per_burst(host, message)
        context_of(flow).note(cloudflare={"status": flow.response.status_code, "code": refusal.code})
        flow.response = error_response(
            flow, refusal.status, message, retryable=True,
            protocol=route.client_protocol,
            headers={"retry-after": str(refusal.retry_after)},
        )

    def _log_once_per_burst(self, host: str, message: str) -> None:
        now = time.monotonic()
        started, count = self._bursts.get(host, (0.0, 0))
        if now - started >= LOG_BURST_SECONDS:
            suppressed = f" ({count - 1} more in the previous burst)" if count > 1 else ""
            logger.warning(f"memory-routing: {message}{suppressed}")
            self._bursts[host] = (now, 1)
        else:
            self._bursts[host] = (started, count + 1)
