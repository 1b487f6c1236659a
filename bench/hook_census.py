"""mitmproxy script for the benchmark: counts the hook dispatch each event costs.

mitmproxy dispatches every event by walking the whole addon chain (``addonmanager.traverse``),
one ``getattr(addon, event)`` per addon object and one call per object that defines the hook,
so each addon object of ours costs something on every event whether it cares or not. Loaded
beside ``addon.py`` with ``-s``, this script writes, on the first request it sees (by then every
script is loaded), per event: objects walked, handlers called, and how many of those are ours
(classes from ``memory_routing``), to the file named by ``BENCH_HOOK_CENSUS``.
"""

from __future__ import annotations

import json
import os
import types

from mitmproxy import ctx, hooks
from mitmproxy.addonmanager import traverse

OURS = "memory_routing"


def _is_ours(addon: object) -> bool:
    return type(addon).__module__.split(".", 1)[0] == OURS


def _handles(addon: object, event: str) -> bool:
    # The same test mitmproxy's AddonManager._iter_hooks applies.
    handler = getattr(addon, event, None)
    return bool(handler) and callable(handler) and not isinstance(handler, types.ModuleType)


def _is_census(addon: object) -> bool:
    # This script's own Script manager, module and addon are not part of what is measured.
    path = getattr(addon, "path", None) or getattr(addon, "__file__", None) or ""
    return addon is _CENSUS or (isinstance(path, str) and path.endswith("hook_census.py"))


def census(chain: list[object]) -> dict[str, object]:
    walked = [a for a in traverse(chain) if not _is_census(a)]
    events = {}
    for name in sorted(hooks.all_hooks):
        handlers = [a for a in walked if _handles(a, name)]
        events[name] = {
            "walked": len(walked),
            "handlers": len(handlers),
            "ours": sorted(type(a).__name__ for a in handlers if _is_ours(a)),
            # Stage handlers our one dispatcher calls itself (no mitmproxy dispatch each).
            "stages": [type(getattr(h, "__self__", h)).__name__
                       for a in handlers if _is_ours(a) and hasattr(a, "handlers") for h in a.handlers(name)],
        }
    return {
        "objects": len(walked),
        "our_objects": sorted(type(a).__name__ for a in walked if _is_ours(a)),
        "our_stages": sorted(type(s).__name__ for a in walked if _is_ours(a) for s in getattr(a, "stages", ())),
        "events": events,
    }


class HookCensus:
    def __init__(self) -> None:
        self.written = False

    def requestheaders(self, flow) -> None:
        if self.written:
            return
        self.written = True
        path = os.environ.get("BENCH_HOOK_CENSUS")
        if path:
            with open(path, "w") as out:
                json.dump(census(ctx.master.addons.chain), out)


_CENSUS = HookCensus()
addons = [_CENSUS]
