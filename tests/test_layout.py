"""The house rules of the package, read from its source with ``ast``.

No import cycles between the package's modules, and no package-internal import inside a
function (which is how a cycle hides); functions a reader can take in at once (at most
80 lines) and modules under 500 lines; and the independent checker (``verify``) reaches
nothing of the solver through its imports, so it shares no code with what it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "unargmax_jax"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
# Imports inside functions that are allowed, each for a stated reason: the package's
# ``__getattr__`` imports the Flax layer on first use, so that ``import unargmax_jax`` (and
# the command line) does not pay for importing flax.linen.
NESTED_ALLOWED = {("unargmax_jax", "unargmax_jax.prevention")}
# What verify may import (directly or through what those import): the report's file
# format, the domains, the verdict codes, and file helpers. Nothing that solves.
VERIFY_MAY_REACH = {"unargmax_jax.verify", "unargmax_jax._verify_witnesses", "unargmax_jax.report", "unargmax_jax.render", "unargmax_jax.csr",
                    "unargmax_jax.domains", "unargmax_jax.verdicts", "unargmax_jax._files", "unargmax_jax._shapes"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """Package modules an ``from ... import ...`` names (a name may be a submodule)."""
    if node.level:
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if not target.startswith("unargmax_jax"):
        return []
    submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    # ``from . import x`` of submodules only runs the package's __init__ as any import does.
    names_attributes = len(submodules) < len(node.names)
    return ([target] if target in MODULES and names_attributes else []) + submodules


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(package modules imported at module level, (line, target) of imports inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top, nested = set(), []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.ImportFrom):
                targets = _resolve(module, path, child)
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names if a.name.startswith("unargmax_jax")]
            if targets and in_function:
                nested.extend((child.lineno, t) for t in targets)
            elif targets:
                top.update(targets)
            visit(child, inner)

    visit(tree, False)
    # A module imports its parent packages too (Python runs their __init__ first).
    for name in list(top):
        parts = name.split(".")
        top.update(".".join(parts[:n]) for n in range(2, len(parts)) if ".".join(parts[:n]) in MODULES)
    top.discard(module)
    return top, nested


GRAPH = {module: _imports(module)[0] for module in MODULES}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_package_was_found():
    assert "unargmax_jax.engine" in MODULES and "unargmax_jax.verify" in MODULES and len(MODULES) > 30


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_package_import_inside_a_function(module):
    nested = [(line, t) for line, t in _imports(module)[1] if (module, t) not in NESTED_ALLOWED]
    assert nested == [], f"{module} imports package modules inside functions (hides a cycle)"


def test_no_import_cycles():
    # Parent packages import their children for re-export; a child importing a sibling
    # through the parent's name is not a cycle of its own, so edges into a package's own
    # __init__ from inside that package are left out.
    def edges(module):
        return {t for t in GRAPH[module] if not module.startswith(t + ".")}

    cycles = []
    for start in MODULES:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges(node):
                if nxt == start:
                    cycles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, cycles[:5]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_and_modules_are_short(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{module}: {len(source.splitlines())} lines"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_verify_shares_no_code_with_the_solver():
    reached = _reach("unargmax_jax.verify") | {"unargmax_jax.verify"}
    # The top-level package runs on import, but verify names nothing through it.
    reached.discard("unargmax_jax")
    assert reached <= VERIFY_MAY_REACH, sorted(reached - VERIFY_MAY_REACH)


def test_the_rules_catch_what_they_forbid(tmp_path):
    # The checks above must be able to fail: a nested import and a long function are seen.
    source = "def f():\n    from .engine import check\n" + "    x = 1\n" * 90
    tree = ast.parse(source)
    nested = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _resolve("unargmax_jax.verify", PACKAGE / "verify.py", nested[0]) == ["unargmax_jax.engine"]
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert function.end_lineno - function.lineno + 1 > MAX_FUNCTION_LINES
