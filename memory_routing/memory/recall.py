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

Recall 2 (issue 23) adds windows (memory/windows.py: up to 3 consecutive turns, indexed with
their first turn's date) searched beside the turns, each hit's score taken relative to the best
of its own search; a question naming a period (memory/dates.py) searches that period's windows
again, and runs holding one come first; the block's budget adapts (adaptive_budget):

    turns only, as above (this packing) ......... 0.840  (budget 2,000: 0.871)
    + windows with their date label ............. 0.857
    + the named period's windows first .......... 0.864  (median 3,976; budget 2,000: 0.909 at 7,962)
    + adaptive budget (600 tokens, +150 a strong hit) 0.861 (median 3,600; budget 2,000: 0.886 at 3,600)

With every turn dated now (as the replay through the proxy stores them): 0.846 with or without
the adaptive budget, 0.840 with turns only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .dates import question_period
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
    windows: int = 20  # window hits considered beside the turn hits (0: turns only)
    window_weight: float = 1.0  # a window hit's score (relative to the best window) against a turn hit's
    period_weight: float = 1.5  # windows of the period a question names: searched again and boosted (0: off)
    min_best_score: float = 0.0  # the best turn hit's BM25 score under which nothing is shown
    floor_tokens: int = 600  # the block's budget when a single hit is strong (see adaptive_budget)...
    tokens_per_strong_hit: int = 150  # ...and what each further strong hit adds, up to the budget
    strong_score: float = 0.6


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
                 cache_size: int = 1024, tuning: RecallTuning = RecallTuning(),
                 clock: Callable[[], float] = time.time) -> None:
        if budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive")
        self.store = store
        self.budget_tokens = budget_tokens
        self.deadline_s = deadline_s
        self.tuning = tuning
        self.clock = clock  # "now" for questions naming a relative period ("last week")
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
        if hits and hits[0][1] < t.min_best_score:
            return None  # nothing relevant enough to pay for
        candidates = [Candidate(score / hits[0][1], memory=memory, rank=rank)
                      for rank, (memory, score) in enumerate(hits)
                      if score >= hits[0][1] * t.min_relative_score and memory.id not in exclude_ids]
        if t.windows:
            windows = self.store.search_windows(user_id, turn_text, t.windows, exclude_conversation_id=exclude,
                                                deadline=deadline, common_share=t.common_share)
            candidates += window_candidates(windows, t.window_weight)
            period = question_period(turn_text, self.clock()) if t.period_weight else None
            if period is not None:
                dated = self.store.search_windows(user_id, turn_text, t.windows, exclude_conversation_id=exclude,
                                                  deadline=deadline, common_share=t.common_share, period=period.keys)
                candidates += window_candidates(dated, t.period_weight, in_period=True)
        if not candidates:
            return None
        candidates.sort(key=lambda c: -c.score)
        budget = adaptive_budget(candidates, budget, t)
        runs = self._runs(candidates, deadline, budget, exclude_ids)
        lines = block_lines(runs, budget)
        return RecalledBlock(render_lines(lines), len(lines), lines) if lines else None

    def _runs(self, candidates: list[Candidate], deadline: float, budget_tokens: int,
              exclude_ids: frozenset[int]) -> list[list[Memory]]:
        """The candidates, best first, as runs of turns (a turn hit grown by its neighbours, a window
        as it is), overlapping runs merged so that no turn is shown twice, until there is about
        enough to fill the budget; best-scoring runs first. No memory of `exclude_ids`."""
        t = self.tuning
        packer = RunPacker(budget_tokens * CHARS_PER_TOKEN * 1.5, t.window_score)
        for candidate in candidates:
            if candidate.memory is not None:
                memory, rank = candidate.memory, candidate.rank
                if rank >= t.expand or packer.holds(memory):
                    continue
                if rank < t.wide:
                    run = self.store.neighbours(memory, t.before, t.after, deadline=deadline)
                else:
                    run = self.store.neighbours(memory, 0, t.narrow_after, deadline=deadline)
                hit_ids = frozenset([memory.id])
            else:
                run = list(candidate.turns)
                hit_ids = frozenset(m.id for m in run)
            if exclude_ids:
                run = [m for m in run if m.id not in exclude_ids]
            if run and packer.add(run, candidate.score, hit_ids, candidate.in_period):
                break
        return packer.runs()


@dataclass(frozen=True, slots=True)
class Candidate:
    """Something to show: a turn hit (grown into a run by its neighbours) or a window hit, with its
    score relative to the best hit of its own search (times the search's weight)."""

    score: float
    memory: Memory | None = None
    rank: int = 0  # a turn hit's place in its search
    turns: tuple[Memory, ...] = ()
    in_period: bool = False  # a window of the period the question names


def window_candidates(windows: list[tuple[tuple[Memory, ...], float]], weight: float, *,
                      in_period: bool = False) -> list[Candidate]:
    if not windows:
        return []
    best = max(windows[0][1], 1e-9)
    return [Candidate(weight * score / best, turns=turns, in_period=in_period) for turns, score in windows]


class RunPacker:
    """Runs of turns gathered for a block: a run that shares turns with one already gathered joins
    it (its new turns only), so no turn is shown twice; the same words typed in several
    conversations are shown once. Each run is ranked by the scores of the hits it holds, a run
    holding a window of the period the question names before every run that holds none."""

    def __init__(self, enough_chars: float, score: str = "sum") -> None:
        self.enough_chars = enough_chars
        self.score = score
        self._runs: list[list[Memory]] = []
        self._scores: list[float] = []
        self._in_period: list[bool] = []
        self._covered: dict[int, int] = {}  # memory id -> index of the run holding it
        self._texts: set[str] = set()
        self._used = 0

    def holds(self, memory: Memory) -> bool:
        return memory.id in self._covered or memory.text in self._texts

    def add(self, run: list[Memory], score: float, hit_ids: frozenset[int], in_period: bool = False) -> bool:
        """Adds the run (a hit of `score`); True once there is enough to fill the budget."""
        new = [m for m in run if m.id not in self._covered and (m.id in hit_ids or m.text not in self._texts)]
        if not new:
            return False
        overlapping = sorted({self._covered[m.id] for m in run if m.id in self._covered})
        if overlapping:
            target = overlapping[0]
            merged = {m.id: m for m in self._runs[target]} | {m.id: m for m in new}
            self._runs[target] = [merged[i] for i in sorted(merged)]
            self._scores[target] = (self._scores[target] + score if self.score == "sum"
                                    else max(self._scores[target], score))
            self._in_period[target] |= in_period
        else:
            target = len(self._runs)
            self._runs.append(new)
            self._scores.append(score)
            self._in_period.append(in_period)
        for m in new:
            self._covered[m.id] = target
        self._texts.update(m.text for m in new)
        self._used += sum(len(m.text) + 24 for m in new)
        return self._used > self.enough_chars

    def runs(self) -> list[list[Memory]]:
        order = sorted(range(len(self._runs)), key=lambda i: (not self._in_period[i], -self._scores[i]))
        return [self._runs[i] for i in order]


def adaptive_budget(candidates: list[Candidate], budget_tokens: int, tuning: RecallTuning) -> int:
    """How much of `budget_tokens` the block may use: `floor_tokens`, plus `tokens_per_strong_hit`
    for each strong turn hit (scoring at least `strong_score` of the best one) past the first, at
    most the whole budget. Few strong hits: the question is narrow, or the memory barely knows
    it, and a long block would be tokens the user pays for to show weaker matches."""
    strong = sum(1 for c in candidates if c.memory is not None and c.score >= tuning.strong_score)
    return min(budget_tokens, tuning.floor_tokens + tuning.tokens_per_strong_hit * max(0, strong - 1))
