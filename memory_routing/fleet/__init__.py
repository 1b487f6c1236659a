"""The fleet's shared servers: PostgreSQL (durable rows) and Redis (counters, leases, cookies).

Only the plumbing lives here: connection pools, the schema migrations, which proxy this is, and
which shared part is degraded. The domains (memory, dashboard, upstream) keep their own tables
and keys and use this package to reach the servers; nothing here imports mitmproxy or LiteLLM.
"""
