"""Addon that routes model calls: classify, resolve, rewrite; stream the answer and note what it saw
(the last stage, call_log, writes the call's record from it)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx
from mitmproxy import http

from memory_routing.errors import InvalidUserId, ProxyRefusal, RouteRefused, TranslationRefused
from memory_routing.flow_state import (
    DISPLAY_KEY, AnswerJson, FlowContext, Outcome, Route, context_of, known_context, request_json_of, set_answer_json,
    set_route,
)
from memory_routing.upstream.cloudflare_pages import is_cloudflare_error_head
from memory_routing.wire.flow_log import client_name
from memory_routing.wire.headers import HeaderIndex, replaced_fields
from memory_routing.addons.local_endpoints import DASHBOARD_PATH, HEALTH_PATH, INFO_PATH, MODELS_PATH
from memory_routing.mitm.flows import request_headers, routed_call
from memory_routing.wire.model_calls import Endpoint, ModelCall
from memory_routing.mitm.internals import set_request_target
from memory_routing.mitm.modes import loopback_alias, own_listeners
from memory_routing.wire.protocol import gateway_path_protocol
from memory_routing.mitm.request_json import encode_json, materialize, request_json
from memory_routing.wire.responses import error_response, fail_closed, json_response, refusal_response
from memory_routing.routing.planner import (
    CREDENTIAL_HEADERS,
    CREDENTIAL_QUERY_PARAMS,
    GEMINI_KEY_HEADER,
    KNOWN_LLM_HOSTS,
    RequestFacts,
    RoutePlanner,
    RoutingDecision,
    conversation_id_from,
    header_safe,
    loggable_url,
)
from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.addons import litellm_loading
from memory_routing.mitm.answer_json import answer_json
from memory_routing.wire.usage import UsageMeter

if TYPE_CHECKING:
    from memory_routing.llm.translation import AnswerTranslation
    from memory_routing.wire.large_bodies import LargeBody

logger = logging.getLogger(__name__)

METADATA_KEY = DISPLAY_KEY  # mitmweb's summary; stages read the flow's context (flow_state)
# Claude Code posts its telemetry to the base URL; it wants a quick 2xx, not an error.
QUIET_PATHS = frozenset({"/api/event_logging/batch", "/api/event_logging/v2/batch", "/api/hello"})
# Names the client's parameters a translated call left out (see translate.parameters).
DROPPED_HEADER = "x-memory-routing-dropped"
# A complete JSON answer up to this size is buffered (and shown in mitmweb); anything larger,
# event streams and chunked bodies stream through.
BUFFER_LIMIT = 1024 * 1024
# Proxy credentials missing or wrong (GatewayAuth, proxyauth): such a refusal leaves no usage row.
_UNAUTHENTICATED = frozenset({401, 407})


@dataclass
class _FlowRecord:
    """The router's state of one routed flow, from its request to its answer (in its Route)."""

    dropped: list[str] | None = None  # the client's parameters a translation left out
    stream: bool = False
    asked_stream: bool = False  # the client asked for a stream (logged so even if none came)
    client: str = ""  # the client's product token, from its own User-Agent (before any rewrite)
    first_body_byte_at: float | None = None
    meter: UsageMeter | None = None
    supermemory: dict[str, str] = field(default_factory=dict)
    answer: AnswerTranslation | None = None  # set when the call was translated
    translate_chunk: Callable[[bytes], list[bytes]] | None = None  # the answer's stream translator

    def tap(self, chunk: bytes) -> bytes | list[bytes]:
        """mitmproxy's per-chunk stream callback: note timing and usage, pass the bytes on
        (translated into the client's events when the call was translated)."""
        if chunk and self.first_body_byte_at is None:
            self.first_body_byte_at = time.time()
        if self.meter is not None:
            self.meter.feed(chunk)  # the provider's own events: the meter reads every format
        return chunk if self.translate_chunk is None else self.translate_chunk(chunk)


class ModelRouter:
    def __init__(self, routing: RoutingConfig, planner: RoutePlanner) -> None:
        self.routing = routing
        self.planner = planner
        self.own_listeners: frozenset[tuple[str, int]] = frozenset()
        # json.dumps builds a new encoder on every call with non-default arguments.
        self._encode_body = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def configure(self, updated) -> None:
        if {"mode", "listen_host"} & set(updated):
            self.own_listeners = own_listeners(ctx.options.mode, ctx.options.listen_host)

    # --- hooks ----------------------------------------------------------------------------

    @fail_closed(500, "the proxy failed to route this request; its log has the details")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            self._count_earlier_refusal(flow)
            return None
        if flow.error or not flow.live:
            return None
        call = routed_call(flow, self.routing.llm_hosts)
        context = context_of(flow)
        if call is None:
            if context.on_gateway:
                flow.response = self._answer_non_model_call(flow)
            elif "key=" in flow.request.path and KNOWN_LLM_HOSTS.get(flow.request.host.lower()) == "gemini":
                _move_gemini_key_to_header(flow.request)
            return None
        try:
            decision, payload = self._decide(flow, context, call)
            if decision.translation is not None and call.endpoint is Endpoint.COUNT_TOKENS and payload is not None:
                return self._count_tokens_in_thread(flow, call, decision, payload)
            self._apply(flow, context, decision, payload)
        except ProxyRefusal as e:
            self._refuse(flow, call, e)
        # Anything else: fail_closed answers 500, as a half-rewritten request must never leave.
        return None

    def _count_earlier_refusal(self, flow: http.HTTPFlow) -> None:
        """A model call an earlier stage refused (an invalid x-memory-mode, a body over the limit)
        is a call too: the sinks count it. Not one refused for missing proxy credentials: who sent
        it is unknown, and anyone could fill the usage table with names of their choosing."""
        response = flow.response
        if response is None or response.status_code < 400 or response.status_code in _UNAUTHENTICATED:
            return
        call = routed_call(flow, self.routing.llm_hosts)
        if call is None:
            return
        context = context_of(flow)
        if context.outcome is not None:
            return  # the stage that answered already said what it refused
        classifier = self.routing.classifier
        if classifier is not None:
            try:
                context.classify(classifier.classify, request_headers(flow))
            except InvalidUserId:
                pass  # an unusable user id header is what was refused: the record says so
        context.outcome = Outcome(
            client=client_name(request_headers(flow).get("user-agent")), refused=_error_message(response),
            requested_model=call.path_model or _requested_model(flow),
        )

    def _refuse(self, flow: http.HTTPFlow, call: ModelCall, refusal: ProxyRefusal) -> None:
        logger.info(f"memory-routing: refused {flow.request.method} {loggable_url(flow.request.path)}: {refusal.message}")
        flow.response = refusal_response(refusal, flow)
        # The call's record (call_log) counts it: no flow-log line (nothing was routed), a usage row.
        context_of(flow).outcome = Outcome(
            client=client_name(request_headers(flow).get("user-agent")), refused=refusal.message,
            requested_model=call.path_model or _requested_model(flow),
        )

    async def _count_tokens_in_thread(self, flow: http.HTTPFlow, call: ModelCall, decision: RoutingDecision,
                                      payload: dict[str, Any]) -> None:
        # A tokenizer's first use builds its table (0.3-0.7 s of CPU) and a long conversation takes
        # milliseconds to count: neither may hold up the event loop and every other request.
        try:
            flow.response = await asyncio.to_thread(self._count_tokens, decision, payload)
        except ProxyRefusal as e:
            self._refuse(flow, call, e)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = _record_of(flow)
        if record is None or flow.response is None:
            return
        content_type = length = encoding = b""
        for name, value in flow.response.headers.fields:
            lowered = name.lower()
            if lowered.startswith(b"x-supermemory-"):
                record.supermemory[lowered.decode("latin-1")] = value.decode("utf-8", "surrogateescape")
            elif lowered == b"content-type":
                content_type = value
            elif lowered == b"content-length":
                length = value
            elif lowered == b"content-encoding":
                encoding = value
        event_stream = content_type.startswith(b"text/event-stream")
        if record.dropped:
            flow.response.headers[DROPPED_HEADER] = ",".join(record.dropped)
        if record.answer is not None:
            self._prepare_translated_answer(flow, record, event_stream)
            return
        if event_stream or not length.isdigit() or int(length) > BUFFER_LIMIT:
            record.stream = True
            # Compressed streams are passed on as they are; their usage is not read.
            record.meter = None if encoding else UsageMeter(event_stream)
            flow.response.stream = record.tap

    def response(self, flow: http.HTTPFlow) -> None:
        record = _record_of(flow)
        if record is None or flow.response is None:
            return
        if record.meter is None and not record.stream and flow.response.raw_content is not None:
            record.meter = UsageMeter(event_stream=False)
            # The memory reads the same answer next: both use one parse of it.
            record.meter.read_whole(
                flow.response.get_content(strict=False) or b"", lambda: answer_json(flow).document)
        if record.answer is not None and not record.stream:
            self._translate_answer(flow, record.answer)
        self._note_outcome(flow, record)

    def error(self, flow: http.HTTPFlow) -> None:
        record = _record_of(flow)
        if record is not None:
            self._note_outcome(flow, record)

    def _note_outcome(self, flow: http.HTTPFlow, record: _FlowRecord) -> None:
        """What the router saw of the answer, for the call's record (written by call_log)."""
        context_of(flow).outcome = Outcome(
            client=record.client, stream=record.stream or record.asked_stream,
            first_byte_at=record.first_body_byte_at, usage=record.meter.finish() if record.meter else None,
            supermemory=record.supermemory or None,
        )

    # --- steps ----------------------------------------------------------------------------

    def _decide(self, flow: http.HTTPFlow, context: FlowContext, call: ModelCall) -> tuple[RoutingDecision, dict | None]:
        config, classifier = self.routing.config, self.routing.classifier
        assert config is not None and classifier is not None
        request = flow.request
        on_gateway = context.on_gateway
        headers = request_headers(flow)
        identity = context.classify(classifier.classify, headers)
        payload: dict[str, Any] | None = None
        model: object  # the body's "model" is checked below
        if call.path_model is not None:
            model = call.path_model
        else:
            payload = _json_body(flow)
            model = payload.get("model")
            if not isinstance(model, str) or not model:
                raise RouteRefused(400, 'the request body has no "model"', param="model")
        facts = RequestFacts(
            call=call,
            requested_model=model,
            on_gateway=on_gateway,
            original_url="" if on_gateway else request.url,
            has_client_credentials=any(h in headers for h in CREDENTIAL_HEADERS)
            or ("?" in request.path and any(p in request.query for p in CREDENTIAL_QUERY_PARAMS)),
            conversation_id=conversation_id_from(headers.get),
            stream=payload is not None and payload.get("stream") is True,
            client_credential=_client_key(headers),
        )
        decision = self.planner.plan(config, identity, facts)
        target = decision.upstream
        if (loopback_alias(target.host), target.port) in self.own_listeners:
            # LiteLLM honours OPENAI_BASE_URL & co. in the proxy's own environment; pointed at
            # the proxy, every request would come back to it until something gives out.
            raise RouteRefused(
                508, f"model {model!r} resolves to {target.host}:{target.port}, which is this proxy; unset "
                "OPENAI_BASE_URL / ANTHROPIC_BASE_URL / GEMINI_API_BASE where the proxy runs, or fix the api_base",
            )
        return decision, payload

    def _apply(self, flow: http.HTTPFlow, context: FlowContext, decision: RoutingDecision, payload: dict | None) -> None:
        request = flow.request
        client = client_name(request_headers(flow).get("user-agent"))
        target = decision.upstream
        dropped = decision.dropped_header_names
        added = decision.added_header_fields
        plain_http1 = not (request.is_http2 or request.is_http3)
        if plain_http1:
            dropped = dropped | {b"host"}
            added = (*added, (b"host", target.host_header.encode()))
        body = None
        answer = None
        fit_notes: dict[str, object] = {}
        # The parse memory and _decide share. A large body's parse is its skeleton
        # (wire.large_bodies): only its small part is here.
        parsed = request_json_of(flow)
        large = parsed.large if parsed is not None else None
        if decision.translation is not None and payload is not None:
            body, answer, translated_headers, fit_notes = _translated_large_body(decision, payload, large)
            # The answer is translated as it passes: it must arrive uncompressed.
            dropped = dropped | {b"accept-encoding", b"content-encoding"} | {name for name, _ in translated_headers}
            added = added + translated_headers + ((b"accept-encoding", b"identity"),)
        else:
            # A copy with the provider's model name (the parse stays what the body it came from
            # says); or the memory's recall block alone. Either way the body is encoded once, here.
            document = ({**payload, "model": decision.body_model} if decision.body_model is not None and payload is not None
                        else parsed.payload if parsed is not None and parsed.edited else None)
            if document is not None:
                body, decoded = encode_json(large, document, self._encode_body)
                if large is not None:
                    fit_notes["large_body"] = "decoded" if decoded else "spliced"
        if body is not None and ("content-encoding" not in request_headers(flow) or answer is not None):
            # The whole body is in hand: send it with a plain content-length, chunked or not.
            dropped = dropped | {b"content-length", b"transfer-encoding"}
            added = (*added, (b"content-length", str(len(body)).encode()))
        # One pass over the raw fields rather than a setter call per header. x-sm-* headers are
        # the memory router's: only the proxy's own values may reach it.
        request.headers.fields = replaced_fields(request.headers.fields, dropped, added, drop_prefix=b"x-sm-")
        if body is not None:
            if b"content-length" in dropped:
                request.raw_content = body
            else:  # an encoded body: mitmproxy's setter re-encodes it
                request.content = body
        # Set as one unit: the attribute setters would rewrite the Host header three times.
        set_request_target(request, target.scheme, target.host, target.port, target.path)
        if not plain_http1:
            request.host_header = target.host_header
        dropped_parameters = fit_notes.get("dropped")
        record = _FlowRecord(
            dropped=dropped_parameters if isinstance(dropped_parameters, list) else None, answer=answer,
            asked_stream=payload is not None and payload.get("stream") is True, client=client,
        )
        if fit_notes:
            context.note(**fit_notes)
        set_route(flow, Route(decision, decision.client_protocol, decision.user_id, record),
                  display=decision.summary() | fit_notes)

    def _count_tokens(self, decision: RoutingDecision, payload: dict[str, Any]) -> http.Response:
        assert decision.translation is not None
        tokens = litellm_loading.translation().count_input_tokens(decision.provider_model, payload)
        return json_response(200, {"input_tokens": tokens})

    def _prepare_translated_answer(self, flow: http.HTTPFlow, record: _FlowRecord, event_stream: bool) -> None:
        """Stream a translated event stream through its translator; read anything else whole."""
        response = flow.response
        assert response is not None and record.answer is not None
        if response.status_code >= 400 or not event_stream:
            response.stream = False  # one JSON document (or an error): translated in response()
            return
        record.stream = True
        record.meter = UsageMeter(event_stream=True)
        translator = record.translate_chunk = record.answer.stream_translator()
        context_of(flow).answer_events = translator  # the memory reads the client's events from it
        response.headers.pop("content-length", None)
        response.headers["content-type"] = "text/event-stream; charset=utf-8"
        response.stream = record.tap

    def _translate_answer(self, flow: http.HTTPFlow, answer: AnswerTranslation) -> None:
        response = flow.response
        assert response is not None
        lowered = {name.lower(): value for name, value in response.headers.items()}
        if is_cloudflare_error_head(response.status_code, lowered):
            return  # Cloudflare's own page: CloudflareGuard answers it in the client's shape
        # The parse the usage meter read (when it read the whole answer): parsed once.
        parsed = answer_json(flow) if response.status_code < 400 else None
        try:
            body, document = answer.translated(
                response.status_code, lowered.get("content-type", ""), response.content or b"",
                parsed.document if parsed is not None and parsed.error is None else None,
            )
        except TranslationRefused as e:
            flow.response = refusal_response(e, flow, protocol=answer.client)
            return
        except Exception:
            logger.exception(f"memory-routing: could not translate the answer of {answer.provider}")
            flow.response = error_response(
                flow, 502, f"the proxy could not translate {answer.provider}'s answer; its log has the details",
                retryable=True, protocol=answer.client,
            )
            return
        response.headers.pop("content-encoding", None)
        response.headers["content-type"] = "application/json"
        response.content = body
        if document is not None:  # the memory reads the client's answer next: from this, not a new parse
            set_answer_json(flow, AnswerJson(response.raw_content, document))

    def _answer_non_model_call(self, flow: http.HTTPFlow) -> http.Response:
        path = flow.request.path.split("?", 1)[0]
        if path in QUIET_PATHS:
            return json_response(200, {}) if flow.request.method != "HEAD" else http.Response.make(200)
        return error_response(
            flow,
            404,
            f"{flow.request.method} {path} is not a model call this gateway serves "
            "(POST /v1/chat/completions, /v1/responses, /v1/completions, /v1/embeddings, /v1/messages, "
            "/v1/messages/count_tokens, /v1beta/models/{model}:generateContent); the proxy's own pages: "
            f"GET {HEALTH_PATH}, {INFO_PATH}, {MODELS_PATH}, and the dashboard at {DASHBOARD_PATH}",
            protocol=gateway_path_protocol(path, flow.request.headers),
        )


def _record_of(flow: http.HTTPFlow) -> _FlowRecord | None:
    context = known_context(flow)
    route = context.route if context is not None else None
    return route.record if route is not None else None


def _move_gemini_key_to_header(request: http.Request) -> None:
    """Gemini takes its key as ?key= or as a header: the header keeps it out of every URL that
    mitmproxy prints or saves."""
    key = request.query.get("key")
    if key is None or not header_safe(key):
        return
    del request.query["key"]
    request.headers[GEMINI_KEY_HEADER] = key


def _translated_large_body(
    decision: RoutingDecision, payload: dict[str, Any], large: LargeBody | None
) -> tuple[bytes, AnswerTranslation, tuple[tuple[bytes, bytes], ...], dict[str, object]]:
    """The translated body; a large body's long strings go back in where LiteLLM kept them whole,
    else (it merged or parsed them) the body is decoded fully and translated again."""
    if large is None:
        return _translated_body(decision, payload)
    try:
        body, answer, headers, notes = _translated_body(decision, payload)
        spliced = large.splice(body, own_encoding=False)
    except ProxyRefusal:
        spliced = None  # e.g. a placeholder where LiteLLM wanted a data URL: judge the real body
    if spliced is None:
        body, answer, headers, notes = _translated_body(decision, materialize(large, payload))
        return body, answer, headers, {**notes, "large_body": "decoded"}
    return spliced, answer, headers, {**notes, "large_body": "spliced"}


def _translated_body(
    decision: RoutingDecision, payload: dict[str, Any]
) -> tuple[bytes, AnswerTranslation, tuple[tuple[bytes, bytes], ...], dict[str, object]]:
    translation = decision.translation
    assert translation is not None
    translated = litellm_loading.translation().translate_request(
        decision.client_protocol, decision.provider, decision.provider_model, payload,
        drop_params=translation.drop_params, user_id=decision.user_id, conversation_id=decision.conversation_id,
    )
    for name, value in translated.headers:
        if not header_safe(value):
            raise RouteRefused(500, f"LiteLLM's translation produced an unusable {name!r} header")
    headers = tuple((name.encode(), value.encode()) for name, value in translated.headers)
    notes: dict[str, object] = {}
    if translated.dropped:
        notes["dropped"] = list(translated.dropped)
    if translated.fitted:
        notes["fitted"] = dict(translated.fitted)
    return translated.body, translated.answer, headers, notes


def _requested_model(flow: http.HTTPFlow) -> str:
    """The body's "model" of a refused call: from the parse the stages share (a large body's
    skeleton has it), else when the body is small, plain JSON that has one."""
    parsed = request_json_of(flow)
    if parsed is not None and isinstance(parsed.payload, dict):
        model = parsed.payload.get("model")
        return model if isinstance(model, str) else ""
    request = flow.request
    body = request.raw_content
    if not body or len(body) > BUFFER_LIMIT or "content-encoding" in request.headers:
        return ""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return model if isinstance(model, str) else ""


def _error_message(response: http.Response) -> str:
    """The message of the proxy's own error answer (every protocol's shape has error.message)."""
    try:
        error = json.loads(response.content or b"").get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else f"HTTP {response.status_code}"


def _client_key(headers: HeaderIndex) -> str | None:
    """The API key the client sent, from whichever header its SDK uses (a bearer token last)."""
    for name in CREDENTIAL_HEADERS:
        if name != "authorization" and (value := headers.get(name)):
            return value.strip() if header_safe(value) else None
    authorization = headers.get("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip() and header_safe(token):
        return token.strip()
    return None


def _json_body(flow: http.HTTPFlow) -> dict[str, Any]:
    parsed = request_json(flow)  # parsed once: the memory addon may have asked already
    if parsed.error is not None:
        raise RouteRefused(400, f"the request body is not valid JSON: {parsed.error}")
    payload = parsed.payload
    if not isinstance(payload, dict):
        raise RouteRefused(400, "the request body must be a JSON object")
    return payload
