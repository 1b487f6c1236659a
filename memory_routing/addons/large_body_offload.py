"""A model call's JSON body, decoded once per flow for every addon, and large bodies read off the
event loop.

``request_json(flow)`` parses the body the first time any addon asks (memory, then the router)
and hands out that parse until the body changes; ``encode_request_json`` encodes an edited
document, putting back a large body's long strings. ``LargeBodyOffload`` (an addon before the
memory and the router) sends a body over ``memory_routing_offload_body_size`` to the worker
process and records its skeleton as the flow's parse, so the loop only ever decodes and
encodes the small skeleton (see wire.large_bodies).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http
from mitmproxy.utils import human

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.flow_state import RequestJson, request_json_of, set_request_json
from memory_routing.mitm.flows import routed_call
from memory_routing.wire.headers import request_headers
from memory_routing.wire.model_calls import Endpoint
from memory_routing.wire.large_bodies import BodyWorker, LargeBody

logger = logging.getLogger(__name__)

OFFLOAD_OPTION = "memory_routing_offload_body_size"
# count_tokens reads every string (a tokenizer): a skeleton would count placeholders.
_NOT_OFFLOADED = frozenset({Endpoint.COUNT_TOKENS})


def request_json(flow: http.HTTPFlow) -> RequestJson:
    """The flow's body as JSON: parsed on the first call, the same parse until the body changes."""
    known = request_json_of(flow)
    if known is not None:
        return known
    request = flow.request
    raw = request.raw_content
    # Without a content-encoding the raw bytes are the body: skip mitmproxy's decoding layer.
    body = raw if "content-encoding" not in request_headers(flow) else request.get_content(strict=False)
    try:
        parsed = RequestJson(raw, json.loads(body or b""))
    except ValueError as e:
        parsed = RequestJson(raw, error=str(e))
    set_request_json(flow, parsed)
    return parsed


def encode_json(large: LargeBody | None, document: Any, encode: Callable[[Any], str]) -> tuple[bytes, bool]:
    """``document`` (the parse of a body, edited) as bytes; a large body's long strings go back
    in as they came. Also says whether they had to be decoded after all (the fallback)."""
    encoded = encode(document).encode()
    if large is None:
        return encoded, False
    spliced = large.splice(encoded)
    if spliced is not None:
        return spliced, False
    return encode(materialize(large, document)).encode(), True


def materialize(large: LargeBody, document: Any) -> Any:
    """The fallback: the long strings decoded in the loop (correct, but it stalls the loop).
    Logged here, once per flow (a flow's body is encoded once); its log line says "decoded"."""
    logger.warning("memory-routing: a large body's placeholders could not be spliced back; decoding it in full")
    return large.materialize(document)


def edit_request_json(flow: http.HTTPFlow, parsed: RequestJson, document: Any) -> None:
    """Make ``document`` the request's body, to be encoded later, once: the router encodes it with
    its own changes (the provider's model name, a translation) in the same pass. Encoding it here
    too would cost a second encode of the whole body (milliseconds for a long conversation)."""
    set_request_json(flow, RequestJson(parsed.raw, document, large=parsed.large, edited=True))


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
