"""What the router does with the memory's edit of a body, for tests that run the memory alone."""

from __future__ import annotations

import json

from memory_routing.flow_state import RequestJson, request_json_of, set_request_json
from memory_routing.mitm.request_json import encode_json

# The router's body encoder (compact, UTF-8 as is).
ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_edit(flow) -> bool:
    """Encode an edited body into the request, as the router does (the memory leaves it to the
    router); False when there was no edit to write."""
    parsed = request_json_of(flow)
    if parsed is None or not parsed.edited:
        return False
    flow.request.content, _ = encode_json(parsed.large, parsed.payload, ENCODE)
    set_request_json(flow, RequestJson(flow.request.raw_content, parsed.payload, large=parsed.large))
    return True
