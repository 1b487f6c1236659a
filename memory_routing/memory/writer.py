"""MemoryWriter: turns are stored by one thread off the event loop, through a bounded queue.

submit() never blocks and never fails an answer: when the queue is full the turns are dropped,
counted, and logged at most once a minute. Preparation (our recall block stripped, <private>
text dropped, secrets redacted: redact.prepare_text) happens here, in the writer thread, so the
regular expressions never run on the event loop, and nothing reaches the store unprepared.

With a retention (memory.retention_days) the same thread deletes the memories older than it:
when it starts, then once a day.

When the store is a shared database that is away (SharedServerUnavailable: down, slow, not
migrated yet), the turns and blocks it could not take are held, in order, up to ``outage_rows``
of them, and written again with a growing backoff until the database is back (the store dedupes
what reaches it twice). What overflows the hold is dropped oldest first, counted, and logged once
per outage.

Once a turn arrives the thread lingers a moment (``linger_s``) before writing, so that the
answers of a burst of calls cost one wake-up and one transaction rather than one each (CPU of the
proxy's process, which the calls pay for); ``flush()`` and ``close()`` cut the lingering short.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

from memory_routing.errors import SharedServerUnavailable

from .records import KeptBlock, NewMemory
from .redact import prepare_text
from .store import MemoryStore

log = logging.getLogger(__name__)

_BATCH_MAX = 256  # submits written in one transaction
LINGER_S = 0.05  # how long the first turn of a burst waits for the others
_DROP_LOG_INTERVAL_S = 60.0
OUTAGE_RETRY_FIRST_S, OUTAGE_RETRY_MOST_S = 0.5, 30.0
DEFAULT_OUTAGE_ROWS = 10_000  # storage.outage_queue_rows' default


class _Stop(enum.Enum):
    """Queued by close(): the writer thread ends after the batches before it."""

    STOP = enum.auto()


_STOP: Final = _Stop.STOP
DAY_S = 86_400.0


def prepare(memories: Sequence[NewMemory]) -> list[NewMemory]:
    """What is stored of `memories`: texts prepared by prepare_text; turns left empty are dropped."""
    prepared = []
    for memory in memories:
        text = prepare_text(memory.text)
        if text:
            prepared.append(memory if text == memory.text else replace(memory, text=text))
    return prepared


class MemoryWriter:
    """One daemon thread writing submitted turns to `store` in batches."""

    def __init__(self, store: MemoryStore, max_queue: int = 1000, linger_s: float = LINGER_S, *,
                 retention_days: float | None = None, clock: Callable[[], float] = time.time,
                 idle_wake_s: float = 60.0, on_pruned: Callable[[int], None] | None = None,
                 outage_rows: int = DEFAULT_OUTAGE_ROWS, outage_retry_s: float = OUTAGE_RETRY_FIRST_S) -> None:
        if max_queue <= 0:
            raise ValueError("max_queue must be positive")
        self.store = store
        self.linger_s = linger_s
        self._hurry = threading.Event()  # set by flush() and close(): write without lingering
        self.clock = clock
        self.idle_wake_s = idle_wake_s  # how often an idle thread looks at the clock for the daily prune
        self.on_pruned = on_pruned  # told how many memories a prune deleted (when it deleted any)
        self.pruned = 0  # memories deleted for being older than the retention
        self._retention_days = retention_days
        self._next_prune: float | None = None  # None: prune on the thread's next turn
        self.dropped = 0  # turns dropped because the queue was full (or the writer closed)
        self.failed = 0  # turns the store refused (logged, without their text)
        self.written = 0
        self._queue: queue.Queue[list[NewMemory | KeptBlock] | _Stop] = queue.Queue(maxsize=max_queue)
        self._pending = 0  # submits not yet written (or failed)
        self._done = threading.Condition()
        self._closed = False
        self._dropped_unlogged = 0
        self._last_drop_log = float("-inf")
        # Rows the store could not take while its database was away (see the module's docstring);
        # only the writer thread touches them (status reads len() and the counters).
        self.outage_rows = outage_rows
        self._held: deque[NewMemory | KeptBlock] = deque()
        self.outage_dropped = 0  # held rows dropped because the hold was full
        self._outage_dropped_logged = False
        self._outage_retry_first_s = outage_retry_s
        self._retry_delay = outage_retry_s
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="memory-writer", daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """Rows (turns and recall blocks) waiting for the database to come back."""
        return len(self._held)

    @property
    def retention_days(self) -> float | None:
        return self._retention_days

    def set_retention(self, days: float | None) -> None:
        """A new retention (None: keep everything) applies within idle_wake_s, starting with a prune."""
        if days != self._retention_days:
            self._retention_days = days
            self._next_prune = None

    def submit(self, memories: Sequence[NewMemory | KeptBlock]) -> bool:
        """Queues the turns (and recall blocks to keep) for writing; False (and counted) when they
        were dropped. Never blocks."""
        if not memories:
            return True
        batch = list(memories)
        with self._done:
            if self._closed:
                self._count_drop(len(batch))
                return False
            try:
                self._queue.put_nowait(batch)
            except queue.Full:
                self._count_drop(len(batch))
                return False
            self._pending += 1
        return True

    def _count_drop(self, n: int) -> None:
        self.dropped += n
        self._dropped_unlogged += n
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            log.warning("memory writer queue is full: dropped %d turn(s) since the last report (%d in all)",
                        self._dropped_unlogged, self.dropped)
            self._dropped_unlogged = 0
            self._last_drop_log = now

    def flush(self, timeout: float) -> bool:
        """Waits until everything submitted so far is written; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        self._hurry.set()
        with self._done:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(left)
        return True

    def close(self, timeout: float) -> bool:
        """Stops taking turns, writes what is queued, stops the thread; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._done:
            already = self._closed
            self._closed = True
        self._hurry.set()
        if not already:
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._prune_if_due()
            wait = self.idle_wake_s
            if self._held:
                self._retry_held()
                if self._held:
                    wait = max(0.0, min(wait, self._retry_at - time.monotonic()))
            try:
                batches = [self._queue.get(timeout=wait)]
            except queue.Empty:
                continue
            self._prune_if_due()  # before the batch is counted written: flush() returns after it
            if batches[0] is not _STOP:
                self._hurry.wait(self.linger_s)
            while len(batches) < _BATCH_MAX:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(b is _STOP for b in batches)
            written = [b for b in batches if not isinstance(b, _Stop)]
            if written:
                self._write(written)
            if stop:
                if self._held:
                    self._retry_at = 0.0  # one last try
                    self._retry_held()
                if self._held:
                    log.warning("memory writer: closed while the database was away: %d held turns/blocks are lost",
                                len(self._held))
                return

    def _prune_if_due(self) -> None:
        days = self._retention_days
        now = self.clock()
        if days is None or (self._next_prune is not None and now < self._next_prune):
            return
        self._next_prune = now + DAY_S
        try:
            deleted = self.store.delete_older_than(now - days * DAY_S)
        except Exception as e:  # noqa: BLE001 - the writer thread must outlive a failed prune
            log.error("memory writer: could not delete memories past the retention: %s", type(e).__name__)
            return
        self.pruned += deleted
        if deleted:
            log.info("memory: deleted %d memories older than %g days (memory.retention_days)", deleted, days)
            if self.on_pruned is not None:
                self.on_pruned(deleted)

    def _write(self, batches: list[list[NewMemory | KeptBlock]]) -> None:
        turns = [m for batch in batches for m in batch if isinstance(m, NewMemory)]
        blocks = [b for batch in batches for b in batch if isinstance(b, KeptBlock)]
        try:
            prepared = prepare(turns)
            if self._held:
                # The database is away: behind what waits already, in order, retried on its schedule.
                self._hold([*prepared, *blocks])
            else:
                self._store_rows(prepared, blocks)
        except SharedServerUnavailable:
            self._hold([*prepared, *blocks])
        except Exception as e:  # noqa: BLE001 - the writer thread must outlive a bad batch
            self.failed += len(turns)
            log.error("memory writer: could not store %d turn(s): %s", len(turns), type(e).__name__)
        finally:
            with self._done:
                self._pending -= len(batches)
                if not self._pending and not self._closed:
                    self._hurry.clear()
                self._done.notify_all()

    def _store_rows(self, turns: list[NewMemory], blocks: list[KeptBlock]) -> None:
        if turns:
            self.store.add_many(turns)
            self.written += len(turns)
        if blocks:
            # After the turns: a block never shows what it was recalled alongside, but a
            # block's lines are checked against the memories still there (see the store).
            self.store.save_recall_blocks(blocks)

    def _hold(self, rows: list[NewMemory | KeptBlock]) -> None:
        if not self._held:
            self._retry_delay = self._outage_retry_first_s
            self._retry_at = time.monotonic() + self._retry_delay
            self._outage_dropped_logged = False
        self._held.extend(rows)
        over = len(self._held) - self.outage_rows
        if over > 0:
            for _ in range(over):
                self._held.popleft()
            self.outage_dropped += over
            if not self._outage_dropped_logged:
                self._outage_dropped_logged = True
                log.warning("memory writer: the database is away and %d turns/blocks are held"
                            " (storage.outage_queue_rows); the oldest are dropped, counted in outage_dropped",
                            self.outage_rows)

    def _retry_held(self) -> None:
        """Writes the held rows once their retry is due; on failure the next try waits twice as long."""
        if time.monotonic() < self._retry_at:
            return
        rows = list(self._held)
        try:
            for start in range(0, len(rows), _BATCH_MAX * 2):
                chunk = rows[start:start + _BATCH_MAX * 2]
                self._store_rows([r for r in chunk if isinstance(r, NewMemory)],
                                 [r for r in chunk if isinstance(r, KeptBlock)])
                for _ in chunk:
                    self._held.popleft()
        except SharedServerUnavailable:
            self._retry_delay = min(self._retry_delay * 2, OUTAGE_RETRY_MOST_S)
            self._retry_at = time.monotonic() + self._retry_delay
            return
        except Exception as e:  # noqa: BLE001 - the writer thread must outlive a bad batch
            self.failed += sum(isinstance(r, NewMemory) for r in self._held)
            log.error("memory writer: could not store the %d held turns/blocks: %s", len(self._held), type(e).__name__)
            self._held.clear()
            return
        log.info("memory writer: the database is back; wrote the turns and blocks held during the outage"
                 " (%d dropped in all for want of room)", self.outage_dropped)
