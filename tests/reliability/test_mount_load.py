"""Load: 16 readers on one mount, random ranges of different files, every byte checked.

The image holds one layer of each kind (gzip, seekable zstd, plain tar)
with several files each. Sixteen threads read random ranges (a byte to
256 KiB) of their own file for ``DURATION`` seconds (8 by default, 30 with
``R8IMFS_LONG=1``), through a fault proxy that drops every 4th blob body
part-way (so resumes happen under load), comparing every byte with the
source. Every few reads a reader drops its file from the page cache, so
the daemon keeps serving. Meanwhile the daemon's resident memory is sampled;
then the mount must unmount cleanly and its daemon exit.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.oci import mediatypes as mt
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import (
    MiB,
    RawLayer,
    is_mounted,
    mounted,
    push_blobs,
    rss_kib,
    run,
    sha256,
)
from tools.demoimage import tar_of
from tools.faultproxy import DropBody, FaultProxy

pytestmark = pytest.mark.fuse

READERS = 16
DURATION = 30.0 if os.environ.get("R8IMFS_LONG") == "1" else 8.0
RSS_LIMIT_KIB = 400 * 1024
FILES_PER_LAYER = 6
FILE_SIZE = 3 * MiB


def _seekable(tar: bytes) -> bytes:
    out = io.BytesIO()
    write_seekable(io.BytesIO(tar), out, frame_size=MiB)
    return out.getvalue()


@pytest.fixture(scope="module")
def load_image(registry: RegistryServer) -> tuple[str, dict[str, bytes]]:
    files: dict[str, bytes] = {}
    layers = []
    kinds: list[tuple[str, str, Callable[[bytes], bytes]]] = [
        ("gz", mt.OCI_LAYER_GZIP, lambda t: gzip.compress(t, 1)),
        ("zs", mt.OCI_LAYER_ZSTD, _seekable),
        ("pl", mt.OCI_LAYER, lambda t: t),
    ]
    for kind, media_type, compress in kinds:
        mine = {f"data/{kind}/{i}.bin": os.urandom(FILE_SIZE) for i in range(FILES_PER_LAYER)}
        tar = tar_of({"data": None, f"data/{kind}": None, **mine})
        layers.append(RawLayer(compress(tar), media_type, sha256(tar), f"ADD {kind}", None))
        files.update(mine)
    ref = f"{registry.host}/rel/load:v1"
    push_blobs(ref, layers)
    return "rel/load:v1", files


class Reader(threading.Thread):
    def __init__(self, path: Path, body: bytes, seed: int, until: float) -> None:
        super().__init__(daemon=True)
        self.path, self.body, self.until = path, body, until
        self.rng = random.Random(seed)
        self.reads = self.bytes = 0
        self.problem: str | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.problem = f"open: {exc}"
            return
        try:
            while time.monotonic() < self.until and self.problem is None:
                self._one(fd)
        finally:
            os.close(fd)

    def _one(self, fd: int) -> None:
        if self.reads % 8 == 0:  # drop this file's page cache: the daemon must serve again
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        offset = self.rng.randrange(len(self.body))
        size = self.rng.randint(1, 256 * 1024)
        try:
            got = os.pread(fd, size, offset)
        except OSError as exc:
            self.problem = f"pread({offset}, {size}): {exc}"
            return
        if got != self.body[offset : offset + size]:
            self.problem = f"wrong bytes at {offset}+{size} ({len(got)} returned)"
        self.reads += 1
        self.bytes += len(got)


def test_sixteen_readers_random_ranges(
    load_image: tuple[str, dict[str, bytes]], proxy: FaultProxy, tmp_path: Path
) -> None:
    repo_tag, files = load_image
    proxy.set_faults([DropBody(after=512 * 1024, every=4)])
    with mounted(f"{proxy.host}/{repo_tag}", tmp_path, name="load") as m:
        pid = m.pid()
        assert pid is not None
        names = sorted(files)
        until = time.monotonic() + DURATION
        readers = [
            Reader(m.rootfs / names[i % len(names)], files[names[i % len(names)]], i, until)
            for i in range(READERS)
        ]
        for r in readers:
            r.start()
        peak = 0
        while any(r.is_alive() for r in readers) and time.monotonic() < until + 60:
            peak = max(peak, rss_kib(pid))
            time.sleep(0.25)
        for r in readers:
            r.join(timeout=5)
        assert not any(r.is_alive() for r in readers), "a reader hangs"
        problems = [f"{r.path.name}: {r.problem}" for r in readers if r.problem]
        assert problems == []
        assert all(r.reads > 0 for r in readers)
        assert peak < RSS_LIMIT_KIB, f"daemon RSS peaked at {peak // 1024} MiB"
        done = run("umount", str(m.path), env=m.env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "the daemon outlived its mount"
        total = sum(r.bytes for r in readers)
        print(
            f"\n{sum(r.reads for r in readers)} reads, {total // MiB} MiB verified, "
            f"peak RSS {peak // 1024} MiB, {sum(1 for x in proxy.requests if x.faults)} drops"
        )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
