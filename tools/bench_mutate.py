"""Measure the writing commands against issue 6's targets (affix, remix, zstd).

    .venv/bin/python tools/bench_mutate.py [--base-mb 1200] [--affix-mb 100] [--zstd-mb 1024]

Starts a local docker-registry, pushes a base image of ``--base-mb`` of
incompressible layers, then measures, printing one Markdown table:

* ``affix`` of a ``--affix-mb`` tar through the counting proxy: bytes
  downloaded (target ≤ 64 KiB) and uploaded (target ≤ 1.01 × the new
  compressed layer + 64 KiB);
* ``remix`` of that weights layer onto the base: bytes moved (≤ 100 KiB);
* ``zstd`` of a ``--zstd-mb`` gzip layer (about 2:1 compressible): wall
  time against ``gzip -dc layer | zstd -T2 -3 > out`` on the same file
  (target ≥ 0.7 × its throughput) and peak RSS (target ≤ 300 MB).

Not a test: nothing here asserts; it reports.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from counting_proxy import start_counting_proxy  # noqa: E402
from registry_server import start_registry  # noqa: E402

from r8imfs.oci import mediatypes as mt  # noqa: E402
from r8imfs.oci import mutate  # noqa: E402
from r8imfs.oci.manifest import Descriptor  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from r8imfs.registry.push import push_manifest  # noqa: E402
from r8imfs.registry.upload import upload_stream  # noqa: E402

MiB = 1024 * 1024
KiB = 1024
R8IMFS = [sys.executable, "-m", "r8imfs", "-q"]
_ALPHABET = bytes.maketrans(bytes(range(256)), (b"etaoinshrdlu cmfw" * 16)[:256])


def tar_stream(name: str, size: int, compressible: bool) -> Iterator[bytes]:
    """A one-file tar of ``size`` bytes, made on the fly."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, 1_700_000_000
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    left = size
    while left:
        n = min(left, 4 * MiB)
        data = os.urandom(n)
        yield data.translate(_ALPHABET) if compressible else data
        left -= n
    pad = -size % 512
    yield b"\0" * (pad + 1024)


def write_layer(
    path: Path, size: int, compressible: bool, member: str | None = None
) -> tuple[str, Path]:
    """``path`` (tar) and ``path.gz`` (gzip -1); returns the diff_id."""
    h = hashlib.sha256()
    gz = path.with_suffix(".tar.gz")
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("wb") as raw, gz.open("wb") as out:
        for piece in tar_stream(member or path.stem, size, compressible):
            h.update(piece)
            raw.write(piece)
            out.write(deflate.compress(piece))
        out.write(deflate.flush())
    return "sha256:" + h.hexdigest(), gz


async def push_layers(ref: str, layers: list[tuple[Path, str]]) -> None:
    parsed = parse(ref)

    async def body(path: Path) -> AsyncIterator[bytes]:
        with path.open("rb") as f:
            while data := f.read(MiB):
                yield data

    async with RegistryClient() as client:
        news = []
        for gz, diff_id in layers:
            up = await upload_stream(client, parsed.repository, body(gz))
            desc = Descriptor(mt.OCI_LAYER_GZIP, up.digest, up.size)
            news.append(mutate.NewLayer(desc, diff_id, f"ADD {gz.name} /", None))
        config = mutate.append_layers(mutate.new_config(), news)
        await push_manifest(client, parsed, mt.OCI_MANIFEST, config, [n.descriptor for n in news])


def timed(fn: Callable[[], subprocess.CompletedProcess[bytes]]) -> tuple[float, str]:
    start = time.monotonic()
    proc = fn()
    if proc.returncode:
        raise SystemExit(proc.stderr.decode())
    return time.monotonic() - start, proc.stdout.decode()


def r8imfs(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*R8IMFS, *args], capture_output=True, check=False)


def bench_affix_remix(host: str, work: Path, base_mb: int, affix_mb: int) -> list[str]:
    rows = []
    layers = []
    per = max(1, base_mb // 3)
    for i in range(3):
        diff_id, gz = write_layer(work / f"base{i}.tar", per * MiB, compressible=False)
        (work / f"base{i}.tar").unlink()
        layers.append((gz, diff_id))
    trio.run(push_layers, f"{host}/bench/base:v1", layers)
    weights = work / "weights.tar"
    write_layer(weights, affix_mb * MiB, compressible=False, member="src/weights/model.bin")
    proxy = start_counting_proxy(host)
    try:
        secs, out = timed(
            lambda: r8imfs("affix", "--base", f"{proxy.host}/bench/base:v1",
                           "--dest", f"{proxy.host}/bench/out:v1", "--tar", str(weights))
        )
        new_layer = max(e.request_bytes for e in proxy.exchanges)
        rows.append(
            f"| affix {affix_mb} MiB onto {3 * per} MiB | {secs:.1f} s | "
            f"down {proxy.downloaded / KiB:.1f} KiB (≤ 64) | up {proxy.uploaded / MiB:.2f} MiB "
            f"= {proxy.uploaded / new_layer:.4f} × layer (≤ 1.01 × + 64 KiB) |"
        )
        proxy.reset()
        secs, out = timed(
            lambda: r8imfs("remix", "--base", f"{proxy.host}/bench/base:v1",
                           "--weights", f"{proxy.host}/bench/out:v1",
                           "--dest", f"{proxy.host}/bench/remix:v1")
        )
        moved = proxy.downloaded + proxy.uploaded
        rows.append(f"| remix, one registry | {secs:.1f} s | moved {moved / KiB:.1f} KiB "
                    "(≤ 100) | |")
    finally:
        proxy.stop()
    return rows


def bench_zstd(host: str, work: Path, zstd_mb: int) -> list[str]:
    tar = work / "big.tar"
    diff_id, gz = write_layer(tar, zstd_mb * MiB, compressible=True)
    trio.run(push_layers, f"{host}/bench/big:v1", [(gz, diff_id)])
    start = time.monotonic()
    subprocess.run(f"gzip -dc {gz} | zstd -T2 -3 -q > {work / 'out.zst'}", shell=True, check=True)
    local = time.monotonic() - start
    start = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *R8IMFS, "zstd", f"{host}/bench/big:v1", f"{host}/bench/big:z"],
        capture_output=True, check=True,
    )
    secs = time.monotonic() - start
    found = re.search(rb"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(found[1]) if found else 0
    size = tar.stat().st_size
    return [
        f"| zstd of a {zstd_mb} MiB layer | {secs:.1f} s ({size / secs / 1e6:.0f} MB/s) | "
        f"local `gzip -dc \\| zstd -T2 -3`: {local:.1f} s → {local / secs:.2f} × (≥ 0.7) | "
        f"peak RSS {rss / 1024:.0f} MiB (≤ 300) |"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-mb", type=int, default=1200)
    parser.add_argument("--affix-mb", type=int, default=100)
    parser.add_argument("--zstd-mb", type=int, default=1024)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="r8bench-mutate-", dir=args.workdir))
    registry = start_registry(work / "registry", "open")
    try:
        rows = bench_affix_remix(registry.host, work, args.base_mb, args.affix_mb)
        rows += bench_zstd(registry.host, work, args.zstd_mb)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} CPUs, registry on loopback\n")
    print("| run | time | bytes / ratio | notes |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
