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

A shared store (the fleet's PostgreSQL) may be unavailable for a while: the rows it refuses with
SharedServerUnavailable wait in a second bounded queue (``outage_capacity`` rows, the config's
storage.outage_queue_rows) and are written again, oldest first, with a growing delay between
tries, until the database takes them. The rows of a full queue are dropped, counted, and logged
once per outage. Each row carries its own id, so a batch written twice is stored once.
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
from memory_routing.errors import SharedServerUnavailable

from .cost import call_cost_usd
from .usage_rows import UsageRow

log = logging.getLogger(__name__)

DAY_S = 86400.0
ERROR_TEXT_LIMIT = 300
# The delay before writing the outage queue again: doubled after each failed try, up to the most.
RETRY_FIRST_S, RETRY_MOST_S = 0.5, 5.0
PRUNE_RETRY_S = 60.0


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


def usage_row(record: CallRecord, prices: CallPrices | float | None, now: float, proxy: str = "") -> UsageRow:
    """The usage row of one call, served by ``proxy``: a view of its record (call_record.CallRecord)."""
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
        proxy=proxy,
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
        outage_capacity: int = 10_000,
        proxy_name: Callable[[], str] = str,
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
        self.outage_capacity = outage_capacity
        self.proxy_name = proxy_name  # the proxy of the fleet each row names ('' alone)
        self.written = self.dropped = self.failed = self.pruned = 0
        # Rows the shared store refused while unavailable, waiting for it (the writer's alone).
        self._outage: deque[UsageRow] = deque()
        self.outage_dropped = 0
        self._outage_full_told = False
        self._retry_delay = RETRY_FIRST_S
        self._retry_at = 0.0  # time.monotonic() of the next try
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
                "pruned": self.pruned, "retention_days": self.retention_days,
                "outage_queued": len(self._outage), "outage_dropped": self.outage_dropped}

    # --- writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._prune_if_due()
            with self._cond:
                if not self._lines and not self._stopping:
                    self._cond.wait(self._idle_wait())
                retry = not self._lines and bool(self._outage) and time.monotonic() >= self._retry_at
                if not self._lines and not retry:
                    if self._stopping:
                        break
                    continue
                batch: list[CallRecord] = []
                if not retry:
                    self._cond.wait_for(self._write_now, self.linger_s)
                    batch = [self._lines.popleft() for _ in range(min(self.batch_size, len(self._lines)))]
                    if not self._lines:
                        self._hurry = False
                self._busy = True
            try:
                # Off the lock: a call's submit() never waits for the database.
                if batch:
                    self._write(batch)
                else:
                    self._write_outage()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        self._last_try()

    def _idle_wait(self) -> float:
        if not self._outage:
            return self.idle_wake_s
        return min(self.idle_wake_s, max(0.0, self._retry_at - time.monotonic()))

    def _write_now(self) -> bool:
        return self._stopping or self._hurry or len(self._lines) >= self.batch_size

    def _write(self, lines: list[CallRecord]) -> None:
        now = self.clock()
        proxy = self.proxy_name()
        rows = [usage_row(line, self._prices(line), now, proxy) for line in lines]
        store = self.usage()
        if store is None:
            self.dropped += len(rows)
            return
        if self._outage:  # behind the rows already waiting: written in order when it is back
            self._queue_for_outage(rows)
            if time.monotonic() >= self._retry_at:
                self._write_outage()
            return
        try:
            self.written += store.insert(rows)
        except SharedServerUnavailable:
            self._queue_for_outage(rows)
            self._retry_at = time.monotonic() + self._retry_delay
        except Exception as e:  # a full disk or a locked file: counted, the proxy goes on
            self.failed += len(rows)
            log.warning("usage: could not store %d call(s): %s", len(rows), type(e).__name__)

    # --- the outage queue (writer thread) --------------------------------------------------

    def _queue_for_outage(self, rows: list[UsageRow]) -> None:
        room = max(0, self.outage_capacity - len(self._outage))
        if not self._outage and rows:
            log.info("usage: the shared database is unavailable; usage rows wait in memory (up to %d)",
                     self.outage_capacity)
        self._outage.extend(rows[:room])
        overflow = len(rows) - min(room, len(rows))
        if overflow:
            self.outage_dropped += overflow
            if not self._outage_full_told:
                self._outage_full_told = True
                log.warning("usage: %d rows wait for the unavailable database (storage.outage_queue_rows);"
                            " the calls' rows beyond them are dropped and counted (outage_dropped in"
                            " /memory-routing/info) until it is back", len(self._outage))

    def _write_outage(self) -> None:
        """Writes the waiting rows, oldest first, until the queue is empty or the store fails again."""
        store = self.usage()
        if store is None:
            self.dropped += len(self._outage)
            self._outage.clear()
            return
        written = 0
        while self._outage:
            batch = [self._outage[i] for i in range(min(self.batch_size, len(self._outage)))]
            try:
                written += store.insert(batch)
            except SharedServerUnavailable:
                self._retry_delay = min(self._retry_delay * 2, RETRY_MOST_S)
                self._retry_at = time.monotonic() + self._retry_delay
                self.written += written
                return
            except Exception as e:  # refused for good (not unavailable): counted, never retried
                self.failed += len(batch)
                log.warning("usage: could not store %d queued call(s): %s", len(batch), type(e).__name__)
            for _ in batch:
                self._outage.popleft()
        self.written += written
        log.info("usage: the database is back; %d queued row(s) written", written)
        self._retry_delay, self._outage_full_told = RETRY_FIRST_S, False

    def _last_try(self) -> None:
        """At shutdown: one more try for the waiting rows; what is still refused is lost, and said."""
        if not self._outage:
            return
        self._write_outage()
        if self._outage:
            lost = len(self._outage)
            self.outage_dropped += lost
            self._outage.clear()
            log.warning("usage: %d row(s) waiting for the unavailable database are lost at shutdown", lost)

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
        except SharedServerUnavailable:
            # The fleet's database is down or not migrated yet (a proxy's start): its outage is told
            # once by FleetHealth; the prune is tried again soon rather than a day later.
            self._next_prune = now + PRUNE_RETRY_S
        except Exception as e:
            log.warning("usage: could not delete old calls: %s", type(e).__name__)
