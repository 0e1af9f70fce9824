"""Several sequential readers and one random reader at once, through a real mount (issue 12).

Plain and seekable-zstd layers are read by ``fetchplan.UnitReader``: each open
file has its own read-ahead stream, GETs and decodes of different files
interleave, and a random reader's reads must not disturb (or be starved by)
the sequential ones. Every byte read is compared with the image's own.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.fuse import Member, MountFactory, make_tar, r8imfs
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer

MiB = 1024 * 1024
FILES = {f"w{i}.bin": 6 * MiB + 1000 * i for i in range(4)}


def _body(name: str, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(name.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 8  # some repetition: zstd has something to do
    return bytes(out[:size])


@pytest.fixture(scope="module")
def bodies() -> dict[str, bytes]:
    return {name: _body(name, size) for name, size in FILES.items()}


@pytest.fixture(scope="module")
def images(registry: RegistryServer, bodies: dict[str, bytes]) -> dict[str, str]:
    """ "plain" pushed uncompressed; "zstd" made by ``r8imfs zstd`` with 512 KiB frames."""
    base = make_tar([Member("etc", "d"), Member("etc/hostname", data=b"x\n")])
    members = [Member("src", "d"), Member("src/weights", "d")]
    members += [Member(f"src/weights/{n}", data=b) for n, b in bodies.items()]
    plain = f"{registry.host}/fuse/concurrent-plain:v1"
    push(
        plain,
        layers=[(base, "base", None), (make_tar(members), "COPY weights", "weights")],
        manifest_type=mt.OCI_MANIFEST,
        compression="none",
    )
    seekable = f"{registry.host}/fuse/concurrent-zstd:v1"
    proc = r8imfs("-q", "zstd", "--frame-size", "512K", plain, seekable, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {"plain": plain, "zstd": seekable}


def _sequential(path: Path, want: bytes, piece: int) -> Callable[[], None]:
    def read() -> None:
        got = bytearray()
        with path.open("rb", buffering=0) as f:
            while chunk := f.read(piece):
                got += chunk
        assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), path.name

    return read


def _random(path: Path, want: bytes, seed: int) -> Callable[[], None]:
    def read() -> None:
        rng = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for _ in range(60):
                size = rng.choice([1, 4096, 65536, 300_000])
                offset = rng.randrange(0, len(want))
                assert os.pread(fd, size, offset) == want[offset : offset + size], offset
        finally:
            os.close(fd)

    return read


def _run_all(jobs: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    return errors


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_concurrent_sequential_readers_and_a_random_reader(
    images: dict[str, str], bodies: dict[str, bytes], mounted: MountFactory, kind: str
) -> None:
    with mounted(images[kind]) as m:
        weights = m.rootfs / "src" / "weights"
        jobs = [
            _sequential(weights / n, bodies[n], 128 * 1024) for n in ("w0.bin", "w1.bin", "w2.bin")
        ]
        jobs.append(_sequential(weights / "w0.bin", bodies["w0.bin"], 1 * MiB))  # same file
        jobs.append(_random(weights / "w3.bin", bodies["w3.bin"], seed=12))  # only this one
        errors = _run_all(jobs)
        assert not errors, (errors, m.log_text())
        assert "EIO" not in m.log_text()
