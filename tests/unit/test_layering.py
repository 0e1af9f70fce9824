"""The dependency rule of r8imfs/__init__.py, checked by walking imports."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import r8imfs

ROOT = Path(r8imfs.__file__).parent

#: Floors, top to bottom. A module may import its own package and any package
#: on a lower floor, never one on its own floor or above.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("ops", "fs"),
    ("image",),
    ("cache",),
    ("engine", "registry"),
    ("oci", "models"),
    ("_threads", "_units", "_buffers", "_gc"),
    ("errors",),
)
FLOOR_OF = {unit: level for level, units in enumerate(FLOORS) for unit in units}

#: Third-party imports a package must never make (directly).
FORBIDDEN = {
    "oci": ("httpx", "trio", "pyfuse3"),
    "models": ("httpx", "trio", "pyfuse3"),
    "registry": ("pyfuse3",),
    "engine": ("pyfuse3", "httpx", "trio"),
    "cache": ("pyfuse3", "httpx"),
    "image": ("pyfuse3", "httpx"),
    "fs": ("argparse",),
    "ops": ("pyfuse3", "argparse"),
}


def _unit(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "r8imfs":
                names.update(f"r8imfs.{a.name}" for a in node.names)
    return names


def _upward(unit: str, name: str) -> bool:
    parts = name.split(".")
    if parts[0] != "r8imfs" or len(parts) < 2 or parts[1] not in FLOOR_OF:
        return False
    target = parts[1]
    return target != unit and FLOOR_OF[target] <= FLOOR_OF[unit]


def test_packages_import_downward_only() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        if unit not in FLOOR_OF:
            continue  # __init__ and __main__ sit above everything
        for name in _imports(path):
            forbidden = FORBIDDEN.get(unit, ())
            if _upward(unit, name) or any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_fs_imports_pyfuse3() -> None:
    bad = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.rglob("*.py"))
        if _unit(path) != "fs" and "pyfuse3" in _imports(path)
    ]
    assert not bad, "pyfuse3 outside fs/: " + ", ".join(bad)


def test_engine_imports_no_trio() -> None:
    """The engine stays synchronous, checked on the imported modules, not the
    source: importing every module of ``r8imfs.engine`` in a fresh interpreter
    must not pull in trio, httpx or pyfuse3 by any path."""
    import r8imfs.engine

    modules = [m.name for m in pkgutil.walk_packages(r8imfs.engine.__path__, "r8imfs.engine.")]
    assert "r8imfs.engine.codecs.gzipindex" in modules  # the walk reaches subpackages
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(m for m in ('trio', 'httpx', 'pyfuse3') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


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
