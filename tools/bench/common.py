"""Shared pieces: timed children with their peak RSS, medians, result rows."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
R8IMFS = [sys.executable, "-m", "r8imfs", "-q"]


@dataclass(frozen=True, slots=True)
class Run:
    """One finished child: wall time, peak RSS (bytes, from ``wait4``), output."""

    secs: float
    maxrss: int
    stdout: bytes
    stderr: bytes


class ChildFailed(RuntimeError):
    """A measured command exited non-zero; carries its stderr."""


def run(
    argv: Sequence[str] | str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Run:
    """Run ``argv`` (a shell line if a str), timed, with its peak RSS.

    The RSS comes from GNU time (``%M``, the child's ``ru_maxrss``), not from
    our own ``wait4``: Python starts children with vfork, and Linux carries
    the parent's high-water RSS over into a vforked child's ``ru_maxrss`` at
    exec, so a benchmark process holding a 1 GiB buffer would make every
    child look 1 GiB big. /usr/bin/time is small and forks normally. For a
    shell line the figure is the largest of the shell and its children.
    Output goes to temporary files (no pipe to fill).

    Dirty pages are written back first (``sync``, untimed): what an earlier
    step wrote (the image build and push, a peer's ``dir:`` copy) would
    otherwise be written back by the kernel while this command runs, on the
    same two cores and disk (a SOCI ``cp`` with 2 GB left dirty: 5.18 and
    4.60 s, against 4.82 and 4.57 s after a ``sync``).
    """
    command = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss,
    ):
        os.sync()
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *command],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            check=False,
        )
        secs = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        lines = Path(rss.name).read_text().split()
        result = Run(secs, int(lines[-1]) * KiB if lines else 0, out.read(), err.read())
    if check and proc.returncode:
        shown = argv if isinstance(argv, str) else " ".join(map(str, argv))
        raise ChildFailed(f"{shown} exited {proc.returncode}:\n{result.stderr.decode()[-3000:]}")
    return result


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass(frozen=True, slots=True)
class Stat:
    """Median of repeats, with the range, for the table."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def fmt(self, unit: str = "s", digits: int = 2, scale: float = 1.0) -> str:
        med = f"{self.median * scale:.{digits}f}"
        if len(self.values) < 2:
            return f"{med} {unit}".strip()
        lo, hi = min(self.values) * scale, max(self.values) * scale
        return f"{med} {unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def stat(values: Sequence[float]) -> Stat:
    return Stat(tuple(values))


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a results table; ``ok`` None means informational."""

    what: str
    target: str
    measured: str
    ratio: str = ""
    ok: bool | None = None


@dataclass(slots=True)
class Section:
    """A table per issue, with the notes that explain it."""

    title: str
    intro: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def rate(nbytes: float, secs: float) -> str:
    return f"{nbytes / MiB / secs:,.0f} MiB/s"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def note(message: str) -> None:
    """Progress for whoever runs the benchmark (stderr, flushed)."""
    print(
        f"[bench {time.strftime('%H:%M:%S')} load {load_average()}] {message}",
        file=sys.stderr,
        flush=True,
    )


def compile_package() -> None:
    """Byte-compile r8imfs as an installed wheel would be: without it, every
    command of a measured run (with PYTHONDONTWRITEBYTECODE set, as here)
    compiles the package's sources again before it starts."""
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(repo / "r8imfs")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
