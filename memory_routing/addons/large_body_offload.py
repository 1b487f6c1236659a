"""Addon before the memory and the router: a large model-call body is read off the event loop.

It sends a body over ``memory_routing_offload_body_size`` to the worker process and records its
skeleton as the flow's parse (mitm.request_json), so the loop only ever decodes and encodes the
small skeleton (see wire.large_bodies).
"""

from __future__ import annotations

import json
import logging

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.utils import human

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.flow_state import RequestJson, set_request_json
from memory_routing.mitm.flows import request_headers, routed_call
from memory_routing.wire.model_calls import Endpoint
from memory_routing.wire.large_bodies import BodyWorker

logger = logging.getLogger(__name__)

OFFLOAD_OPTION = "memory_routing_offload_body_size"
# count_tokens reads every string (a tokenizer): a skeleton would count placeholders.
_NOT_OFFLOADED = frozenset({Endpoint.COUNT_TOKENS})


class LargeBodyOffload:
    """Before the memory and the router: a large model-call body is read by the worker process."""

    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing
        self.threshold = 1024 * 1024
        self.worker = BodyWorker()

    def load(self, loader) -> None:
        loader.add_option(
            OFFLOAD_OPTION, str, "1m",
            """
            A model call's JSON body at least this large (k/m/g suffixes) is decoded in a worker
            process rather than on the proxy's event loop, where it would hold up every other
            stream; its long strings are never decoded in the proxy.
            """,
        )

    def configure(self, updated) -> None:
        if OFFLOAD_OPTION in updated:
            value = getattr(ctx.options, OFFLOAD_OPTION)
            try:
                size = human.parse_size(value) or 0
            except ValueError:
                size = -1
            if size <= 0:
                raise exceptions.OptionsError(f"{OFFLOAD_OPTION}: {value!r} is not a size above 0 (e.g. 1m, 512k)")
            self.threshold = size

    def done(self):
        if self.worker.running:
            return self.worker.aclose()
        return None

    def request(self, flow: http.HTTPFlow):
        if flow.response or flow.error or not flow.live:
            return None
        request = flow.request
        raw = request.raw_content
        if raw is None or len(raw) < self.threshold or "content-encoding" in request_headers(flow):
            return None
        call = routed_call(flow, self.routing.llm_hosts)
        if call is None or call.endpoint in _NOT_OFFLOADED:
            return None
        return self._offload(flow, raw)

    async def _offload(self, flow: http.HTTPFlow, raw: bytes) -> None:
        try:
            answer = await self.worker.read(raw)
            if answer.unsupported is not None or flow.request.raw_content is not raw:
                return  # parsed in the loop, as any body
            if answer.error is not None:
                set_request_json(flow, RequestJson(raw, error=answer.error))
                return
            # The skeleton is small: its long strings are placeholders.
            set_request_json(flow, RequestJson(raw, json.loads(answer.skeleton), large=answer.large))
        except Exception as e:  # noqa: BLE001 - whatever failed, the loop can still parse the body itself
            logger.warning(f"memory-routing: the body worker failed ({e}); this large body is parsed in the loop")
