"""The code's shape: no import cycles; networks and math never import the training plumbing."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("models", "pipelines", "smallgen")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in the file (functions too), except under TYPE_CHECKING."""
    found = set()
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: _imports(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and "smallgen.trainer" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_networks_and_math_import_no_plumbing():
    for name, imported in import_graph().items():
        if name.startswith("models"):
            assert not {m for m in imported if m.startswith(("smallgen", "pipelines"))}, name
        if name.startswith("pipelines"):
            assert not {m for m in imported if m.startswith("smallgen")}, name


def test_the_plumbing_names_no_model_type():
    """The loop, the plan, the command lines, evaluate_fid's layers and the export read every model type's flags,
    samplers, pipelines and evaluate_fid call options from the registry (smallgen/objectives/__init__.py), so
    adding one edits none of them."""
    import re

    from smallgen.objectives import OBJECTIVES

    names = sorted({key.split("+")[0] for key in OBJECTIVES})
    pattern = re.compile(rf"\b({'|'.join(names)})\b", re.IGNORECASE)
    plumbing = ("config.py", "arguments.py", "trainer.py", "plan.py", "processes.py", "budget.py", "evaluation.py",
                "sample_sources.py", "reference.py", "scores.py", "export.py")
    for module in (f"smallgen/{name}" for name in plumbing):
        found = [(n, line.strip()) for n, line in enumerate((ROOT / module).read_text().splitlines(), 1)
                 if pattern.search(line)]
        assert not found, f"{module} names a model type: {found}"
