"""Which modules may load LiteLLM: importing any other module must not (it takes ~10 s)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import memory_routing

ROOT = Path(__file__).resolve().parent.parent
# Their job is LiteLLM (or they wire the addons that need it).
LITELLM_MODULES = {
    "memory_routing.addons",
    "memory_routing.routing.providers",
    "memory_routing.addons.router",
    "memory_routing.translate.translation",
    "memory_routing.translate.parameters",
    "memory_routing.translate.litellm_internals",
}
# Pure: neither mitmproxy nor LiteLLM.
PURE_MODULES = {
    "memory_routing.errors",
    "memory_routing.flow_state",
    "memory_routing.config.schema",
    "memory_routing.routing.classify",
    "memory_routing.routing.planner",
    "memory_routing.wire.protocol",
    "memory_routing.wire.header_values",
    "memory_routing.upstream.cookie_jar",
}


def all_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(memory_routing.__path__, "memory_routing.")
    )


def loaded_after_import(module: str) -> set[str]:
    code = (
        "import sys, importlib; importlib.import_module(sys.argv[1]); "
        "print(' '.join(m for m in ('litellm', 'mitmproxy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, module], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return set(out.stdout.split())


def test_only_litellm_modules_load_litellm():
    modules = [m for m in all_modules() if m not in LITELLM_MODULES]
    assert "memory_routing.addons.in_flight" in modules
    offenders = [m for m in modules if "litellm" in loaded_after_import(m)]
    assert offenders == []


def test_pure_modules_load_neither():
    offenders = {m: loaded for m in sorted(PURE_MODULES) if (loaded := loaded_after_import(m))}
    assert offenders == {}
