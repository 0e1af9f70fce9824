"""Cut a tar stream into zstd:chunked pieces and build its TOC and tar-split.

The writer (``zstdwrite.write_chunked``) compresses each ``Piece`` as one zstd
frame. ``TarCutter`` decides where frames start, as containers/storage
``pkg/chunked/compressor`` does: the raw bytes between file bodies (padding,
PAX/GNU extension headers, the header itself; consecutive bodiless members
together) form header frames, and each body is cut into chunks of at most
``frame_size`` bytes, one frame each. Boundaries need not match c/storage's
rolling checksum: readers take them from the TOC.

It walks the tar itself, 512-byte block by block, parses a plain ustar header
itself (``_parse_plain``, checked against ``tarfile``) and hands any other
header group to ``tarfile`` (PAX records, long names, base-256 numbers). What it
cannot describe faithfully (a sparse member, an unknown type flag, a header
that does not parse, a body cut short) turns the cutter *off* (``on`` is
False): the rest of the stream passes through in plain ``frame_size`` slices
and the writer leaves the TOC out, so the blob is plain seekable zstd. Never
a wrong TOC.

Chunk boundaries are free in zstd:chunked (each chunk has its own offset and
digest in the TOC), so a ``*.safetensors`` body's first chunk ends right after
its header (8 bytes of little-endian length N, then N bytes of JSON) when that
is sane: listing a model's tensors through a mount (``safe_open``) then fetches
one small chunk. The rest of the file's first MiB is cut in 256 KiB chunks
(``HEAD_CHUNK``), so the kernel's read-around of that first touch (the mount's
512 KiB readahead) costs about that much, not a 2 MiB chunk; from there on
chunks stay on the body's ``frame_size`` grid, as in any other file. GGUF headers are not
cut out: their end is known only after parsing every metadata value and
tensor record (a tokenizer's vocabulary can make that megabytes of
variable-length records), which is not cheap here.

Hashing, each byte as few times as the format needs: the tar (the diff_id)
as ``_Buffered`` reads it, 1 MiB at a time; a body that fits one chunk in the
compression worker (its digest is both the file's and the chunk's); a longer
body here in order (the file's digest) and its chunks in the workers. The
tar-split needs a CRC-64/ISO of every body (``fastcrc``: many GB/s, without
the GIL). A long body is thus hashed three times (the tar, the file, each
chunk) where plain seekable zstd hashed it once: c/storage's own compressor
does the same, as the TOC needs all three digests. On bf16-like weights
that is most of what this writer costs over ``write_seekable`` (zstd level 3
runs at ~0.4 GB/s per core there, sha256 at ~1.5-2 GB/s).

Size. On a layer of small files the output is ~10% larger than plain
seekable zstd at the same level (8,000 files, 147 MB of tar, level 3:
63.3 MB before, 69.7 MB now; skopeo 1.9's zstd:chunked of the same tar is
70.2 MB against its plain zstd's 62.3 MB). Of the 6.4 MB, about: 4.5 MB
because each body is its own frame and so cannot match against the files
before it (zstd's window restarts with every frame; the bodies are 67.6 MB
as frames, 63.1 MB as one stream), 0.9 MB because headers are tiny frames of
their own (~130 bytes each instead of ~16 inside a stream), 0.9 MB of TOC
and tar-split, 0.2 MB of seek table. None of it has a cheap cure that
keeps the format: a reader decompresses a file from its TOC offset, so every
body must start a frame, and a frame can reference nothing before it unless
the decoder is given a dictionary, which plain zstd decoders (containerd,
``zstd -d``) are not. Raising the level of small frames only would trade
CPU for a few percent of those bytes.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import io
import json
import json.encoder
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import fastcrc
import zstandard

BLOCK = tarfile.BLOCKSIZE
_EXTENSION = frozenset(b"xgXLK")  # PAX (global, Solaris), GNU long name/link
_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
_SCHILY = "SCHILY.xattr."
SPLIT_BATCH = 256 * 1024  # tar-split text compressed at a time
SAFETENSORS_HEADER_MAX = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
#: The first HEAD_FINE bytes of a model file are cut in HEAD_CHUNK chunks (on
#: their own grid, inside the body's first ``frame_size`` chunk): a reader that
#: maps the file and touches its header makes the kernel read ahead up to the
#: mount's readahead (512 KiB), and each chunk it covers is fetched whole.
HEAD_CHUNK = 256 * 1024
HEAD_FINE = 1024 * 1024
_json_str = json.encoder.encode_basestring  # the C one


def crc64(data: bytes, previous: int | None = None) -> int:
    """CRC-64/GO-ISO, the checksum tar-split stores for each body (Go's
    crc64.ISO); ``previous`` continues a running value. fastcrc releases the GIL."""
    return int(fastcrc.crc64.go_iso(data, previous))


@dataclass(slots=True)
class FileRecord:
    """A regular file's TOC entry while its chunks are being written."""

    meta: dict[str, Any]
    size: int
    chunked: bool  # more than one chunk: chunk fields in the TOC, hashed here
    hasher: Any = None
    chunks: list[tuple[int, int, int, int, str]] = field(default_factory=list)
    # (compressed start, compressed end, offset in file, length, "sha256:…")
    done: int = 0
    json: bytes = b""  # its TOC entries, once every chunk is written

    def add_chunk(self, start: int, end: int, offset: int, length: int, digest: str) -> None:
        """Record a written chunk; the last one turns the record into JSON text
        (a layer of a million files keeps text, not dicts, until the TOC)."""
        if not self.chunked:  # one chunk, most files: its JSON at once, no dict copy
            self.json = b'%s,"digest":"%s","offset":%d,"endOffset":%d}' % (
                _dump(self.meta)[:-1],
                digest.encode(),
                start,
                end,
            )
            self.done, self.meta = length, {}
            return
        self.chunks.append((start, end, offset, length, digest))
        self.done += length
        if self.done == self.size:
            self.json = b",".join(_dump(e) for e in file_entries(self))
            self.chunks, self.meta, self.hasher = [], {}, None


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes to become one zstd frame: a body chunk of ``file``, else header bytes."""

    data: bytes
    file: FileRecord | None = None
    offset: int = 0  # of the chunk inside its file


class TarCutter:
    """Iterate ``pieces()`` over a tar; then, if ``on``, ``tarsplit()`` and ``toc()``."""

    def __init__(self, src: IO[bytes], frame_size: int, level: int = 3) -> None:
        self.diff = hashlib.sha256()  # of every byte read: the tar's diff_id
        self._src = _Buffered(src, self.diff)
        self._frame = frame_size
        self._pending = bytearray()  # raw bytes not yet cut into a frame
        self._segment = bytearray()  # raw bytes not yet in a tar-split segment
        self._records: list[FileRecord | bytes] = []  # TOC entries (JSON) in tar order
        # the tar-split is compressed as it grows: it is as long as all headers
        self._split_z = zstandard.ZstdCompressor(level=level).compressobj()
        self._split_parts: list[bytes] = []
        self._split_text: list[str] = []  # lines not yet compressed
        self._split_lines = self._split_size = self._split_waiting = 0
        self.on = True

    def pieces(self) -> Iterator[Piece]:
        while self.on:
            group = self._header_group()
            if group is None:
                break
            yield from self._member(group)
        while data := self._src.read(self._frame):  # end of archive, trailing bytes
            self._raw(data)
            yield from self._flush(self._frame)
        self._split_segment()
        yield from self._flush(0)

    def _raw(self, data: bytes | bytearray) -> None:
        self._pending += data
        if self.on:
            self._segment += data

    def _header_group(self) -> bytes | None:
        """Extension headers + the member header, or None at the end of the archive."""
        group = bytearray()
        while True:
            block = self._src.read(BLOCK)
            if len(block) < BLOCK or not block.strip(b"\0"):
                self._raw(group + block)
                return None
            group += block
            if block[156] not in _EXTENSION:
                return bytes(group)
            try:
                size = tarfile.nti(block[124:136])  # type: ignore[attr-defined]
            except tarfile.HeaderError:
                self._off(group)
                return None
            group += self._src.read(-(-size // BLOCK) * BLOCK)

    def _off(self, group: bytes | bytearray) -> None:
        """Stop cutting: the rest is plain frames and there will be no TOC."""
        self.on = False
        self._pending += group

    def _member(self, group: bytes) -> Iterator[Piece]:
        info = _parse(group)
        kind = _TYPES.get(info.type) if info is not None else None
        if info is None or kind is None or info.issparse():
            self._off(group)
            return
        self._raw(group)
        self._split_segment()
        name = info.name + "/" if kind == "dir" and info.name else info.name
        size = info.size if kind == "reg" else 0
        meta = toc_metadata(info, kind, name)
        if size == 0:
            self._records.append(_dump(meta))
            self._split_file(name, 0, b"")
            return
        yield from self._flush(0)
        cut = self._header_end(name, size)
        chunked = size > self._frame or 0 < cut < size
        yield from self._body(FileRecord(meta, size, chunked), cut)
        self._raw(self._src.read(-size % BLOCK))

    def _header_end(self, name: str, size: int) -> int:
        """Where a model file's header ends (the first chunk ends there), or 0."""
        if not name.endswith(".safetensors") or size < 8:
            return 0
        head = self._src.peek(8)
        if len(head) < 8:  # cut short: ``_body`` sees it
            return 0
        (n,) = struct.unpack("<Q", head)
        return 8 + n if n <= SAFETENSORS_HEADER_MAX and 8 + n <= size else 0

    def _body(self, rec: FileRecord, cut: int = 0) -> Iterator[Piece]:
        rec.hasher = hashlib.sha256() if rec.chunked else None
        crc: int | None = None
        name = rec.meta["name"]  # the last chunk's write may clear ``meta`` (threads=1)
        self._records.append(rec)
        if not rec.chunked:  # most files: one read, one piece
            data = self._src.read(rec.size)
            if data:
                yield Piece(data, rec, 0)
            if len(data) < rec.size:
                self.on = False
                return
            self._split_file(name, rec.size, crc64(data).to_bytes(8, "big"))
            return
        done = 0
        while done < rec.size:
            end = min(done - done % self._frame + self._frame, rec.size)  # the chunk grid
            if cut and done < HEAD_FINE:  # a model file's head: finer chunks
                end = min(end, done - done % HEAD_CHUNK + HEAD_CHUNK)
            if done < cut < end:
                end = cut
            data = self._src.read(end - done)
            if not data:  # a tar cut short: no TOC, the bytes still pass through
                self.on = False
                return
            crc = crc64(data, crc)
            if rec.hasher is not None:
                rec.hasher.update(data)
            yield Piece(data, rec, done)
            done += len(data)
        self._split_file(name, rec.size, (crc or 0).to_bytes(8, "big"))

    def _flush(self, keep: int) -> Iterator[Piece]:
        """Cut pending raw bytes into frames while more than ``keep`` wait."""
        while len(self._pending) > keep:
            data = bytes(self._pending[: self._frame])
            del self._pending[: self._frame]
            yield Piece(data)

    def _split_segment(self) -> None:
        if self._segment and self.on:
            payload = base64.b64encode(self._segment).decode()
            self._split_add(f'{{"type":2,"payload":"{payload}","position":{self._split_lines}}}')
        self._segment.clear()

    def _split_file(self, name: str, size: int, crc: bytes) -> None:
        """A tar-split file line (vbatts/tar-split ``storage.Entry``): the name as
        text, or base64 ``name_raw`` when it is not UTF-8; ``payload`` the CRC."""
        raw = name.encode("utf-8", "surrogateescape")
        try:
            named = '"name":' + _json_str(raw.decode("utf-8"))
        except UnicodeDecodeError:
            named = '"name_raw":"' + base64.b64encode(raw).decode() + '"'
        sized = f',"size":{size}' if size else ""
        payload = '"' + base64.b64encode(crc).decode() + '"' if crc else "null"
        self._split_add(
            f'{{"type":1,{named}{sized},"payload":{payload},"position":{self._split_lines}}}'
        )

    def _split_add(self, line: str) -> None:
        self._split_text.append(line)
        self._split_lines += 1
        self._split_waiting += len(line)
        if self._split_waiting >= SPLIT_BATCH:
            self._split_compress()

    def _split_compress(self) -> None:
        """Compress the waiting lines in one call (each call may hand the GIL
        to a worker and wait to get it back)."""
        self._split_text.append("")
        data = "\n".join(self._split_text).encode()
        self._split_text.clear()
        self._split_size += len(data)
        self._split_waiting = 0
        if out := self._split_z.compress(data):
            self._split_parts.append(out)

    def tarsplit(self) -> tuple[bytes, int]:
        """The zstd-compressed tar-split (vbatts/tar-split JSON lines) of the
        whole stream, once cut, and its uncompressed length."""
        if self._split_text:
            self._split_compress()
        self._split_parts.append(self._split_z.flush())
        return b"".join(self._split_parts), self._split_size

    def toc(self, tarsplit_digest: str) -> bytes:
        """The TOC JSON; ``tarsplit_digest`` is that of the *compressed* tar-split."""
        parts = [rec if isinstance(rec, bytes) else rec.json for rec in self._records]
        if not all(parts):
            raise RuntimeError("a file's chunks were not all written before the TOC")
        head = b'{"version":1,"entries":['
        return head + b",".join(parts) + b'],"tarSplitDigest":' + _dump(tarsplit_digest) + b"}"


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # made once, not per call


def _dump(value: Any) -> bytes:
    return _ENCODER.encode(value).encode()


def _parse(group: bytes) -> tarfile.TarInfo | None:
    """The member a header group describes (one plain header parses directly:
    most members have no extension headers), or None if it does not parse."""
    if len(group) == BLOCK and (info := _parse_plain(group)) is not None:
        return info
    try:
        if len(group) == BLOCK:
            return tarfile.TarInfo.frombuf(group, "utf-8", "surrogateescape")
        return tarfile.TarFile(fileobj=io.BytesIO(group + bytes(2 * BLOCK))).next()
    except (tarfile.TarError, EOFError, ValueError, UnicodeError):
        return None


# name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s")
_GNU_TYPES = frozenset(tarfile.GNU_TYPES)


def _parse_plain(buf: bytes) -> tarfile.TarInfo | None:
    """``TarInfo.frombuf`` for the usual header (octal numbers, an unsigned
    checksum that matches, not old-GNU sparse) in a fifth of its time; None
    sends anything else to ``frombuf`` itself."""
    (name, mode, uid, gid, size, mtime, chksum, kind, link, _, uname, gname, major, minor,
     prefix) = _HEADER.unpack_from(buf)  # fmt: skip
    try:
        checksum = _oct(chksum)
        if checksum != _byte_sum(buf) - _byte_sum(buf[148:156]) + 256:
            return None
        if kind == tarfile.GNUTYPE_SPARSE:
            return None
        info = tarfile.TarInfo()
        info.mode, info.uid, info.gid = _oct(mode), _oct(uid), _oct(gid)
        info.size, info.mtime = _oct(size), _oct(mtime)
        info.devmajor, info.devminor = _oct(major), _oct(minor)
    except ValueError:  # base-256 numbers, stray bytes
        return None
    text = _nul(name).decode("utf-8", "surrogateescape")
    info.chksum = checksum
    info.type = kind
    info.linkname = _nul(link).decode("utf-8", "surrogateescape")
    info.uname = _nul(uname).decode("utf-8", "surrogateescape")
    info.gname = _nul(gname).decode("utf-8", "surrogateescape")
    if kind == tarfile.AREGTYPE and text.endswith("/"):
        info.type = tarfile.DIRTYPE  # old V7 directories
    if info.type == tarfile.DIRTYPE:
        text = text.rstrip("/")
    head = _nul(prefix)
    if head and kind not in _GNU_TYPES:
        text = head.decode("utf-8", "surrogateescape") + "/" + text
    info.name = text
    return info


def _byte_sum(data: bytes) -> int:
    """``sum(data)`` for up to 512 bytes, in C: Adler-32's first sum, taken
    over halves of at most 256 bytes, is 1 + their byte sum (it never
    reaches the modulus 65521); ``sum`` iterates in Python."""
    low = zlib.adler32(data[:256]) & 0xFFFF
    return low - 1 + (zlib.adler32(data[256:]) & 0xFFFF) - 1


def _nul(field: bytes) -> bytes:
    at = field.find(b"\0")
    return field if at < 0 else field[:at]


def _oct(field: bytes) -> int:
    """An octal number field as ``tarfile.nti`` reads it, when it holds only
    digits and spaces before trailing NULs and spaces; else ValueError (base-256 numbers,
    bytes after a NUL: left to ``tarfile``)."""
    return int(field.rstrip(b"\0 ") or b"0", 8)


def file_entries(rec: FileRecord) -> Iterator[dict[str, Any]]:
    """The ``reg`` entry, and one ``chunk`` entry per further chunk (c/storage layout)."""
    chunks = sorted(rec.chunks, key=lambda c: c[2])
    main = dict(rec.meta)
    main["digest"] = "sha256:" + rec.hasher.hexdigest() if rec.chunked else chunks[0][4]
    main["offset"], main["endOffset"] = chunks[0][0], chunks[-1][1]
    if not rec.chunked:
        yield main
        return
    for i, (start, _, offset, length, digest) in enumerate(chunks):
        entry = main if i == 0 else {"type": "chunk", "name": main["name"]}
        entry["offset"] = start
        entry["chunkSize"] = length
        if offset:
            entry["chunkOffset"] = offset
        entry["chunkDigest"] = digest
        if i:
            yield entry
        else:
            yield main


def toc_metadata(info: tarfile.TarInfo, kind: str, name: str) -> dict[str, Any]:
    """The TOC fields of a member, in containers/storage's order, zero ones left out.

    ``name`` as Go's tar reader reports it (``tarfile`` drops a directory's
    trailing slash; the TOC and the tar-split keep it)."""
    pax = info.pax_headers
    meta: dict[str, Any] = {"type": kind, "name": name}
    if info.linkname:
        meta["linkName"] = info.linkname
    if info.mode:
        meta["mode"] = info.mode
    if kind == "reg" and info.size:
        meta["size"] = info.size
    if info.uid:
        meta["uid"] = info.uid
    if info.gid:
        meta["gid"] = info.gid
    if info.mtime:
        _put(meta, "modtime", _rfc3339(info.mtime))
    if pax:  # most members have no PAX records
        _put(meta, "accesstime", _rfc3339(float(pax["atime"])) if "atime" in pax else None)
        _put(meta, "changetime", _rfc3339(float(pax["ctime"])) if "ctime" in pax else None)
    if info.devmajor:
        meta["devMajor"] = info.devmajor
    if info.devminor:
        meta["devMinor"] = info.devminor
    if pax:
        xattrs = {
            key[len(_SCHILY) :]: base64.b64encode(value.encode("utf-8", "surrogateescape")).decode()
            for key, value in pax.items()
            if key.startswith(_SCHILY)
        }
        _put(meta, "xattrs", xattrs)
    return meta


def _put(meta: dict[str, Any], key: str, value: Any) -> None:
    if value:
        meta[key] = value


@functools.lru_cache(maxsize=4096)  # a layer's files share few mtimes
def _rfc3339(seconds: float) -> str | None:
    if not seconds:
        return None
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


class _Buffered:
    """Reads of exactly ``size`` bytes (fewer only at the end), served from
    1 MiB refills: a tar of small files is mostly 512-byte reads, and each
    call into a file object may drop and retake the GIL while the compression
    workers want it. Every byte read goes through ``hasher`` once, a refill
    at a time."""

    def __init__(self, src: IO[bytes], hasher: Any, refill: int = 1 << 20) -> None:
        self._src = src
        self._hasher = hasher
        self._refill = refill
        self._buf = b""
        self._at = 0

    def _fill(self, size: int) -> bytes:
        data = read_full(self._src, size)
        self._hasher.update(data)
        return data

    def read(self, size: int) -> bytes:
        avail = len(self._buf) - self._at
        if size <= avail:
            self._at += size
            return self._buf[self._at - size : self._at]
        parts = [self._buf[self._at :]] if avail else []
        need = size - avail
        self._buf, self._at = b"", 0
        if need >= self._refill:
            parts.append(self._fill(need))
        else:
            self._buf = self._fill(self._refill)
            self._at = min(need, len(self._buf))
            parts.append(self._buf[: self._at])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read."""
        if len(self._buf) - self._at < size:
            self._buf = self._buf[self._at :] + self._fill(max(size, self._refill))
            self._at = 0
        return self._buf[self._at : self._at + size]


def read_full(src: IO[bytes], size: int) -> bytes:
    """``size`` bytes of ``src``, or fewer only at its end (reads may come short)."""
    parts: list[bytes] = []
    while size > 0:
        data = src.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)
