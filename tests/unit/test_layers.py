"""Layers: the kernel (``atalaia/``) imports no service and not the composition layer.

Services and the composition layer build on the kernel; if the kernel imported them back, every
service would drag in every other one. Lazy imports inside functions count too, so the whole syntax
tree is walked, not just the module's top level.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / "atalaia"
#: Top-level packages the kernel must not import: every service, and the composition root above them.
SERVICES = frozenset({"inference", "producers", "consumers", "monitors", "retrain", "otlp", "gateway", "composition"})


def imported_packages(source: str) -> set[str]:
    """Top-level package names imported anywhere in ``source`` (``import x.y``, ``from x import y``,
    ``importlib.import_module("x.y")`` and ``__import__("x")`` with a literal name).

    >>> sorted(imported_packages("def f():\\n    from monitors.rules import Rule\\nimport os.path"))
    ['monitors', 'os']
    >>> sorted(imported_packages("import importlib\\nimportlib.import_module('retrain.gate')"))
    ['importlib', 'retrain']
    >>> imported_packages("from . import sibling")
    set()
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_the_kernel_imports_no_service() -> None:
    offenders = {}
    for path in sorted(KERNEL.rglob("*.py")):
        bad = imported_packages(path.read_text(encoding="utf-8")) & SERVICES
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}, f"the kernel must not import services or the composition layer: {offenders}"


def test_the_walker_sees_lazy_imports() -> None:
    source = "def later():\n    import consumers.worker\n    return consumers.worker\n"
    assert imported_packages(source) & SERVICES == {"consumers"}
