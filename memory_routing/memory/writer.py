"""MemoryWriter: turns are stored by one thread off the event loop, through a bounded queue.

submit() never blocks and never fails an answer: when the queue is full the turns are dropped,
counted, and logged at most once a minute. Preparation (our recall block stripped, <private>
text dropped, secrets redacted: redact.prepare_text) happens here, in the writer thread, so the
regular expressions never run on the event loop, and nothing reaches the store unprepared.

With a retention (memory.retention_days) the same thread deletes the memories older than it:
when it starts, then once a day.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

from .records import KeptBlock, NewMemory
from .redact import prepare_text
from .store import MemoryStore

log = logging.getLogger(__name__)

_BATCH_MAX = 256  # submits written in one transaction
LINGER_S = 0.05  # how long the first turn of a burst waits for the others
_DROP_LOG_INTERVAL_S = 60.0


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
                 idle_wake_s: float = 60.0, on_pruned: Callable[[int], None] | None = None) -> None:
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
        self._thread = threading.Thread(target=self._run, name="memory-writer", daemon=True)
        self._thread.start()

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
            try:
                batches = [self._queue.get(timeout=self.idle_wake_s)]
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
            if prepared:
                self.store.add_many(prepared)
            self.written += len(prepared)
            if blocks:
                # After the turns: a block never shows what it was recalled alongside, but a
                # block's lines are checked against the memories still there (see the store).
                self.store.save_recall_blocks(blocks)
        except Exception as e:  # noqa: BLE001 - the writer thread must outlive a bad batch
            self.failed += len(turns)
            log.error("memory writer: could not store %d turn(s): %s", len(turns), type(e).__name__)
        finally:
            with self._done:
                self._pending -= len(batches)
                if not self._pending and not self._closed:
                    self._hurry.clear()
                self._done.notify_all()
