"""The proxy's embedded long-term memory: pure logic, no mitmproxy and no LiteLLM.

records  what is stored (NewMemory, Memory) and the one error hierarchy (MemoryStoreError)
store    the MemoryStore interface and its SQLite/FTS5 implementation
redact   what is removed before storing (secrets, <private> text, our own recall block)
turns    the human turn wherever it stands and the assistant's text, per client protocol
inject   rendering the recall block and putting blocks into their turns' user messages
blocks   each turn's block kept (store + LRU) and re-sent byte for byte; the conversation's budget
recall   Recaller: query, rank, render within a budget and a deadline, cached per turn
writer   MemoryWriter: a bounded queue and one writer thread off the event loop
"""

from .inject import inject_recall, render_block
from .recall import Recaller, RecallTuning
from .records import (Memory, MemoryRecordError, MemoryStoreClosedError, MemoryStoreError, MemoryTimeoutError,
                      NewMemory)
from .redact import FENCE_CLOSE, FENCE_OPEN, drop_private, prepare_text, redact_secrets, strip_recall_block
from .store import MemoryStore, SQLiteMemoryStore
from .turns import AnswerTextCollector, assistant_text, new_human_turn
from .writer import MemoryWriter, prepare

__all__ = [
                      "FENCE_CLOSE",
                      "FENCE_OPEN",
                      "AnswerTextCollector",
                      "Memory",
                      "MemoryRecordError",
                      "MemoryStore",
                      "MemoryStoreClosedError",
                      "MemoryStoreError",
                      "MemoryTimeoutError",
                      "MemoryWriter",
                      "NewMemory",
                      "RecallTuning",
                      "Recaller",
                      "SQLiteMemoryStore",
                      "assistant_text",
                      "drop_private",
                      "inject_recall",
                      "new_human_turn",
                      "prepare",
                      "prepare_text",
                      "redact_secrets",
                      "render_block",
                      "strip_recall_block",
]
