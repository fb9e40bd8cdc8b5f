"""The package layout is the pipeline: stage subpackages, imports that point one way, no cycle.

The imports are read with `ast` (every import in the file, function bodies included; those under
`if TYPE_CHECKING:` are annotations only and do not count), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "Trainer" / "wsp_cirrhosis"
SLICER_MODULE = ROOT / "WSPCirrhosis"

# What each stage may import besides the base modules at the package's top (errors, files, config,
# progress, provenance, distributed). The same rule is written in each subpackage's docstring.
ALLOWED = {
    "data": set(),
    "phantom": {"data"},
    "models": set(),
    "training": {"data", "models"},
    "evaluation": {"data", "models", "training"},
    "benchmark": {"data", "phantom", "models", "training", "evaluation"},
    "inference": {"data", "models"},
}
ENTRY_POINTS = {"__init__", "__main__", "cli"}  # may import any stage (lazily: the CLI's command table)


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Every import statement of the file, except those in `if TYPE_CHECKING:` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a subpackage counts as its `__init__`)."""
    root = package.name
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]) if node.level else node.module
                base = (base or "").rstrip(".")
                # `from pkg import sub` names a module; `from pkg.mod import name` names an object
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules and target.startswith(root + "."):
                    target = target.rsplit(".", 1)[0]  # `import pkg.sub.mod.attr` -> the module
                if target in modules and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage_of(module: str) -> str:
    """'data' for wsp_cirrhosis.data.cache; the module's own name for a top-level module."""
    return module.split(".")[1] if "." in module else "__init__"


def stage_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        src = stage_of(module)
        for dep in sorted(deps):
            dst = stage_of(dep)
            if src == dst or src in ENTRY_POINTS:
                continue
            base = dst not in allowed and dst not in ENTRY_POINTS - {"__init__"}  # __init__: the version only
            ok = base or (src in allowed and dst in allowed[src])
            if not ok:
                out.append(f"{module} -> {dep}")
    return out


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    pkg = write_package(tmp_path, {
        "__init__.py": "", "errors.py": "", "files.py": "from .data import a\n", "cli.py": "from .data import a\n",
        "data/__init__.py": "", "data/a.py": "from .b import x\n",
        "data/b.py": "def f():\n    from . import a\n",  # a lazy import closes the cycle
        "models/__init__.py": "", "models/m.py": "from ..data.a import y\nfrom ..errors import E\n",
        "training/__init__.py": "", "training/t.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..evaluation.e import Z\nfrom ..models import m\n",
        "evaluation/__init__.py": "", "evaluation/e.py": "import pkg.training.t\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.training.t"] == {"pkg.models.m"}, "TYPE_CHECKING imports are not runtime imports"
    assert graph["pkg.evaluation.e"] == {"pkg.training.t"}
    assert find_cycle(graph) in (["pkg.data.a", "pkg.data.b", "pkg.data.a"], ["pkg.data.b", "pkg.data.a", "pkg.data.b"])
    assert stage_violations(graph, ALLOWED) == ["pkg.files -> pkg.data.a", "pkg.models.m -> pkg.data.a"]
    graph["pkg.data.b"] = set()
    assert find_cycle(graph) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_between_stages_point_one_way():
    graph = import_graph(PACKAGE)
    stages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert stages == set(ALLOWED), "a new stage needs its rule here and in its docstring"
    assert stage_violations(graph, ALLOWED) == []


def test_the_top_stays_small_and_every_file_short():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 9, f"{len(top)} modules at the package's top: {top}"
    for path in PACKAGE.rglob("*.py"):
        n = len(path.read_text(encoding="utf-8").splitlines())
        assert n <= 400, f"{path.relative_to(PACKAGE)} has {n} lines (split it by what it does)"


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_each_stage_says_what_it_owns_and_may_import(stage):
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert doc and "import" in doc, f"{stage}/__init__.py: one paragraph on what it owns and what it may import"


def test_the_cli_command_table_names_real_functions():
    from wsp_cirrhosis.cli import COMMANDS

    for command, (_, target, _) in COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(f"wsp_cirrhosis.{module}"), func)), command


def test_the_slicer_module_uses_only_the_inference_api():
    import wsp_cirrhosis.inference as api

    used = []
    for path in SLICER_MODULE.rglob("*.py"):
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsp_cirrhosis"):
                assert node.module == "wsp_cirrhosis.inference", f"{path.name}: from {node.module} import ..."
                used += [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("wsp_cirrhosis"):
                        assert alias.name == "wsp_cirrhosis.inference", f"{path.name}: import {alias.name}"
    assert used, "the module imports its errors and helpers from the API"
    for name in used + list(api.__all__):
        assert getattr(api, name) is not None, name
