#!/usr/bin/env python3
"""Rewrite a test file's old helper imports to the ``tests.helpers`` package.

    .venv/bin/python tools/fix-test-imports.py tests/some/test_new.py ...

Before issue 11 step 6 the test helpers were top-level modules found through
``pythonpath`` entries (``from registry_server import ...``) or through
``from conftest import ...``. Branches written before the move still add
files that import them that way; after merging such a branch, run this on
its new or changed test files. It rewrites only the module of a ``from X
import`` / ``import X`` statement (names stay the same), reports what it
changed, then lets ruff re-sort the imports (the new modules are first-party,
so they move into the repository's import block).

It also drops the ``REPO / "tests"`` entry tools/bench scripts put on
``sys.path``, creates the ``__init__.py`` a new test directory lacks (tests/
is a package: without one, pytest imports its files by basename), and checks
that each ``tests.helpers`` module imported has its file (else it prints the
``git mv`` that brings it there).

Exit status: 0 when every file is clean afterwards, 1 when something needs a
hand fix (printed), 2 without arguments.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# old module → new module; "conftest" meant tests/reliability/conftest.py, the
# only conftest anything imported from (Image, cog_layers, push_image).
MOVED = {
    "registry_server": "tests.helpers.registry",
    "harness_http": "tests.helpers.loopback",
    "harness_token": "tests.helpers.token_server",
    "counting_proxy": "tests.helpers.counting_proxy",
    "soci_oracle": "tests.helpers.soci_oracle",
    "imagehelpers": "tests.helpers.images",
    "readback": "tests.helpers.readback",
    "fusekit": "tests.helpers.fuse",
    "relkit": "tests.helpers.reliability",
    "archive_helpers": "tests.helpers.tars",
    "conftest": "tests.helpers.reliability",
    "test_layering": "tests.unit.test_layering",
    # helpers branch `toc` added in the old style (moved when main was merged here)
    "tocproducers": "tests.helpers.tocproducers",
    "zstdchunked_spec": "tests.helpers.zstdchunked_spec",
}

# The same helpers named from tests/ (on the old pythonpath): ``from fuse.fusekit import``.
MOVED.update(
    {
        "fuse.fusekit": MOVED["fusekit"],
        "integration.imagehelpers": MOVED["imagehelpers"],
        "integration.readback": MOVED["readback"],
        "integration.tocproducers": MOVED["tocproducers"],
        "reliability.relkit": MOVED["relkit"],
        "reliability.conftest": MOVED["conftest"],
        "unit.archive.archive_helpers": MOVED["archive_helpers"],
        "unit.test_layering": MOVED["test_layering"],
    }
)

# Where a helper module lived before, for the hint when its new file is missing.
HOME = {
    "tests.helpers.tocproducers": "tests/integration/tocproducers.py",
    "tests.helpers.zstdchunked_spec": "tests/zstdchunked_spec.py",
}
REPO = Path(__file__).resolve().parent.parent

_FROM = re.compile(
    r"^(?P<indent>[ \t]*)from[ \t]+(?P<mod>[A-Za-z_][A-Za-z0-9_.]*)[ \t]+import\b", re.MULTILINE
)
_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)import[ \t]+(?P<mod>[A-Za-z_][A-Za-z0-9_.]*)"
    r"(?P<alias>[ \t]+as[ \t]+[A-Za-z_][A-Za-z0-9_]*)?[ \t]*$",
    re.MULTILINE,
)


def rewrite(text: str) -> tuple[str, list[str]]:
    """The text with old imports rewritten, and a note per rewrite."""
    notes: list[str] = []

    def from_sub(m: re.Match[str]) -> str:
        old = m["mod"]
        if old not in MOVED:
            return m[0]
        notes.append(f"from {old} import → from {MOVED[old]} import")
        return f"{m['indent']}from {MOVED[old]} import"

    def import_sub(m: re.Match[str]) -> str:
        old = m["mod"]
        if old not in MOVED or ("." in old and not m["alias"]):
            return m[0]  # `import fuse.fusekit` needs a hand fix (the name is dotted)
        alias = m["alias"] or f" as {old}"  # keep the name the file uses
        notes.append(f"import {old} → import {MOVED[old]}{alias}")
        return f"{m['indent']}import {MOVED[old]}{alias}"

    text = _FROM.sub(from_sub, text)
    text = _IMPORT.sub(import_sub, text)
    # tools/bench scripts put tests/ on sys.path for the old names; the root is enough
    old_path = 'sys.path[:0] = [str(REPO), str(REPO / "tests")]'
    if old_path in text:
        text = text.replace(old_path, "sys.path.insert(0, str(REPO))")
        notes.append("sys.path: tests/ entry dropped (the repository root is enough)")
    return text, notes


def fix(path: Path) -> bool:
    """Rewrite ``path`` in place; False if an unmapped old import remains."""
    text = path.read_text()
    new, notes = rewrite(text)
    if new != text:
        path.write_text(new)
        for note in notes:
            print(f"{path}: {note}")
    left = [m["mod"] for m in _FROM.finditer(new) if m["mod"] in MOVED]
    left += [m["mod"] for m in _IMPORT.finditer(new) if m["mod"] in MOVED]
    if left:
        print(f"{path}: still imports {', '.join(left)}", file=sys.stderr)
    found = _targets_exist(new, path)
    packaged = _in_package(path)
    return not left and found and packaged


def _targets_exist(text: str, path: Path) -> bool:
    """Each tests.helpers module the file now imports has its file."""
    ok = True
    for module in sorted(set(re.findall(r"^\s*from (tests\.[\w.]+) import", text, re.MULTILINE))):
        target = REPO / (module.replace(".", "/") + ".py")
        if not target.exists():
            old = HOME.get(module, "its old place")
            rel = target.relative_to(REPO)
            print(f"{path}: {module} missing: git mv {old} {rel}", file=sys.stderr)
            ok = False
    return ok


def _in_package(path: Path) -> bool:
    """Add the __init__.py a new test directory lacks (tests/ is a package)."""
    tests = REPO / "tests"
    here = path.resolve().parent
    if tests != here and tests not in here.parents:
        return True
    while here != tests.parent:
        init = here / "__init__.py"
        if not init.exists():
            init.touch()
            print(f"{path}: created {init.relative_to(REPO)} (git add it)")
        here = here.parent
    return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv]
    ok = all([fix(p) for p in paths])
    ruff = [sys.executable, "-m", "ruff", "check", "--select", "I", "--fix", "--quiet"]
    subprocess.run([*ruff, *map(str, paths)], check=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
