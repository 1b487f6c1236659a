"""One ``FlowContext`` per flow: everything the stages learn about a call, in one typed place
(pure: no mitmproxy, no LiteLLM).

The first stage to look at a flow creates its context (``context_of``); the others read and
write it. It lives in the flow's own ``__dict__``: it goes when the flow goes, a copy of the flow
(a replay) starts a context of its own, and mitmproxy never serializes it (``get_state`` reads
the flow's declared fields only). No other per-flow table, no ``flow.metadata`` mailbox.

``flow.metadata[DISPLAY_KEY]`` keeps a JSON-able summary for mitmweb (it shows flow.metadata and
saves it with flows); the proxy writes it and never reads it back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from memory_routing.errors import InvalidUserId
from memory_routing.wire.protocol import ClientProtocol

if TYPE_CHECKING:

    from memory_routing.call_record import CallRecord, MemoryOutcome
    from memory_routing.routing.classify import ClientIdentity
    from memory_routing.wire.headers import HeaderIndex
    from memory_routing.wire.model_calls import ModelCall
    from memory_routing.routing.planner import RoutingDecision
    from memory_routing.wire.large_bodies import LargeBody
    from memory_routing.wire.usage import Usage

# The summary mitmweb shows; the proxy writes it but never reads it back.
DISPLAY_KEY = "memory_routing"
# The flow's __dict__ key of its context (not an attribute name a mitmproxy release would take).
_CONTEXT_KEY = "_memory_routing_context"


class _Unknown(enum.Enum):
    """``FlowContext.call`` before anyone asked whether the flow is a routed model call."""

    UNKNOWN = 0


UNKNOWN = _Unknown.UNKNOWN


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision of one flow, as the stages after the router need it.

    ``record``: the router's own per-flow stream state (timing, usage meter, translator); opaque
    to everyone else.
    """

    decision: RoutingDecision
    client_protocol: ClientProtocol
    user_id: str
    record: Any = None


@dataclass(frozen=True, slots=True)
class RequestJson:
    """A model call's JSON body, parsed once for every stage that reads it (mitm.request_json).

    ``raw``: the request's raw content it was parsed from; when the request's content is no
    longer that object, the body was rewritten and this parse is stale.
    ``large``: set when the body was read by the worker process: ``payload`` is then its
    skeleton, whose long strings are placeholders (see wire.large_bodies).
    ``edited``: ``payload`` was changed (the memory's recall block) and ``raw`` does not hold the
    change yet: the router encodes the body once, with its own changes (mitm.request_json).
    """

    raw: bytes | None
    payload: Any = None
    error: str | None = None  # why the body is not JSON
    large: LargeBody | None = None
    edited: bool = False


@dataclass(frozen=True, slots=True)
class AnswerJson:
    """A whole (unstreamed) answer's JSON, parsed once for the router's usage meter and the
    memory (mitm.answer_json). ``raw``: the response's raw content it was parsed from; when the
    router translates the answer, the content changes and the translation gets its own parse.
    ``document`` is None when the answer is not JSON (``error`` says why)."""

    raw: bytes | None
    document: Any = None
    error: str | None = None


class Outcome(NamedTuple):
    """What the router saw of the call, for its record (call_log): set when the answer is over,
    or when the router refused the call (``refused``: the message the client got)."""

    client: str = ""  # the client's product token, from its own User-Agent (before any rewrite)
    stream: bool = False  # the answer streamed, or the client asked for a stream
    first_byte_at: float | None = None
    usage: Usage | None = None
    supermemory: dict[str, str] | None = None  # Supermemory's x-supermemory-* answer headers
    refused: str | None = None
    requested_model: str = ""  # of a refused call, when it is known


class AnswerEvents(Protocol):
    """A translated stream's events as the client gets them (llm.translation.StreamTranslator):
    ``observer`` is called with each one, as the dict it is encoded from."""

    observer: Callable[[dict[str, Any]], None] | None


@dataclass(slots=True, eq=False)
class FlowContext:
    """What the stages know about one flow. Mutable: each stage fills in its part.

    ``call``: the model call the proxy routes (``UNKNOWN`` until the routed-call predicate ran,
    mitm.flows.routed_call; None: not the proxy's to route).
    ``memory_call``: the memory stage's own per-call state (opaque to everyone else);
    ``memory``: what the memory did, once it is known (the record reports it).
    ``slot``: the in-flight limiter's slot this flow holds.
    ``failure``: what really happened to a failed flow when mitmproxy's error text does not say
    (a read timeout surfaces as "server closed connection"); set by UpstreamFailures.
    ``notes``: what the stages add to the call's record (Cloudflare's refusal, ...).
    ``outcome``: what the router saw of the answer (or its refusal).
    ``answer_events``: set when the router translates a streamed answer: its events, already
    decoded, for a reader that would otherwise decode the stream it writes again.
    """

    call: ModelCall | Literal[_Unknown.UNKNOWN] | None = UNKNOWN
    on_gateway: bool = False
    headers: HeaderIndex | None = None
    body: RequestJson | None = None
    answer: AnswerJson | None = None
    identity: ClientIdentity | InvalidUserId | None = None
    route: Route | None = None
    outcome: Outcome | None = None
    answer_events: AnswerEvents | None = None
    memory_call: Any = None
    memory: MemoryOutcome | None = None
    slot: Any = None
    failure: str | None = None
    replaced_answer: bytes | None = None  # the error body UpstreamAnswerCheck put in the answer's place
    notes: dict[str, object] | None = None
    record: CallRecord | None = None  # written once, when the call is over (call_log)

    def classify(self, classify: Callable[[HeaderIndex], ClientIdentity], headers: HeaderIndex) -> ClientIdentity:
        """The flow's identity, classified once (an unusable user id header raises, every time)."""
        known = self.identity
        if known is None:
            try:
                known = self.identity = classify(headers)
            except InvalidUserId as e:
                self.identity = e
                raise
        if isinstance(known, InvalidUserId):
            raise known
        return known

    def note(self, **fields: object) -> None:
        """Add something to the call's record (and mitmweb's summary of it)."""
        if self.notes is None:
            self.notes = {}
        self.notes.update(fields)


def context_of(flow: object) -> FlowContext:
    """The flow's context, created by the first stage that asks."""
    namespace: dict[str, Any] = flow.__dict__
    context = namespace.get(_CONTEXT_KEY)
    if context is None:
        context = namespace[_CONTEXT_KEY] = FlowContext()
    return context


def known_context(flow: object) -> FlowContext | None:
    """The flow's context if a stage made one (a flow no stage looked at has none)."""
    context: FlowContext | None = flow.__dict__.get(_CONTEXT_KEY)
    return context


def route_of(flow: object) -> Route | None:
    """The route the router chose for this flow, or None when the proxy did not route it."""
    context = known_context(flow)
    return context.route if context is not None else None


def set_route(flow: object, route: Route, display: dict[str, object] | None = None) -> None:
    """Record the flow's route; ``display`` (JSON-able) is what mitmweb shows for it."""
    context_of(flow).route = route
    if display is not None:
        flow.metadata[DISPLAY_KEY] = display  # type: ignore[attr-defined]


def request_json_of(flow: object) -> RequestJson | None:
    """The flow's parsed body if it was parsed and its content has not changed since."""
    context = known_context(flow)
    known = context.body if context is not None else None
    if known is not None and known.raw is flow.request.raw_content:  # type: ignore[attr-defined]
        return known
    return None


def set_request_json(flow: object, body: RequestJson) -> None:
    context_of(flow).body = body


def answer_json_of(flow: object) -> AnswerJson | None:
    """The flow's parsed answer if it was parsed and the answer has not changed since."""
    context = known_context(flow)
    known = context.answer if context is not None else None
    response = flow.response  # type: ignore[attr-defined]
    if known is not None and response is not None and known.raw is response.raw_content:
        return known
    return None


def set_answer_json(flow: object, answer: AnswerJson) -> None:
    context_of(flow).answer = answer

