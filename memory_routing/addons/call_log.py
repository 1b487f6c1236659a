"""Addon, the pipeline's last stage: writes each model call's ``CallRecord`` once the call is over.

It runs after every other stage's response (or error) hook: the answer is complete and
translated, Cloudflare's page is replaced, the memory has stored the turn or decided not to.
So the record says what happened, not what a stage expected to happen. Its three views go out
here: the flow-log line, the sinks (the usage recorder's rows) and mitmweb's flow comment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mitmproxy import ctx, exceptions, http

from memory_routing.call_record import NO_MODEL, UNIDENTIFIED_USER, CallRecord
from memory_routing.errors import InvalidUserId
from memory_routing.flow_state import DISPLAY_KEY, UNKNOWN, FlowContext, Outcome, known_context
from memory_routing.wire.flow_log import FlowLog
from memory_routing.wire.usage import Usage

logger = logging.getLogger(__name__)

FLOW_LOG_OPTION = "memory_routing_flow_log"
_NO_USAGE = Usage()
_NO_OUTCOME = Outcome()


class CallLog:
    def __init__(self) -> None:
        self.flow_log = FlowLog()
        # Called with each call's record (refusals included, which the flow log omits); a sink
        # must be quick and must not raise (the usage recorder only queues it).
        self.sinks: list[Callable[[CallRecord], None]] = []

    def load(self, loader) -> None:
        loader.add_option(
            FLOW_LOG_OPTION,
            str,
            "-",
            """
            Where the one-line JSON record of each routed flow goes: "-" for stderr, a file path
            to append to, or an empty string for none.
            """,
        )

    def configure(self, updated) -> None:
        if FLOW_LOG_OPTION in updated:
            try:
                self.flow_log.open(ctx.options.memory_routing_flow_log)
            except OSError as e:
                raise exceptions.OptionsError(f"{FLOW_LOG_OPTION}: cannot open: {e}") from None

    def done(self) -> None:
        self.flow_log.close()

    def response(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        if context is None or context.record is not None or flow.response is None:
            return
        if context.route is not None:
            self._write(flow, routed_record(flow, context, flow.response.status_code, None))
        elif context.outcome is not None and context.outcome.refused is not None:
            self._write(flow, refused_record(flow, context, flow.response.status_code, context.outcome))

    def error(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        if context is None or context.record is not None or context.route is None:
            return
        error = context.failure or (flow.error.msg if flow.error else "unknown")
        self._write(flow, routed_record(flow, context, None, error))

    def _write(self, flow: http.HTTPFlow, record: CallRecord) -> None:
        context = known_context(flow)
        assert context is not None
        context.record = record
        line = record.log_line()
        flow.comment = record.comment()
        if context.route is not None:
            # mitmweb's summary: the route (which headers were set, never their values) and the line.
            display = context.route.decision.summary()  # a copy: this flow's own
            display.update(line)
            flow.metadata[DISPLAY_KEY] = display
            try:
                self.flow_log.write(line)
            except OSError as e:  # a full disk must not take the proxy down
                logger.warning(f"memory-routing: cannot write the flow log: {e}")
        for sink in self.sinks:
            try:
                sink(record)
            except Exception:
                logger.exception("memory-routing: a call-record sink failed")


def routed_record(flow: http.HTTPFlow, context: FlowContext, status: int | None, error: str | None) -> CallRecord:
    """The record of a call the router sent upstream."""
    assert context.route is not None
    decision = context.route.decision
    outcome = context.outcome or _NO_OUTCOME
    usage = outcome.usage or _NO_USAGE
    request, response = flow.request, flow.response
    started = request.timestamp_start
    first_byte = outcome.first_byte_at or (response.timestamp_start if response else None)
    ended = (response.timestamp_end if response else None) or time.time()
    translated_to = decision.translation.target_protocol.value if decision.translation else None
    return CallRecord(
        at=started,
        user_id=decision.user_id,
        client=outcome.client,
        client_protocol=decision.client_protocol.value,
        requested_model=decision.requested_model,
        route="failed" if status is None else "translated" if translated_to else "routed",
        status=status,
        latency_ms=round((ended - started) * 1000, 1),
        error=error,
        rule=decision.rule,
        alias=decision.alias,
        provider=decision.provider,
        provider_model=decision.provider_model,
        upstream_url=decision.shown_upstream_url,
        translated_to=translated_to,
        supermemory_routing=decision.memory,
        stream=outcome.stream,
        ttfb_ms=round((first_byte - started) * 1000, 1) if first_byte else None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        memory=context.memory,
        supermemory=outcome.supermemory,
        notes=context.notes,
        route_fields=decision.log_fields,
    )


def refused_record(flow: http.HTTPFlow, context: FlowContext, status: int, outcome: Outcome) -> CallRecord:
    """The record of a call the proxy answered itself (no flow-log line: nothing was routed)."""
    identity, call, request = context.identity, context.call, flow.request
    return CallRecord(
        at=request.timestamp_start,
        # An unusable user id header may be what was refused.
        user_id=identity.user_id if identity is not None and not isinstance(identity, InvalidUserId) else UNIDENTIFIED_USER,
        client=outcome.client,
        client_protocol=call.protocol.value if call is not None and call is not UNKNOWN else "",
        requested_model=outcome.requested_model or NO_MODEL,
        route="refused",
        status=status,
        latency_ms=round((time.time() - request.timestamp_start) * 1000, 1),
        error=outcome.refused,
    )
