"""Addon giving model calls the embedded (local) memory: recall into a new human turn, store the answer.

mitmproxy calls the addons of its list in order, hook by hook, so the job takes two objects:
``EmbeddedMemory`` sits before the router (the recall block goes into the client's own body,
before any translation), its ``answers`` (``MemoryAnswers``) after it (by then the router has set
its stream callback and translated a whole answer into the client's format, which is the format
the answer's text is read in).

Nothing in the memory path may fail a call: an error is logged (never with contents) and the
request goes on as the client sent it. Memories are searched for the memory user id the
classifier gives the call, and only that one's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http

from memory_routing.addons.routing_config import RoutingConfig
from memory_routing.config.schema import ProxyConfig
from memory_routing.call_record import MemoryOutcome
from memory_routing.errors import SharedServerUnavailable
from memory_routing.flow_state import AnswerEvents, FlowContext, context_of, known_context
from memory_routing.mitm.flows import request_headers, routed_call
from memory_routing.memory.blocks import NO_BLOCK, BlockBook, TurnBlock, spent_and_shown, turn_keys
from memory_routing.memory.inject import CHARS_PER_TOKEN, HEADER, inject_blocks
from memory_routing.memory.modes import MODE_HEADER, InvalidMemoryMode, MemoryMode, client_default, mode_from_header
from memory_routing.memory.recall import Recaller
from memory_routing.memory.records import KeptBlock, NewMemory
from memory_routing.memory.store import MemoryStore
from memory_routing.memory.redact import FENCE_CLOSE, FENCE_OPEN
from memory_routing.memory.turns import AnswerTextCollector, assistant_text, human_turns, new_human_turn
from memory_routing.memory.writer import DEFAULT_OUTAGE_ROWS, MemoryWriter
from memory_routing.routing.classify import InvalidUserId
from memory_routing.wire.headers import replaced_fields
from memory_routing.wire.model_calls import Endpoint, ModelCall
from memory_routing.routing.planner import conversation_id_from
from memory_routing.flow_state import RequestJson
from memory_routing.mitm.answer_json import answer_json
from memory_routing.wire.flow_log import client_name
from memory_routing.wire.sse import SseDecoder
from memory_routing.mitm.request_json import edit_request_json, request_json
from memory_routing.wire.header_values import is_user_id
from memory_routing.wire.responses import error_response

logger = logging.getLogger(__name__)

# For the benchmark and for curious users: how long the recall took, and what came of it
# (injected | none | timeout | error | spent: the conversation's block budget is used up;
# reinjected: a tool loop's follow-up got its turn's kept block; unavailable: the fleet's
# database is away, the call goes on without memory).
RECALL_MS_HEADER = "x-memory-routing-recall-ms"
RECALL_HEADER = "x-memory-routing-recall"
_RECALL_MS_NAME, _RECALL_NAME = RECALL_MS_HEADER.encode(), RECALL_HEADER.encode()
_RECALL_HEADER_NAMES = frozenset({_RECALL_MS_NAME, _RECALL_NAME})
# Calls that hold a conversation; embeddings, completions, Responses and count_tokens do not get memory.
MEMORY_ENDPOINTS = frozenset({
    Endpoint.CHAT_COMPLETIONS, Endpoint.MESSAGES, Endpoint.GENERATE_CONTENT, Endpoint.STREAM_GENERATE_CONTENT,
})
# A streamed answer that is not an event stream (chunked JSON) is read whole up to this size.
ANSWER_BUFFER_LIMIT = 4 * 1024 * 1024
MEMORY_PATH = "/memory-routing/memories"
WRITER_CLOSE_TIMEOUT_S = 10.0
RECALL_THREADS = 2  # each has its own read connection; more threads than cores would only queue
# An answer that is only tool-call traces says nothing worth remembering.
_ONLY_TOOL_TRACES = re.compile(r"(?:\s*\[tool(?::[^\]\n]*)?\]\s*)*")
# Below this many tokens left of the conversation's budget no block is searched for: the fence
# and the header alone take most of it.
MIN_BLOCK_TOKENS = (len(FENCE_OPEN) + len(HEADER) + len(FENCE_CLOSE) + 2) // CHARS_PER_TOKEN + 25
EXPLICIT_CONVERSATION_HEADER = "x-memory-conversation-id"
# With the fleet's database, a kept block remembered longer ago than this is read again: a memory
# deleted (or a user forgotten) through another proxy leaves this proxy's blocks within it.
FLEET_BLOCK_MAX_AGE_S = 5.0


@dataclass
class _CallMemory:
    """What one model call does with memory; lives from its request to its answer."""

    user_id: str
    conversation_id: str
    protocol: str  # "openai" | "anthropic" | "gemini"
    model: str
    client: str
    turn: str | None  # the new human turn's text; None for a tool loop's request
    writes: bool
    writer: MemoryWriter
    mode: str = "both"  # the x-memory-mode in force: both | read | write
    recall: str | None = None  # outcome, when a recall was tried
    recall_ms: float | None = None
    recalled: int = 0  # memories shown in the injected block
    resent: int = 0  # earlier turns' blocks put back into their messages
    # What the call's recall blocks (its turn's and the earlier turns' it re-sends) add to its
    # input, estimated as budgets are (4 characters a token): the usage rows price it.
    block_tokens: int = 0
    collector: AnswerTextCollector | None = None  # a streamed event-stream answer
    buffer: bytearray | None = None  # a streamed answer that is one JSON document
    events: Any = field(default=None, repr=False)  # the SSE decoder of a streamed answer

    def outcome(self, stored: bool) -> MemoryOutcome:
        """What the memory did for the call, for its record: never what it holds."""
        return MemoryOutcome(self.mode, self.recall or "skipped", self.recalled, stored, self.recall_ms,
                             block_tokens=self.block_tokens, resent=self.resent)

    def memories(self, answer: str) -> list[NewMemory]:
        now = time.time()
        rows = []
        if self.turn:
            rows.append(NewMemory(self.user_id, self.conversation_id, self.client, self.model, "user", self.turn, now))
        # A tool loop's intermediate answers are kept when they say something; the loop's final
        # answer comes in a request whose last message is a tool result.
        if answer and (self.turn or not _ONLY_TOOL_TRACES.fullmatch(answer)):
            rows.append(NewMemory(self.user_id, self.conversation_id, self.client, self.model, "assistant",
                                  answer, now))
        return rows


@dataclass(frozen=True)
class _Turns:
    """The request's human turns: their keys (memory/blocks.py), their messages' indexes, and the
    new turn's key (None for a tool loop's follow-up)."""

    keys: list[bytes]
    indexes: dict[bytes, int]
    new_key: bytes | None


@dataclass(frozen=True)
class _NewTurn:
    """What the search for a new turn's block needs from its request."""

    key: bytes
    blocks: dict[bytes, TurnBlock]  # the earlier turns' blocks
    indexes: dict[bytes, int]  # turn key -> index of its message
    budget: int  # tokens the block may take
    shown: frozenset[int]  # memories earlier blocks showed


class EmbeddedMemory:
    """Request side (before ModelRouter): x-memory-mode, recall and injection; owns the writer."""

    def __init__(self, routing: RoutingConfig, stores: Any) -> None:
        self.routing = routing
        # LocalStores: owns the SQLite file; its `memory` is read on use, never kept past a change.
        self.stores = stores
        self.answers = MemoryAnswers(self)
        self.recaller: Recaller | None = None
        self.book = BlockBook()  # each turn's block, to re-send byte for byte (memory/blocks.py)
        self.writer: MemoryWriter | None = None
        self._store: MemoryStore | None = None
        self._recaller_settings: tuple[int, float] | None = None
        self._pool: ThreadPoolExecutor | None = None
        # The writer's queue is written out before the file is closed (shutdown or a new file).
        stores.before_close.append(self.close_writer)

    # --- lifecycle ------------------------------------------------------------------------

    def running(self) -> None:
        """The writer starts with the proxy, not with the first call: the retention's first prune is at start."""
        config = self.routing.config
        if config is None or not config.memory.local:
            return
        try:
            self._engine(config)
        except Exception as e:  # noqa: BLE001 - the first call tries again
            logger.warning("memory: could not start the writer (%s)", type(e).__name__)

    def done(self) -> None:
        self.close_writer()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close_writer(self) -> None:
        writer, self.writer, self._store, self.recaller = self.writer, None, None, None
        if writer is not None and not writer.close(WRITER_CLOSE_TIMEOUT_S):
            logger.warning("memory: the writer did not finish within %.0f s; turns still queued are lost",
                           WRITER_CLOSE_TIMEOUT_S)

    def status(self) -> dict[str, object]:
        """For /memory-routing/info: the backend and counts, never contents."""
        config = self.routing.config
        backend = config.memory.backend if config is not None else None
        status: dict[str, object] = {"backend": backend}
        store = self.stores.memory
        if backend != "local" or store is None:
            return status
        try:
            status.update(store.counts())
        except Exception as e:  # noqa: BLE001 - info must answer even if the store does not
            status["error"] = type(e).__name__
        writer, recaller = self.writer, self.recaller
        status["retention_days"] = config.memory.retention_days if config is not None else None
        if writer is not None:
            status.update(written=writer.written, dropped=writer.dropped, failed=writer.failed, pruned=writer.pruned,
                          held=writer.held, outage_dropped=writer.outage_dropped)
        if recaller is not None:
            status["recall_timeouts"] = recaller.timeouts
        return status

    def _engine(self, config: ProxyConfig) -> tuple[Recaller, MemoryWriter] | None:
        store = self.stores.memory
        if store is None:
            return None
        if store is not self._store:
            self.close_writer()
            self.book.forget_all()  # another file: its own blocks
            self._store = store
            self.writer = MemoryWriter(store, retention_days=config.memory.retention_days,
                                       on_pruned=self._after_prune,
                                       outage_rows=_outage_rows(self.stores))
        else:
            assert self.writer is not None
            self.writer.set_retention(config.memory.retention_days)
        settings = (config.memory.budget_tokens, config.memory.deadline_ms)
        if self.recaller is None or settings != self._recaller_settings:
            self.recaller = Recaller(store, budget_tokens=settings[0], deadline_s=settings[1] / 1000)
            self._recaller_settings = settings
        assert self.writer is not None
        return self.recaller, self.writer

    # --- hooks ----------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow):
        if flow.response is not None:
            self._after_local_answer(flow)
            return None
        if flow.error or not flow.live:
            return None
        request = flow.request
        call = routed_call(flow, self.routing.llm_hosts)
        if call is None:
            return None
        context = context_of(flow)
        asked: MemoryMode | None = None
        if MODE_HEADER in request_headers(flow):
            try:
                asked = mode_from_header(request.headers.get_all(MODE_HEADER))
            except InvalidMemoryMode as e:
                flow.response = error_response(flow, 400, str(e), protocol=call.protocol)
                return None
            # The header is the proxy's: no provider is told about it.
            del request.headers[MODE_HEADER]
        config = self.routing.config
        if config is None or not config.memory.local or call.endpoint not in MEMORY_ENDPOINTS:
            return None
        if asked is MemoryMode.OFF:
            context.memory = _OFF
            return None
        try:
            return self._begin(flow, context, call, config, asked)
        except Exception as e:  # noqa: BLE001 - memory never fails a call
            logger.error("memory: skipped for a call after an internal error (%s)", type(e).__name__)
            context.memory_call = None
            return None

    def _begin(self, flow: http.HTTPFlow, context: FlowContext, call: ModelCall, config: ProxyConfig,
               asked: MemoryMode | None):
        headers = request_headers(flow)
        assert self.routing.classifier is not None
        try:
            identity = context.classify(self.routing.classifier.classify, headers)
        except InvalidUserId:
            return None  # the router answers it
        mode = asked or client_default(config.memory.clients, identity.user_id, headers)
        if mode is MemoryMode.OFF:
            context.memory = _OFF
            return None
        parsed = request_json(flow)  # the router reuses this parse
        payload = parsed.payload
        if not isinstance(payload, dict):
            return None  # the router answers what is not JSON
        model = call.path_model or payload.get("model")
        if not isinstance(model, str) or not model:
            return None
        alias = config.model(model)
        if alias is not None and not alias.memory:
            return None  # the entry's `memory: false` keeps it out of every memory
        protocol = call.protocol.value
        # A large body's long strings are placeholders: memory sees a bounded prefix of them.
        readable = parsed.large.readable if parsed.large is not None else None
        found = human_turns(protocol, payload)
        texts = [readable(t.text) if readable is not None else t.text for t in found.turns]
        # The human turn this request opens; None for a tool loop's follow-up (its turn is earlier).
        turn = texts[-1] if found.new and texts else None
        reads = mode.reads and bool(texts)
        if not reads and not mode.writes:
            return None
        engine = self._engine(config)
        if engine is None:
            return None
        recaller, writer = engine
        state = _CallMemory(
            user_id=identity.user_id,
            conversation_id=conversation_id_from(headers.get) or derived_conversation_id(protocol, payload, readable),
            protocol=protocol,
            model=model,
            client=client_name(headers.get("user-agent")),
            turn=turn,
            writes=mode.writes,
            writer=writer,
            mode=mode.value,
        )
        context.memory_call = state
        if not reads:
            return None
        explicit = (headers.get(EXPLICIT_CONVERSATION_HEADER) or "").strip()
        keys = turn_keys(explicit if is_user_id(explicit) else "", texts)
        indexes = {key: t.index for key, t in zip(keys, found.turns, strict=True)}
        new_key = keys[-1] if turn is not None else None
        if getattr(recaller.store, "remote", False) and self.book.needs_store(state.user_id, keys,
                                                                              FLEET_BLOCK_MAX_AGE_S):
            # The fleet's database: the kept blocks are read in a recall thread, never on the loop.
            return self._lookup_off_loop(flow, state, parsed, recaller, config, _Turns(keys, indexes, new_key))
        looked_up = time.perf_counter()
        try:
            blocks = self.book.lookup(recaller.store, state.user_id, keys, unknown=new_key)
        except Exception as e:  # noqa: BLE001 - memory never fails a call
            self._lookup_failed(state, e, looked_up)
            return None
        return self._with_blocks(flow, state, parsed, recaller, config, _Turns(keys, indexes, new_key), blocks)

    def _lookup_failed(self, state: _CallMemory, error: Exception, started: float) -> None:
        if isinstance(error, SharedServerUnavailable):
            state.recall = "unavailable"  # told once per outage by FleetHealth
        elif isinstance(error, TimeoutError):
            state.recall = "timeout"
        else:
            logger.error("memory: could not read the conversation's recall blocks (%s)", type(error).__name__)
            state.recall = "error"
        state.recall_ms = (time.perf_counter() - started) * 1000

    async def _lookup_off_loop(self, flow: http.HTTPFlow, state: _CallMemory, parsed: RequestJson,
                               recaller: Recaller, config: ProxyConfig, turns: _Turns) -> None:
        """The kept blocks read in a recall thread, then the search; both within one recall deadline."""
        started = time.perf_counter()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._recall_pool(), lambda: self.book.lookup(recaller.store, state.user_id, turns.keys,
                                                              unknown=turns.new_key, max_age_s=FLEET_BLOCK_MAX_AGE_S))
            blocks = await asyncio.wait_for(future, recaller.deadline_s)
        except Exception as e:  # noqa: BLE001 - memory never fails a call
            self._lookup_failed(state, e, started)
            return
        pending = self._with_blocks(flow, state, parsed, recaller, config, turns, blocks,
                                    wait_s=recaller.deadline_s - (time.perf_counter() - started))
        if pending is not None:
            await pending
        if state.recall_ms is not None:
            state.recall_ms = (time.perf_counter() - started) * 1000

    def _with_blocks(self, flow: http.HTTPFlow, state: _CallMemory, parsed: RequestJson, recaller: Recaller,
                     config: ProxyConfig, turns: _Turns, blocks: dict[bytes, TurnBlock], *,
                     wait_s: float | None = None):
        """Injects the kept blocks, and searches for the new turn's block when it has none yet
        (a coroutine then; None when nothing is left to wait for)."""
        turn, keys, indexes, new_key = state.turn, turns.keys, turns.indexes, turns.new_key
        if new_key is None or new_key in blocks:
            # A tool loop's follow-up, or the turn's request again (a retry): every block as it was
            # sent, the turn's own included; no search.
            started = time.perf_counter()
            current = blocks.get(keys[-1], NO_BLOCK)
            outcome = ("injected" if turn is not None else "reinjected") if current.lines else (
                "none" if turn is not None else None)
            self._inject(flow, state, parsed, blocks, indexes, keys[-1], outcome)
            state.recall_ms = (time.perf_counter() - started) * 1000 if outcome else None
            return None
        spent, shown = spent_and_shown(blocks.values())
        budget = min(config.memory.budget_tokens, config.memory.conversation_budget_tokens - spent)
        if budget < MIN_BLOCK_TOKENS or not recaller.store.has_memories(state.user_id):
            # Nothing to search (no memories yet, or the conversation's budget is spent): no
            # thread, no wait before the router.
            self.book.remember(state.user_id, new_key, NO_BLOCK)
            self._inject(flow, state, parsed, blocks, indexes, new_key,
                         "spent" if budget < MIN_BLOCK_TOKENS else "none")
            state.recall_ms = 0.0
            return None
        return self._recall(flow, state, parsed, recaller, _NewTurn(new_key, blocks, indexes, budget, shown),
                            wait_s=recaller.deadline_s if wait_s is None else wait_s)

    def _recall_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(RECALL_THREADS, thread_name_prefix="memory-recall")
        return self._pool

    async def _recall(self, flow: http.HTTPFlow, state: _CallMemory, parsed: RequestJson, recaller: Recaller,
                      new: _NewTurn, *, wait_s: float) -> None:
        turn = state.turn
        assert turn is not None
        started = time.perf_counter()
        recalled = None
        try:
            if wait_s <= 0:
                raise TimeoutError  # the kept blocks' read took the whole deadline
            # The search runs in a thread; the request waits for it at most the deadline, queueing included.
            future = asyncio.get_running_loop().run_in_executor(
                self._recall_pool(), lambda: recaller.search_block(state.user_id, state.conversation_id, turn,
                                                          budget_tokens=new.budget, exclude_ids=new.shown))
            recalled = await asyncio.wait_for(future, wait_s)
            outcome = "injected" if recalled is not None and recalled.text else "none"
        except TimeoutError:
            outcome = "timeout"
        except SharedServerUnavailable:
            outcome = "unavailable"  # the fleet's database is away: told once per outage by FleetHealth
        except Exception as e:  # noqa: BLE001 - memory never fails a call
            logger.error("memory: recall failed (%s); the request goes on without it", type(e).__name__)
            outcome = "error"
        block = TurnBlock(recalled.lines) if recalled is not None else NO_BLOCK
        kept = self.book.cached(state.user_id, new.key)
        if kept is not None:
            # The same turn sent twice at once (a client's retry): the block kept first is the turn's.
            block, outcome = kept, "injected" if kept.lines else "none"
        if self._inject(flow, state, parsed, {**new.blocks, new.key: block}, new.indexes, new.key, outcome) \
                and kept is None:
            # Kept only once sent: the block is what the provider saw, and later requests repeat it.
            self.book.remember(state.user_id, new.key, block)
            if block.lines:
                state.writer.submit([KeptBlock(state.user_id, new.key, block.lines, time.time())])
        state.recall_ms = (time.perf_counter() - started) * 1000

    def _inject(self, flow: http.HTTPFlow, state: _CallMemory, parsed: RequestJson, blocks: dict[bytes, TurnBlock],
                indexes: dict[bytes, int], current: bytes, outcome: str | None) -> bool:
        """Puts every turn's block into its message (earlier turns' blocks exactly as first sent);
        records the outcome. False when the request is gone (nothing was sent)."""
        if not flow.live or flow.response is not None or flow.error is not None:
            state.recall = outcome
            return False
        texts = {indexes[key]: block.text for key, block in blocks.items() if block.lines and key in indexes}
        if texts:
            try:
                # Encoded by the router, together with its own changes (see edit_request_json).
                edit_request_json(flow, parsed, inject_blocks(state.protocol, parsed.payload, texts))
            except Exception as e:  # noqa: BLE001
                logger.error("memory: could not inject the recall blocks (%s)", type(e).__name__)
                state.recall = "error"
                return False
        current_block = blocks.get(current, NO_BLOCK)
        state.block_tokens = sum(-(-len(text) // CHARS_PER_TOKEN) for text in texts.values())
        state.recalled = len(current_block.lines)
        state.resent = len(texts) - (1 if current_block.lines and current in indexes else 0)
        state.recall = outcome
        return True

    def _after_prune(self, deleted: int) -> None:
        """(writer thread) Memories past the retention are gone: no cached block may show them again."""
        self.book.forget_all()
        recaller = self.recaller
        if recaller is not None:
            recaller.forget_all()

    def _after_local_answer(self, flow: http.HTTPFlow) -> None:
        """A memory deleted through the management API must not come back from a cached block."""
        request = flow.request
        if (request.method == "DELETE" and request.path.startswith(MEMORY_PATH)
                and flow.response is not None and flow.response.status_code < 400):
            # The store dropped the memory from every kept block: they are read from it again.
            self.book.forget_all()
            if self.recaller is not None:
                self.recaller.forget_all()


class MemoryAnswers:
    """Answer side (after ModelRouter): reads the answer's text in the client's format and stores the turn."""

    def __init__(self, memory: EmbeddedMemory) -> None:
        self.memory = memory

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = _call_memory(flow)
        response = flow.response
        if state is None or response is None:
            return
        if state.recall is not None:
            # One replacement of the fields instead of two setter calls (~8 µs each).
            response.headers.fields = replaced_fields(response.headers.fields, _RECALL_HEADER_NAMES, (
                (_RECALL_MS_NAME, f"{state.recall_ms:.2f}".encode()), (_RECALL_NAME, state.recall.encode())))
        if not state.writes or not 200 <= response.status_code < 300:
            state.writes = False
            return
        stream = response.stream
        if not stream:
            return  # read whole in response(), after the router translated it
        event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
        translated = _translated_events(flow)
        if event_stream and translated is not None:
            # The router decodes the provider's stream and builds the client's events: they are
            # read as it makes them, not decoded again from the bytes it writes.
            state.collector = AnswerTextCollector(state.protocol)
            translated.observer = _safe_reader(state, state.collector)
            return
        if event_stream:
            state.events = SseDecoder()
            state.collector = AnswerTextCollector(state.protocol)
        else:
            state.buffer = bytearray()
        inner = stream if callable(stream) else None

        def tap(chunk: bytes):
            out = inner(chunk) if inner is not None else chunk
            if not isinstance(out, bytes):
                out = list(out)  # a generator would be used up by reading it here
            if state.writes:
                try:
                    for piece in [out] if isinstance(out, bytes) else out:
                        _read_piece(state, piece)
                    if not chunk:  # mitmproxy's end-of-stream call
                        _end_of_stream(state)
                except Exception as e:  # noqa: BLE001 - the answer streams on regardless
                    state.writes = False
                    logger.error("memory: could not read a streamed answer (%s); it is not stored", type(e).__name__)
            return out

        response.stream = tap

    def response(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        state = context.memory_call if context is not None else None
        if context is None or state is None:
            return
        context.memory_call = None
        stored = False
        response = flow.response
        # The status the client gets: a translation that failed, for one, is no answer to store.
        if state.writes and response is not None and 200 <= response.status_code < 300:
            try:
                answer = _answer_text(state, flow)
                rows = state.memories(answer) if answer is not None else []
                stored = bool(rows) and state.writer.submit(rows)  # never blocks; False when dropped
            except Exception as e:  # noqa: BLE001 - memory never fails a call
                logger.error("memory: could not store a turn (%s)", type(e).__name__)
        # What really happened, for the call's record (written after this, by call_log).
        context.memory = state.outcome(stored)

    def error(self, flow: http.HTTPFlow) -> None:
        context = known_context(flow)
        state = context.memory_call if context is not None else None
        if context is not None and state is not None:
            context.memory_call = None
            context.memory = state.outcome(stored=False)



def _outage_rows(stores: Any) -> int:
    """storage.outage_queue_rows from the stores (LocalStores), its default without storage settings."""
    rows = getattr(stores, "outage_rows", None)
    return DEFAULT_OUTAGE_ROWS if rows is None else int(rows)


# The record of a call whose memory the client (x-memory-mode) or the config turned off.
_OFF = MemoryOutcome("off")


def _translated_events(flow: http.HTTPFlow) -> AnswerEvents | None:
    context = known_context(flow)
    return context.answer_events if context is not None else None


def _safe_reader(state: _CallMemory, collector: AnswerTextCollector) -> Callable[[dict[str, Any]], None]:
    """The collector's feed for a translated stream's events: it must never fail the stream."""
    def read(event: dict[str, Any]) -> None:
        if not state.writes:
            return
        try:
            collector.feed(event)
        except Exception as e:  # noqa: BLE001 - the answer streams on regardless
            state.writes = False
            logger.error("memory: could not read a streamed answer (%s); it is not stored", type(e).__name__)

    return read


def _call_memory(flow: http.HTTPFlow) -> _CallMemory | None:
    context = known_context(flow)
    return context.memory_call if context is not None else None


def _read_piece(state: _CallMemory, piece: bytes) -> None:
    if not piece:
        return
    if state.events is not None:
        assert state.collector is not None
        for event in state.events.feed(piece):
            _feed_event(state.collector, event.data)
    elif state.buffer is not None:
        if len(state.buffer) + len(piece) > ANSWER_BUFFER_LIMIT:
            state.writes = False
            state.buffer = None
        else:
            state.buffer += piece


def _end_of_stream(state: _CallMemory) -> None:
    if state.events is not None and state.collector is not None:
        for event in state.events.close():
            _feed_event(state.collector, event.data)


def _feed_event(collector: AnswerTextCollector, data: str) -> None:
    if not data or data == "[DONE]":
        return
    try:
        event = json.loads(data)
    except ValueError:
        return
    collector.feed(event)


def _answer_text(state: _CallMemory, flow: http.HTTPFlow) -> str | None:
    """The assistant's text of a complete answer in the client's format; None when it cannot be read."""
    if state.collector is not None:
        return state.collector.text()
    if state.buffer is not None:
        try:
            document = json.loads(bytes(state.buffer))
        except ValueError:
            return None
    else:
        parsed = answer_json(flow)  # the router's usage meter read the same parse
        if parsed.error is not None:
            return None
        document = parsed.document
    if isinstance(document, list):  # Gemini's streamGenerateContent without alt=sse: an array of answers
        collector = AnswerTextCollector(state.protocol)
        for item in document:
            collector.feed(item)
        return collector.text()
    return assistant_text(state.protocol, document)


def derived_conversation_id(protocol: str, payload: dict, readable: Callable[[str], str] | None = None) -> str:
    """A stable id for a client that sends none: the conversation's first human message does not
    change while the conversation goes on (the client resends it with every turn).

    ``readable``: a large body's placeholder remover (placeholders change with every request)."""
    first = None
    if protocol == "gemini":
        contents = payload.get("contents")
        if isinstance(contents, list):
            first = next((c for c in contents if isinstance(c, dict) and c.get("role", "user") == "user"), None)
        text = new_human_turn(protocol, {"contents": [first]}) if first else None
    else:
        messages = payload.get("messages")
        if isinstance(messages, list):
            first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        text = new_human_turn(protocol, {"messages": [first]}) if first else None
    if text and readable is not None:
        text = readable(text)
    digest = hashlib.sha256((text or "").encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"first-{digest}"
