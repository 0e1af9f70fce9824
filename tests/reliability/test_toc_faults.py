"""TOC layers under attack: a corrupted chunk, TOCs to refuse.

A zstd:chunked layer (``zstdwrite.write_chunked``, 1 MiB chunks) is served
through its TOC, so every chunk read lazily is checked against the TOC
before its bytes reach the mount: a chunk the registry corrupts (through
``tools.faultproxy``) is EIO on its *first* touch (the plain-tar case of
``test_first_touch_of_a_lazily_indexed_layer_is_unverified`` is still a
known limit), logged once, and the rest of the layer reads right. A TOC
whose digest does not match its annotation, or a layer announcing both a
zstd:chunked and an eStargz TOC, is refused with a log line and the layer
is read as the plain seekable zstd stream it also is.
"""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.toc import TocIndex, load_toc
from r8imfs.engine.codecs.zstdwrite import write_chunked
from r8imfs.engine.readat import BytesReadAt
from r8imfs.oci import mediatypes as mt
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import (
    MiB,
    RawLayer,
    mounted,
    pread_within,
    push_blobs,
    read_checked,
    sha256,
)
from tools.demoimage import tar_of
from tools.faultproxy import Corrupt, FaultProxy

pytestmark = pytest.mark.fuse


@dataclass(frozen=True)
class TocImage:
    ref_path: str  # repo:tag, without the host
    bodies: dict[str, bytes]  # name under src/weights → body
    digest: str  # of the TOC layer
    toc: TocIndex

    def ref(self, host: str) -> str:
        return f"{host}/{self.ref_path}"


def chunked_layer(files: dict[str, bytes]) -> tuple[RawLayer, TocIndex]:
    tar = tar_of({f"src/weights/{name}": body for name, body in files.items()})
    out = io.BytesIO()
    result = write_chunked(io.BytesIO(tar), out, frame_size=MiB)
    blob = out.getvalue()
    toc = load_toc(BytesReadAt(blob), result.annotations)
    assert toc is not None and toc.kind == "zstd:chunked"
    return RawLayer(blob, mt.OCI_LAYER_ZSTD, sha256(tar), annotations=result.annotations), toc


def _base() -> RawLayer:
    return RawLayer(tar_of({"etc": None, "etc/hostname": b"toc\n"}), mt.OCI_LAYER, None, "ADD / /")


@pytest.fixture(scope="module")
def good(registry: RegistryServer) -> TocImage:
    bodies = {"a.bin": os.urandom(6 * MiB + 5), "b.bin": os.urandom(3 * MiB), "c.txt": b"c\n"}
    # never read: the blob must not complete, or the cache would fail it whole
    # (its digest no longer matches) and every read of the layer with it
    bodies["z.bin"] = os.urandom(40 * MiB)
    layer, toc = chunked_layer(bodies)
    push_blobs(f"{registry.host}/rel/toc-good:v1", [_base(), layer])
    return TocImage("rel/toc-good:v1", bodies, sha256(layer.blob), toc)


@pytest.fixture(scope="module")
def hostile(registry: RegistryServer) -> dict[str, bytes]:
    """Two TOC layers to refuse: a wrong TOC digest; both TOC kinds announced."""
    bodies = {"h1.bin": os.urandom(2 * MiB + 1), "h2.bin": os.urandom(MiB + 7)}
    wrong, _ = chunked_layer({"h1.bin": bodies["h1.bin"]})
    assert wrong.annotations is not None
    bad_sum = {**wrong.annotations, tf.MANIFEST_CHECKSUM: "sha256:" + "0" * 64}
    both, _ = chunked_layer({"h2.bin": bodies["h2.bin"]})
    assert both.annotations is not None
    two_kinds = {**both.annotations, tf.STARGZ_TOC_DIGEST: both.annotations[tf.MANIFEST_CHECKSUM]}
    push_blobs(
        f"{registry.host}/rel/toc-hostile:v1",
        [
            _base(),
            RawLayer(wrong.blob, wrong.media_type, wrong.diff_id, annotations=bad_sum),
            RawLayer(both.blob, both.media_type, both.diff_id, annotations=two_kinds),
        ],
    )
    return bodies


def _path(root: Path, name: str) -> Path:
    return root / "src" / "weights" / name


def test_first_touch_of_a_toc_layer_is_verified(
    good: TocImage, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The TOC-layer counterpart of the plain-tar xfail in test_fault_mount.py."""
    a = next(f for f in good.toc.files if f.path == "src/weights/a.bin")
    bad = a.chunks[5]  # bytes 5..6 MiB of a.bin: a decoded block of its own (4..8 MiB)
    assert bad.offset == 5 * MiB
    at = (bad.cstart + bad.cend) // 2
    proxy.set_faults([Corrupt(offset=at, length=8, match=good.digest)])
    body = good.bodies["a.bin"]
    with mounted(good.ref(proxy.host), tmp_path) as m:
        for _ in range(2):  # refused on every touch, never wrong bytes
            got = pread_within(_path(m.rootfs, "a.bin"), 5 * MiB + 100, 4096, random_access=True)
            assert got == errno.EIO
        assert read_checked(_path(m.rootfs, "a.bin"), body, 0, 4 * MiB) == "ok"
        for name in ("b.bin", "c.txt"):
            assert read_checked(_path(m.rootfs, name), good.bodies[name]) == "ok"
        assert read_checked(_path(m.rootfs, "z.bin"), good.bodies["z.bin"], 30 * MiB, MiB) == "ok"
        log = m.log.read_text()
    assert log.count("EIO reading src/weights/a.bin") == 1, log


def test_a_toc_layer_reads_right_without_faults(
    good: TocImage, proxy: FaultProxy, tmp_path: Path
) -> None:
    with mounted(good.ref(proxy.host), tmp_path) as m:
        for name, body in good.bodies.items():
            assert read_checked(_path(m.rootfs, name), body) == "ok"
        log = m.log.read_text()
    assert "TOC refused" not in log and "EIO" not in log


def test_a_hostile_toc_is_refused_and_the_layer_read_as_a_stream(
    hostile: dict[str, bytes], proxy: FaultProxy, tmp_path: Path
) -> None:
    with mounted(f"{proxy.host}/rel/toc-hostile:v1", tmp_path) as m:
        for name, body in hostile.items():
            assert read_checked(_path(m.rootfs, name), body) == "ok"
        log = m.stderr + m.log.read_text()
    refused = [line for line in log.splitlines() if "TOC refused" in line]
    assert len(refused) == 2, log
    assert any("does not match its annotation" in line for line in refused), refused
    assert any("both a zstd:chunked and an eStargz" in line for line in refused), refused
