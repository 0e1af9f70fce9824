"""What the command line loads before it runs a command: only what parsing needs.

Building the parser imports every ``r8imfs.cli`` module, so those import
their command's implementation (``r8imfs.ops``, FUSE, the cache, the engine's
codecs) in the handler, not at the top: a command pays for what it runs, and
``r8imfs extract`` does not start by loading pyfuse3, sqlite and every layer
format (docs/benchmarks.md, "Issue 12"). Checked in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Loaded by some commands only; none of them is needed to parse a command line.
HEAVY = (
    "pyfuse3",
    "sqlite3",
    "indexed_gzip",
    "pyzstd",
    "r8imfs.fs.handlers",
    "r8imfs.image.image",
    "r8imfs.engine.indexdb",
    "r8imfs.engine.codecs.table",
    "r8imfs.ops.browse",
    "r8imfs.ops.extract",
    "r8imfs.ops.mount",
)


def _loaded_after(code: str) -> list[str]:
    """The modules of ``HEAVY`` in ``sys.modules`` after running ``code``."""
    script = (
        f"import sys\n{code}\nprint('LOADED', *sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("LOADED"))
    return line.split()[1:]


def test_importing_the_cli_loads_no_command() -> None:
    assert _loaded_after("import r8imfs.cli.main") == []


COMMANDS = [
    "layers",
    "ls",
    "cat",
    "cp",
    "tensors",
    "extract",
    "affix",
    "remix",
    "zstd",
    "index",
    "clone",
    "mount",
    "umount",
    "commit",
]


def test_every_command_is_checked() -> None:
    from r8imfs.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) >= set(COMMANDS)  # type: ignore[arg-type]
    assert len(COMMANDS) == len({p for p in sub.choices.values()})  # type: ignore[union-attr]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_a_command_loads_no_command(command: str) -> None:
    code = (
        "from r8imfs.cli.main import main\n"
        "try:\n"
        f"    main([{command!r}, '--help'])\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert _loaded_after(code) == []


def test_extract_loads_no_fuse_cache_or_random_access() -> None:
    """``extract`` streams layers: no FUSE, no image cache or index database, and
    no zran (indexed_gzip is imported where a gzip layer is read at random)."""
    loaded = _loaded_after("import r8imfs.ops.extract")
    assert set(loaded) <= {"r8imfs.ops.extract", "r8imfs.engine.codecs.table", "pyzstd"}


def test_the_heavy_modules_exist() -> None:
    """A renamed module would make the checks above pass for nothing."""
    script = "import importlib.util as u, sys\n" + "".join(
        f"assert u.find_spec({m!r}) is not None, {m!r}\n" for m in HEAVY
    )
    subprocess.run([sys.executable, "-c", script], check=True)
