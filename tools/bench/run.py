"""``make bench``: build the benchmark image, measure issues 3, 4 and 6, write the doc.

    .venv/bin/python tools/bench/run.py [--only extract,mount,mutate,engine]
        [--size-scale 1.0] [--repeat 3] [--out docs/benchmarks.md] [--workdir DIR]
    .venv/bin/python tools/bench/run.py --only tables   # docs/engine-measurements.md
    .venv/bin/python tools/bench/run.py --render-from results.json   # redo the Markdown

Starts Debian's docker-registry on 127.0.0.1 with its storage in a temporary
directory (on /tmp's disk unless --workdir says otherwise), builds and pushes
the image (``image``), runs each area with its peers in the same run, writes
the Markdown to --out, and removes everything it made. Nothing asserts: a
target that fails is reported as FAIL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from tests.helpers.registry import start_registry  # noqa: E402
from tools.bench import (  # noqa: E402
    engine,
    extract,
    image,
    mount,
    mutate,
    notes,
    report,
    socimount,
    tables,
)
from tools.bench.common import GiB, MiB, Row, Section, compile_package, load_average, note  # noqa: E402
from tools.bench.context import Bench, child_env  # noqa: E402

AREAS = ("extract", "engine", "mount", "mutate", "soci")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only",
        default=",".join(AREAS),
        help=f"comma-separated areas: {', '.join(AREAS)}; or 'tables' alone",
    )
    p.add_argument(
        "--size-scale",
        type=float,
        default=1.0,
        help="multiply the image's byte sizes (0.05 for a quick run)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument("--tables-mb", type=int, default=200, help="layer size for --only tables")
    p.add_argument(
        "--results", type=Path, default=None, help="also save the raw results as JSON here"
    )
    p.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="write --out from results saved with --results, measuring nothing",
    )
    args = p.parse_args(argv)
    args.areas = [a for a in args.only.split(",") if a]
    unknown = set(args.areas) - {*AREAS, "tables"}
    if unknown:
        p.error(f"unknown area(s): {', '.join(sorted(unknown))}")
    return args


def build_image(work: Path, host: str, scale: float) -> image.BenchImage:
    note(f"building the image (size scale {scale:g})")
    start = time.monotonic()
    base, src, weights, weights_bytes = image.build_layers(work, scale)
    note(
        f"built in {time.monotonic() - start:.0f} s: base {base.size / MiB:.1f} MiB gzip "
        f"({base.files} files), weights {weights.size / MiB:.1f} MiB gzip; pushing"
    )
    model_bytes = max(int(image.WEIGHTS_BYTES * scale) // 2 * 2, 2)
    bench_image = image.BenchImage(host, base, src, weights, model_bytes, weights_bytes)
    trio.run(image.push, host, bench_image.layers, "v1")
    trio.run(image.push, host, (weights,), "weights-only")
    return bench_image


def run_areas(b: Bench, args: argparse.Namespace, machine: report.Machine) -> list[Section]:
    sections = []
    for area in AREAS:
        if area not in args.areas:
            continue
        machine.loads.append((area, load_average()))
        if area == "mutate":
            sections.append(mutate.measure(b, args.size_scale))
        else:
            areas = {"extract": extract, "engine": engine, "mount": mount, "soci": socimount}
            sections.append(areas[area].measure(b))
    return sections


def describe(b: Bench, args: argparse.Namespace) -> str:
    img = b.image
    w, base = img.weights, img.base
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Written by `make bench` (`tools/bench/run.py"
            + (f" --only {args.only}" if args.only != ",".join(AREAS) else "")
            + (f" --size-scale {args.size_scale:g}" if args.size_scale != 1 else "")
            + f" --repeat {args.repeat}`); every number below comes from that one run. "
            "Benchmarks are not tests: nothing asserts on time. The engine's design measurements "
            "(gzip checkpoint spacing, indexed_gzip against rapidgzip, zstd frames, blob-cache "
            "block size) are in [engine-measurements.md](engine-measurements.md) "
            "(`tools/bench/run.py --only tables`).",
            "",
            "## Setup",
            "",
            "- Registry: Debian's `docker-registry` (distribution 2.8, filesystem storage) on "
            "127.0.0.1, started by the benchmark, its storage in a temporary directory on the "
            "same disk; everything it serves is in the page cache, so the wire is loopback "
            "and the costs are CPU: the registry, the client and the peers share the same cores.",
            f"- Image `{img.ref}`, Docker v2 schema 2 manifest, layers gzip -6 (zlib):",
            f"  - base: {base.files:,} small files in {base.dirs:,} directories "
            "(site-packages-like "
            f"`.py` text and `.so`-like binaries, lognormal sizes) in {base.usize / MiB:,.0f} MiB "
            f"of tar, {base.size / MiB:,.1f} MiB gzip;",
            "  - `COPY . /src`: predict.py, cog.yaml;",
            f"  - weights (`COPY ./weights /src/weights # weights`): `src/weights/model.bin` "
            f"({img.model_bytes / GiB:,.2f} GiB), tokenizer.json, config.json: "
            f"{w.usize / MiB:,.0f} MiB of tar, {w.size / MiB:,.1f} MiB gzip "
            f"({w.size / w.usize:.1%}).",
            "- Weights content: float16-like bytes, not random bytes: each 2-byte value has a "
            "uniformly random low byte and a high byte (sign, exponent, top mantissa bits) drawn "
            "from the distribution of float16 N(0, 0.02) values. Like real fp16/bf16 checkpoints "
            "it barely compresses, but deflate codes it with Huffman blocks "
            "(not stored blocks), so "
            "it inflates at zlib's real speed (see the `gzip -dc` row), not at memcpy speed as "
            "random bytes would.",
            f"- Each measurement runs {args.repeat} times, in a fresh process, interleaved with "
            "its peers; the tables give the median with min–max. Ratios compare medians.",
        ]
    )


def measure_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Registry up, image pushed, every area measured: the results as plain data."""
    machine = report.Machine()
    registry = start_registry(work / "registry", "open")
    try:
        img = build_image(work, registry.host, args.size_scale)
        b = Bench(work, img, args.repeat, child_env(work))
        sections = run_areas(b, args, machine)
    finally:
        registry.stop()
    machine.load_end, machine.busy_end = load_average(), report.busiest()
    machine.memory_end = report.fresh_memory()
    machine.code_end = report.code_state()
    return {
        "machine": asdict(machine),
        "header": describe(b, args),
        "sections": [asdict(s) for s in sections],
    }


def render(results: dict[str, Any]) -> str:
    saved = {k: v for k, v in results["machine"].items() if k != "loads"}
    saved.setdefault("memory_start", "")  # (results saved before it was measured:
    saved.setdefault("memory_end", "")  # rendering must not probe this machine)
    machine = report.Machine(**saved)
    machine.loads = [tuple(x) for x in results["machine"]["loads"]]
    sections = [
        Section(s["title"], s["intro"], [Row(**r) for r in s["rows"]], s["notes"])
        for s in results["sections"]
    ]
    return report.render(machine, sections, results["header"], notes.for_sections(sections))


def main(argv: list[str] | None = None) -> int:
    compile_package()
    args = parse_args(argv)
    if args.render_from:
        results = json.loads(args.render_from.read_text())
    else:
        parent = args.workdir or Path(tempfile.gettempdir())
        work = Path(tempfile.mkdtemp(prefix="r8imfs-bench-", dir=parent))
        try:
            if args.areas == ["tables"]:
                tables.main(work / "tables", args.tables_mb)
                return 0
            results = measure_all(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.results:
            args.results.write_text(json.dumps(results, indent=1))
    text = render(results)
    args.out.write_text(text + "\n")
    note(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
