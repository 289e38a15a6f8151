"""The dependency rule of docs/architecture.md, checked on every import statement:
sift_ops <- tasks <- flows <- deployments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "sift_ops": {"prefect", "ray", "duckdb", "tasks", "flows", "deployments"},
    "tasks": {"flows", "deployments"},
    "flows": {"deployments"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package])
           for f in sorted((ROOT / package).rglob("*.py"))}
    bad = {f: names for f, names in bad.items() if names}
    assert not bad, bad


def test_every_prefect_task_lives_in_tasks():
    # flows compose; the @task definitions are beside the I/O they wrap
    found = []
    for f in sorted((ROOT / "flows").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    target = dec.func if isinstance(dec, ast.Call) else dec
                    if isinstance(target, ast.Name) and target.id == "task":
                        found.append(f"{f.name}:{node.name}")
    assert not found, found


def test_prefect_task_names_are_unique():
    # two tasks of one name read as one in the Prefect UI and in `prefect task-run ls`
    names: dict[str, list[str]] = {}
    for f in sorted((ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "task":
                for kw in node.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        names.setdefault(kw.value.value, []).append(str(f.relative_to(ROOT)))
    assert len(names) > 20
    dup = {k: v for k, v in names.items() if len(v) > 1}
    assert not dup, dup
