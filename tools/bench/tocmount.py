"""Issue 13 (standalone; not in ``make bench``): cold mounts of TOC images, ``r8imfs zstd``.

    .venv/bin/python -m tools.bench.tocmount [--files 8000] [--tar-mb 140] [--repeat 3]
        [--old-rev 39ae0f4]

On a local docker-registry (through ``tests/counting_proxy``), one image of one
base layer of ``--files`` small files (``image.write_base``: site-packages-like
names, mixed text and binary) in four spellings:

* ``gzip``: the layer as cog pushes it (the baseline: indexed by one full pass);
* ``r8imfs zstd``: that image through ``r8imfs zstd`` (zstd:chunked, dialect A);
* ``skopeo``: ``skopeo copy --dest-compress-format zstd:chunked`` (legacy dialect);
* ``estargz``: ``ctr-remote images convert --estargz --oci`` on a throwaway containerd.

For each, ``--repeat`` cold mounts (a fresh cache directory each): the time
``r8imfs mount`` takes to return (it returns once serving), the share of the
layer's bytes that crossed the proxy by then, then ``ls -R`` and the umount.
Also ``r8imfs zstd`` of the gzip image, wall time and throughput, against the
same command of ``--old-rev`` (the writer before issue 13), run from a copy
of that revision's ``r8imfs/`` made with ``git archive``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]

import trio  # noqa: E402

from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tests.helpers.tocproducers import containerd, ctr_remote_convert, write_layout  # noqa: E402
from tools.bench import image  # noqa: E402
from tools.bench.common import MiB, compile_package, load_average  # noqa: E402

PY = [sys.executable, "-m", "r8imfs", "-q"]


def sh(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=1800)
    return time.perf_counter() - start


def skopeo(src: str, dest: str, *flags: str) -> None:
    sh(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            *flags,
            src,
            dest,
        ]
    )


def build(work: Path, host: str, files: int, tar_mb: int) -> dict[str, str]:
    """The four images; their references on ``host``."""
    base = image.write_base(work / "base.tar.gz", tar_mb * MiB, files)
    print(
        f"base layer: {files} files, {base.usize / MiB:.0f} MiB tar, "
        f"{base.size / MiB:.0f} MiB gzip",
        flush=True,
    )
    tiny = image.write_base(work / "tiny.tar.gz", 64 * 1024, 10, seed=5)
    refs = {"tiny gzip (the floor)": f"{host}/{image.REPO}:toc-tiny"}
    trio.run(image.push, host, (tiny,), "toc-tiny")
    refs["gzip"] = f"{host}/{image.REPO}:toc-gz"
    trio.run(image.push, host, (base,), "toc-gz")
    refs["r8imfs zstd"] = f"{host}/{image.REPO}:toc-zstd"
    sh([*PY, "zstd", refs["gzip"], refs["r8imfs zstd"]])
    tar = gzip.decompress(base.path.read_bytes())
    if shutil.which("skopeo"):  # from a layout: registry to registry, skopeo reuses the gzip blob
        refs["skopeo zstd:chunked"] = f"{host}/{image.REPO}:toc-skopeo"
        write_layout(work / "skopeo-src", tar)
        skopeo(
            f"oci:{work / 'skopeo-src'}:v1",
            f"docker://{refs['skopeo zstd:chunked']}",
            "--dest-compress-format",
            "zstd:chunked",
        )
    if shutil.which("ctr-remote") and shutil.which("containerd") and os.geteuid() == 0:
        with containerd(work / "ctd") as ctr:
            ctr_remote_convert(ctr, work, tar, "--estargz")
        refs["ctr-remote eStargz"] = f"{host}/{image.REPO}:toc-estargz"
        skopeo(f"oci:{work / 'out--estargz'}:estargz", f"docker://{refs['ctr-remote eStargz']}")
    return refs


def layer_sizes(ref: str) -> dict[str, int]:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {d["digest"]: d["size"] for d in json.loads(out)["layers"]}


def cold_mount(ref: str, proxy: CountingProxy, work: Path, n: int) -> tuple[float, float, float]:
    """(seconds to ready, share of layer bytes moved by then, seconds of ls -R)."""
    layers = layer_sizes(ref)
    mnt, cache, run = work / f"mnt{n}", work / f"cache{n}", work / f"run{n}"
    for d in (mnt, run):
        d.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    proxy.reset()
    via = ref.replace(ref.split("/")[0], proxy.host, 1)
    ready = sh(
        [*PY, "mount", via, str(mnt), "--cache-dir", str(cache), "--log", str(work / f"log{n}")],
        env,
    )
    moved = sum(b for d, b in proxy.blob_downloads().items() if d in layers)
    try:
        ls = sh(["ls", "-R", str(mnt / "rootfs")])
    finally:
        sh([*PY, "umount", str(mnt)], env)
    shutil.rmtree(cache)
    return ready, moved / sum(layers.values()), ls


def zstd_speed(ref: str, old: Path, repeat: int) -> dict[str, float]:
    """Median seconds of ``r8imfs zstd`` of ``ref``, this tree and ``old``, interleaved."""
    times: dict[str, list[float]] = {"before": [], "now": []}
    for i in range(repeat):
        for label, tree in (("before", old), ("now", REPO)):
            env = {**os.environ, "PYTHONPATH": str(tree)}
            times[label].append(sh([*PY, "zstd", ref, f"{ref}-{label}{i}"], env))
    return {label: statistics.median(t) for label, t in times.items()}


def push_weights(work: Path, host: str, mb: int) -> tuple[str, int]:
    """An image of one weights-like layer (one big float16-like file), for zstd throughput."""
    layer, _ = image.write_weights(work / "weights.tar.gz", mb * MiB)
    trio.run(image.push, host, (layer,), "toc-weights")
    return f"{host}/{image.REPO}:toc-weights", layer.size


def old_tree(work: Path, rev: str) -> Path:
    dest = work / "old"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "r8imfs"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    return dest


def main() -> None:
    compile_package()
    p = argparse.ArgumentParser()
    p.add_argument("--files", type=int, default=8000)
    p.add_argument("--tar-mb", type=int, default=140)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--old-rev", default="39ae0f4")
    p.add_argument("--weights-mb", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-toc-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry")
        proxy = start_counting_proxy(registry.host)
        try:
            print(f"load before: {load_average()}", flush=True)
            refs = build(work, registry.host, args.files, args.tar_mb)
            size = sum(layer_sizes(refs["gzip"]).values())
            for name, ref in refs.items():
                runs = []
                for i in range(args.repeat):
                    where = work / f"{name}-{i}".replace(" ", "_").replace(":", "_")
                    where.mkdir()
                    runs.append(cold_mount(ref, proxy, where, i))
                ready, share, ls = (statistics.median(x) for x in zip(*runs, strict=True))
                print(
                    f"| {name} | {sum(layer_sizes(ref).values()) / MiB:.1f} MiB | "
                    f"{ready:.2f} s | {share:.1%} | {ls:.2f} s |",
                    flush=True,
                )
            old = old_tree(work, args.old_rev)
            weights = push_weights(work, registry.host, args.weights_mb)
            inputs = {"base": (refs["gzip"], size), "weights": weights}
            for what, (ref, nbytes) in inputs.items():
                for label, secs in zstd_speed(ref, old, args.repeat).items():
                    print(
                        f"r8imfs zstd of the {what} layer ({label}): {secs:.2f} s, "
                        f"{nbytes / MiB / secs:.1f} MiB/s of gzip input",
                        flush=True,
                    )
            print(f"load after: {load_average()}", flush=True)
        finally:
            proxy.stop()
            registry.stop()


if __name__ == "__main__":
    main()
