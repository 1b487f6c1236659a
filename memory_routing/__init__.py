"""LiteLLM Memory Proxy: a mitmproxy addon that routes LLM requests per client.

Pure modules (no mitmproxy imports): config, classify, protocol, local_bodies.
Addons (one job each): routing_config, listen_guard, local_endpoints.
"""

__version__ = "0.1.0"
