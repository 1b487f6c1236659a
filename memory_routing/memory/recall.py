"""Recall: which of a user's memories go into a new turn, rendered once per turn.

Retrieval, tuned on LoCoMo conversations 0-4 with bench/memory_quality.py (budget 1,000 tokens):
BM25 over single turns (stopwords out, Porter stemming; words found in over 10 % of the user's
memories, such as names and greetings, left out), the best hits grown into runs of neighbouring
turns of the same conversation (one before and two after for the five best, one after for the
rest), runs ranked by the summed scores of the hits they hold, best first until the budget is
spent. The current conversation is left out: the client sends it already.

    single turns, top 5 ........................ recall_any 0.52   (median block 889 chars)
    runs around hits, 1 before / 1 after ........ 0.77
    runs, 1 before / 2 after .................... 0.81   (a date per line instead of per run: 0.79)
    + narrower runs past the 5 best hits ........ 0.815
    + common words (over 10 % of rows) left out . 0.846  (median block 3,978 chars, max 4,000)
    the same with a 500 / 2,000-token budget .... 0.77 / 0.87
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .inject import CHARS_PER_TOKEN, block_lines, render_lines
from .records import BlockLine, Memory, MemoryStoreError, MemoryTimeoutError
from .store import MemoryStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecallTuning:
    """Retrieval knobs; the defaults are the measured best (bench/memory_quality.py)."""

    candidates: int = 40  # BM25 hits considered
    expand: int = 30  # hits, best first, turned into runs of turns until the budget is spent
    before: int = 1  # neighbouring turns shown before one of the `wide` best hits...
    after: int = 2  # ...and after it (the answer to a question usually follows it)
    wide: int = 5
    narrow_after: int = 1  # turns shown after the other hits
    exclude_current_conversation: bool = True
    min_relative_score: float = 0.0  # drop hits scoring under this fraction of the best one
    window_score: str = "sum"  # a run's rank: "sum" or "max" of its hits' scores
    common_share: float | None = 0.1  # leave out words found in more than this share of the user's memories


@dataclass(frozen=True, slots=True)
class RecalledBlock:
    """A turn's rendered block, how many memories it shows (for the flow log: never the texts),
    and its lines (what the store keeps to re-send it)."""

    text: str
    memories: int
    lines: tuple[BlockLine, ...] = ()


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, bytes], RecalledBlock | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, bytes]) -> tuple[bool, RecalledBlock | None]:
        with self._lock:
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key]

    def put(self, key: tuple[str, str, bytes], value: RecalledBlock | None) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def drop_user(self, user_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == user_id]:
                del self._items[key]


class Recaller:
    """The recall block for a new human turn, or None; the same turn always gets the same answer."""

    def __init__(self, store: MemoryStore, budget_tokens: int = 1000, deadline_s: float = 0.05,
                 cache_size: int = 1024, tuning: RecallTuning = RecallTuning()) -> None:
        if budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive")
        self.store = store
        self.budget_tokens = budget_tokens
        self.deadline_s = deadline_s
        self.tuning = tuning
        self._cache = _LRU(cache_size)
        self.timeouts = 0

    def block_for(self, user_id: str, conversation_id: str, turn_text: str) -> str | None:
        """The rendered block for this turn of this conversation (see recall)."""
        recalled = self.recall(user_id, conversation_id, turn_text)
        return recalled.text if recalled is not None else None

    def recall(self, user_id: str, conversation_id: str, turn_text: str) -> RecalledBlock | None:
        """The block for this turn of this conversation; None when nothing is relevant, or when
        the search ran past the deadline (then the request goes on unchanged).

        Cached per (user, conversation, turn text): a repeated request of the turn gets a
        byte-identical block (or None again). The proxy keeps its conversations' blocks with
        memory/blocks.py instead (search_block), which also knows what earlier turns showed.
        """
        key = self._key(user_id, conversation_id, turn_text)
        found, block = self._cache.get(key)
        if found:
            return block
        try:
            block = self._retrieve(user_id, conversation_id, turn_text, time.monotonic() + self.deadline_s)
        except MemoryTimeoutError:
            self.timeouts += 1
            block = None
        except MemoryStoreError as e:
            # Not cached: a store that comes back serves the next request of this turn.
            log.warning("memory recall failed: %s", e)
            return None
        self._cache.put(key, block)
        return block

    def search_block(self, user_id: str, conversation_id: str, turn_text: str, *, budget_tokens: int,
                     exclude_ids: frozenset[int] = frozenset()) -> RecalledBlock | None:
        """The block for a new turn of a conversation whose earlier turns already showed
        `exclude_ids`, within `budget_tokens` (what is left of the conversation's budget); not
        cached here (memory/blocks.py keeps the blocks); None when nothing is relevant or the
        search ran past the deadline. Raises MemoryStoreError when the store fails."""
        try:
            return self._retrieve(user_id, conversation_id, turn_text, time.monotonic() + self.deadline_s,
                                  budget_tokens=budget_tokens, exclude_ids=exclude_ids)
        except MemoryTimeoutError:
            self.timeouts += 1
            return None

    @staticmethod
    def _key(user_id: str, conversation_id: str, turn_text: str) -> tuple[str, str, bytes]:
        return user_id, conversation_id, hashlib.sha256(turn_text.encode("utf-8", "surrogatepass")).digest()

    def forget_user(self, user_id: str) -> None:
        """Drops the user's cached blocks (call it after deleting their memories)."""
        self._cache.drop_user(user_id)

    def forget_all(self) -> None:
        self._cache = _LRU(self._cache.size)

    def _retrieve(self, user_id: str, conversation_id: str, turn_text: str, deadline: float, *,
                  budget_tokens: int | None = None, exclude_ids: frozenset[int] = frozenset()) -> RecalledBlock | None:
        t = self.tuning
        budget = self.budget_tokens if budget_tokens is None else min(budget_tokens, self.budget_tokens)
        exclude = conversation_id if t.exclude_current_conversation else None
        hits = self.store.search(user_id, turn_text, t.candidates, exclude_conversation_id=exclude,
                                 deadline=deadline, common_share=t.common_share)
        if not hits:
            return None
        best = hits[0][1]
        hits = [(m, s) for m, s in hits if s >= best * t.min_relative_score and m.id not in exclude_ids]
        windows = self._windows(hits, deadline, budget, exclude_ids)
        lines = block_lines(windows, budget)
        return RecalledBlock(render_lines(lines), len(lines), lines) if lines else None

    def _windows(self, hits: list[tuple[Memory, float]], deadline: float, budget_tokens: int,
                 exclude_ids: frozenset[int]) -> list[list[Memory]]:
        """Runs of neighbouring turns around the best hits, best-scoring first, overlaps merged;
        no memory of `exclude_ids` (shown earlier in the conversation)."""
        t = self.tuning
        score_of = {m.id: s for m, s in hits}
        windows: list[tuple[float, list[Memory]]] = []
        covered: dict[int, int] = {}  # memory id -> index of the window holding it
        budget_chars = budget_tokens * CHARS_PER_TOKEN
        used = 0
        shown_texts: set[str] = set()
        for rank, (memory, _) in enumerate(hits[: t.expand]):
            # The same words typed in several conversations ("continue", a pasted prompt) are shown once.
            if memory.id in covered or memory.text in shown_texts:
                continue
            if rank < t.wide:
                run = self.store.neighbours(memory, t.before, t.after, deadline=deadline)
            else:
                run = self.store.neighbours(memory, 0, t.narrow_after, deadline=deadline)
            if exclude_ids:
                run = [m for m in run if m.id not in exclude_ids]
            overlapping = sorted({covered[m.id] for m in run if m.id in covered})
            if overlapping:
                # Join the window it touches rather than repeating turns.
                target = overlapping[0]
                score, turns = windows[target]
                new = [m for m in run if m.id not in covered]
                # Turns already in another window stay there: no turn is shown twice.
                merged = {m.id: m for m in turns} | {m.id: m for m in new}
                turns = [merged[i] for i in sorted(merged)]
                windows[target] = (score + sum(score_of.get(m.id, 0.0) for m in new), turns)
                for m in new:
                    covered[m.id] = target
            else:
                windows.append((sum(score_of.get(m.id, 0.0) for m in run), run))
                for m in run:
                    covered[m.id] = len(windows) - 1
            shown_texts.update(m.text for m in run)
            used += sum(len(m.text) + 24 for m in run)
            if used > budget_chars * 1.5:
                break  # enough to fill the budget; later hits would not be shown
        if t.window_score == "max":
            windows = [(max(score_of.get(m.id, 0.0) for m in turns), turns) for _, turns in windows]
        order = sorted(range(len(windows)), key=lambda i: -windows[i][0])
        return [windows[i][1] for i in order]
