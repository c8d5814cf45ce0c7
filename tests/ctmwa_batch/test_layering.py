"""Layering: ctmwa_batch is the runtime a scoring worker installs alone, and no package imports in a cycle.

ctmwa_batch must never import torch, transformers, airflow or matplotlib (the report command imports it when it
draws, from the `report` extra; checked by importing every module), nor anything of
training, export or the fixtures (checked on the source, deferred imports included). The one exception is
ctmwa_batch.airflow, the Airflow surface: only its operators and group import Airflow (the package itself, the
provider entry point and the Connection helper import without it), and no other module of ctmwa_batch imports
airflow, not even inside a function. The import graph of the
project's packages has no cycle, deferred imports counted: a cycle held off by an import inside a function is
still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ctmwa_batch", "training", "export", "dags", "fixtures", "demo")

AIRFLOW_MODULES = {"ctmwa_batch.airflow.operators", "ctmwa_batch.airflow.group"}  # the modules that import Airflow

SCRIPT = f"""
import importlib, pkgutil, sys
import ctmwa_batch
for info in pkgutil.walk_packages(ctmwa_batch.__path__, "ctmwa_batch."):
    if not info.name.endswith(".__main__") and info.name not in {sorted(AIRFLOW_MODULES)!r}:
        importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "airflow", "matplotlib"})
print(",".join(bad))
"""


def test_runtime_package_imports_no_training_stack():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"ctmwa_batch imported {result.stdout.strip()}"


def _imports_airflow(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        if any(n == "airflow" or n.startswith("airflow.") for n in names):
            return True
    return False


def test_only_ctmwa_batch_airflow_imports_airflow():
    importing = {_module_name(p) for p in sorted((ROOT / "ctmwa_batch").rglob("*.py")) if _imports_airflow(p)}
    assert importing <= {
        "ctmwa_batch.airflow.operators",
        "ctmwa_batch.airflow.group",
        "ctmwa_batch.airflow.connections",
    }, importing
    assert AIRFLOW_MODULES <= importing  # the check sees them


# The folders whose import name differs (pyproject.toml [tool.setuptools] package-dir).
IMPORT_NAMES = {"training": "ctmwa_training", "export": "ctmwa_export"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = IMPORT_NAMES.get(parts[0], parts[0])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file), from the source alone."""
    files = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import mod` imports the module pkg.mod when there is one, else names of pkg.
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_read_from_the_source():
    graph = import_graph()
    assert {
        "ctmwa_batch.scoring.job",
        "ctmwa_training.run",
        "ctmwa_export.assemble",
        "fixtures.posts",
        "dags.ctmwa_export_model",
    } <= set(graph)
    assert (
        "ctmwa_export.head" in graph["ctmwa_export.assemble"]
        and "ctmwa_export.end_to_end" in graph["ctmwa_export.assemble"]
    )
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_ctmwa_batch_imports_no_fixture_training_or_export_module():
    graph = import_graph()
    bad = {
        (module, target)
        for module, targets in graph.items()
        if module.split(".")[0] == "ctmwa_batch"
        for target in targets
        if target.split(".")[0] != "ctmwa_batch"
    }
    assert not bad, f"ctmwa_batch imports {sorted(bad)}"


def test_no_import_cycle_among_the_project_packages():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring included, its signature and decorators not."""
    return (node.end_lineno or node.lineno) - node.body[0].lineno + 1


def test_no_runtime_function_body_is_over_80_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({_body_lines(node)} lines)"
        for path in sorted((ROOT / "ctmwa_batch").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 80
    ]
    assert not long, "split these: " + ", ".join(long)


# ctmwa_batch's stages, bottom to top: a module imports only its own layer and the layers below it, so the folder
# names read as the data path and no import runs back up. `settings` sits above io/ because it builds the storage
# configuration; the vocabulary (errors, config, schema, progress, and the image-reference policy that config
# validates its allow-lists with) is at the bottom.
LAYERS = (
    (
        "ctmwa_batch",
        "ctmwa_batch.errors",
        "ctmwa_batch.imagepolicy",
        "ctmwa_batch.config",
        "ctmwa_batch.schema",
        "ctmwa_batch.progress",
    ),
    ("ctmwa_batch.io",),
    ("ctmwa_batch.settings",),
    ("ctmwa_batch.model",),
    ("ctmwa_batch.monitoring",),
    ("ctmwa_batch.scoring",),
    ("ctmwa_batch.airflow", "ctmwa_batch.cli"),
)


def layer_of(module: str) -> int:
    """The layer of a ctmwa_batch module: the longest prefix listed in LAYERS."""
    best = (-1, -1)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), index)
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def test_ctmwa_batch_is_grouped_by_stage_and_imports_run_one_way():
    graph = import_graph()
    modules = sorted(m for m in graph if m.split(".")[0] == "ctmwa_batch")
    top = {p.stem for p in (ROOT / "ctmwa_batch").glob("*.py")} - {"__init__"}
    flat = [m for m in top if layer_of(f"ctmwa_batch.{m}") != 0 and m != "settings"]
    assert not flat, f"modules outside a stage's subpackage: {flat}"
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m in modules
        for t in sorted(graph[m])
        if t.split(".")[0] == "ctmwa_batch" and layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports running back up:\n" + "\n".join(upward)
    assert layer_of("ctmwa_batch.io.storage") < layer_of("ctmwa_batch.scoring.job")  # the check sees the layers
