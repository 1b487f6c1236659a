"""Which proxy of the fleet this is (the usage rows' `proxy` column), and server URLs made safe to show."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


def proxy_name(configured: str | None) -> str:
    """`storage.proxy_name`, else MEMORY_ROUTING_PROXY_NAME (a pod's name, say), else the host name."""
    return configured or os.environ.get("MEMORY_ROUTING_PROXY_NAME") or socket.gethostname() or "proxy"


def shown_url(url: str) -> str:
    """`scheme://host:port/path` of a server URL: user, password and query (which may carry a
    password too) are left out, so the result may be logged and shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"
