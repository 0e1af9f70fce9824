"""Machine facts, peer versions, and the Markdown of docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import Row, Section, load_average

PEERS = {
    "skopeo": ["skopeo", "--version"],
    "curl": ["curl", "--version"],
    "zstd": ["zstd", "--version"],
    "tar": ["tar", "--version"],
    "gzip": ["gzip", "--version"],
    "docker-registry": ["/usr/bin/docker-registry", "--version"],
}


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def busiest(n: int = 6) -> str:
    """The processes using the most CPU right now, ours excepted: what else was running."""
    out = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    rows = []
    for line in out[1:]:
        pid, cpu, etime, args = (line.split(None, 3) + ["", "", "", ""])[:4]
        if pid.isdigit() and int(pid) != os.getpid():
            rows.append(f"{cpu}% {args[:70]} (up {etime})")
        if len(rows) == n:
            break
    return "; ".join(rows)


def code_state() -> str:
    """HEAD and the files under r8imfs/ that differ from it: what was measured."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        return out.stdout.rstrip()

    dirty = [line[3:] for line in git("status", "--short", "--", "r8imfs").splitlines()]
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"HEAD {head}" + (f", uncommitted changes in {', '.join(dirty)}" if dirty else "")


_FAULT_IN = (
    "import time; t = time.perf_counter(); b = bytearray(1 << 30); "
    "print(f'{time.perf_counter() - t:.2f}')"
)
_REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def fresh_memory() -> str:
    """Seconds to fault in (and zero) 1 GiB of new memory, in a child process.

    On a VM whose free pages go back to the host (virtio-balloon free page
    reporting), a page touched for the first time since then is backed anew
    by the host: on the machine these figures were made on, that cost from
    0.4 s per GiB (pages still backed) to 2.9 s (freed seconds before). Every
    row that fills fresh page cache (writing 1 GiB of files: the peers' ``tar
    x``, ``cp`` out of a mount, ``extract``) moves with it, which is why this
    machine's peers vary by up to 2× between runs; the rows' ratios less so.
    """
    try:
        out = subprocess.run(
            [sys.executable, "-c", _FAULT_IN], capture_output=True, text=True, timeout=60
        )
        secs = out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        secs = "?"
    try:
        reported = int(_REPORTED.read_text()) // (1024 * 1024)
        host = f"; free page reporting on, {reported:,} GiB reported to the host so far"
    except (OSError, ValueError):
        host = ""
    return f"{secs} s to fault in 1 GiB{host}"


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class Machine:
    started: str = field(default_factory=lambda: _now())
    load_start: str = field(default_factory=load_average)
    busy_start: str = field(default_factory=busiest)
    code_start: str = field(default_factory=code_state)
    code_end: str = ""
    load_end: str = ""
    busy_end: str = ""
    memory_start: str = field(default_factory=fresh_memory)
    memory_end: str = ""
    loads: list[tuple[str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(
        default_factory=lambda: {name: first_line(argv) for name, argv in PEERS.items()}
    )

    def facts(self) -> list[tuple[str, str]]:
        return [
            ("date", self.started),
            ("CPU", f"{os.cpu_count()} × {cpu_model()}"),
            ("memory", mem_total()),
            ("kernel", platform.release()),
            ("python", sys.version.split()[0]),
            ("code at start", self.code_start),
            ("code at end", self.code_end),
            ("load average (1, 5, 15 min) at start / end", f"{self.load_start} / {self.load_end}"),
            ("fresh memory at start / end", f"{self.memory_start} / {self.memory_end}"),
            (
                "load average as each area started",
                "; ".join(f"{area}: {load}" for area, load in self.loads),
            ),
        ]


def render(machine: Machine, sections: list[Section], header: str, notes: list[str]) -> str:
    out = [header, "", "## Machine and peers", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine.facts()]
    out += [f"| {name} | {version} |" for name, version in machine.versions.items()]
    out += [
        "",
        f"Busiest processes at the start: {machine.busy_start}.",
        f"At the end: {machine.busy_end}.",
        "",
    ]
    for section in sections:
        out += [f"## {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        out += [
            "| measurement | target | measured: median of runs (min–max) | ratio | result |",
            "|---|---|---|---|---|",
        ]
        out += [_row(r) for r in section.rows]
        out.append("")
        out += [f"- {n}" for n in section.notes]
        if section.notes:
            out.append("")
    if notes:
        out += ["## Notes", ""] + notes + [""]
    return "\n".join(out)


def _row(r: Row) -> str:
    result = "" if r.ok is None else ("**pass**" if r.ok else "**FAIL**")
    cells = (r.what, r.target, r.measured, r.ratio, result)
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
