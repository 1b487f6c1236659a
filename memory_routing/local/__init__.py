"""Stage 2, the proxy's own endpoints (``/health``, ``/memory-routing/…``, ``/v1/models``):
answered here, never forwarded."""
