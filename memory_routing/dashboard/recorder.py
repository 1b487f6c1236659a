"""UsageRecorder: turns the call records (call_record.CallRecord) into usage rows, off the event loop.

``submit()`` (called on the event loop, once per call) only appends the record to a bounded queue;
one writer thread prices the calls (cost.call_cost_usd: LiteLLM's bundled table, imported on
that thread) and inserts them in batches. Once a line arrives the writer lingers a moment
(``linger_s``) so that a burst of calls costs one wake-up and one transaction rather than one
each (both are CPU of the proxy's process, which the calls themselves pay for); ``flush()``
and ``close()`` cut the lingering short. A full queue drops the line and counts it: a slow
disk must never slow a model call. The same thread deletes rows older than the retention, at
start and then once a day of the injected clock.

Pure logic: no mitmproxy. The usage store is asked for at each write (``usage()``), so a store
reopened on another file is followed, and a closed one (None) counts the rows as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from memory_routing.call_record import CallRecord

from .cost import call_cost_usd
from .usage_rows import UsageRow

log = logging.getLogger(__name__)

DAY_S = 86400.0
ERROR_TEXT_LIMIT = 300


class UsageWriter(Protocol):
    """The part of the usage store the recorder writes to (SQLiteUsageStore, later Postgres)."""

    def insert(self, rows: Iterable[UsageRow]) -> int: ...

    def prune(self, older_than: float) -> int: ...


# (provider, provider model, input, output, cache read, cache write, reasoning tokens) -> USD.
Pricer = Callable[[str, str, "int | None", "int | None", "int | None", "int | None", "int | None"], "float | None"]


@dataclass(frozen=True, slots=True)
class CallPrices:
    """What one call cost, what its recall block cost of that, and what the prompt cache saved."""

    cost_usd: float | None = None
    memory_cost_usd: float | None = None
    cache_saved_usd: float | None = None


def usage_row(record: CallRecord, prices: CallPrices | float | None, now: float) -> UsageRow:
    """The usage row of one call: a view of its record (call_record.CallRecord)."""
    if not isinstance(prices, CallPrices):
        prices = CallPrices(prices)
    return UsageRow(
        at=record.at or now,
        user_id=record.user_id,
        client=record.client,
        alias=record.alias or record.requested_model,
        provider=record.provider,
        provider_model=record.provider_model or record.requested_model,
        protocol=record.client_protocol,
        status=record.status,
        error=record.error[:ERROR_TEXT_LIMIT] if record.error else None,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        cached_tokens=record.cache_read_tokens,
        cost_usd=prices.cost_usd,
        latency_ms=record.latency_ms,
        ttfb_ms=record.ttfb_ms,
        memory_injected=record.memory_injected,
        memory_stored=record.memory_stored,
        route=record.route,
        translated_to=record.translated_to,
        cache_write_tokens=record.cache_write_tokens,
        reasoning_tokens=record.reasoning_tokens,
        memory_tokens=memory_tokens(record),
        memory_cost_usd=prices.memory_cost_usd,
        cache_saved_usd=prices.cache_saved_usd,
    )


def memory_tokens(record: CallRecord) -> int | None:
    """The tokens the recall blocks added to the call's input (the memory's ``block_tokens``);
    None for a call without a block (the usage totals count the calls with one as memory calls)."""
    return record.memory.block_tokens or None if record.memory is not None else None


class UsageRecorder:
    def __init__(
        self,
        usage: Callable[[], UsageWriter | None],
        *,
        retention_days: float | None = None,
        capacity: int = 10_000,
        batch_size: int = 500,
        clock: Callable[[], float] = time.time,
        price: Pricer = call_cost_usd,
        idle_wake_s: float = 60.0,
        linger_s: float = 0.1,
    ) -> None:
        self.usage = usage
        self.retention_days = retention_days  # None: keep everything
        self.capacity = capacity
        self.batch_size = batch_size
        self.clock = clock
        self.price = price
        # How often an idle writer looks at the clock for the daily prune.
        self.idle_wake_s = idle_wake_s
        self.linger_s = linger_s
        self.written = self.dropped = self.failed = self.pruned = 0
        self._lines: deque[CallRecord] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._hurry = False  # a flush waits: write without lingering
        self._next_prune: float | None = None  # None: prune on the first turn of the writer
        self._thread: threading.Thread | None = None

    # --- event loop side ------------------------------------------------------------------

    def submit(self, line: CallRecord) -> None:
        """Queues one call's record; never blocks (a full queue drops it and counts it)."""
        with self._cond:
            if len(self._lines) >= self.capacity or self._stopping:
                self.dropped += 1
                return
            self._lines.append(line)
            # Only the first line wakes the writer (and a full batch ends its lingering): a
            # notify per call would wake it once per call.
            if len(self._lines) == 1 or len(self._lines) == self.batch_size:
                self._cond.notify()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="usage-recorder", daemon=True)
            self._thread.start()

    def flush(self, timeout: float) -> bool:
        """Waits until every queued line is written (or dropped); False when ``timeout`` ran out."""
        with self._cond:
            if self._thread is None:
                return not self._lines
            self._hurry = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._lines and not self._busy, timeout)

    def close(self, timeout: float) -> bool:
        """Writes what is queued, then stops the writer; False when it did not finish in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def status(self) -> dict[str, object]:
        with self._cond:
            queued = len(self._lines)
        return {"queued": queued, "written": self.written, "dropped": self.dropped, "failed": self.failed,
                "pruned": self.pruned, "retention_days": self.retention_days}

    # --- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._prune_if_due()
            with self._cond:
                if not self._lines and not self._stopping:
                    self._cond.wait(self.idle_wake_s)
                if not self._lines:
                    if self._stopping:
                        return
                    continue
                self._cond.wait_for(self._write_now, self.linger_s)
                batch = [self._lines.popleft() for _ in range(min(self.batch_size, len(self._lines)))]
                if not self._lines:
                    self._hurry = False
                self._busy = True
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write_now(self) -> bool:
        return self._stopping or self._hurry or len(self._lines) >= self.batch_size

    def _write(self, lines: list[CallRecord]) -> None:
        now = self.clock()
        rows = [usage_row(line, self._prices(line), now) for line in lines]
        store = self.usage()
        if store is None:
            self.dropped += len(rows)
            return
        try:
            self.written += store.insert(rows)
        except Exception as e:  # a full disk or a locked file: counted, the proxy goes on
            self.failed += len(rows)
            log.warning("usage: could not store %d call(s): %s", len(rows), type(e).__name__)

    def _prices(self, record: CallRecord) -> CallPrices:
        provider, model = record.provider, record.provider_model
        tokens = [record.input_tokens, record.output_tokens, record.cache_read_tokens, record.cache_write_tokens,
                  record.reasoning_tokens]
        try:
            cost = self.price(provider, model, *tokens)
            if cost is None:
                return CallPrices()
            input_tokens, output_tokens, read, write, reasoning = (count or 0 for count in tokens)
            saved: float | None = 0.0
            if read or write:  # the same prompt with no cache: every token at the input price
                uncached = self.price(provider, model, input_tokens, output_tokens, 0, 0, reasoning)
                saved = uncached - cost if uncached is not None else None
            return CallPrices(cost, self._memory_cost(provider, model, tokens, memory_tokens(record), cost), saved)
        except Exception as e:  # an unpriced call still counts
            log.warning("usage: could not price a call: %s", type(e).__name__)
            return CallPrices()

    def _memory_cost(self, provider: str, model: str, tokens: list[int | None], block: int | None,
                     cost: float) -> float | None:
        """The call's cost less its cost without the block's tokens. They are taken from the
        uncached input first: a block is new text at the end of the prompt on its first call."""
        if not block:
            return None if block is None else 0.0
        input_tokens, output_tokens, read, write, reasoning = (count or 0 for count in tokens)
        block = min(block, input_tokens)
        from_read = max(0, block - (input_tokens - read - write))
        without = self.price(provider, model, input_tokens - block, output_tokens, read - from_read, write, reasoning)
        return cost - without if without is not None else None

    def _prune_if_due(self) -> None:
        now = self.clock()
        if self.retention_days is None or (self._next_prune is not None and now < self._next_prune):
            return
        self._next_prune = now + DAY_S
        store = self.usage()
        if store is None:
            return
        try:
            self.pruned += store.prune(now - self.retention_days * DAY_S)
        except Exception as e:
            log.warning("usage: could not delete old calls: %s", type(e).__name__)
