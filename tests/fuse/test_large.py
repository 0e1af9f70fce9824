"""A large file copies out of a mount with ``cp``, byte for byte.

40 MiB of random bytes (incompressible, like weights) in a gzip layer pushed
by r8imfs, and the same image recompressed to zstd by skopeo (a plain zstd
stream, as containers/image writes it): ``cp`` from the mount gives the
file's sha256 every time, read from decoded copies or through checkpoints.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.fuse import CMD_TIMEOUT, Member, MountFactory, make_tar
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer

SIZE = 40 * 1024 * 1024
WEIGHTS = "src/weights/model.safetensors"


@pytest.fixture(scope="module")
def weights() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture(scope="module")
def gzip_image(registry: RegistryServer, weights: bytes) -> str:
    ref = f"{registry.host}/fuse/large-gzip:v1"
    base = make_tar([Member("etc", "d"), Member("etc/hostname", data=b"large\n")])
    layer = make_tar(
        [Member("src", "d"), Member("src/weights", "d"), Member(WEIGHTS, data=weights)]
    )
    push(
        ref,
        layers=[(base, "base", None), (layer, "COPY weights # weights", "weights")],
        manifest_type=mt.DOCKER_MANIFEST,
        compression="gzip",
    )
    return ref


def _copy_out(mountpoint: Path, dest: Path) -> str:
    subprocess.run(
        ["cp", str(mountpoint / "rootfs" / WEIGHTS), str(dest)],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    return hashlib.sha256(dest.read_bytes()).hexdigest()


@pytest.mark.parametrize("decoded", [True, False], ids=["decoded-copy", "checkpoints"])
def test_cp_of_a_large_gzip_file(
    gzip_image: str, weights: bytes, mounted: MountFactory, tmp_path: Path, decoded: bool
) -> None:
    extra = () if decoded else ("--no-decoded-copies",)
    with mounted(gzip_image, *extra) as m:
        assert _copy_out(m.path, tmp_path / "out.bin") == hashlib.sha256(weights).hexdigest()
        copies = list(m.cache_dir.glob("decoded/sha256/*.tar"))
        blobs = list(m.cache_dir.glob("blobs/sha256/*.data"))
    if decoded:  # both gzip layers kept what their indexing pass inflated
        assert len(copies) == 2
        assert max(c.stat().st_size for c in copies) > SIZE
    else:  # read through zran checkpoints from the cached blob
        assert copies == []
        assert max(b.stat().st_blocks * 512 for b in blobs) >= SIZE


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_cp_of_a_large_zstd_file_recompressed_by_skopeo(
    gzip_image: str, registry: RegistryServer, weights: bytes, mounted: MountFactory, tmp_path: Path
) -> None:
    zstd_ref = f"{registry.host}/fuse/large-zstd:v1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
            "--format",
            "oci",
            f"docker://{gzip_image}",
            f"docker://{zstd_ref}",
        ],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    with mounted(zstd_ref) as m:
        manifest = (m.path / "manifest.json").read_text()
        assert mt.OCI_LAYER_ZSTD in manifest
        assert _copy_out(m.path, tmp_path / "out.bin") == hashlib.sha256(weights).hexdigest()
        # no seek table: indexing decoded the layers whole, and kept what it decoded
        copies = list(m.cache_dir.glob("decoded/sha256/*.tar"))
    assert len(copies) == 2
    assert max(c.stat().st_size for c in copies) > SIZE


def _cached(path: Path) -> int:
    """Bytes of ``path`` in the page cache, by util-linux's fincore (mincore(2))."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux's fincore is missing")
def test_a_file_copied_once_is_dropped_behind_the_copy_and_kept_when_read_again(
    gzip_image: str, weights: bytes, mounted: MountFactory, tmp_path: Path
) -> None:
    want = hashlib.sha256(weights).hexdigest()
    with mounted(gzip_image) as m:
        src = m.path / "rootfs" / WEIGHTS
        assert _copy_out(m.path, tmp_path / "1.bin") == want
        # what the copy read more than LAG (8 MiB) behind itself, and 32 MiB
        # into the file, left the page cache: 24 of the 40 MiB
        first = _cached(src)
        assert first <= SIZE // 2, first
        # a second copy asks again for the dropped pages: right bytes, and kept
        assert _copy_out(m.path, tmp_path / "2.bin") == want
        second = _cached(src)
        assert second >= SIZE * 3 // 4, second
        assert _copy_out(m.path, tmp_path / "3.bin") == want


def test_a_mapped_file_read_twice_through_drop_behind_gives_its_bytes(
    gzip_image: str, weights: bytes, mounted: MountFactory
) -> None:
    """A loader that maps the file (safetensors does) and walks it twice: the
    first pass is dropped behind the walk, mapped pages included, and the
    second faults them in again, with the right bytes."""
    want = hashlib.sha256(weights).hexdigest()
    with (
        mounted(gzip_image) as m,
        open(m.path / "rootfs" / WEIGHTS, "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
    ):
        for walk in range(2):
            digest = hashlib.sha256()
            for off in range(0, SIZE, 1024 * 1024):  # page faults, in order
                digest.update(mapped[off : off + 1024 * 1024])
            assert digest.hexdigest() == want
            if walk == 0 and shutil.which("fincore"):  # the first walk was dropped behind
                assert _cached(m.path / "rootfs" / WEIGHTS) <= SIZE // 2


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux's fincore is missing")
def test_keep_cache_keeps_every_page(
    gzip_image: str, weights: bytes, mounted: MountFactory, tmp_path: Path
) -> None:
    with mounted(gzip_image, "--keep-cache") as m:
        assert _copy_out(m.path, tmp_path / "1.bin") == hashlib.sha256(weights).hexdigest()
        cached = _cached(m.path / "rootfs" / WEIGHTS)
        assert cached >= SIZE * 3 // 4, cached  # (all of it, unless the kernel reclaims)
