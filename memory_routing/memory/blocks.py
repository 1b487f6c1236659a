"""A conversation's recall blocks: which turn got which block, kept so that it is re-sent byte for byte.

A client resends its own messages with every request, without the recall block the proxy put
into them. Forwarded so, the history the provider sees would change at the first turn that had
a block, and its prompt cache would miss from there on. So each turn's block is kept (in the
store, to outlive a restart) and put back into that turn's message in every later request of the
conversation, exactly as the provider first saw it.

A turn is known by its key: a hash chained over the conversation's human messages up to and
including it (and the client's explicit conversation id, when it sends one). The chain names a
turn by everything the human said before it, so two conversations that share their first
messages part at the first one that differs, and a turn is found wherever the client puts its
system messages, tool results or reminders around it. The system prompt is not part of the key:
clients put changing things in it (Claude Code a per-run fingerprint), and a changed system prompt
would lose every block the model has already read.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .inject import CHARS_PER_TOKEN, render_lines
from .records import BlockLine
from .store import MemoryStore

_KEY_VERSION = b"memory-routing/turn/1\0"
BOOK_SIZE = 4096  # (user, turn) entries kept in memory in front of the store
STORE_READ_DEADLINE_S = 0.5  # a kept block is read on the request path: a stuck store must not hold it


def turn_keys(conversation_hint: str, turn_texts: Sequence[str]) -> list[bytes]:
    """One key per human turn, each hashed over the hint and every human text up to that turn."""
    keys = []
    state = hashlib.sha256(_KEY_VERSION + conversation_hint.encode("utf-8", "surrogatepass")).digest()
    for text in turn_texts:
        state = hashlib.sha256(state + b"\0" + text.encode("utf-8", "surrogatepass")).digest()
        keys.append(state)
    return keys


@dataclass(frozen=True, slots=True)
class TurnBlock:
    """A turn's recall block as lines; no lines: the turn carries no block."""

    lines: tuple[BlockLine, ...] = ()

    @property
    def text(self) -> str:
        return render_lines(self.lines)

    @property
    def tokens(self) -> int:
        """What the block costs of the conversation's budget (inject.CHARS_PER_TOKEN characters a token)."""
        return math.ceil(len(self.text) / CHARS_PER_TOKEN)

    @property
    def memory_ids(self) -> frozenset[int]:
        return frozenset(line.memory_id for line in self.lines)


NO_BLOCK = TurnBlock()


def spent_and_shown(blocks: Iterable[TurnBlock]) -> tuple[int, frozenset[int]]:
    """(tokens the blocks cost together, the memories they show)."""
    spent, shown = 0, set[int]()
    for block in blocks:
        spent += block.tokens
        shown |= block.memory_ids
    return spent, frozenset(shown)


class BlockBook:
    """The blocks of turns, by (user, turn key): an in-memory LRU in front of the store.

    The store is the record (a restart, another proxy on the same file); the LRU spares the
    request path a read for turns it has seen. A turn the store has no block for is remembered
    as NO_BLOCK: a tool loop's follow-ups read nothing.
    """

    def __init__(self, size: int = BOOK_SIZE) -> None:
        self.size = size
        # (user, turn key) -> (block, when it was remembered: time.monotonic())
        self._items: OrderedDict[tuple[str, bytes], tuple[TurnBlock, float]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, user_id: str, key: bytes, max_age_s: float | None = None) -> TurnBlock | None:
        """The turn's block from memory (NO_BLOCK: known to have none); None: not in memory (or
        remembered more than `max_age_s` ago)."""
        with self._lock:
            item = self._items.get((user_id, key))
            if item is None or (max_age_s is not None and time.monotonic() - item[1] > max_age_s):
                return None
            self._items.move_to_end((user_id, key))
            return item[0]

    def remember(self, user_id: str, key: bytes, block: TurnBlock) -> None:
        with self._lock:
            self._items[(user_id, key)] = (block, time.monotonic())
            self._items.move_to_end((user_id, key))
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def needs_store(self, user_id: str, keys: Sequence[bytes], max_age_s: float | None = None) -> bool:
        """Whether lookup() would read the store: some key is not in memory (or is older than `max_age_s`)."""
        return any(self.cached(user_id, key, max_age_s) is None for key in keys)

    def lookup(self, store: MemoryStore, user_id: str, keys: Sequence[bytes], *,
               unknown: bytes | None = None, max_age_s: float | None = None) -> dict[bytes, TurnBlock]:
        """The blocks of `keys` (NO_BLOCK for a turn that has none), from memory, else from the store.

        `unknown`: a key left out of the answer when neither memory nor the store has it (the
        new turn: it is yet to be searched), rather than remembered as NO_BLOCK.
        `max_age_s`: blocks remembered longer ago are read from the store again (other proxies of
        a fleet delete memories and forget users: the store has dropped them from its blocks).
        """
        found: dict[bytes, TurnBlock] = {}
        missing = []
        for key in keys:
            block = self.cached(user_id, key, max_age_s)
            if block is None:
                missing.append(key)
            else:
                found[key] = block
        if missing:
            kept = store.recall_blocks(user_id, missing, deadline=time.monotonic() + STORE_READ_DEADLINE_S)
            for key in missing:
                block = TurnBlock(kept[key]) if key in kept else NO_BLOCK
                if key == unknown and key not in kept:
                    continue
                self.remember(user_id, key, block)
                found[key] = block
        return found

    def forget_all(self) -> None:
        """After memories were deleted: blocks are read again from the store, which dropped them."""
        with self._lock:
            self._items.clear()
