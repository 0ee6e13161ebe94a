"""The package's shape: no import circles, data flowing one way, and methods known by their capabilities.

Every ``import`` / ``from ... import`` statement of every module under ``gdr/`` counts, including the ones
inside functions (a lazy import is still a dependency; two of the circles this test was written for were lazy).
``python tests/test_imports.py`` prints the summary.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gdr"


def module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    parts = parts[len(parts) - 1 - parts[::-1].index("gdr"):]  # from the last folder named gdr
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """``(gdr modules, top-level external packages)`` that the module at `path` imports anywhere in its body."""
    internal, external = set(), set()
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from gdr import checks` imports the module gdr.checks; `from gdr.x import f` imports gdr.x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "gdr" or name.startswith("gdr."):
                while name not in known and "." in name:
                    name = name.rpartition(".")[0]
                internal.add(name)
            else:
                external.add(name.split(".")[0])
    return internal - {module_name(path)}, external


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = modules()
    known = set(mods)
    edges, external = {}, {}
    for name, path in mods.items():
        edges[name], external[name] = imports_of(path, known)
    return edges, external


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def closure(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo += edges.get(v, ())
    return seen


def summary() -> str:
    edges, _ = graph()
    found = circles(edges)
    head = f"{len(edges)} modules, {sum(map(len, edges.values()))} internal imports: "
    if not found:
        return head + "no import circles"
    return head + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_circles():
    edges, _ = graph()
    assert circles(edges) == [], summary()
    print(summary())


def test_the_circle_finder_finds_circles():
    """The check can fail: a two-module circle, a three-module one, and a self-contained tree."""
    assert circles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_lazy_imports_count(tmp_path):
    """An import inside a function is an edge too (the circles this test was written for were lazy)."""
    path = tmp_path / "gdr" / "x.py"
    path.parent.mkdir()
    path.write_text("def f():\n    from gdr.y import g\n    from gdr import z\n    import numpy.linalg\n")
    assert imports_of(path, {"gdr.x", "gdr.y", "gdr.z"}) == ({"gdr.y", "gdr.z"}, {"numpy"})


@pytest.mark.parametrize("reader", ["gdr.report", "gdr.fad", "gdr.listening", "gdr.run_folder", "gdr.plots"])
def test_readers_of_a_run_do_not_import_the_model_or_lightning(reader):
    """What reads a finished run (report, FAD, listening grid, the folder layout) needs neither the
    backbone nor Lightning nor the orchestrator: data flows config -> ... -> metrics -> report, one way."""
    edges, external = graph()
    assert reader in edges, f"{reader} is not a module of gdr"
    reached = closure(edges, reader)
    assert not reached & {"gdr.evaluate", "gdr.backbone", "gdr.module", "gdr.training"}, sorted(reached)
    assert "lightning" not in set().union(*(external[m] for m in reached)), sorted(reached)


def method_names() -> set[str]:
    from gdr.methods import GUIDANCE

    return set(GUIDANCE)


def name_comparisons(path: Path, names: set[str]) -> list[tuple[int, set[str]]]:
    """``(line, names)`` of every comparison (``==``, ``!=``, ``in``, ``startswith``) of something with a method name."""
    found = []
    tree = ast.parse(path.read_text())

    def constants(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(constants(e) for e in node.elts)) if node.elts else set()
        return set()

    for node in ast.walk(tree):
        hits = set()
        if isinstance(node, ast.Compare):
            hits = set().union(constants(node.left), *(constants(c) for c in node.comparators))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and node.args):
            hits = constants(node.args[0])
        hits &= names
        if hits:
            found.append((node.lineno, hits))
    return found


# Comparisons with a word that happens to be a method name but is not one there.
NOT_METHODS = {("gdr/stats.py", "none"), ("gdr/plots.py", "none"),  # report.correction: none
               ("gdr/training.py", "none"),  # model.item_condition: none
               ("gdr/schedules.py", "seed")}  # a degradation spec's seed key


def test_no_module_outside_methods_decides_by_a_method_name():
    """What the rest of gdr needs to know about a method is a class attribute (`Guidance.capabilities`);
    comparing a method's name outside `gdr/methods/` is how that knowledge leaks (defaults may name one)."""
    names = method_names()
    leaks = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "methods" in path.relative_to(PACKAGE).parts:
            continue
        rel = path.relative_to(ROOT).as_posix()
        leaks += [f"{rel}:{line} {sorted(hits)}" for line, hits in name_comparisons(path, names)
                  if not all((rel, n) in NOT_METHODS for n in hits)]
    assert leaks == []


def test_the_name_check_sees_a_leak(tmp_path):
    path = tmp_path / "x.py"
    path.write_text('if g == "decoder_inversion":\n    pass\nok = m in ("none", "sdedit")\nm.startswith("dps")\n')
    assert len(name_comparisons(path, {"decoder_inversion", "none", "sdedit", "dps"})) == 3


if __name__ == "__main__":
    print(summary())
    sys.exit(1 if circles(graph()[0]) else 0)
