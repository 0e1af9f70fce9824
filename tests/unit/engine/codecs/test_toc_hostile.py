"""Hostile TOCs are refused with ``BadToc`` (the caller then reads the layer as a
plain stream); a lying chunk digest is caught on first touch, never served.

Each case starts from a real ``write_chunked`` blob, edits its TOC JSON, and
appends the edited TOC as a new skippable frame with *matching* annotations,
so the digest check passes and the content checks are what must refuse it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from r8imfs.engine.codecs import toc as toc_mod
from r8imfs.engine.codecs import tocformat as tf
from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.codecs.tocread import ChunkMismatch, TocReader
from r8imfs.engine.codecs.zstdwrite import write_chunked
from r8imfs.engine.readat import BytesReadAt
from r8imfs.errors import BadToc
from tests.helpers.tars import M, make_tar, payload

KiB = 1024
FRAME = 16 * KiB
Toc = dict[str, Any]


@pytest.fixture(scope="module")
def layer() -> tuple[bytes, dict[str, str]]:
    tar = make_tar(
        [
            M("d", "a"),
            M("f", "a/one", payload(3 * KiB, seed=1)),
            M("f", "a/two", payload(5 * KiB, seed=2)),
            M("f", "a/big", payload(3 * FRAME + 7, seed=3)),
            M("h", "a/hard", link="a/one"),
        ]
    )
    out = io.BytesIO()
    result = write_chunked(io.BytesIO(tar), out, frame_size=FRAME, threads=1)
    return out.getvalue(), result.annotations


def original_toc(layer: tuple[bytes, dict[str, str]]) -> Toc:
    blob, ann = layer
    off, clen, _, _ = tf.parse_position(ann[tf.MANIFEST_POSITION], 4)
    toc: Toc = json.loads(zstandard.ZstdDecompressor().decompress(blob[off : off + clen]))
    return toc


def forge(layer: tuple[bytes, dict[str, str]], edit: Callable[[Toc], object]) -> Any:
    """The layer with an edited TOC appended and annotations that vouch for it."""
    blob, _ = layer
    toc = original_toc(layer)
    edit(toc)
    raw = json.dumps(toc).encode()
    z = zstandard.ZstdCompressor().compress(raw)
    at = len(blob) + 8
    ann = {
        tf.MANIFEST_CHECKSUM: "sha256:" + hashlib.sha256(z).hexdigest(),
        tf.MANIFEST_POSITION: f"{at}:{len(z)}:{len(raw)}:1",
    }
    return BytesReadAt(blob + tf.skippable_frame(z)), ann


def entry(toc: Toc, name: str, kind: str = "reg") -> dict[str, Any]:
    return next(e for e in toc["entries"] if e["name"] == name and e["type"] == kind)


def test_the_unedited_forgery_is_accepted(layer: tuple[bytes, dict[str, str]]) -> None:
    readat, ann = forge(layer, lambda toc: None)
    index = load_toc(readat, ann)
    assert index is not None and {f.path for f in index.files} == {"a/one", "a/two", "a/big"}


def _set(name: str, key: str, value: object, kind: str = "reg") -> Callable[[Toc], None]:
    def edit(toc: Toc) -> None:
        entry(toc, name, kind)[key] = value

    return edit


def _overlap(toc: Toc) -> None:
    entry(toc, "a/two")["offset"] = entry(toc, "a/one")["offset"] + 3


def _same_start(toc: Toc) -> None:
    one, two = entry(toc, "a/one"), entry(toc, "a/two")
    two["offset"], two["endOffset"] = one["offset"], one["endOffset"]


def _orphan_chunk(toc: Toc) -> None:
    toc["entries"].insert(1, {"type": "chunk", "name": "a/nothing", "offset": 5})


HOSTILE: dict[str, tuple[Callable[[Toc], object], str]] = {
    "climbing name": (_set("a/one", "name", "../../etc/passwd"), "unsafe"),
    "NUL in name": (_set("a/one", "name", "a/o\0ne"), "not a valid path"),
    "climbing hardlink": (_set("a/hard", "linkName", "../x", "hardlink"), "unsafe"),
    "unknown type": (_set("a/one", "type", "socket"), "unknown type"),
    "overlapping ranges": (_overlap, "overlap"),
    "shared start": (_same_start, "start at compressed offset"),
    "past the data": (_set("a/one", "endOffset", 10**9), "outside the layer's data"),
    "offset zero": (_set("a/one", "offset", 0), "do not tile"),
    "negative offset": (_set("a/one", "offset", -5), "sensible integer"),
    "string offset": (_set("a/one", "offset", "12"), "sensible integer"),
    "chunks short of the file": (_set("a/big", "size", 3 * FRAME + 8), "cover"),
    "bad chunk size": (_set("a/big", "chunkSize", 0), "do not tile"),
    "no digest": (_set("a/one", "digest", ""), "no usable digest"),
    "malformed digest": (_set("a/one", "digest", "md5:abc"), "not a sha256"),
    "orphan chunk entry": (_orphan_chunk, "follows no such file"),
    "bad time": (_set("a/one", "modtime", "yesterday"), "RFC 3339"),
    "bad xattr": (_set("a/one", "xattrs", {"user.a": "!!"}), "base64"),
    "wrong version": (lambda toc: toc.update(version=2), "version 1"),
    "entries not a list": (lambda toc: toc.update(entries={}), "entries"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tocs_are_refused(layer: tuple[bytes, dict[str, str]], case: str) -> None:
    edit, message = HOSTILE[case]
    readat, ann = forge(layer, edit)
    with pytest.raises(BadToc, match=message):
        load_toc(readat, ann)


def test_absurd_entry_count(
    layer: tuple[bytes, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toc_mod, "MAX_ENTRIES", 3)
    readat, ann = forge(layer, lambda toc: None)
    with pytest.raises(BadToc, match="more than 3"):
        load_toc(readat, ann)


def test_absurd_toc_size(layer: tuple[bytes, dict[str, str]]) -> None:
    blob, ann = layer
    off, clen, _, _ = tf.parse_position(ann[tf.MANIFEST_POSITION], 4)
    bad = dict(ann)
    bad[tf.MANIFEST_POSITION] = f"{off}:{clen}:{1 << 40}:1"
    with pytest.raises(BadToc, match="out of range"):
        load_toc(BytesReadAt(blob), bad)


def test_a_toc_longer_than_its_position_says(layer: tuple[bytes, dict[str, str]]) -> None:
    blob, ann = layer
    off, clen, ulen, _ = tf.parse_position(ann[tf.MANIFEST_POSITION], 4)
    bad = {**ann, tf.MANIFEST_POSITION: f"{off}:{clen}:{ulen // 2}:1"}
    with pytest.raises(BadToc, match="its position says"):
        load_toc(BytesReadAt(blob), bad)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (tf.MANIFEST_CHECKSUM, "sha256:" + "0" * 64, "does not match its annotation"),
        (tf.MANIFEST_CHECKSUM, "sha512:abc", "not a sha256 digest"),
        (tf.MANIFEST_POSITION, "12:x:3:1", "manifest-position"),
        (tf.MANIFEST_POSITION, "99999999999:10:10:1", "out of range"),
        (tf.MANIFEST_POSITION, "100:10:10:2", "manifest type"),
        (tf.STARGZ_TOC_DIGEST, "sha256:" + "0" * 64, "both"),
    ],
)
def test_bad_annotations_are_refused(
    layer: tuple[bytes, dict[str, str]], key: str, value: str, message: str
) -> None:
    blob, ann = layer
    with pytest.raises(BadToc, match=message):
        load_toc(BytesReadAt(blob), {**ann, key: value})


def test_estargz_annotation_on_a_blob_without_its_footer(
    layer: tuple[bytes, dict[str, str]],
) -> None:
    blob, _ = layer
    with pytest.raises(BadToc, match="footer"):
        load_toc(BytesReadAt(blob), {tf.STARGZ_TOC_DIGEST: "sha256:" + "0" * 64})


def test_no_toc_annotation_means_no_toc(layer: tuple[bytes, dict[str, str]]) -> None:
    assert load_toc(BytesReadAt(layer[0]), {"org.example": "x"}) is None
    assert load_toc(BytesReadAt(layer[0]), None) is None


def test_a_lying_chunk_digest_fails_on_first_touch_only_for_that_chunk(
    layer: tuple[bytes, dict[str, str]],
) -> None:
    def lie(toc: Toc) -> None:
        entry(toc, "a/two")["digest"] = "sha256:" + "ab" * 32
        chunks = [e for e in toc["entries"] if e["name"] == "a/big"]
        chunks[1]["chunkDigest"] = "sha256:" + "cd" * 32

    readat, ann = forge(layer, lie)
    index = load_toc(readat, ann)
    assert index is not None
    files = {f.path: f for f in index.files}
    with TocReader(readat, index) as reader:
        with pytest.raises(ChunkMismatch, match="'a/two' bytes 0..5120"):
            reader.read_file(files["a/two"], 0, 10)
        with pytest.raises(ChunkMismatch, match="'a/big'"):
            reader.read_file(files["a/big"], FRAME + 5, 10)
        assert reader.read_file(files["a/one"], 0, 3 * KiB) == payload(3 * KiB, seed=1)
        big = payload(3 * FRAME + 7, seed=3)
        assert reader.read_file(files["a/big"], 0, FRAME) == big[:FRAME]
        assert reader.read_file(files["a/big"], 2 * FRAME, FRAME + 7) == big[2 * FRAME :]
