-- The first migration only records that the fleet's schema exists; each part of the proxy adds
-- its own tables in the next numbered files (002_memories.sql, 003_usage.sql, ...).
COMMENT ON TABLE memory_routing_schema IS 'memory-routing proxy: the migrations applied (memory_routing/fleet/migrations)';
