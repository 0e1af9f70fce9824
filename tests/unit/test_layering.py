"""The dependency rule of r8imfs/__init__.py, checked by walking imports."""

from __future__ import annotations

import ast
from pathlib import Path

import r8imfs

ROOT = Path(r8imfs.__file__).parent
# package -> modules it must never import (directly)
FORBIDDEN = {
    "oci": (
        "httpx",
        "trio",
        "pyfuse3",
        "r8imfs.registry",
        "r8imfs.archive",
        "r8imfs.fs",
        "r8imfs.cli",
    ),
    "models": (
        "httpx",
        "trio",
        "pyfuse3",
        "r8imfs.registry",
        "r8imfs.archive",
        "r8imfs.fs",
        "r8imfs.cli",
        "r8imfs.ops",
    ),
    "registry": ("pyfuse3", "r8imfs.archive", "r8imfs.fs", "r8imfs.cli", "r8imfs.models"),
    "archive": ("pyfuse3", "httpx", "r8imfs.fs", "r8imfs.cli"),
    "fs": ("r8imfs.cli", "argparse"),
    "ops": ("pyfuse3", "r8imfs.fs", "r8imfs.cli", "argparse"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_packages_import_downward_only() -> None:
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_cli_prints() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("cli",) or rel.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                bad.append(f"{rel}:{node.lineno}")
    assert not bad, "print() outside cli/: " + ", ".join(bad)
