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

Exit status: 0 when every file is clean afterwards, 1 when an old import was
left that this script cannot map (printed, for a hand fix).
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
}

_FROM = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<mod>[A-Za-z_][A-Za-z0-9_]*)[ \t]+import\b",
                   re.MULTILINE)
_IMPORT = re.compile(
    r"^(?P<indent>[ \t]*)import[ \t]+(?P<mod>[A-Za-z_][A-Za-z0-9_]*)"
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
        if old not in MOVED:
            return m[0]
        alias = m["alias"] or f" as {old}"  # keep the name the file uses
        notes.append(f"import {old} → import {MOVED[old]}{alias}")
        return f"{m['indent']}import {MOVED[old]}{alias}"

    text = _FROM.sub(from_sub, text)
    text = _IMPORT.sub(import_sub, text)
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
    if left:
        print(f"{path}: still imports {', '.join(left)}", file=sys.stderr)
    return not left


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
