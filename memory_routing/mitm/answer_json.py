"""A whole answer's JSON body, decoded once per flow for every addon that reads it.

The router's usage meter reads a small answer's usage, then the memory reads the same answer's
text (after the router has translated it, when it did: the translation is new content and gets
its own parse). Both ask ``answer_json(flow)``; the second asks for the parse the first made.
"""

from __future__ import annotations

import json

from mitmproxy import http

from memory_routing.wire.body_worker import NESTED_TOO_DEEP
from memory_routing.flow_state import AnswerJson, answer_json_of, set_answer_json


def answer_json(flow: http.HTTPFlow) -> AnswerJson:
    """The flow's whole answer as JSON: parsed on the first call, the same parse until the
    answer's content changes. Undecodable content (a broken content-encoding) is read raw."""
    known = answer_json_of(flow)
    if known is not None:
        return known
    response = flow.response
    assert response is not None
    raw = response.raw_content
    try:
        parsed = AnswerJson(raw, json.loads(response.get_content(strict=False) or b""))
    except ValueError as e:
        parsed = AnswerJson(raw, error=str(e))
    except RecursionError:  # nested past json's recursion limit: as unreadable as broken JSON
        parsed = AnswerJson(raw, error=NESTED_TOO_DEEP)
    set_answer_json(flow, parsed)
    return parsed
