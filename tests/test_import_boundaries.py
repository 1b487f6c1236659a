"""The import rules: which modules may load LiteLLM (importing any other must not: it takes
~10 s), which are pure, and the layers (docs/architecture.md): no import runs up them."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import memory_routing

ROOT = Path(__file__).resolve().parent.parent
# Their job is LiteLLM's transformations: importing them loads it.
LITELLM_MODULES = {
    "memory_routing.llm.translation",
    "memory_routing.llm.parameters",
    "memory_routing.llm.litellm_internals",
}
# Pure: neither mitmproxy nor LiteLLM.
PURE_MODULES = {
    "memory_routing.errors",
    "memory_routing.flow_state",
    "memory_routing.call_record",
    "memory_routing.llm",
    "memory_routing.wire.headers",
    "memory_routing.wire.model_calls",
    "memory_routing.wire.sse",
    "memory_routing.config.schema",
    "memory_routing.routing.classify",
    "memory_routing.routing.planner",
    "memory_routing.wire.protocol",
    "memory_routing.wire.header_values",
    "memory_routing.upstream.cookie_jar",
}


# The packages (and top-level modules) of memory_routing, bottom to top. A module may import from
# its own package, from the packages of its own layer that do not import it back, and from the
# layers below; never from a layer above.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),
    frozenset({"wire", "call_record"}),  # protocols, headers, bodies, usage, the call's record
    frozenset({"config", "llm", "fleet"}),  # config.yaml; LiteLLM (the one loader, model table, translation); the shared servers
    frozenset({"routing", "memory", "upstream", "dashboard"}),  # the domains
    frozenset({"flow_state"}),  # the per-flow context: holds the domains' results
    frozenset({"mitm"}),  # what leans on mitmproxy: flows, the pipeline, internals
    frozenset({"addons"}),  # the stages
)
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


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


def _unit(module: str) -> str:
    """The package (or top-level module) of memory_routing a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_between_units() -> list[tuple[str, str]]:
    """(importing module, imported module) for every import of one unit by another, type-only
    and function-level imports included."""
    found = []
    for path in sorted((ROOT / "memory_routing").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts if parts[-1] == "__init__" else parts[:-1]
        if parts[-1] == "__init__":
            parts, package = parts[:-1], parts[:-1]
        module = ".".join(parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join([*package[:len(package) - node.level + 1], node.module or ""]) if node.level else node.module
                names = [base or "", *(f"{base}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("memory_routing.") and _unit(module) and _unit(name) not in ("", _unit(module)):
                    found.append((module, name.rstrip(".")))
    return found


def test_every_package_has_a_layer():
    units = {_unit(m) for m in all_modules()} - {""}
    assert units - LAYER_OF.keys() == set()


def test_no_import_runs_up_the_layers():
    upward = [f"{module} -> {name}" for module, name in imports_between_units()
              if LAYER_OF.get(_unit(name), -1) > LAYER_OF.get(_unit(module), -1)]
    assert upward == []


def test_no_two_packages_import_each_other():
    edges = {(_unit(module), _unit(name)) for module, name in imports_between_units()}
    assert sorted((a, b) for a, b in edges if (b, a) in edges and a < b) == []


def test_only_llm_imports_litellm():
    """LiteLLM is loaded and configured in one place (llm.load_litellm); elsewhere it is reached
    through llm, so no module outside it names LiteLLM in an import."""
    offenders = []
    for path in sorted((ROOT / "memory_routing").rglob("*.py")):
        if path.parent.name == "llm":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] == "litellm"]
    assert offenders == []
