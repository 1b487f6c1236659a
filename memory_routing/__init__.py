"""LiteLLM Memory Proxy: a mitmproxy addon that routes LLM requests per client.

One sub-package per stage of a request: config (0), guard (1, the edge), local (2, the proxy's
own endpoints), routing (3) and translate (3b), cloudflare (4, the upstream's front door), wire
(5, what goes back); mitm holds what leans on mitmproxy's internals, memory and dashboard are
pure. Shared by all: ``errors`` (the one error hierarchy) and ``flow_state`` (the typed Route the
router hands to the addons after it). Only routing.providers, routing.router, translate.* and
addons import LiteLLM (tests/test_import_boundaries.py); the README's Development section draws it.
"""

__version__ = "0.1.0"
