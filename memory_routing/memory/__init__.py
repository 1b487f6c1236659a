"""The proxy's embedded long-term memory: pure logic, no mitmproxy and no LiteLLM.

records  what is stored (NewMemory, Memory) and the one error hierarchy (MemoryStoreError)
store    the MemoryStore interface and its SQLite/FTS5 implementation
redact   what is removed before storing (secrets, <private> text, our own recall block)
turns    the new human turn and the assistant's text, per client protocol
inject   rendering the recall block and putting it into the last user message
recall   Recaller: query, rank, render within a budget and a deadline, cached per turn
writer   MemoryWriter: a bounded queue and one writer thread off the event loop
"""
