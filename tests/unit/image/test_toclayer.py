"""``image.toclayer``: choosing a TOC layer, reading its TOC with exact ranges, refusing one.

One layer in memory (``zstdwrite.write_chunked``), a fake registry answering
ranged GETs over its bytes (``FakeClient`` from the blob cache's tests).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from r8imfs import _threads
from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.zstdwrite import write_chunked
from r8imfs.engine.readat import BytesReadAt, CountingReadAt, read_entry
from r8imfs.errors import RangeUnsupported
from r8imfs.image.toclayer import RangeGets, load_record, open_toc_layer
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import Repository
from tests.unit.cache.test_blobcache import FakeClient
from tools.demoimage import tar_of

MiB = 1024 * 1024
REPO = Repository("registry.test", "toc/unit")
BODIES = {"a.bin": os.urandom(3 * MiB + 1), "b.txt": b"b\n"}


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, dict[str, str]]:
    out = io.BytesIO()
    tar = tar_of({f"w/{k}": v for k, v in BODIES.items()})
    result = write_chunked(io.BytesIO(tar), out, frame_size=MiB)
    return out.getvalue(), result.annotations


def _toc_range(annotations: dict[str, str]) -> tuple[int, int]:
    offset, clen, *_ = tf.parse_position(annotations[tf.MANIFEST_POSITION], 4)
    return offset, offset + clen


def _desc(blob: bytes, annotations: dict[str, str] | None) -> Descriptor:
    return Descriptor(mt.OCI_LAYER_ZSTD, "sha256:" + "1" * 64, len(blob), annotations=annotations)


async def test_a_layer_without_toc_annotations_costs_no_read(
    layer: tuple[bytes, dict[str, str]],
) -> None:
    blob, _ = layer
    reads = CountingReadAt(BytesReadAt(blob))
    assert await open_toc_layer(_desc(blob, None), reads, reads) is None
    assert reads.calls == 0


async def test_the_toc_is_read_with_one_exact_range_and_files_read_verified(
    layer: tuple[bytes, dict[str, str]],
) -> None:
    blob, annotations = layer
    source = FakeClient(blob)
    gets = RangeGets(source, REPO, "sha256:" + "1" * 64, len(blob))
    toc = await open_toc_layer(_desc(blob, annotations), gets, BytesReadAt(blob))
    assert toc is not None and toc.kind == "zstd:chunked"
    offset, clen, *_ = tf.parse_position(annotations[tf.MANIFEST_POSITION], 4)
    assert source.calls == [(offset, offset + clen)]  # the compressed TOC, not a byte more
    assert toc.toc_bytes == clen
    by_path = {e.path: e for e in toc.entries}
    for name, body in BODIES.items():
        assert read_entry(toc.reader, by_path[f"w/{name}"], 0, len(body)) == body
    assert toc.reader.chunks_verified >= 4
    toc.reader.close()


async def test_a_toc_failing_its_digest_is_refused_with_a_log_line(
    layer: tuple[bytes, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    blob, annotations = layer
    bad = {**annotations, tf.MANIFEST_CHECKSUM: "sha256:" + "0" * 64}
    with caplog.at_level(logging.WARNING, "r8imfs.image"):
        assert await open_toc_layer(_desc(blob, bad), BytesReadAt(blob), BytesReadAt(blob)) is None
    assert "TOC refused" in caplog.text and "does not match its annotation" in caplog.text


async def test_a_registry_ignoring_range_goes_to_the_fallback_or_fails_clearly(
    layer: tuple[bytes, dict[str, str]],
) -> None:
    blob, annotations = layer
    source = FakeClient(blob, ignore_range=True)
    asked: list[tuple[int, int]] = []

    async def fallback(offset: int, size: int) -> bytes:
        asked.append((offset, size))
        return blob[offset : offset + size]

    gets = RangeGets(source, REPO, "sha256:" + "1" * 64, len(blob), fallback=fallback)
    toc = await open_toc_layer(_desc(blob, annotations), gets, BytesReadAt(blob))
    assert toc is not None and len(asked) == 1
    toc.reader.close()
    bare = RangeGets(source, REPO, "sha256:" + "1" * 64, len(blob))
    with pytest.raises(RangeUnsupported):
        await _threads.run_sync(bare.read_at, 0, 10)


async def test_a_kept_record_loads_the_toc_again_without_a_request(
    layer: tuple[bytes, dict[str, str]], tmp_path: Path
) -> None:
    blob, annotations = layer
    record = tmp_path / "index" / "x.toc"
    source = FakeClient(blob)
    gets = RangeGets(source, REPO, "sha256:" + "1" * 64, len(blob))
    first = await open_toc_layer(_desc(blob, annotations), gets, BytesReadAt(blob), record=record)
    assert first is not None and len(source.calls) == 1 and record.exists()
    second = await open_toc_layer(_desc(blob, annotations), gets, BytesReadAt(blob), record=record)
    assert second is not None and len(source.calls) == 1  # no request
    assert second.entries == first.entries
    # a record damaged on disk fails the digest check: dropped, read from the registry again
    raw = bytearray(record.read_bytes())
    raw[-5] ^= 0xFF
    record.write_bytes(bytes(raw))
    third = await open_toc_layer(_desc(blob, annotations), gets, BytesReadAt(blob), record=record)
    assert third is not None and len(source.calls) == 2
    assert list(load_record(record).values())[0] == bytes(blob[slice(*_toc_range(annotations))])
    for toc in (first, second, third):
        toc.reader.close()
