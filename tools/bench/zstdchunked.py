"""Issue 13 (standalone; not in ``make bench`` yet): zstd:chunked write cost and TOC load.

    python -m tools.bench.zstdchunked LAYER.tar [--repeat 3]

Measures, on a local tar (no network):
* the writer alone: ``write_seekable`` (the layout before issue 13) against
  ``write_chunked`` (zstd:chunked + seek table), wall and process CPU;
* ``r8imfs zstd``'s pipeline without the registry: ``recompress_file`` from a
  gzip of the same tar (made once next to it as ``LAYER.tar.gz``);
* listing the result: the seek-table index against ``toc.load_toc``, with the
  reads and bytes each needs.
The machine's load changes wall times; CPU seconds compare better there.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from r8imfs.engine.codecs import zstdwrite
from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.codecs.zstdindex import build_zstd_index
from r8imfs.engine.readat import CountingReadAt, FileReadAt
from r8imfs.image.recompress import recompress_file


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def best(run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best wall, best CPU) seconds over ``repeat`` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        c, t = _cpu(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
    return min(walls), min(cpus)


class _Null:
    def write(self, data: bytes) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tar", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tar: Path = args.tar
    mb = tar.stat().st_size / 1e6
    gz = tar.with_name(tar.name + ".gz")
    if not gz.exists():
        with tar.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    for name in ("write_seekable", "write_chunked"):
        fn = getattr(zstdwrite, name)

        def write(fn: Callable[..., object] = fn) -> None:
            with tar.open("rb") as src:
                fn(src, _Null(), threads=4, digest_output=False)

        wall, cpu = best(write, args.repeat)
        print(f"{name:15} {wall:6.2f} s wall ({mb / wall:5.0f} MB/s)  {cpu:6.2f} s CPU")

    def pipeline() -> None:
        with gz.open("rb") as raw:
            recompress_file(raw, "gzip", lambda data: None, threads=4)

    wall, cpu = best(pipeline, args.repeat)
    print(f"{'gzip -> chunked':15} {wall:6.2f} s wall ({mb / wall:5.0f} MB/s)  {cpu:6.2f} s CPU")
    out = tar.with_name(tar.name + ".zst")
    with tar.open("rb") as tar_in, out.open("wb") as zst_out:
        result = zstdwrite.write_chunked(tar_in, zst_out)
    for label, load in (
        ("seek-table index", lambda ra: build_zstd_index(ra)),
        ("TOC", lambda ra: load_toc(ra, result.annotations)),
    ):
        ra = CountingReadAt(FileReadAt(out))
        t = time.perf_counter()
        load(ra)
        print(
            f"{label:16} {time.perf_counter() - t:6.2f} s, {ra.calls} reads, "
            f"{ra.bytes_read / ra.size:7.2%} of the blob's bytes"
        )


if __name__ == "__main__":
    main()
