"""A model call's JSON body, decoded once per flow for every stage that reads it.

``request_json(flow)`` parses the body the first time any stage asks (memory, then the router)
and hands out that parse until the body changes; ``encode_json`` encodes an edited document,
putting back a large body's long strings (the body offload, addons.large_body_offload, may have
read a large body in the worker process: its parse is then a skeleton, see wire.large_bodies).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from memory_routing.flow_state import RequestJson, request_json_of, set_request_json
from memory_routing.mitm.flows import request_headers
from memory_routing.wire.body_worker import NESTED_TOO_DEEP
from memory_routing.wire.large_bodies import LargeBody

logger = logging.getLogger(__name__)


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
    except RecursionError:
        parsed = RequestJson(raw, error=NESTED_TOO_DEEP)
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
