"""An independent reader of zstd:chunked blobs, written from the format description.

It shares no code with r8imfs (which is what it checks): frame walking from
the zstd seekable format's seek table, the skippable frames (TOC, tar-split,
footer), the 64-byte footer, the layer annotations, and then the strongest
test containers/storage itself makes: rebuild the tar from the tar-split and
the TOC's file bodies and compare its sha256 with the diff_id.

Sources: containers/storage pkg/chunked (compressor, internal/minimal),
vbatts/tar-split (JSON lines), facebook/zstd seekable_format spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE = 0x184D2A50
SEEK_TABLE = 0x184D2A5E
SEEK_FOOTER = 0x8F92EAB1
KEY = "io.github.containers.zstd-chunked."
STARGZ = "containerd.io/snapshot/stargz/toc.digest"


def _crc64_table() -> list[int]:
    poly = 0xD800000000000000  # ISO 3309, reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC = _crc64_table()


def crc64_iso(data: bytes) -> bytes:
    """Go's crc64.Checksum(data, crc64.MakeTable(crc64.ISO)), big-endian bytes."""
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = _CRC[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return (crc ^ 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


def frames(blob: bytes) -> list[tuple[int, int, int]]:
    """(start, compressed size, decompressed size) of every frame the seek
    table lists, which must be the last frame and cover the blob exactly."""
    assert blob[-4:] == struct.pack("<I", SEEK_FOOTER), "seek table is not last"
    count, descriptor = struct.unpack("<IB", blob[-9:-4])
    width = 12 if descriptor & 0x80 else 8
    table_len = 8 + count * width + 9
    table_at = len(blob) - table_len
    magic, size = struct.unpack_from("<II", blob, table_at)
    assert (magic, size) == (SEEK_TABLE, table_len - 8)
    out, at = [], 0
    for i in range(count):
        c, u = struct.unpack_from("<II", blob, table_at + 8 + i * width)
        out.append((at, c, u))
        at += c
    assert at == table_at, "seek table does not describe the blob"
    for start, c, u in out:
        head = blob[start : start + 4]
        is_skippable = struct.unpack("<I", head)[0] & 0xFFFFFFF0 == SKIPPABLE
        assert head == ZSTD_MAGIC or (is_skippable and u == 0), f"no frame at {start}"
        if is_skippable:
            assert struct.unpack_from("<I", blob, start + 4)[0] == c - 8
    return out


def check_blob(blob: bytes, annotations: dict[str, str], diff_id: str | None) -> dict[str, Any]:
    """Assert everything about one zstd:chunked layer; return its TOC."""
    assert blob[:4] == ZSTD_MAGIC, "a zstd:chunked blob starts with a zstd frame"
    assert STARGZ not in annotations, "never both TOC kinds on one layer"
    table = frames(blob)
    toc_f, split_f, footer_f = table[-3:]
    for start, _, _ in (toc_f, split_f, footer_f):
        assert struct.unpack_from("<I", blob, start)[0] == SKIPPABLE
    footer = blob[footer_f[0] + 8 : footer_f[0] + footer_f[1]]
    assert len(footer) == 64 and footer[56:] == b"GNUlInUx"
    off, clen, ulen, mtype, soff, sclen, sulen = struct.unpack("<7Q", footer[:56])
    assert mtype == 1
    assert (off, off + clen) == (toc_f[0] + 8, toc_f[0] + toc_f[1])
    assert (soff, soff + sclen) == (split_f[0] + 8, split_f[0] + split_f[1])
    assert annotations[KEY + "manifest-position"] == f"{off}:{clen}:{ulen}:1"
    assert annotations[KEY + "tarsplit-position"] == f"{soff}:{sclen}:{sulen}"
    compressed = blob[off : off + clen]
    assert annotations[KEY + "manifest-checksum"] == _sha(compressed)
    dctx = zstandard.ZstdDecompressor()
    toc = json.loads(dctx.decompress(compressed, max_output_size=ulen))
    assert toc["version"] == 1
    split_z = blob[soff : soff + sclen]
    assert toc["tarSplitDigest"] == _sha(split_z)
    split = dctx.decompress(split_z, max_output_size=sulen)
    assert len(split) == sulen
    bodies = _bodies(blob, toc, {s for s, _, _ in table} | {len(blob)})
    rebuilt = _rebuild(split, toc, bodies)
    if diff_id is not None:
        assert _sha(rebuilt) == diff_id, "tar-split + TOC bodies do not rebuild the tar"
    return dict(toc)


def _bodies(blob: bytes, toc: dict[str, Any], boundaries: set[int]) -> list[bytes]:
    """Each regular file's body, decoded from its frames and checked against digests."""
    out: list[bytes] = []
    entries = toc["entries"]
    dctx = zstandard.ZstdDecompressor()
    for i, e in enumerate(entries):
        if e["type"] != "reg":
            continue
        if not e.get("size"):
            assert not e.get("digest") and not e.get("offset")
            out.append(b"")
            continue
        start, end = e["offset"], e["endOffset"]
        assert start in boundaries and end in boundaries and start < end
        body = _decode(dctx, blob[start:end])
        assert len(body) == e["size"] and _sha(body) == e["digest"]
        if "chunkSize" in e:  # chunk entries follow, each with its own frames
            chunks = [e] + _following_chunks(entries, i)
            ends = [c["offset"] for c in chunks[1:]] + [end]
            for c, c_end in zip(chunks, ends, strict=True):
                part = body[c.get("chunkOffset", 0) : c.get("chunkOffset", 0) + c["chunkSize"]]
                assert c["offset"] in boundaries
                assert _decode(dctx, blob[c["offset"] : c_end]) == part
                assert _sha(part) == c["chunkDigest"]
        out.append(body)
    return out


def _following_chunks(entries: list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    chunks = []
    for e in entries[i + 1 :]:
        if e["type"] != "chunk":
            break
        assert e["name"] == entries[i]["name"]
        chunks.append(e)
    return chunks


def _rebuild(split: bytes, toc: dict[str, Any], bodies: list[bytes]) -> bytes:
    """The tar, as c/storage rebuilds it: segments verbatim, files from the TOC."""
    regs = [e for e in toc["entries"] if e["type"] != "chunk"]
    parts: list[bytes] = []
    files = iter(zip(regs, _with_bodies(regs, bodies), strict=True))
    for n, line in enumerate(split.splitlines()):
        item = json.loads(line)
        assert item["position"] == n
        if item["type"] == 2:
            parts.append(base64.b64decode(item["payload"]))
            continue
        assert item["type"] == 1
        entry, body = next(files)
        assert item["name"] == entry["name"], "tar-split and TOC disagree"
        assert item.get("size", 0) == len(body)
        if body:
            assert base64.b64decode(item["payload"]) == crc64_iso(body)
            parts.append(body)
    assert next(files, None) is None, "TOC has entries the tar-split lacks"
    return b"".join(parts)


def _with_bodies(regs: list[dict[str, Any]], bodies: list[bytes]) -> list[bytes]:
    it = iter(bodies)
    return [next(it) if e["type"] == "reg" else b"" for e in regs]


def _decode(dctx: zstandard.ZstdDecompressor, data: bytes) -> bytes:
    reader = dctx.stream_reader(data, read_across_frames=True)
    return reader.read()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
