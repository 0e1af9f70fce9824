"""In-process A/B of the lazy read path, before wiring (issue 12).

    .venv/bin/python tools/bench/lazyread.py [--size-scale 1.0] [--repeat 3]

Builds the benchmark image, converts it with ``r8imfs zstd`` (seekable),
then, in this process and without FUSE, reads ``src/weights/model.bin``
sequentially in 128 KiB pieces (FUSE's request size) from a cold blob cache:

``today``
    ``ImageFiles.read`` (``DecodedBlocks`` over the ``ZstdLayerReader``
    cursors, in worker threads, reading through ``SyncBlobFile``);
``unitreader``
    ``fetchplan.UnitReader`` over the same layer: units from the layer's
    frame table (``units.units_for_layer``), fetched through the same
    ``BlobReader.read`` (its disk cache and hashing included), decoded on
    ``run_cpu`` threads, read through one ``ReadStream``;
``direct``
    the same ``UnitReader``, its fetcher a plain ranged GET through the
    registry client (no disk cache, no hashing): what a blob-cache range
    read that answers from the GET's own bytes could approach;
``behind``
    as ``direct``, and each fetched range is then stored into the blob
    cache in the background (``BlobReader._store``: ``pwrite``, present
    ranges, the hash frontier that verifies the blob): a prototype of that
    range read, through a private method (bench only; drop this path when
    the blob cache grows the real one);

plus scattered reads: 8 reads of 64 KiB spread over the file, each from a
cold cache, with the bytes the blob cache fetched for them. The two paths
run interleaved, a fresh cache directory each time. Prints a table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from r8imfs.cache.blobcache import BlobCache  # noqa: E402
from r8imfs.engine.codecs.units import units_for_layer  # noqa: E402
from r8imfs.engine.codecs.zstdindex import ZstdLayerReader  # noqa: E402
from r8imfs.engine.merged import Node  # noqa: E402
from r8imfs.image.fetchplan import ReadStream, UnitReader  # noqa: E402
from r8imfs.image.image import ImageFiles  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tools.bench.common import R8IMFS, KiB, MiB, load_average, note, run  # noqa: E402
from tools.bench.context import Bench, child_env  # noqa: E402
from tools.bench.run import build_image  # noqa: E402

PIECE = 128 * KiB
READS = 8
Reader = Callable[[Node, int, int], Awaitable[bytes]]


CLIENT: list[RegistryClient] = []  # the client of the run in progress (for ``direct``)


async def with_files(
    ref: str, cache_dir: Path, body: Callable[[ImageFiles, BlobCache, Node], Awaitable[float]]
) -> float:
    async with RegistryClient() as client:
        CLIENT[:] = [client]
        reference = parse(ref)
        image = await client.resolve(reference)
        async with BlobCache(cache_dir) as cache:
            files = await ImageFiles.open(
                client,
                reference.repository,
                image.manifest,
                image.config.raw,
                cache,
                cache_dir,
                decoded_copies=False,
            )
            try:
                node = files.rootfs.lookup("src/weights/model.bin")
                assert node is not None
                return await body(files, cache, node)
            finally:
                await files.aclose()


def unit_reader(files: ImageFiles, node: Node, nursery: trio.Nursery, new: str) -> UnitReader:
    layer = files.layers[node.layer]
    assert isinstance(layer.reader, ZstdLayerReader)
    made = units_for_layer(
        "zstd", layer.reader.frames.to_bytes(), layer.blob.size, layer.reader.size
    )
    assert made is not None
    blob = layer.blob

    async def direct(start: int, end: int) -> bytes:
        async with CLIENT[0].open_blob(blob.repo, blob.digest, start, end) as stream:
            return b"".join([chunk async for chunk in stream.chunks()])

    async def cached(start: int, end: int) -> bytes:
        return await blob.read(start, end - start)

    async def behind(start: int, end: int) -> bytes:
        data = await direct(start, end)
        nursery.start_soon(blob._store, start, bytearray(data))  # noqa: SLF001
        return data

    fetch = {"direct": direct, "behind": behind}.get(new, cached)
    return UnitReader(made[0], fetch, made[1], nursery, key=node.layer)


async def sequential(files: ImageFiles, cache: BlobCache, node: Node, new: str) -> float:
    size, pos, start = node.entry.size, 0, time.perf_counter()
    if not new:
        while pos < size:
            pos += len(await files.read(node, pos, PIECE))
        return time.perf_counter() - start
    async with trio.open_nursery() as nursery:
        reader = unit_reader(files, node, nursery, new)
        stream = ReadStream(reader, 0)
        base = node.entry.data_offset
        while pos < size:
            pos += len(await stream.read(base + pos, min(PIECE, size - pos)))
        stream.close()
        reader.close()
    return time.perf_counter() - start


async def scattered(files: ImageFiles, cache: BlobCache, node: Node, new: str) -> float:
    """Blob bytes fetched per read (the mount's index reads done before counting)."""
    size = node.entry.size
    before = cache.bytes_fetched
    async with trio.open_nursery() as nursery:
        reader = unit_reader(files, node, nursery, new) if new else None
        for i in range(READS):
            off = (size * i // READS + size // (3 * READS)) // 4096 * 4096
            if reader is None:
                data = await files.read(node, off, 64 * KiB)
            else:
                data = await reader.read(node.entry.data_offset + off, 64 * KiB)
            assert len(data) == 64 * KiB
        if reader is not None:
            reader.close()
        await trio.sleep(0.5)  # let read-ahead that was started land, and count it
    if new in ("direct", "behind"):
        return reader.bytes_fetched / READS if reader is not None else 0.0
    return (cache.bytes_fetched - before) / READS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-scale", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="r8imfs-lazyread-"))
    registry = start_registry(work / "registry", "open")
    results: dict[str, list[float]] = {}
    try:
        img = build_image(work, registry.host, args.size_scale)
        b = Bench(work, img, args.repeat, child_env(work))
        ref = f"{img.host}/bench/model:zstd"
        run([*R8IMFS, "zstd", img.ref, ref], env=b.env)
        print(f"load average before: {load_average()}")
        for r in range(args.repeat):
            for new in ("", "unitreader", "direct", "behind"):
                name = new or "today"
                note(f"{name} {r + 1}/{args.repeat}")
                for kind, fn in (("seq", sequential), ("scatter", scattered)):
                    cache = b.scratch("cache")
                    got = trio.run(
                        with_files, ref, cache, lambda f, c, n, fn=fn, new=new: fn(f, c, n, new)
                    )
                    results.setdefault(f"{name} {kind}", []).append(got)
        print(f"load average after: {load_average()}")
        mb = img.model_bytes / MiB
        print(
            "| path | sequential 128 KiB reads, cold: s (min–max) | MiB/s | "
            "fetched per scattered 64 KiB read |\n|---|---|---|---|"
        )
        for name in ("today", "unitreader", "direct", "behind"):
            seq, sc = results[f"{name} seq"], results[f"{name} scatter"]
            med = statistics.median(seq)
            print(
                f"| {name} | {med:.2f} ({min(seq):.2f}–{max(seq):.2f}) | {mb / med:,.0f} | "
                f"{statistics.median(sc) / MiB:.1f} MiB |"
            )
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
