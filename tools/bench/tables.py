"""The engine experiments behind docs/engine-measurements.md (``--only tables``).

Prints Markdown tables to stdout (it does not write docs/benchmarks.md): gzip
checkpoint spacing, indexed_gzip against rapidgzip (when installed), the
inflaters (zlib, zlib-ng, and ISA-L and rapidgzip when installed), plain
against seekable zstd, index-database load times, merged-tree build. The layer
is ``data.make_layer``: a synthetic tar of lognormal-sized files of mixed
word soup, random bytes and hex, about 2.2:1 under gzip -6. CPU costs only:
reads go through ``FileReadAt``.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from r8imfs.engine.codecs.gzipindex import GzipLayerReader, build_gzip_index
from r8imfs.engine.codecs.zstdindex import ZstdLayerReader, build_zstd_index
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.indexdb import load_or_build
from r8imfs.engine.merged import MergedTree
from r8imfs.engine.readat import FileReadAt
from r8imfs.oci import mediatypes as mt
from tools.bench.common import MiB, timed
from tools.bench.data import Float16Weights, make_layer


def random_reads(
    pread: Callable[[int, int], bytes], usize: int, n: int, size: int = 64 * 1024
) -> list[float]:
    rng = random.Random(7)
    lat = []
    for _ in range(n):
        off = rng.randrange(0, usize - size)
        t0 = time.perf_counter()
        pread(off, size)
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def sequential_mbps(pread: Callable[[int, int], bytes], usize: int, span: int) -> float:
    t0 = time.perf_counter()
    for off in range(0, min(span, usize), 128 * 1024):
        pread(off, 128 * 1024)
    return min(span, usize) / MiB / (time.perf_counter() - t0)


def bench_gzip(gz: Path, usize: int, spacings: list[int]) -> None:
    csize = gz.stat().st_size
    print(
        "\n| spacing | index bytes | index/uncompressed | indexing pass s | MB/s (uncompr.) "
        "| 64 KiB random read median ms | p90 ms | sequential 128 KiB reads MB/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for spacing in spacings:
        with FileReadAt(gz) as ra:
            secs, res = timed(lambda ra=ra, s=spacing: build_gzip_index(ra, spacing=s))  # type: ignore[misc]
            idx = res.index_bytes  # type: ignore[attr-defined]
            reader = GzipLayerReader(ra, idx, usize)
            lat = random_reads(reader.pread, usize, 200)
            seq = sequential_mbps(GzipLayerReader(ra, idx, usize).pread, usize, 64 * MiB)
            reader.close()
        print(
            f"| {spacing // MiB} MiB | {len(idx):,} | {len(idx) / usize:.2%} | {secs:.1f} | "
            f"{usize / MiB / secs:.0f} | {statistics.median(lat):.1f} | "
            f"{statistics.quantiles(lat, n=10)[-1]:.1f} | {seq:.0f} |"
        )
    print(f"\n(compressed {csize / MiB:.0f} MiB, uncompressed {usize / MiB:.0f} MiB)")


def bench_rapidgzip(gz: Path, usize: int) -> None:
    try:
        import rapidgzip  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("\nrapidgzip not installed")
        return
    for par in (1, 2):
        t0 = time.perf_counter()
        with rapidgzip.open(str(gz), parallelization=par) as f:
            entries = 0
            with tarfile.open(fileobj=f, mode="r|") as tf:
                for _ in tf:
                    entries += 1
            while f.read(16 * MiB):
                pass
            secs = time.perf_counter() - t0
            buf = io.BytesIO()
            f.export_index(buf)
        idx = buf.getvalue()
        with rapidgzip.open(str(gz), parallelization=par) as f:
            f.import_index(io.BytesIO(idx))

            def pread(off: int, size: int, f: object = f) -> bytes:
                f.seek(off)  # type: ignore[attr-defined]
                return f.read(size)  # type: ignore[attr-defined, no-any-return]

            lat = random_reads(pread, usize, 200)
        print(
            f"| rapidgzip parallelization={par} | {len(idx):,} | {len(idx) / usize:.2%} | "
            f"{secs:.1f} | {usize / MiB / secs:.0f} | {statistics.median(lat):.1f} | "
            f"{statistics.quantiles(lat, n=10)[-1]:.1f} | |"
        )


def _inflate_all(module: object, data: bytes) -> int:
    d = module.decompressobj(31)  # type: ignore[attr-defined]
    view, n = memoryview(data), 0
    for i in range(0, len(data), MiB):
        n += len(d.decompress(view[i : i + MiB]))
    return n


def _optional(name: str) -> object | None:
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


def bench_inflaters(label: str, gz: Path, usize: int) -> None:
    """One core: each inflater over the whole blob in memory, best of 2; sha256 for scale."""
    import hashlib
    import zlib

    from zlib_ng import zlib_ng

    data = gz.read_bytes()
    rows: list[tuple[str, Callable[[], object]]] = [
        ("hashlib sha256 (for scale)", lambda: hashlib.sha256(data).digest()),
        ("zlib", lambda: _inflate_all(zlib, data)),
        ("zlib-ng (`zlib_ng.zlib_ng`, what r8imfs uses)", lambda: _inflate_all(zlib_ng, data)),
    ]
    isal = _optional("isal.isal_zlib")
    if isal is not None:
        rows.append(("ISA-L (`isal.isal_zlib`)", lambda: _inflate_all(isal, data)))
    rapidgzip = _optional("rapidgzip")
    for par in (1, 2) if rapidgzip is not None else ():

        def rg(par: int = par) -> int:
            with rapidgzip.open(str(gz), parallelization=par) as f:  # type: ignore[attr-defined]
                return sum(iter(lambda: len(f.read(4 * MiB)), 0))

        rows.append((f"rapidgzip, parallelization={par}", rg))
    print(f"\n{label}: {len(data) / MiB:.0f} MiB gzip, {usize / MiB:.0f} MiB uncompressed")
    print("| inflater | s (best of 2) | MiB/s of output |\n|---|---|---|")
    for name, fn in rows:
        best = min(timed(fn)[0] for _ in range(2))
        print(f"| {name} | {best:.2f} | {usize / MiB / best:.0f} |")


def weights_gz(work: Path, size: int) -> tuple[Path, int]:
    """A gzip -6 file of ``size`` float16-like bytes (the benchmark image's weights)."""
    gz = work / "weights.bin.gz"
    if not gz.exists():
        src = Float16Weights(size)
        with open(gz, "wb") as out:
            proc = subprocess.Popen(["gzip", "-6", "-c"], stdin=subprocess.PIPE, stdout=out)
            assert proc.stdin is not None
            while piece := src.read(MiB):
                proc.stdin.write(piece)
            proc.stdin.close()
            if proc.wait():
                raise RuntimeError("gzip failed")
    return gz, size


def bench_zstd(tar: Path, work: Path, usize: int) -> None:
    plain = work / "layer.tar.zst"
    if not plain.exists():
        subprocess.run(["zstd", "-q", "-3", "-T2", "-f", str(tar), "-o", str(plain)], check=True)
    seekable = work / "layer.seekable.tar.zst"
    with open(tar, "rb") as src, open(seekable, "wb") as dst:
        secs_w, _ = timed(lambda: write_seekable(src, dst, level=3, threads=2))
    print(f"\nwrite_seekable level 3, 2 threads: {usize / MiB / secs_w:.0f} MB/s")
    print(
        "\n| zstd layer | compressed MiB | indexing s | MB/s | restart points "
        "| 64 KiB random read median ms | p90 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, path in (("plain (zstd -3 -T2)", plain), ("seekable 4 MiB frames", seekable)):
        with FileReadAt(path) as ra:
            secs, res = timed(lambda ra=ra: build_zstd_index(ra))  # type: ignore[misc]
            frames = res.frames  # type: ignore[attr-defined]
            reader = ZstdLayerReader(ra, frames)
            lat = random_reads(reader.pread, usize, 40 if len(frames.cstarts) < 4 else 200)
            reader.close()
        print(
            f"| {name} | {path.stat().st_size / MiB:.0f} | {secs:.1f} | {usize / MiB / secs:.0f} "
            f"| {len(frames.cstarts)} | {statistics.median(lat):.1f} | "
            f"{statistics.quantiles(lat, n=10)[-1]:.1f} |"
        )


def bench_indexdb(work: Path, n: int) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(n):
            info = tarfile.TarInfo(f"usr/lib/python3/d{i % 300}/m{i}.py")
            info.size = 10
            tf.addfile(info, io.BytesIO(b"x" * 10))
    blob = work / f"small-{n}.tar"
    blob.write_bytes(buf.getvalue())
    digest = "sha256:" + "ab" * 32
    cache = Path(tempfile.mkdtemp(dir=work))
    with FileReadAt(blob) as ra:
        build_s, _ = timed(lambda: load_or_build(cache, digest, mt.OCI_LAYER, ra, ra.size))
        load_s = min(
            timed(lambda: load_or_build(cache, digest, mt.OCI_LAYER, ra, ra.size))[0]
            for _ in range(5)
        )
    print(
        f"\nindexdb, {n} entries: first build {build_s * 1000:.0f} ms, "
        f"load from cache {load_s * 1000:.1f} ms"
    )


def bench_merge(n: int) -> None:
    layers: list[list[Entry]] = []
    for layer in range(5):
        entries = [Entry(f"d{i % 500}/f{i}", Kind.FILE, size=i, ordinal=i) for i in range(n)]
        entries += [Entry(f"d{i}/.wh.f{i + 500}", Kind.FILE) for i in range(0, 500, 7)]
        layers.append(entries)
        del layer
    secs, tree = timed(lambda: MergedTree.build(layers))
    print(f"\nMergedTree.build: 5 layers x {n} entries in {secs * 1000:.0f} ms ({len(tree)} nodes)")  # type: ignore[arg-type]


def main(work: Path, size_mb: int) -> None:
    """Make (or reuse) the layer under ``work`` and print every table."""
    work.mkdir(parents=True, exist_ok=True)
    tar, gz = work / "layer.tar", work / "layer.tar.gz"
    if not tar.exists():
        secs, n = timed(lambda: make_layer(tar, size_mb * MiB))
        print(f"made {tar} ({n} members) in {secs:.0f}s")
    if not gz.exists():
        with open(gz, "wb") as out:
            subprocess.run(["gzip", "-6", "-c", str(tar)], stdout=out, check=True)
    usize = tar.stat().st_size
    print(
        f"machine: {os.cpu_count()} cores; layer {usize / MiB:.0f} MiB uncompressed, "
        f"gzip {gz.stat().st_size / MiB:.0f} MiB"
    )
    bench_gzip(gz, usize, [1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB])
    bench_rapidgzip(gz, usize)
    bench_inflaters("mixed layer", gz, usize)
    bench_inflaters("float16-like weights", *weights_gz(work, size_mb * MiB))
    bench_zstd(tar, work, usize)
    bench_indexdb(work, 10_000)
    bench_indexdb(work, 100_000)
    bench_merge(20_000)
