-- Usage rows of the whole fleet: one per model call, written by the proxy that served it
-- (memory_routing/dashboard/usage_rows_pg.py). The columns are the SQLite table's
-- (dashboard/usage_rows.py), with the proxy's name and the row's own id: a batch written again
-- after a lost answer from the server is stored once (ON CONFLICT (call_id) DO NOTHING).
CREATE TABLE usage_calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id text NOT NULL UNIQUE,
    proxy text NOT NULL,
    at double precision NOT NULL,          -- epoch seconds (UTC), as in SQLite
    user_id text NOT NULL,
    client text NOT NULL,
    alias text NOT NULL,
    provider text NOT NULL,
    provider_model text NOT NULL,
    protocol text NOT NULL,
    status integer,
    error text,
    input_tokens integer,
    output_tokens integer,
    cached_tokens integer,
    cost_usd double precision,
    latency_ms double precision,
    ttfb_ms double precision,
    memory_injected boolean NOT NULL,
    memory_stored boolean NOT NULL,
    route text NOT NULL,
    translated_to text,
    cache_write_tokens integer,
    reasoning_tokens integer,
    memory_tokens integer,
    memory_cost_usd double precision,
    cache_saved_usd double precision
);

-- One key for one model's spellings, as usage_rows.model_key: no provider prefix, lower case,
-- a dot as a dash.
CREATE FUNCTION model_key(name text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT replace(lower(regexp_replace(name, '^.*/', '')), '.', '-') $$;

-- The dashboard's queries: a time range (the recent calls newest first), grouped or filtered by
-- user, model or proxy.
CREATE INDEX usage_calls_at ON usage_calls (at, id);
CREATE INDEX usage_calls_user_at ON usage_calls (user_id, at);
CREATE INDEX usage_calls_model_at ON usage_calls (model_key(provider_model), at);
CREATE INDEX usage_calls_proxy_at ON usage_calls (proxy, at);
