"""mitmproxy entry point: ``mitmdump -s addon.py``. Everything else lives in memory_routing/."""

from memory_routing.addons import create_addons

addons = create_addons()
