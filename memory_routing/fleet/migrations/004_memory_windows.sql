-- Windows of consecutive turns in PostgreSQL (memory/windows.py, memory/dates.py), as the local
-- store keeps them: for each turn that is not the first of its conversation, the run of up to 3
-- turns of its conversation ending with it. text is the first turn's readable date ("7 May 2023",
-- UTC) then the turns' texts, one a line; words its word count (BM25's length).
--
-- tsv is built like memories.tsv (002: english, ASCII punctuation as a space, the owner's lexeme)
-- plus the window's period keys (dates.period_keys: day, month, year, month of any year), each as
-- the lexeme 'period <key>': like the owner's, it holds a space, so no word can forge one, and a
-- search narrowed to a period is `owner & period & (words...)` inside the one GIN index.
--
-- The functions below are the SQL twins of dates.date_label, dates.period_keys and
-- pg_store.owner_lexeme (tests/test_memory_windows.py checks they agree).
CREATE FUNCTION memory_date_label(at double precision) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT extract(day FROM d)::int || ' ' || (ARRAY['January', 'February', 'March', 'April', 'May', 'June', 'July',
           'August', 'September', 'October', 'November', 'December'])[extract(month FROM d)::int]
           || ' ' || extract(year FROM d)::int
    FROM (SELECT to_timestamp(at) AT TIME ZONE 'UTC' AS d) AS t
$$;

CREATE FUNCTION memory_period_keys(at double precision) RETURNS text[] LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT ARRAY['d' || y || m || lpad(extract(day FROM d)::text, 2, '0'), 'm' || y || m, 'y' || y, 'n' || m]
    FROM (SELECT d, lpad(extract(year FROM d)::text, 4, '0') AS y, lpad(extract(month FROM d)::text, 2, '0') AS m
          FROM (SELECT to_timestamp(at) AT TIME ZONE 'UTC' AS d) AS t) AS p
$$;

CREATE FUNCTION memory_window_tsv(user_id text, text text, first_at double precision) RETURNS tsvector
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT to_tsvector('english', regexp_replace(text, '[[:punct:]]+', ' ', 'g'))
        || array_to_tsvector(('owner ' || left(encode(sha256(convert_to(user_id, 'UTF8')), 'hex'), 32))
                             || ARRAY(SELECT 'period ' || k FROM unnest(memory_period_keys(first_at)) AS k))
$$;

CREATE TABLE memory_windows (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id text NOT NULL,
    conversation_id text NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    created_at double precision NOT NULL,
    text text NOT NULL,
    words integer NOT NULL,
    tsv tsvector NOT NULL GENERATED ALWAYS AS (memory_window_tsv(user_id, text, created_at)) STORED
);
CREATE INDEX memory_windows_by_turn ON memory_windows (user_id, conversation_id, last_id);
CREATE INDEX memory_windows_search ON memory_windows USING gin (tsv) WITH (fastupdate = off);

-- Windows per user and per (user, word), as memory_user_rows / memory_term_rows count turns: a
-- window search weighs each word by the user's windows holding it (BM25's IDF over windows).
CREATE TABLE memory_window_user_rows (
    user_id text PRIMARY KEY,
    rows bigint NOT NULL
);
CREATE TABLE memory_window_term_rows (
    user_id text NOT NULL,
    lexeme text NOT NULL,
    rows bigint NOT NULL,
    PRIMARY KEY (user_id, lexeme)
);

CREATE FUNCTION memory_windows_count_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_window_user_rows AS t (user_id, rows)
        SELECT user_id, count(*) FROM added GROUP BY user_id ORDER BY user_id
        ON CONFLICT (user_id) DO UPDATE SET rows = t.rows + excluded.rows;
    INSERT INTO memory_window_term_rows AS t (user_id, lexeme, rows)
        SELECT a.user_id, l.lexeme, count(*) FROM added AS a, unnest(tsvector_to_array(a.tsv)) AS l (lexeme)
        WHERE strpos(l.lexeme, ' ') = 0 GROUP BY a.user_id, l.lexeme ORDER BY a.user_id, l.lexeme
        ON CONFLICT (user_id, lexeme) DO UPDATE SET rows = t.rows + excluded.rows;
    RETURN NULL;
END $$;

CREATE FUNCTION memory_windows_count_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE memory_window_user_rows AS t SET rows = t.rows - d.rows
        FROM (SELECT user_id, count(*) AS rows FROM removed GROUP BY user_id) AS d
        WHERE t.user_id = d.user_id;
    DELETE FROM memory_window_user_rows WHERE rows <= 0 AND user_id IN (SELECT user_id FROM removed);
    UPDATE memory_window_term_rows AS t SET rows = t.rows - d.rows
        FROM (SELECT a.user_id, l.lexeme, count(*) AS rows
              FROM removed AS a, unnest(tsvector_to_array(a.tsv)) AS l (lexeme)
              WHERE strpos(l.lexeme, ' ') = 0 GROUP BY a.user_id, l.lexeme) AS d
        WHERE t.user_id = d.user_id AND t.lexeme = d.lexeme;
    DELETE FROM memory_window_term_rows WHERE rows <= 0 AND user_id IN (SELECT user_id FROM removed);
    RETURN NULL;
END $$;

CREATE TRIGGER memory_windows_counted_added AFTER INSERT ON memory_windows
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION memory_windows_count_added();
CREATE TRIGGER memory_windows_counted_removed AFTER DELETE ON memory_windows
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION memory_windows_count_removed();

-- A turn added (not a repeat: ON CONFLICT DO NOTHING adds no row) gets the window ending with it,
-- from the up to 3 latest turns of its conversation up to it, in the insert's own transaction.
-- words: the turns' word counts plus the date label's three.
CREATE FUNCTION memories_add_windows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_windows (user_id, conversation_id, first_id, last_id, created_at, text, words)
        SELECT a.user_id, a.conversation_id, min(t.id), a.id, (array_agg(t.created_at ORDER BY t.id))[1],
               memory_date_label((array_agg(t.created_at ORDER BY t.id))[1]) || E'\n'
                   || string_agg(t.text, E'\n' ORDER BY t.id),
               3 + sum(t.words)
        FROM added AS a CROSS JOIN LATERAL (
            SELECT m.id, m.text, m.created_at, m.words FROM memories AS m
            WHERE m.user_id = a.user_id AND m.conversation_id = a.conversation_id AND m.id <= a.id
            ORDER BY m.id DESC LIMIT 3) AS t
        GROUP BY a.user_id, a.conversation_id, a.id HAVING count(*) >= 2
        ORDER BY a.id;
    RETURN NULL;
END $$;

-- A deleted turn takes every window holding it, in the delete's own transaction (its words are
-- in their text).
CREATE FUNCTION memories_remove_windows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM memory_windows AS w USING removed AS r
        WHERE w.user_id = r.user_id AND w.conversation_id = r.conversation_id
          AND w.last_id >= r.id AND w.first_id <= r.id;
    RETURN NULL;
END $$;

-- The windows of the memories stored before this migration: every turn's, once.
INSERT INTO memory_windows (user_id, conversation_id, first_id, last_id, created_at, text, words)
    SELECT user_id, conversation_id, first_ids[1], id, first_ats[1],
           memory_date_label(first_ats[1]) || E'\n' || array_to_string(texts, E'\n'), 3 + words
    FROM (SELECT user_id, conversation_id, id,
                 array_agg(id) OVER run AS first_ids, array_agg(created_at) OVER run AS first_ats,
                 array_agg(text) OVER run AS texts, sum(words) OVER run AS words, count(*) OVER run AS turns
          FROM memories
          WINDOW run AS (PARTITION BY user_id, conversation_id ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW))
          AS r
    WHERE turns >= 2
    ORDER BY id;

CREATE TRIGGER memories_added_windows AFTER INSERT ON memories
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION memories_add_windows();
CREATE TRIGGER memories_removed_windows AFTER DELETE ON memories
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION memories_remove_windows();
