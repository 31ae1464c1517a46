"""The package's layers: imports point down only, and nothing imports in a circle.

Every ``import`` statement of every module is read from its source, including imports inside
functions and under ``TYPE_CHECKING``, so a cycle cannot hide in a function body. The Hub code
(``diffusionkit.hub``) sits above the core: it imports models, schedules and samplers; no core
or network module imports it (``import diffusionkit`` installs it behind the models' methods,
see ``diffusionkit.persistence``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import diffusionkit

PACKAGE = Path(diffusionkit.__file__).parent
#: packages above the core, which may import anything below them
ABOVE_CORE = (
    "diffusionkit.hub",
    "diffusionkit.training",
    "diffusionkit.cli",
    "diffusionkit.data",
    "diffusionkit.metrics",  # loads its classifiers with the hub's strict safetensors reader
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every diffusionkit module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name.split(".")[0] == "diffusionkit"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # "from diffusionkit.x import y" names module x (and y when y is a module)
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_core_or_network_module_imports_the_hub():
    offenders = {
        name: sorted(m for m in deps if _in(m, "diffusionkit.hub"))
        for name, deps in _graph().items()
        if not any(_in(name, p) for p in ABOVE_CORE) and name != "diffusionkit"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    # a package's __init__ re-exports its submodules: an edge into "a.b" from "a.b.c" is the
    # parent package being initialised first, which Python always does, not an import cycle
    edges = {name: {d for d in deps if not _in(name, d)} for name, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_importing_diffusionkit_does_not_import_the_hub_client():
    """huggingface_hub reads HF_ENDPOINT once, when imported: it must wait until it is used."""
    code = "import sys, diffusionkit; print('huggingface_hub' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_the_models_methods_reach_the_hub_implementation():
    from diffusionkit.hub import HubCheckpointIO
    from diffusionkit.persistence import checkpoint_io

    assert isinstance(checkpoint_io(), HubCheckpointIO)
