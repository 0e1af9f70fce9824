"""Issue 14, extract only: ``extract --dir`` through SOCI, ``--no-soci`` and the peer, A/B.

    .venv/bin/python tools/bench/sociextract.py [--size-scale 0.5] [--repeat 3]
        [--workdir DIR] [--hold]

A smaller, quicker reproduction of the extract rows of ``socimount``: starts
the registry, builds and pushes the benchmark image at ``--size-scale``
(0.5: 512 MiB of weights), indexes it once (``r8imfs index``, SOCI v2 at
``…:v1-soci``), then runs, back to back and interleaved, ``--repeat`` times
each: ``r8imfs extract REF-soci --dir`` (spans in parallel),
``--no-soci`` (one stream) and the peer (``skopeo copy`` + ``tar -xzf`` of
the weights blob). Each row gives wall time (median, min–max) and the CPU
time of the command and its children (user + system, from ``wait4``), with
the load average before each run. ``--hold`` keeps the registry up after
the runs and prints the references, for profiling by hand (Ctrl-C or
SIGTERM ends it, and stops the registry).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers.registry import start_registry  # noqa: E402
from tools.bench.common import R8IMFS, load_average, note, stat  # noqa: E402
from tools.bench.context import child_env  # noqa: E402
from tools.bench.run import build_image  # noqa: E402


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``argv``: (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-scale", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--hold", action="store_true")
    args = ap.parse_args()
    # started in the background, SIGINT may be ignored: make both signals end us cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    work = Path(tempfile.mkdtemp(prefix="r8imfs-socix-", dir=args.workdir))
    registry = start_registry(work / "registry", "open")
    try:
        img = build_image(work, registry.host, args.size_scale)
        env = child_env(work)
        note("r8imfs index (once)")
        subprocess.run([*R8IMFS, "index", img.ref], env=env, check=True)
        ref = img.ref + "-soci"
        blob = img.weights.digest.split(":", 1)[1]

        def extract(*extra: str) -> tuple[float, float]:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(work / "xdg-cache", ignore_errors=True)
            done = timed([*R8IMFS, "extract", ref, "--dir", str(out), *extra], env)
            if (out / "model.bin").stat().st_size != img.model_bytes:
                raise RuntimeError("extract wrote a model.bin of the wrong size")
            shutil.rmtree(out)
            return done

        def peer() -> tuple[float, float]:
            layout, out = work / "peer-dir", work / "peer-out"
            for d in (layout, out):
                shutil.rmtree(d, ignore_errors=True)
            out.mkdir()
            copy = timed(
                ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{img.ref}",
                 f"dir:{layout}"]
            )  # fmt: skip
            untar = timed(["tar", "-xzf", str(layout / blob), "-C", str(out)])
            shutil.rmtree(layout)
            shutil.rmtree(out)
            return copy[0] + untar[0], copy[1] + untar[1]

        cases = {"extract --dir (SOCI)": extract, "extract --dir --no-soci": lambda: extract(
            "--no-soci"), "peer: skopeo copy + tar -xzf": peer}  # fmt: skip
        results: dict[str, list[tuple[float, float, str]]] = {k: [] for k in cases}
        for i in range(args.repeat):
            for label, fn in cases.items():
                load = load_average()
                note(f"{label} {i + 1}/{args.repeat}")
                wall, cpu = fn()
                results[label].append((wall, cpu, load))
        if args.repeat < 1:
            results.clear()  # nothing measured: --hold only
        peer_wall = (
            1.0
            if not results
            else stat([r[0] for r in results["peer: skopeo copy + tar -xzf"]]).median
        )
        mib = img.weights.usize / 2**20
        print(f"\nweights layer {img.weights.size / 2**20:.0f} MiB gzip, {mib:.0f} MiB tar; "
              f"{os.cpu_count()} cores")  # fmt: skip
        for label, runs in results.items():
            walls, cpus = stat([r[0] for r in runs]), stat([r[1] for r in runs])
            loads = ", ".join(r[2].split()[0] for r in runs)
            print(
                f"{label:30s} wall {walls.fmt()}  cpu {cpus.fmt()}  "
                f"{peer_wall / walls.median:.2f}x the peer  (load at start: {loads})"
            )
        if args.hold:
            print(f"\nholding: {ref} (blob {img.weights.path}); Ctrl-C ends", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
