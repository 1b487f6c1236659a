-- The memory in PostgreSQL (memory_routing/memory/pg_store.py): the same rows and rules as the
-- local SQLite store (memory/store.py).
--
-- tsv holds the text's lexemes (english stemming; ASCII punctuation read as a space, as SQLite's
-- unicode61 tokenizer splits words) plus one lexeme naming the owner. The owner's lexeme holds a
-- space, which no parsed word can, so `owner & (words...)` narrows a search to one user inside
-- the one GIN index, before any row is read. `words` is the text's word count (BM25's length).
CREATE TABLE memories (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    conversation_id text NOT NULL,
    client text NOT NULL,
    model text NOT NULL,
    role text NOT NULL,
    text text NOT NULL,
    created_at double precision NOT NULL,
    text_sha bytea NOT NULL,
    words integer NOT NULL,
    tsv tsvector NOT NULL
);
CREATE UNIQUE INDEX memories_dedupe ON memories (user_id, conversation_id, role, text_sha);
CREATE INDEX memories_by_user ON memories (user_id, id);
CREATE INDEX memories_by_conversation ON memories (user_id, conversation_id, id);
CREATE INDEX memories_by_age ON memories (created_at);
-- fastupdate off: no pending list for searches to read through (their latency stays flat); the
-- writer thread pays for the index update instead.
CREATE INDEX memories_search ON memories USING gin (tsv) WITH (fastupdate = off);

-- Each turn's recall block as the provider first saw it, kept as lines (see memory/blocks.py).
CREATE TABLE recall_blocks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    turn_key bytea NOT NULL,
    created_at double precision NOT NULL,
    UNIQUE (user_id, turn_key)
);
CREATE INDEX recall_blocks_by_age ON recall_blocks (created_at);
-- A memory deleted (through the API, by forgetting its user, by the retention) leaves every block
-- that showed it in the same transaction; a block deleted takes its lines.
CREATE TABLE recall_block_lines (
    block_id bigint NOT NULL REFERENCES recall_blocks (id) ON DELETE CASCADE,
    position integer NOT NULL,
    memory_id bigint NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    run integer NOT NULL,
    date text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (block_id, position)
);
CREATE INDEX recall_block_lines_by_memory ON recall_block_lines (memory_id);
