"""The package's structure holds: import contracts (layers, forbidden imports, no cycles) and no
function-local imports of our own modules (the old way of hiding a cycle)."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("contract", ["layers", "models", "samplers", "core", "acyclic"])
def test_import_contracts_are_kept(contract):
    """``lint-imports`` with pyproject.toml's contracts, one at a time (a broken one names its imports)."""
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                        "sys.exit(lint_imports_command())", "--no-cache", "--contract", contract],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def _local_imports(path: str) -> list[str]:
    """``line: module`` of every import of ``sde_lib`` or ``models`` inside a function of ``path``."""
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]
                found.extend(f"{child.lineno}: {n}" for n in names if n.split(".")[0] in ("sde_lib", "models"))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    with open(path) as f:
        visit(ast.parse(f.read()), False)
    return found


def test_no_function_local_imports_of_our_own_modules():
    """Lazy imports are for heavy optional dependencies (matplotlib, tensorboardX), never for our modules."""
    bad = {}
    for package in ("sde_lib", "models"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    if _local_imports(path):
                        bad[os.path.relpath(path, ROOT)] = _local_imports(path)
    assert not bad, bad
