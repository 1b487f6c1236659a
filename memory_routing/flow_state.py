"""Typed state that the router hands to the addons after it (pure: no mitmproxy, no LiteLLM).

The router records one ``Route`` per flow it rewrites; the cookie jar, the in-flight cap, the
Cloudflare guard and the upstream watchdog read it with ``route_of(flow)``. None of them imports
the router (importing one of them must not load LiteLLM).

``flow.metadata[DISPLAY_KEY]`` keeps a JSON-able summary of the same decision for mitmweb (it
shows flow.metadata and saves it with flows); code reads the typed ``Route``, never that dict.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memory_routing.wire.protocol import ClientProtocol

if TYPE_CHECKING:
    from memory_routing.routing.planner import RoutingDecision
    from memory_routing.wire.large_bodies import LargeBody

# The summary mitmweb shows; addons add to it (a copy each time) but never read it back.
DISPLAY_KEY = "memory_routing"
# Addons before the router add fields to a call's flow-log line by putting a dict here (e.g. what
# memory did); the router writes the line in its response hook.
LOG_FIELDS_KEY = "memory_routing.log_fields"


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision of one flow, as the addons after the router need it.

    ``record``: the router's own per-flow stream record (timing, usage meter, translator); opaque
    to everyone else.
    """

    decision: RoutingDecision
    client_protocol: ClientProtocol
    user_id: str
    record: Any = None


# Keyed by the flow object itself: a flow that is dropped takes its route with it.
_routes: weakref.WeakKeyDictionary[Any, Route] = weakref.WeakKeyDictionary()


def route_of(flow: object) -> Route | None:
    """The route the router chose for this flow, or None when the proxy did not route it."""
    return _routes.get(flow)


def set_route(flow: object, route: Route, display: dict[str, object] | None = None) -> None:
    """Record the flow's route; ``display`` (JSON-able) is what mitmweb shows for it."""
    _routes[flow] = route
    if display is not None:
        flow.metadata[DISPLAY_KEY] = display  # type: ignore[attr-defined]


def add_to_display(flow: object, **fields: object) -> None:
    """Note something about a routed flow for mitmweb (never read back by the proxy)."""
    metadata = flow.metadata  # type: ignore[attr-defined]
    metadata[DISPLAY_KEY] = {**metadata.get(DISPLAY_KEY, {}), **fields}


@dataclass(frozen=True, slots=True)
class RequestJson:
    """A model call's JSON body, parsed once for every addon that reads it (wire.request_json).

    ``raw``: the request's raw content it was parsed from; when the request's content is no
    longer that object, the body was rewritten and this parse is stale.
    ``large``: set when the body was read by the worker process: ``payload`` is then its
    skeleton, whose long strings are placeholders (see wire.large_bodies).
    ``edited``: ``payload`` was changed (the memory's recall block) and ``raw`` does not hold the
    change yet: the router encodes the body once, with its own changes (wire.request_json).
    """

    raw: bytes | None
    payload: Any = None
    error: str | None = None  # why the body is not JSON
    large: LargeBody | None = None
    edited: bool = False


_bodies: weakref.WeakKeyDictionary[Any, RequestJson] = weakref.WeakKeyDictionary()


def request_json_of(flow: object) -> RequestJson | None:
    """The flow's parsed body if it was parsed and its content has not changed since."""
    known = _bodies.get(flow)
    if known is not None and known.raw is flow.request.raw_content:  # type: ignore[attr-defined]
        return known
    return None


def set_request_json(flow: object, body: RequestJson) -> None:
    _bodies[flow] = body


@dataclass(frozen=True, slots=True)
class AnswerJson:
    """A whole (unstreamed) answer's JSON, parsed once for the router's usage meter and the
    memory (wire.answer_json). ``raw``: the response's raw content it was parsed from; when the
    router translates the answer, the content changes and the translation gets its own parse.
    ``document`` is None when the answer is not JSON (``error`` says why)."""

    raw: bytes | None
    document: Any = None
    error: str | None = None


_answers: weakref.WeakKeyDictionary[Any, AnswerJson] = weakref.WeakKeyDictionary()


def answer_json_of(flow: object) -> AnswerJson | None:
    """The flow's parsed answer if it was parsed and the answer has not changed since."""
    known = _answers.get(flow)
    response = flow.response  # type: ignore[attr-defined]
    if known is not None and response is not None and known.raw is response.raw_content:
        return known
    return None


def set_answer_json(flow: object, answer: AnswerJson) -> None:
    _answers[flow] = answer


# What really happened to a failed flow, when mitmproxy's error text does not say (a read timeout
# surfaces as "server closed connection"): set by UpstreamFailures, read by the router's log line.
FAILURE_NOTE_KEY = "memory_routing.failure"
