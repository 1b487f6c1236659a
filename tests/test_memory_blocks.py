"""A conversation's recall blocks: turn keys, the block book in front of the store, budget and shown memories."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory_routing.memory.blocks import (
    NO_BLOCK,
    BlockBook,
    TurnBlock,
    spent_and_shown,
    turn_keys,
)
from memory_routing.memory.inject import render_lines
from memory_routing.memory.records import BlockLine, KeptBlock, NewMemory
from memory_routing.memory.store import SQLiteMemoryStore


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteMemoryStore(tmp_path / "memory.sqlite3")
    yield s
    s.close()


def test_turn_keys_chain_over_the_human_turns() -> None:
    one = turn_keys("", ["hi", "tell me about Rex", "and Jane?"])
    assert len(set(one)) == 3
    assert turn_keys("", ["hi", "tell me about Rex"]) == one[:2]  # the next request of the conversation
    other = turn_keys("", ["hi", "something else", "and Jane?"])
    assert other[0] == one[0] and other[1:] != one[1:]  # parted at the first message that differs
    assert turn_keys("conv-2", ["hi"]) != one[:1]  # the client's own conversation id counts
    assert turn_keys("", ["continue", "continue"])[0] != turn_keys("", ["continue", "continue"])[1]


def test_a_block_is_rendered_from_its_lines_and_counts_its_tokens() -> None:
    block = TurnBlock((BlockLine(1, 0, "2023-05-08", "user: tea"), BlockLine(2, 0, "2023-05-08", "assistant: ok"),
                       BlockLine(3, 1, "2023-05-09", "user: cake")))
    assert block.text == render_lines(block.lines) and block.memory_ids == {1, 2, 3}
    assert block.tokens == -(-len(block.text) // 4)
    assert NO_BLOCK.text == "" and NO_BLOCK.tokens == 0
    assert spent_and_shown([block, NO_BLOCK]) == (block.tokens, frozenset({1, 2, 3}))
    # A run that lost its first line (a forgotten memory) still opens with its date.
    assert "[2023-05-08] assistant: ok" in TurnBlock(block.lines[1:]).text


def test_the_book_reads_the_store_once_and_remembers(store: SQLiteMemoryStore, monkeypatch) -> None:
    [memory] = store.add_many([NewMemory("u", "c", "cli", "m", "user", "tea", 1_700_000_000.0)])
    line = BlockLine(memory, 0, "2023-11-14", "user: tea")
    store.save_recall_blocks([KeptBlock("u", b"k1", (line,), 1.0)])
    book = BlockBook()
    found = book.lookup(store, "u", [b"k1", b"k2", b"new"], unknown=b"new")
    assert found == {b"k1": TurnBlock((line,)), b"k2": NO_BLOCK}  # the new turn is yet to be searched
    reads = []
    monkeypatch.setattr(store, "recall_blocks", lambda *a, **k: reads.append(a) or {})
    assert book.lookup(store, "u", [b"k1", b"k2"]) == found
    assert reads == [] and book.cached("v", b"k1") is None  # per user
    book.forget_all()
    assert book.lookup(store, "u", [b"k1"]) == {b"k1": NO_BLOCK} and len(reads) == 1


def test_the_book_is_bounded() -> None:
    book = BlockBook(size=2)
    for key in (b"a", b"b", b"c"):
        book.remember("u", key, NO_BLOCK)
    assert book.cached("u", b"a") is None and book.cached("u", b"c") is NO_BLOCK
