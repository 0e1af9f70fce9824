"""SOCI engine figures: zTOC build speed and parallel span inflate, no registry.

    .venv/bin/python -m tools.bench.soci [--size-mib 512] [--workers 1,2,4]

Makes a gzip (-6) layer of float16-like weights plus a few thousand small
files in a temporary directory, then times: the one-pass zTOC build
(checkpoints + span digests + TOC), a whole-layer read through ``SociLayer``
with 1..N span workers (fetch from a local file, sha256 each span, inflate
with libz), and plain ``gzip -dc`` for scale. Prints a small table; nothing
here is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from r8imfs.engine.codecs import socireader, ztoc, ztocbuild
from r8imfs.engine.readat import FileReadAt
from tools.bench.common import MiB
from tools.bench.data import Float16Weights


def make(path: Path, size: int) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for n in range(3000):
            data = b"# small file %d\n" % n * (n % 50 + 1)
            info = tarfile.TarInfo(f"usr/lib/d{n % 40}/f{n}.py")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("src/weights/model.safetensors")
        info.size = size
        tf.addfile(info, Float16Weights(size))
    subprocess.run(["gzip", "-6", "-n", str(path)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--workers", default="1,2,4")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gz = Path(tmp) / "layer.tar.gz"
        make(gz.with_suffix(""), args.size_mib * MiB)
        size = gz.stat().st_size
        t = time.perf_counter()
        with gz.open("rb") as f:
            z = ztocbuild.build_gzip(f)
        build = time.perf_counter() - t
        data = ztoc.encode(z)
        usize = z.uncompressed_archive_size
        print(f"layer {size / MiB:.0f} MiB gzip, {usize / MiB:.0f} MiB tar")
        print(
            f"zTOC build: {build:.2f} s ({usize / MiB / build:.0f} MiB/s of tar); "
            f"zTOC {len(data) / MiB:.2f} MiB, {z.max_span_id + 1} spans, {len(z.files)} files"
        )
        t = time.perf_counter()
        subprocess.run(f"gzip -dc {gz} > /dev/null", shell=True, check=True)
        plain = time.perf_counter() - t
        print(f"gzip -dc: {plain:.2f} s")
        for workers in (int(w) for w in args.workers.split(",")):
            with (
                FileReadAt(gz) as blob,
                socireader.SociLayer(z, blob, workers=workers, cache_spans=2 * workers) as reader,
            ):
                t = time.perf_counter()
                step = 64 * MiB
                for off in range(0, usize, step):
                    reader.pread(off, step)
                took = time.perf_counter() - t
            print(
                f"SociLayer read, {workers} worker(s): {took:.2f} s "
                f"({usize / MiB / took:.0f} MiB/s, {plain / took:.2f}x gzip -dc)"
            )


if __name__ == "__main__":
    main()
