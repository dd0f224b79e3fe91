"""What a module of this repository imports, read from its source (no import runs).

Relative imports are resolved, `from . import documents` counts as importing the submodule,
and imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["ROOT", "imports_of", "modules_of"]

ROOT = Path(__file__).resolve().parents[1]


def _source(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    package = base / "__init__.py"
    return package if package.is_file() else base.with_suffix(".py")


def _is_module(module: str) -> bool:
    return _source(module).is_file()


def modules_of(package: str) -> list[str]:
    """Every module of `package` (itself included), by dotted name, sorted."""
    found = []
    for path in ROOT.joinpath(*package.split(".")).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(found)


def imports_of(module: str, source: str | None = None) -> set[str]:
    """The dotted names `module` imports, absolute or relative, wherever the statement is.

    `source` stands in for the module's file (to test this very function).
    """
    path = _source(module)
    if source is None:
        source = path.read_text()
    # The package a relative import starts from: the module itself for an __init__.py.
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package) - 1:
                    raise ValueError(f"{module}: relative import beyond the top package")
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            imported.add(base)
            for alias in node.names:
                if _is_module(f"{base}.{alias.name}"):
                    imported.add(f"{base}.{alias.name}")
    return imported
