"""``CallRecord``: what happened to one model call, written once after the call is over.

Written by the last stage (``call_log.CallLog``) after the answer is complete, translated,
replaced (Cloudflare) or failed, and after the memory stored the turn or decided not to. The
flow-log line (``log_line``), the dashboard's usage row (dashboard.recorder.usage_row) and
mitmweb's flow comment (``comment``) are views of it, so they cannot disagree with each other
or with what happened. Pure: no mitmproxy, no LiteLLM.

Typed, immutable records as ``NamedTuple``s: one is made per call, and a frozen dataclass of this
many fields costs four times as much to make (each field set through ``object.__setattr__``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

# A refused call's record where the proxy could not tell who asked or for what (usage rows show
# these instead of blanks).
UNIDENTIFIED_USER = "(invalid user id)"
NO_MODEL = "(no model)"
# MemoryOutcome.recall values that mean a recall block went into the request.
INJECTED_RECALLS = frozenset({"injected", "reinjected"})


class MemoryOutcome(NamedTuple):
    """What the embedded (local) memory did for one call; never what it holds.

    ``mode``: the x-memory-mode in force (both | read | write | off). ``recall``: injected |
    reinjected | none | timeout | error | unavailable (the fleet's database is away) | skipped.
    ``stored``: the turn was handed to the writer (a full queue or an unreadable answer is not
    stored).
    """

    mode: str
    recall: str = "skipped"
    recalled: int = 0
    stored: bool = False
    recall_ms: float | None = None
    backend: str = "local"
    resent: int = 0  # earlier turns' blocks put back into their messages
    block_tokens: int = 0  # what the call's recall blocks added to its input (estimated): priced in the usage row

    @property
    def injected(self) -> bool:
        return self.recall in INJECTED_RECALLS

    def log_fields(self) -> dict[str, object]:
        """The flow log's ``memory`` field."""
        if self.mode == "off":
            return {"backend": self.backend, "mode": "off"}
        fields: dict[str, object] = {"backend": self.backend, "mode": self.mode, "recall": self.recall,
                                     "recalled": self.recalled, "stored": self.stored}
        if self.recall_ms is not None:
            fields["recall_ms"] = round(self.recall_ms, 2)
        if self.resent:
            fields["resent"] = self.resent
        if self.block_tokens:
            fields["block_tokens"] = self.block_tokens
        return fields

    def describe(self) -> str:
        if self.mode == "off":
            return "memory off (local, x-memory-mode off)"
        recalled = f", {self.recalled} recalled" if self.injected else ""
        return (f"memory on (local, {self.mode}: recall {self.recall}{recalled}; "
                f"{'stored' if self.stored else 'not stored'})")


class CallRecord(NamedTuple):
    """One model call, routed or refused by the proxy.

    ``route``: routed | translated | refused | failed. ``status``: the status the client got
    (None: no answer, ``error`` says why). ``supermemory_routing``: the call went through
    Supermemory's memory router. ``supermemory``: its x-supermemory-* answer headers.
    ``notes``: what the stages added (parameters dropped or fitted by a translation, how a large
    body was handled, Cloudflare's refusal). ``route_fields``: the routing decision as the flow
    log shows it (routing.planner.RoutingDecision.log_fields; shared, never changed).
    """

    at: float
    user_id: str
    client: str
    client_protocol: str
    requested_model: str
    route: str
    status: int | None
    latency_ms: float
    error: str | None = None
    rule: str = ""
    alias: str | None = None
    provider: str = ""
    provider_model: str = ""
    upstream_url: str = ""
    translated_to: str | None = None
    supermemory_routing: bool = False
    stream: bool = False
    ttfb_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    memory: MemoryOutcome | None = None
    supermemory: Mapping[str, str] | None = None
    notes: Mapping[str, object] | None = None
    route_fields: Mapping[str, object] | None = None

    @property
    def memory_injected(self) -> bool:
        return self.memory is not None and self.memory.injected

    @property
    def memory_stored(self) -> bool:
        return self.memory is not None and self.memory.stored

    def log_line(self) -> dict[str, object]:
        """The flow log's JSON object (the log adds its time stamp)."""
        if self.route == "refused":
            return {"user_id": self.user_id, "requested_model": self.requested_model,
                    "client_protocol": self.client_protocol, "route": "refused", "at": self.at,
                    "client": self.client, "status": self.status, "error": self.error,
                    "latency_ms": self.latency_ms}
        line = dict(self.route_fields or ())
        # Supermemory's routing (a bool), or the embedded memory's account (an object).
        line["memory"] = self.memory.log_fields() if self.memory is not None else self.supermemory_routing
        if self.notes:
            line.update(self.notes)
        # Every token field, null where the answer gave no count (docs/dashboard.md's contract).
        line.update(
            at=self.at, client=self.client, status=self.status, stream=self.stream, latency_ms=self.latency_ms,
            ttfb_ms=self.ttfb_ms, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens, cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )
        if self.supermemory:
            line["supermemory"] = dict(self.supermemory)
        if self.error:
            line["error"] = self.error
        return line

    def comment(self) -> str:
        """mitmweb's flow comment: one line, no header values, no key in the URL."""
        if self.route == "refused":
            return f"user {self.user_id}; refused {self.status}: {self.error}"
        alias = f"{self.alias} → " if self.alias else ""
        translated = f"; translated {self.client_protocol} → {self.translated_to}" if self.translated_to else ""
        if self.memory is not None:
            memory = self.memory.describe()
        else:
            memory = "memory on (Supermemory)" if self.supermemory_routing else "memory off"
        outcome = f"failed: {self.error}" if self.status is None else str(self.status)
        return (f"user {self.user_id} ({self.rule}); {alias}{self.provider}/{self.provider_model}{translated}; "
                f"{memory}; {self.upstream_url}; {outcome}")
