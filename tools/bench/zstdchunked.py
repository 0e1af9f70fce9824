"""Issue 13 (standalone; not in ``make bench`` yet): zstd:chunked write cost and TOC load.

    python -m tools.bench.zstdchunked LAYER.tar [LAYER.tar ...] [--repeat 5]
        [--rev 39ae0f4] [--rev main] [--threads 2] [--level 3]

For each tar (no network), A/B between this tree and each ``--rev`` (that
revision's ``r8imfs/`` unpacked with ``git archive``; 39ae0f4 is the seekable
writer from before issue 13), runs interleaved, each in a fresh process:

* ``writer``: the writer alone on the tar, into a sink (``write_chunked``
  here; ``write_seekable`` in a tree that has no ``write_chunked``);
* ``stream``: ``r8imfs zstd``'s pipeline without the registry:
  ``recompress_stream`` on trio from a gzip of the tar (made once next to it
  as ``LAYER.tar.gz``), each output piece crossing to trio as it would to the
  upload (the digests are taken before the clock starts).

Medians of wall and process CPU seconds (all threads: ``getrusage``), both
per GiB of tar, and the output size. The machine's load changes wall times
much more than CPU times: compare CPU, and walls only of runs side by side.
Then listing this tree's output: the seek-table index against
``toc.load_toc``, with the reads and bytes each needs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast

import trio

REPO = Path(__file__).resolve().parents[2]
GiB = 1 << 30


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Sink:
    size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def child(mode: str, path: str, threads: int, level: int) -> dict[str, float]:
    """One run in this process, with ``r8imfs`` from the tree in ``sys.path[0]``."""
    sink = _Sink()
    if mode == "writer":
        try:
            from r8imfs.engine.codecs import zstdwrite
        except ImportError:  # the layout before the engine/ move
            from r8imfs.archive import zstdwrite  # type: ignore[no-redef]
        fn = getattr(zstdwrite, "write_chunked", None) or zstdwrite.write_seekable
        cpu, wall = _cpu(), time.perf_counter()
        with open(path, "rb") as src:
            fn(src, cast(IO[bytes], sink), threads=threads, level=level, digest_output=False)
    else:
        raw = Path(path).read_bytes()
        digests = _sha256(Path(path)), _sha256(Path(path.removesuffix(".gz")))
        cpu, wall = _cpu(), time.perf_counter()
        sink.size = trio.run(_stream, raw, digests, threads, level)
    return {"wall": time.perf_counter() - wall, "cpu": _cpu() - cpu, "size": sink.size}


async def _stream(raw: bytes, digests: tuple[str, str], threads: int, level: int) -> int:
    """``recompress_stream`` as ``r8imfs zstd`` runs it, less HTTP: 1 MiB pieces in,
    each output piece through a 2-deep channel that a task drains (the upload)."""
    try:
        from r8imfs.image.recompress import recompress_stream
    except ImportError:  # the layout before the engine/ move
        from r8imfs.archive.recompress import recompress_stream  # type: ignore[no-redef]
    size = 0
    send, recv = trio.open_memory_channel[bytes](2)

    async def source() -> AsyncIterator[bytes]:
        for at in range(0, len(raw), 1 << 20):
            yield raw[at : at + (1 << 20)]
            await trio.lowlevel.checkpoint()

    async def drain() -> None:
        nonlocal size
        async for data in recv:
            size += len(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        async with send:
            await recompress_stream(
                source(),
                "gzip",
                send.send,
                expected_digest=digests[0],
                expected_diff_id=digests[1],
                level=level,
                threads=threads,
            )
    return size


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def unpack(rev: str, work: Path) -> Path:
    dest = work / rev.replace("/", "_")
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "r8imfs"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_in(tree: Path, mode: str, path: Path, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, "-m", "tools.bench.zstdchunked", "--child", mode, str(path)]
    argv += ["--tree", str(tree), "--threads", str(args.threads), "--level", str(args.level)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def ab(tar: Path, trees: dict[str, Path], args: argparse.Namespace) -> None:
    gib = tar.stat().st_size / GiB
    gz = tar.with_name(tar.name + ".gz")
    if not gz.exists():
        with tar.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    for mode, path in (("writer", tar), ("stream", gz)):
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                runs[name].append(run_in(tree, mode, path, args))
        print(f"\n{tar.name}, {mode}, {gib * 1024:.0f} MiB of tar, load {os.getloadavg()[0]:.1f}")
        base = statistics.median(r["wall"] for r in runs[next(iter(trees))])
        for name, rs in runs.items():
            walls = " ".join(f"{r['wall']:.2f}" for r in rs)
            wall = statistics.median(r["wall"] for r in rs)
            cpu = statistics.median(r["cpu"] for r in rs)
            print(
                f"  {name:12} wall {wall / gib:6.2f} s/GiB  CPU {cpu / gib:6.2f} s/GiB  "
                f"size {rs[0]['size'] / 1e6:8.2f} MB  throughput x{base / wall:.2f} "
                f"(walls {walls})",
                flush=True,
            )


def listing(tar: Path) -> None:
    from r8imfs.engine.codecs import zstdwrite
    from r8imfs.engine.codecs.toc import load_toc
    from r8imfs.engine.codecs.zstdindex import build_zstd_index
    from r8imfs.engine.readat import CountingReadAt, FileReadAt

    out = tar.with_name(tar.name + ".zst")
    with tar.open("rb") as tar_in, out.open("wb") as zst_out:
        result = zstdwrite.write_chunked(tar_in, zst_out)
    loads: dict[str, Any] = {
        "seek-table index": build_zstd_index,
        "TOC": lambda ra: load_toc(ra, result.annotations),
    }
    for label, load in loads.items():
        ra = CountingReadAt(FileReadAt(out))
        t = time.perf_counter()
        load(ra)
        print(
            f"{label:16} {time.perf_counter() - t:6.2f} s, {ra.calls} reads, "
            f"{ra.bytes_read / ra.size:7.2%} of the blob's bytes"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tar", type=Path, nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rev", action="append", default=None, help="default: 39ae0f4")
    parser.add_argument("--threads", type=int, default=2, help="as ZstdOptions on 2 cores")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--child", choices=("writer", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, args.tree)  # its r8imfs before this one
        print(json.dumps(child(args.child, str(args.tar[0]), args.threads, args.level)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-zstdchunked-") as tmp:
        trees = {rev: unpack(rev, Path(tmp)) for rev in args.rev or ["39ae0f4"]}
        trees["this tree"] = REPO
        for tar in args.tar:
            ab(tar, trees, args)
    for tar in args.tar:
        listing(tar)


if __name__ == "__main__":
    main()
