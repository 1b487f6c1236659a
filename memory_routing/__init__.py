"""LiteLLM Memory Proxy: a mitmproxy addon that routes LLM requests per client.

``addons`` holds the mitmproxy addons (one per file; ``addons.create_stages()`` is the pipeline,
in order) over pure packages, each with one job: ``wire`` (protocols, headers, model calls,
bodies, usage), ``config``, ``llm`` (everything LiteLLM: its loader, model table and the
translation between API formats), ``routing``, ``memory``, ``upstream`` (cookies, Cloudflare's pages),
``dashboard``; ``flow_state`` is the per-flow context the stages share, ``call_record`` the record of
one call, ``mitm`` what leans on mitmproxy. No import runs up these layers (tests/test_import_boundaries.py); docs/architecture.md
draws the tree.
"""

__version__ = "0.1.0"
