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

-- Rows per user and per (user, word), kept by triggers in the writes' own transactions: a search
-- reads a word's rows among the user's (BM25's IDF, and whether the word is too common to keep)
-- with one index lookup, where counting them through the GIN index reads every matching row of
-- the heap (a user owning 50k rows asks with words in thousands of them). Forgetting removes a
-- user's words here too: rows that reach 0 are deleted.
CREATE TABLE memory_user_rows (
    user_id text PRIMARY KEY,
    rows bigint NOT NULL
);
CREATE TABLE memory_term_rows (
    user_id text NOT NULL,
    lexeme text NOT NULL,
    rows bigint NOT NULL,
    PRIMARY KEY (user_id, lexeme)
);

-- Upserts in (user, lexeme) order: proxies writing the same user's rows at once lock them in the
-- same order (they wait for each other, never deadlock).
CREATE FUNCTION memories_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_user_rows AS t (user_id, rows)
        SELECT user_id, count(*) FROM added GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET rows = t.rows + excluded.rows;
    INSERT INTO memory_term_rows AS t (user_id, lexeme, rows)
        SELECT a.user_id, l.lexeme, count(*) FROM added AS a, unnest(tsvector_to_array(a.tsv)) AS l (lexeme)
        WHERE l.lexeme NOT LIKE 'owner %' GROUP BY a.user_id, l.lexeme ORDER BY a.user_id, l.lexeme
        ON CONFLICT (user_id, lexeme) DO UPDATE SET rows = t.rows + excluded.rows;
    RETURN NULL;
END $$;

CREATE FUNCTION memories_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE memory_user_rows AS t SET rows = t.rows - d.rows
        FROM (SELECT user_id, count(*) AS rows FROM removed GROUP BY user_id) AS d
        WHERE t.user_id = d.user_id;
    DELETE FROM memory_user_rows WHERE rows <= 0 AND user_id IN (SELECT user_id FROM removed);
    UPDATE memory_term_rows AS t SET rows = t.rows - d.rows
        FROM (SELECT a.user_id, l.lexeme, count(*) AS rows
              FROM removed AS a, unnest(tsvector_to_array(a.tsv)) AS l (lexeme)
              WHERE l.lexeme NOT LIKE 'owner %' GROUP BY a.user_id, l.lexeme) AS d
        WHERE t.user_id = d.user_id AND t.lexeme = d.lexeme;
    DELETE FROM memory_term_rows WHERE rows <= 0 AND user_id IN (SELECT user_id FROM removed);
    RETURN NULL;
END $$;

CREATE TRIGGER memories_counted_added AFTER INSERT ON memories
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION memories_count_added();
CREATE TRIGGER memories_counted_removed AFTER DELETE ON memories
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION memories_count_removed();
