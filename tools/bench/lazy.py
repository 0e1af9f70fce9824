"""Issue 12: lazy reads at wire speed, against ``curl blob | zstd -dc | tar x``.

    .venv/bin/python tools/bench/lazy.py [--repeat 2] [--size-scale 1.0]
        [--out docs/benchmarks-lazy.md] [--results lazy.json] [--workdir DIR]

Builds the benchmark image (``image``: 1 GiB of float16-like weights, gzip -6),
converts it with ``r8imfs zstd`` (seekable, ``:zstd``) and with ``skopeo copy
--dest-decompress`` (uncompressed layers, ``:plain``), both untimed, then
measures in one run, interleaved, each repeat a fresh process and an empty
cache:

``pipeline``
    the peer: ``curl -sSf BLOB | zstd -dc | tar x -C DIR`` of the weights
    layer (for the plain image, ``curl BLOB | tar x``), and for scale
    ``curl -o /dev/null`` of the same blob;
``mount``
    cold ``r8imfs mount`` + ``cp -r rootfs/src/weights`` + ``umount``
    (``mount.one_run``);
``extract``
    cold ``r8imfs extract IMAGE -o weights.tar``;
``scattered``
    a cold mount through the counting proxy; after it is serving, 8 reads
    of 64 KiB at offsets spread over ``model.bin`` (``POSIX_FADV_RANDOM``,
    so the kernel asks for what the reader asked for, not its readahead);
    the bytes of blob responses during the reads, per read;
``checkpoints``
    the gzip image with ``--no-decoded-copies``: an untimed mount builds the
    zran index, the blob cache is deleted, then mount + cp: cp MiB/s.

Ratios compare medians. Nothing asserts: a missed target is FAIL. The rows
are printed and written as Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from r8imfs.fs.daemon import mounted_fstype  # noqa: E402
from r8imfs.oci import mutate  # noqa: E402
from r8imfs.oci.manifest import Descriptor  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from r8imfs.registry.push import push_manifest  # noqa: E402
from r8imfs.registry.upload import upload_stream  # noqa: E402
from tests.helpers.counting_proxy import start_counting_proxy  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tools.bench import report  # noqa: E402
from tools.bench.common import (  # noqa: E402
    R8IMFS,
    KiB,
    MiB,
    Row,
    Section,
    compile_package,
    load_average,
    note,
    rate,
    run,
    stat,
)
from tools.bench.context import Bench, child_env  # noqa: E402
from tools.bench.image import MANIFEST_TYPE  # noqa: E402
from tools.bench.image import REPO as IMAGE_REPO  # noqa: E402
from tools.bench.mount import MountRun, one_run  # noqa: E402
from tools.bench.run import build_image  # noqa: E402

MOUNT_RATIO = 1.25
EXTRACT_RATIO = 1.0
SCATTER_LIMIT = 6 * MiB
SCATTER_READS = 8
SCATTER_SIZE = 64 * KiB
CHECKPOINT_TODAY = 94 * MiB  # MiB/s, docs/benchmarks.md at 5baf37e
_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json,"
    "application/vnd.docker.distribution.manifest.v2+json"
)


@dataclass(frozen=True, slots=True)
class Kind:
    """One converted image: its tag, its weights blob, and how the peer decodes it."""

    name: str
    ref: str
    blob_url: str
    blob_size: int
    decode: str  # shell filter between curl and tar, "" for none


def weights_blob(host: str, tag: str) -> tuple[str, int]:
    """Digest and size of the biggest layer of ``bench/model:TAG`` (the weights)."""
    url = f"http://{host}/v2/bench/model/manifests/{tag}"
    req = urllib.request.Request(url, headers={"Accept": _ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        layers = json.load(resp)["layers"]
    best = max(layers, key=lambda x: int(x["size"]))
    return str(best["digest"]), int(best["size"])


async def push_plain(b: Bench) -> None:
    """The image with each layer's tar pushed uncompressed (``gzip -dc`` of the layer files).

    (``skopeo copy --dest-decompress`` keeps the gzip blobs when the
    destination repository already has them.)
    """
    ref = parse(f"{b.image.host}/{IMAGE_REPO}:plain")
    news = []
    async with RegistryClient() as client:
        for layer in b.image.layers:
            tar = layer.path.with_suffix("")  # x.tar.gz -> x.tar
            run(f"gzip -dc {layer.path} > {tar}")
            digest = (await upload_stream(client, ref.repository, _chunks(tar))).digest
            kind = mutate.layer_type_for(MANIFEST_TYPE, "none")
            desc = Descriptor(kind, digest, tar.stat().st_size)
            news.append(mutate.NewLayer(desc, layer.diff_id, layer.created_by, layer.comment))
            tar.unlink()
        config = mutate.append_layers(mutate.new_config(), news)
        await push_manifest(client, ref, MANIFEST_TYPE, config, [n.descriptor for n in news])


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(4 * MiB):
            yield data


def convert(b: Bench) -> list[Kind]:
    host = b.image.host
    note("converting: r8imfs zstd (not timed)")
    run([*R8IMFS, "zstd", b.image.ref, f"{host}/bench/model:zstd"], env=b.env)
    note("converting: uncompressed layers, pushed as :plain (not timed)")
    trio.run(push_plain, b)
    kinds = []
    for name, decode in (("zstd", "zstd -dc"), ("plain", "")):
        digest, size = weights_blob(host, name)
        kinds.append(
            Kind(
                name,
                f"{host}/bench/model:{name}",
                f"http://{host}/v2/bench/model/blobs/{digest}",
                size,
                decode,
            )
        )
    return kinds


def pipeline(b: Bench, kind: Kind) -> float:
    out = b.scratch("pipeline-out")
    middle = f" | {kind.decode}" if kind.decode else ""
    done = run(f"curl -sSf {kind.blob_url}{middle} | tar x -C {out}")
    if (out / "src/weights/model.bin").stat().st_size != b.image.model_bytes:
        raise RuntimeError(f"the {kind.name} pipeline gave a model.bin of the wrong size")
    shutil.rmtree(out)
    return done.secs


def curl(kind: Kind) -> float:
    return run(["curl", "-sSf", "-o", "/dev/null", kind.blob_url]).secs


def extract(b: Bench, ref: str) -> tuple[float, int]:
    out = b.scratch("extract-out")
    done = run([*R8IMFS, "extract", ref, "-o", str(out / "weights.tar")], env=b.env)
    if (out / "weights.tar").stat().st_size < b.image.model_bytes:
        raise RuntimeError("extract wrote too little")
    shutil.rmtree(out)
    return done.secs, done.maxrss


def scattered(b: Bench, kind: Kind) -> tuple[float, float]:
    """Blob bytes fetched per scattered 64 KiB read of a cold mount, and ms per read."""
    proxy = start_counting_proxy(b.image.host)
    mnt, cache = b.scratch("mnt"), b.scratch("scatter-cache")
    ref = kind.ref.replace(b.image.host, proxy.host, 1)
    try:
        run([*R8IMFS, "mount", "--cache-dir", str(cache), ref, str(mnt)], env=b.env)
        try:
            proxy.reset()
            secs = read_scattered(mnt / "rootfs/src/weights/model.bin", b.image.model_bytes)
            fetched = sum(proxy.blob_downloads().values())
        finally:
            run([*R8IMFS, "umount", str(mnt)], env=b.env, check=False)
            if mounted_fstype(mnt) is not None:
                run(["fusermount3", "-u", str(mnt)], check=False)
    finally:
        proxy.stop()
    return fetched / SCATTER_READS, secs / SCATTER_READS


def read_scattered(path: Path, size: int) -> float:
    """``SCATTER_READS`` preads of 64 KiB, one in each equal slice of the file (offset 1/3 in)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        start = time.perf_counter()
        for i in range(SCATTER_READS):
            offset = (size * i // SCATTER_READS + size // (3 * SCATTER_READS)) // 4096 * 4096
            if len(os.pread(fd, SCATTER_SIZE, offset)) != SCATTER_SIZE:
                raise RuntimeError("short read through the mount")
        return time.perf_counter() - start
    finally:
        os.close(fd)


def checkpoints(b: Bench) -> MountRun:
    cache = b.scratch("ckpt-cache")
    one_run(b, cache, "--no-decoded-copies", ls=False, cp=False)
    shutil.rmtree(cache / "blobs")
    return one_run(b, cache, "--no-decoded-copies", ls=False, cp=True)


def measure(b: Bench, kinds: list[Kind]) -> dict[str, Any]:
    """Every measurement, interleaved per repeat; raw numbers keyed by kind and row."""
    raw: dict[str, Any] = {
        k.name: {"pipeline": [], "curl": [], "mount": [], "extract": [], "scatter": []}
        for k in kinds
    }
    raw["checkpoints"] = []
    for i in range(b.repeat):
        for k in kinds:
            r = raw[k.name]
            note(f"{k.name} {i + 1}/{b.repeat}: curl, pipeline")
            r["curl"].append(curl(k))
            r["pipeline"].append(pipeline(b, k))
            note(f"{k.name} {i + 1}/{b.repeat}: cold mount + cp + umount")
            r["mount"].append(
                asdict(one_run(b, b.scratch("mount-cache"), ls=False, cp=True, ref=k.ref))
            )
            note(f"{k.name} {i + 1}/{b.repeat}: cold extract")
            r["extract"].append(extract(b, k.ref))
            note(f"{k.name} {i + 1}/{b.repeat}: scattered reads")
            r["scatter"].append(scattered(b, k))
        note(f"gzip checkpoints {i + 1}/{b.repeat}")
        raw["checkpoints"].append(asdict(checkpoints(b)))
    return raw


def rows_for(b: Bench, kind: str, r: dict[str, Any]) -> list[Row]:
    pipe, curl_s = stat(r["pipeline"]), stat(r["curl"])
    mounts = [MountRun(**m) for m in r["mount"]]
    total, cp = stat([m.total for m in mounts]), stat([m.cp or 0 for m in mounts])
    ext = stat([s for s, _ in r["extract"]])
    per_read = stat([f for f, _ in r["scatter"]])
    read_ms = stat([s * 1000 for _, s in r["scatter"]])
    wb = b.image.weights_bytes
    m_ratio, e_ratio = total.median / pipe.median, ext.median / pipe.median
    return [
        Row(
            f"{kind}: peer pipeline curl | {'zstd -dc | ' if kind == 'zstd' else ''}tar x",
            "",
            f"{pipe.fmt()}; {rate(wb, pipe.median)}",
        ),
        Row(f"{kind}: curl -o /dev/null of the weights blob", "", curl_s.fmt()),
        Row(
            f"{kind}: cold mount + cp -r + umount",
            f"≤ {MOUNT_RATIO}× the pipeline",
            total.fmt(),
            f"{m_ratio:.2f}×",
            m_ratio <= MOUNT_RATIO,
        ),
        Row("  of which mount", "", stat([m.mount for m in mounts]).fmt()),
        Row("  of which cp -r", "", f"{cp.fmt()}; {rate(wb, cp.median)}"),
        Row(
            "  daemon RSS during cp (max)",
            "≤ 300 MB",
            f"{max(m.rss_during_cp for m in mounts) / 1e6:.0f} MB",
            "",
            max(m.rss_during_cp for m in mounts) <= 300e6,
        ),
        Row(
            f"{kind}: cold extract -o",
            f"≤ {EXTRACT_RATIO}× the pipeline",
            ext.fmt(),
            f"{e_ratio:.2f}×",
            e_ratio <= EXTRACT_RATIO,
        ),
        Row(
            "  extract peak RSS (max)",
            "≤ 250 MB",
            f"{max(m for _, m in r['extract']) / 1e6:.0f} MB",
            "",
            max(m for _, m in r["extract"]) <= 250e6,
        ),
        Row(
            f"{kind}: scattered 64 KiB reads, cold mount: fetched per read",
            f"≤ {SCATTER_LIMIT // MiB} MiB",
            per_read.fmt("MiB", 1, 1 / MiB),
            "",
            per_read.median <= SCATTER_LIMIT,
        ),
        Row("  time per read", "", read_ms.fmt("ms", 1)),
    ]


def checkpoint_rows(b: Bench, raw: list[dict[str, Any]]) -> list[Row]:
    mounts = [MountRun(**m) for m in raw]
    cp = stat([m.cp or 0 for m in mounts])
    speed = b.image.weights_bytes / cp.median
    target = 2 * CHECKPOINT_TODAY
    return [
        Row(
            "gzip, --no-decoded-copies, index cached, blob not: cp -r",
            f"≥ {target / MiB:.0f} MiB/s (2× 94)",
            f"{cp.fmt()}; {rate(b.image.weights_bytes, cp.median)}",
            f"{speed / target:.2f}× the target",
            speed >= target,
        ),
        Row(
            "  daemon RSS during cp (max)",
            "≤ 300 MB",
            f"{max(m.rss_during_cp for m in mounts) / 1e6:.0f} MB",
            "",
            max(m.rss_during_cp for m in mounts) <= 300e6,
        ),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size-scale", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here too")
    p.add_argument("--results", type=Path, default=None, help="save the raw results as JSON")
    p.add_argument("--workdir", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    compile_package()
    args = parse_args(argv)
    machine = report.Machine()
    work = Path(tempfile.mkdtemp(prefix="r8imfs-lazy-", dir=args.workdir))
    registry = start_registry(work / "registry", "open")
    try:
        img = build_image(work, registry.host, args.size_scale)
        b = Bench(work, img, args.repeat, child_env(work))
        kinds = convert(b)
        machine.loads.append(("measuring", load_average()))
        raw = measure(b, kinds)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        registry.stop()
        machine.load_end, machine.busy_end = load_average(), report.busiest()
        machine.memory_end = report.fresh_memory()
        machine.code_end = report.code_state()
    section = Section(
        "Issue 12: lazy reads",
        f"{args.repeat} runs each, interleaved; weights {img.weights_bytes / MiB:,.0f} MiB "
        "of float16-like bytes. See tools/bench/lazy.py for what each row does.",
    )
    for kind in kinds:
        section.rows += rows_for(b, kind.name, raw[kind.name])
    section.rows += checkpoint_rows(b, raw["checkpoints"])
    shutil.rmtree(work, ignore_errors=True)
    header = "\n".join(
        [
            "# Issue 12 benchmark: lazy reads",
            "",
            f"Written by `tools/bench/lazy.py --repeat {args.repeat}"
            + (f" --size-scale {args.size_scale:g}" if args.size_scale != 1 else "")
            + "`; every number comes from that one run (what each row does: the script's "
            "docstring). Targets are issue 12's. The machine is shared: read the load "
            "averages below before comparing runs.",
        ]
    )
    text = report.render(machine, [section], header, [])
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.results:
        args.results.write_text(json.dumps({"machine": asdict(machine), "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
