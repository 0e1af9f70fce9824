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


def _modules_after(code: str, which: str) -> set[str]:
    """The modules ``which`` (an expression over ``m``) picks from ``sys.modules``
    after running ``code`` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint('MODS', *sorted(m for m in sys.modules if {which}))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return set(next(x for x in out.splitlines() if x.startswith("MODS")).split()[1:])


def test_a_command_loads_only_its_own_cli_module() -> None:
    """The parser is built from the named command's module alone; with no command
    (``--help``, a typo), from all of them, so argparse can list them."""
    code = (
        "from r8imfs.cli.main import main\n"
        "try:\n    main(['-r', 'example.com', '--platform', 'linux/arm64', 'layers', '--help'])\n"
        "except SystemExit:\n    pass"
    )
    cli = _modules_after(code, "m.startswith('r8imfs.cli.')")
    assert cli == {"r8imfs.cli.main", "r8imfs.cli._common", "r8imfs.cli.layers"}


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["extract", "IMG"], "extract"),
        (["-t", "extract", "layers", "IMG"], "layers"),  # a token spelled like a command
        (["--registry", "umount", "-v", "unmount", "/m"], "unmount"),
        (["--token=x", "-q", "ls", "IMG"], "ls"),
        (["--platform", "linux/arm64", "add-layer"], "add-layer"),
        (["--help"], None),
        (["extrakt", "IMG"], None),
        (["--", "extract"], None),
        ([], None),
    ],
)
def test_the_command_is_found_past_global_options(argv: list[str], command: str | None) -> None:
    from r8imfs.cli.main import _command_in

    assert _command_in(argv) == command


def test_umount_loads_no_trio_or_http_client() -> None:
    """``umount`` is plain calls (unmount, wait for the daemon): it starts in a
    tenth of a second, without trio, httpx or the registry client."""
    code = "from r8imfs.cli.main import main\nassert main(['umount', '/nonexistent/r8imfs-t']) == 2"
    heavy = ("trio", "httpx", "httpcore", "pyfuse3", "r8imfs.registry.client", "r8imfs.ops.common")
    assert _modules_after(code, f"m in {heavy!r}") == set()


def test_the_cli_level_default_is_the_writers() -> None:
    from r8imfs.cli.main import build_parser
    from r8imfs.ops.layerstream import DEFAULT_LEVEL

    args = build_parser().parse_args(["affix", "--base", "B", "--dest", "D", "--tar", "t.tar"])
    assert args.level == DEFAULT_LEVEL


def test_the_command_table_names_what_each_module_registers() -> None:
    """``main.COMMANDS`` is what picks the module: its names for a module must be
    the ones that module's parser registers (a missing alias would still run,
    only after loading every command)."""
    from r8imfs.cli.main import COMMANDS, build_parser

    for module, names in COMMANDS:
        for name in names:
            sub = next(a for a in build_parser([name])._actions if a.dest == "command")
            assert set(sub.choices) == set(names), (module, name)  # type: ignore[arg-type]
