"""Addon that routes model calls: classify, resolve, rewrite; stream the answer; log one line."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import http

from memory_routing.errors import ProxyRefusal, RouteRefused, TranslationRefused
from memory_routing.flow_state import DISPLAY_KEY, LOG_FIELDS_KEY, Route, add_to_display, request_json_of, set_route
from memory_routing.cloudflare.pages import is_cloudflare_error_head
from memory_routing.wire.flow_log import FlowLog, client_name
from memory_routing.routing.headers import HeaderIndex, replaced_fields, request_headers
from memory_routing.local.endpoints import DASHBOARD_PATH, HEALTH_PATH, INFO_PATH, MODELS_PATH, is_gateway
from memory_routing.routing.model_calls import Endpoint, ModelCall, parse_model_call
from memory_routing.mitm.internals import set_request_target
from memory_routing.mitm.modes import loopback_alias, own_listeners
from memory_routing.wire.protocol import gateway_path_protocol
from memory_routing.wire.request_json import encode_json, materialize, request_json
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
from memory_routing.config.holder import RoutingConfig
from memory_routing.routing import litellm_loading
from memory_routing.wire.answer_json import answer_json
from memory_routing.wire.usage import UsageMeter

if TYPE_CHECKING:
    from memory_routing.translate.translation import AnswerTranslation
    from memory_routing.wire.large_bodies import LargeBody

logger = logging.getLogger(__name__)

METADATA_KEY = DISPLAY_KEY  # mitmweb's summary; addons read flow_state.route_of(flow)
# Claude Code posts its telemetry to the base URL; it wants a quick 2xx, not an error.
QUIET_PATHS = frozenset({"/api/event_logging/batch", "/api/event_logging/v2/batch", "/api/hello"})
# Names the client's parameters a translated call left out (see translate.parameters).
DROPPED_HEADER = "x-memory-routing-dropped"
# A complete JSON answer up to this size is buffered (and shown in mitmweb); anything larger,
# event streams and chunked bodies stream through.
BUFFER_LIMIT = 1024 * 1024
# Proxy credentials missing or wrong (GatewayAuth, proxyauth): such a refusal leaves no usage row.
_UNAUTHENTICATED = frozenset({401, 407})
# Usage rows of refusals where the proxy could not tell who asked or for what.
UNIDENTIFIED_USER = "(invalid user id)"
NO_MODEL = "(no model)"
# flow.metadata key: what really happened to a failed flow, when mitmproxy's error text does not
# say (a read timeout surfaces as "server closed connection"); set by UpstreamFailures.
from memory_routing.flow_state import FAILURE_NOTE_KEY  # noqa: E402  (set by UpstreamFailures)


@dataclass
class _FlowRecord:
    decision: RoutingDecision
    summary: dict[str, object]
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
        self._records: weakref.WeakKeyDictionary[http.HTTPFlow, _FlowRecord] = weakref.WeakKeyDictionary()
        self.flow_log = FlowLog()
        # Called with each call's line once built (refusals included, which the flow log omits);
        # a sink must be quick and must not raise (the usage recorder only queues it).
        self.log_sinks: list[Callable[[dict[str, Any]], None]] = []
        self.own_listeners: frozenset[tuple[str, int]] = frozenset()
        # json.dumps builds a new encoder on every call with non-default arguments.
        self._encode_body = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def load(self, loader) -> None:
        loader.add_option(
            "memory_routing_flow_log",
            str,
            "-",
            """
            Where the one-line JSON record of each routed flow goes: "-" for stderr, a file path
            to append to, or an empty string for none.
            """,
        )

    def configure(self, updated) -> None:
        if {"mode", "listen_host"} & set(updated):
            self.own_listeners = own_listeners(ctx.options.mode, ctx.options.listen_host)
        if "memory_routing_flow_log" in updated:
            try:
                self.flow_log.open(ctx.options.memory_routing_flow_log)
            except OSError as e:
                raise exceptions.OptionsError(f"memory_routing_flow_log: cannot open: {e}") from None

    def done(self) -> None:
        self.flow_log.close()

    # --- hooks ----------------------------------------------------------------------------

    @fail_closed(500, "the proxy failed to route this request; its log has the details")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response is not None:
            self._count_earlier_refusal(flow)
            return
        if flow.error or not flow.live:
            return
        on_gateway = is_gateway(flow)
        if not on_gateway and flow.request.host.lower() not in self.routing.llm_hosts:
            return
        call = parse_model_call(flow.request.method, flow.request.path)
        if call is None:
            if on_gateway:
                flow.response = self._answer_non_model_call(flow)
            elif "key=" in flow.request.path and KNOWN_LLM_HOSTS.get(flow.request.host.lower()) == "gemini":
                _move_gemini_key_to_header(flow.request)
            return
        try:
            decision, payload = self._decide(flow, call, on_gateway)
            if decision.translation is not None and call.endpoint is Endpoint.COUNT_TOKENS and payload is not None:
                return self._count_tokens_in_thread(flow, call, decision, payload)
            self._apply(flow, decision, payload)
        except ProxyRefusal as e:
            self._refuse(flow, call, e)
        # Anything else: fail_closed answers 500, as a half-rewritten request must never leave.
        return None

    def _count_earlier_refusal(self, flow: http.HTTPFlow) -> None:
        """A model call an earlier stage refused (an invalid x-memory-mode, a body over the limit)
        is a call too: the sinks count it. Not one refused for missing proxy credentials: who sent
        it is unknown, and anyone could fill the usage table with names of their choosing."""
        response = flow.response
        if (not self.log_sinks or response is None or response.status_code < 400
                or response.status_code in _UNAUTHENTICATED):
            return
        if not is_gateway(flow) and flow.request.host.lower() not in self.routing.llm_hosts:
            return
        call = parse_model_call(flow.request.method, flow.request.path)
        if call is not None:
            self._log_refusal(flow, call, response.status_code, _error_message(response))

    def _refuse(self, flow: http.HTTPFlow, call: ModelCall, refusal: ProxyRefusal) -> None:
        logger.info(f"memory-routing: refused {flow.request.method} {loggable_url(flow.request.path)}: {refusal.message}")
        flow.response = refusal_response(refusal, flow)
        self._log_refusal(flow, call, refusal.status, refusal.message)

    async def _count_tokens_in_thread(self, flow: http.HTTPFlow, call: ModelCall, decision: RoutingDecision,
                                      payload: dict[str, Any]) -> None:
        # A tokenizer's first use builds its table (0.3-0.7 s of CPU) and a long conversation takes
        # milliseconds to count: neither may hold up the event loop and every other request.
        try:
            flow.response = await asyncio.to_thread(self._count_tokens, decision, payload)
        except ProxyRefusal as e:
            self._refuse(flow, call, e)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = self._records.get(flow)
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
        if dropped := record.summary.get("dropped"):
            flow.response.headers[DROPPED_HEADER] = ",".join(dropped)  # type: ignore[arg-type]
        if record.answer is not None:
            self._prepare_translated_answer(flow, record, event_stream)
            return
        if event_stream or not length.isdigit() or int(length) > BUFFER_LIMIT:
            record.stream = True
            # Compressed streams are passed on as they are; their usage is not read.
            record.meter = None if encoding else UsageMeter(event_stream)
            flow.response.stream = record.tap

    def response(self, flow: http.HTTPFlow) -> None:
        record = self._records.pop(flow, None)
        if record is None or flow.response is None:
            return
        if record.meter is None and not record.stream and flow.response.raw_content is not None:
            record.meter = UsageMeter(event_stream=False)
            # The memory reads the same answer next: both use one parse of it.
            record.meter.read_whole(
                flow.response.get_content(strict=False) or b"", lambda: answer_json(flow).document)
        if record.answer is not None and not record.stream:
            self._translate_answer(flow, record.answer)
        self._log(flow, record, status=flow.response.status_code, error=None)

    def error(self, flow: http.HTTPFlow) -> None:
        record = self._records.pop(flow, None)
        if record is not None:
            error = flow.metadata.get(FAILURE_NOTE_KEY) or (flow.error.msg if flow.error else "unknown")
            self._log(flow, record, status=None, error=error)

    # --- steps ----------------------------------------------------------------------------

    def _decide(self, flow: http.HTTPFlow, call: ModelCall, on_gateway: bool) -> tuple[RoutingDecision, dict | None]:
        config, classifier = self.routing.config, self.routing.classifier
        assert config is not None and classifier is not None
        request = flow.request
        headers = request_headers(flow)
        identity = classifier.classify(headers)
        payload: dict[str, Any] | None = None
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

    def _apply(self, flow: http.HTTPFlow, decision: RoutingDecision, payload: dict | None) -> None:
        request = flow.request
        client = client_name(request_headers(flow).get("user-agent"))
        target = decision.upstream
        dropped = decision.dropped_header_names
        added = decision.added_header_fields
        plain_http1 = not (request.is_http2 or request.is_http3)
        if plain_http1:
            dropped = dropped | {b"host"}
            added = added + ((b"host", target.host_header.encode()),)
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
        if body is not None:
            if "content-encoding" not in request_headers(flow) or answer is not None:
                # The whole body is in hand: send it with a plain content-length, chunked or not.
                dropped = dropped | {b"content-length", b"transfer-encoding"}
                added = added + ((b"content-length", str(len(body)).encode()),)
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
        record = _FlowRecord(
            decision, decision.summary() | fit_notes, answer=answer,
            asked_stream=payload is not None and payload.get("stream") is True, client=client,
        )
        set_route(flow, Route(decision, decision.client_protocol, decision.user_id, record), display=record.summary)
        flow.comment = decision.description
        self._records[flow] = record

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
        record.translate_chunk = record.answer.stream_translator()
        response.headers.pop("content-length", None)
        response.headers["content-type"] = "text/event-stream; charset=utf-8"
        response.stream = record.tap

    def _translate_answer(self, flow: http.HTTPFlow, answer: AnswerTranslation) -> None:
        response = flow.response
        assert response is not None
        lowered = {name.lower(): value for name, value in response.headers.items()}
        if is_cloudflare_error_head(response.status_code, lowered):
            return  # Cloudflare's own page: CloudflareGuard answers it in the client's shape
        try:
            body = answer.body(response.status_code, lowered.get("content-type", ""), response.content or b"")
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

    def _log(self, flow: http.HTTPFlow, record: _FlowRecord, status: int | None, error: str | None) -> None:
        request, response = flow.request, flow.response
        started = request.timestamp_start
        first_byte = record.first_body_byte_at or (response.timestamp_start if response else None)
        ended = (response.timestamp_end if response else None) or time.time()
        usage = record.meter.finish() if record.meter else None
        line = {
            **record.summary,
            "at": started,
            "client": record.client,
            "status": status,
            "stream": record.stream or record.asked_stream,
            "latency_ms": round((ended - started) * 1000, 1),
            "ttfb_ms": round((first_byte - started) * 1000, 1) if first_byte else None,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "reasoning_tokens": usage.reasoning_tokens if usage else None,
        }
        line.pop("headers_set", None)
        if record.supermemory:
            line["supermemory"] = record.supermemory
            add_to_display(flow, supermemory=record.supermemory)
        if error:
            line["error"] = error
        line.update(flow.metadata.get(LOG_FIELDS_KEY, ()))
        try:
            self.flow_log.write(line)
        except OSError as e:  # a full disk must not take the proxy down
            logger.warning(f"memory-routing: cannot write the flow log: {e}")
        self._to_sinks(line)

    def _log_refusal(self, flow: http.HTTPFlow, call: ModelCall, status: int, error: str) -> None:
        """A call the proxy answered itself: no flow-log line (nothing was routed), but the sinks count it."""
        if not self.log_sinks:
            return
        request = flow.request
        try:
            user_id = self.routing.classifier.classify(request_headers(flow)).user_id  # type: ignore[union-attr]
        except Exception:  # an unusable user id header is what was refused
            user_id = UNIDENTIFIED_USER
        self._to_sinks({
            "user_id": user_id,
            "requested_model": call.path_model or _requested_model(flow) or NO_MODEL,
            "client_protocol": call.protocol.value,
            "route": "refused",
            "at": request.timestamp_start,
            "client": client_name(request.headers.get("user-agent")),
            "status": status,
            "error": error,
            "latency_ms": round((time.time() - request.timestamp_start) * 1000, 1),
        })

    def _to_sinks(self, line: dict[str, Any]) -> None:
        for sink in self.log_sinks:
            try:
                sink(line)
            except Exception:
                logger.exception("memory-routing: a flow-log sink failed")


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
