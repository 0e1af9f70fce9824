"""Frame size of ``r8imfs zstd`` output, and the floors under a lazy zstd read.

    .venv/bin/python tools/bench/frames.py [--mib 1024] [--repeat 3] [--workdir DIR]

1 GiB of float16-like weights (``data.Float16Weights``, the benchmark
image's kind of bytes) is written with ``zstdwrite.write_seekable`` (level
3, 2 threads) at 1, 2, 4 and 8 MiB frames. Per frame size:

- ratio (compressed / uncompressed) and compression time;
- a random 64 KiB read: the compressed bytes it must fetch (the frame, or
  two frames when it straddles a boundary) and the time to decode them
  (``units.decode_zstd`` from memory), over 64 random offsets;
- decoding every frame from memory on 1 and 2 threads (what a sequential
  reader can get from parallel decode).

Floors, for the 4 MiB file: ``curl -o /dev/null`` of it from a local
``docker-registry`` (loopback, page cache), ``zstd -dc`` of it from the page
cache, and the 2-thread parallel decode above. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from r8imfs.engine.codecs.units import UnitTable, decode_zstd, frame_units, seekable_data_end  # noqa: E402
from r8imfs.engine.codecs.zstdindex import read_seek_table  # noqa: E402
from r8imfs.engine.codecs.zstdwrite import write_seekable  # noqa: E402
from r8imfs.engine.readat import BytesReadAt  # noqa: E402
from r8imfs.image.fetchplan import UnitReader  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from r8imfs.registry.upload import upload_stream  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tools.bench.common import KiB, MiB, load_average, note, run  # noqa: E402
from tools.bench.data import Float16Weights  # noqa: E402

FRAMES = (1, 2, 4, 8)
READS = 64
READ = 64 * KiB


def weights(n: int) -> bytes:
    src = Float16Weights(n)
    return b"".join(iter(lambda: src.read(16 * MiB), b""))


def compress(data: bytes, frame: int) -> tuple[bytes, UnitTable, float]:
    out = io.BytesIO()
    start = time.perf_counter()
    write_seekable(io.BytesIO(data), out, frame_size=frame, threads=2, digest_output=False)
    secs = time.perf_counter() - start
    blob = out.getvalue()
    readat = BytesReadAt(blob)
    table = read_seek_table(readat)
    assert table is not None
    return blob, frame_units(table, seekable_data_end(readat)), secs


def random_reads(blob: bytes, units: UnitTable, seed: int = 5) -> tuple[float, list[float]]:
    """Mean compressed bytes per random 64 KiB read, and each read's decode ms."""
    rng = random.Random(seed)
    fetched, times = 0, []
    for _ in range(READS):
        off = rng.randrange(units.uncompressed_size - READ)
        wanted = units.covering(off, off + READ)
        start = time.perf_counter()
        for i in wanted:
            u = units[i]
            fetched += u.csize
            decode_zstd(u, blob[u.cstart : u.cend])
        times.append((time.perf_counter() - start) * 1000)
    return fetched / READS, times


def parallel_decode(blob: bytes, units: UnitTable, threads: int) -> float:
    """Seconds to decode every unit from memory on ``threads`` threads, in order."""
    pieces = [(units[i], blob[units[i].cstart : units[i].cend]) for i in range(len(units))]
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        total = sum(len(out) for out in pool.map(lambda p: decode_zstd(*p), pieces))
        secs = time.perf_counter() - start
    assert total == units.uncompressed_size
    return secs


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def frame_table(data: bytes, repeat: int, keep: dict[int, bytes]) -> list[str]:
    """One row per frame size; decode timings interleaved across sizes, best of ``repeat``
    (the machine is shared: interleaving spreads the other jobs' load over all sizes)."""
    made = {}
    for mib in FRAMES:
        note(f"frames: compressing at {mib} MiB")
        made[mib] = compress(data, mib * MiB)
    best: dict[tuple[int, int], float] = {}
    reads: dict[int, tuple[float, list[float]]] = {}
    for r in range(repeat):
        note(f"frames: decoding, round {r + 1}/{repeat}")
        for mib, (blob, units, _) in made.items():
            for threads in (1, 2):
                secs = parallel_decode(blob, units, threads)
                best[mib, threads] = min(best.get((mib, threads), secs), secs)
            per_read, times = random_reads(blob, units, seed=r)
            old = reads.get(mib)
            reads[mib] = (per_read, times if old is None else old[1] + times)
    rows = [
        "| frame | ratio | compress s | fetched per random 64 KiB read | decode of it, "
        "median ms | p90 ms | decode all, 1 thread MiB/s | 2 threads MiB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mib, (blob, units, csecs) in made.items():
        n = units.uncompressed_size / MiB
        per_read, times = reads[mib]
        rows.append(
            f"| {mib} MiB | {len(blob) / len(data):.2%} | {csecs:.1f} | "
            f"{per_read / MiB:.2f} MiB | {statistics.median(times):.1f} | "
            f"{p90(times):.1f} | {n / best[mib, 1]:,.0f} | {n / best[mib, 2]:,.0f} |"
        )
    keep[4] = made[4][0]
    return rows


async def push_blob(host: str, path: Path) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(4 * MiB):
                yield data

    async with RegistryClient() as client:
        done = await upload_stream(client, parse(f"{host}/bench/blob:x").repository, chunks())
    return done.digest


async def lazy_read(
    host: str, digest: str, units: UnitTable, piece: int, decode: bool = True
) -> float:
    """Seconds for ``fetchplan.UnitReader`` to serve the whole layer over ranged GETs.

    ``piece`` 0: ``iter_range`` (what extract would do); else sequential reads
    of ``piece`` bytes through one ``ReadStream`` (what FUSE asks of a mount,
    minus the kernel). No disk cache, no hashing: the new machinery alone.
    """
    repo = parse(f"{host}/bench/blob:x").repository
    async with RegistryClient() as client:

        async def fetch(start: int, end: int) -> bytes:
            async with client.open_blob(repo, digest, start, end) as stream:
                return b"".join([chunk async for chunk in stream.chunks()])

        async with trio.open_nursery() as nursery:
            reader = UnitReader(units, fetch, decode_zstd if decode else None, nursery)
            begin, total = time.perf_counter(), 0
            if piece == 0:
                async with contextlib.aclosing(reader.iter_range(0, reader.size)) as chunks:
                    async for data in chunks:
                        total += len(data)
            else:
                stream = reader.stream()
                while total < reader.size:
                    total += len(await stream.read(total, piece))
                stream.close()
            secs = time.perf_counter() - begin
            reader.close()
    assert total == units.uncompressed_size or not decode
    return secs


def floors(work: Path, blob: bytes, repeat: int) -> list[str]:
    path = work / "weights.tar.zst"
    path.write_bytes(blob)
    readat = BytesReadAt(blob)
    table = read_seek_table(readat)
    assert table is not None
    units = frame_units(table, seekable_data_end(readat))
    registry = start_registry(work / "registry", "open")
    try:
        digest = trio.run(push_blob, registry.host, path)
        url = f"http://{registry.host}/v2/bench/blob/blobs/{digest}"
        run(["curl", "-sSf", "-o", "/dev/null", url])  # once into the page cache
        curl = [run(["curl", "-sSf", "-o", "/dev/null", url]).secs for _ in range(repeat)]
        note("floors: UnitReader over ranged GETs")
        whole = [trio.run(lazy_read, registry.host, digest, units, 0) for _ in range(repeat)]
        fuse = [trio.run(lazy_read, registry.host, digest, units, 128 * KiB) for _ in range(repeat)]
        gets = [trio.run(lazy_read, registry.host, digest, units, 0, False) for _ in range(repeat)]
    finally:
        registry.stop()
    decode2 = [parallel_decode(blob, units, 2) for _ in range(repeat)]
    zstd = [run(f"zstd -dc {path} > /dev/null").secs for _ in range(repeat)]
    zstd1 = [run(f"zstd -dc -T1 {path} > /dev/null").secs for _ in range(repeat)]
    size = len(blob) / MiB
    return [
        "| floor (1 GiB of weights, 4 MiB frames) | median s (min–max) | MiB/s of blob |",
        "|---|---|---|",
        *(
            f"| {label} | {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f}) | "
            f"{size / statistics.median(v):,.0f} |"
            for label, v in (
                ("curl -o /dev/null from the local registry", curl),
                ("zstd -dc > /dev/null (page cache)", zstd),
                ("zstd -dc -T1 > /dev/null", zstd1),
                ("decode every frame from memory, 2 threads (units.decode_zstd)", decode2),
                ("UnitReader.iter_range, no decode: the ranged GETs alone", gets),
                ("UnitReader.iter_range over ranged GETs (4 in flight, 16 MiB ranges)", whole),
                ("UnitReader, ReadStream reads of 128 KiB (FUSE's shape, no kernel)", fuse),
            )
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="r8imfs-frames-", dir=args.workdir))
    try:
        print(f"load average at start: {load_average()}")
        data = weights(args.mib * MiB)
        keep: dict[int, bytes] = {}
        print("\n".join(frame_table(data, args.repeat, keep)))
        del data
        print()
        print("\n".join(floors(work, keep[4], args.repeat)))
        print(f"\nload average at end: {load_average()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
