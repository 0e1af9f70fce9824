"""Build a layer's zTOC in one pass over its blob: checkpoints, span digests, TOC.

The compressed bytes go once through ``zran.CheckpointBuilder`` (gzip) or
straight through (an uncompressed tar); what comes out is walked by the stdlib
``tarfile`` (with ``GuardedTarInfo``) for the file TOC, the way
soci-snapshotter's ``ztoc/toc_builder.go`` walks it with Go's ``archive/tar``:

* ``uncompressed_offset`` is where an entry's data starts;
* the archive's uncompressed size is where Go's reader stops: after the two
  zero blocks that end the archive (or at the end of the stream), not the
  blocking-factor padding after them;
* ``mod_time`` is Go's ``time.MarshalText`` in UTC (RFC 3339, nanoseconds
  without trailing zeros); ``xattrs`` holds the entry's own PAX records;
* directory names keep the trailing ``/`` Go's reader reports.

Synchronous: callers run it in a worker thread (``pipe.consume_stream``).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, cast

from r8imfs import __version__
from r8imfs.engine.codecs import ztoc
from r8imfs.engine.codecs.zran import SPAN_SIZE, CheckpointBuilder
from r8imfs.engine.safetar import GuardedTarInfo
from r8imfs.engine.tarindex import ForwardFile
from r8imfs.errors import CorruptLayer

BUILD_TOOL = f"r8imfs v{__version__}"
READ_SIZE = 1 << 20
_BLOCK = tarfile.BLOCKSIZE

_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def build_gzip(fileobj: IO[bytes], span_size: int = SPAN_SIZE) -> ztoc.Ztoc:
    """The zTOC of a gzip layer read to its end from ``fileobj``."""
    builder = CheckpointBuilder(span_size)
    compressed = 0

    def output() -> Iterator[bytes]:
        nonlocal compressed
        while chunk := fileobj.read(READ_SIZE):
            compressed += len(chunk)
            yield from builder.feed(chunk)
        builder.finish()

    try:
        files, usize = toc_from_tar(output())
    finally:
        builder.close()
    return ztoc.Ztoc(
        version=ztoc.VERSION,
        build_tool_identifier=BUILD_TOOL,
        compressed_archive_size=compressed,
        uncompressed_archive_size=usize,
        files=tuple(files),
        compression=ztoc.GZIP,
        max_span_id=len(builder.checkpoints) - 1,
        span_digests=tuple(builder.span_digests),
        checkpoints=ztoc.encode_gzip_zinfo(span_size, builder.checkpoints),
    )


def build_tar(fileobj: IO[bytes], span_size: int = SPAN_SIZE) -> ztoc.Ztoc:
    """The zTOC of an uncompressed tar layer: fixed spans of ``span_size``."""
    spans = _FixedSpans(span_size)

    def output() -> Iterator[bytes]:
        while chunk := fileobj.read(READ_SIZE):
            spans.update(chunk)
            yield chunk

    files, usize = toc_from_tar(output())
    digests = spans.finish()
    return ztoc.Ztoc(
        version=ztoc.VERSION,
        build_tool_identifier=BUILD_TOOL,
        compressed_archive_size=spans.size,
        uncompressed_archive_size=usize,
        files=tuple(files),
        compression=ztoc.UNCOMPRESSED,
        max_span_id=len(digests) - 1,
        span_digests=tuple(digests),
        checkpoints=ztoc.encode_tar_zinfo(span_size, spans.size),
    )


class _FixedSpans:
    """sha256 of consecutive ``span`` byte slices of a stream."""

    def __init__(self, span: int) -> None:
        self.span = span
        self.size = 0
        self._digests: list[str] = []
        self._hash = hashlib.sha256()
        self._left = span

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = view[: self._left]
            self._hash.update(take)
            self.size += len(take)
            self._left -= len(take)
            view = view[len(take) :]
            if self._left == 0:
                self._digests.append("sha256:" + self._hash.hexdigest())
                self._hash, self._left = hashlib.sha256(), self.span

    def finish(self) -> list[str]:
        if self._left != self.span:
            self._digests.append("sha256:" + self._hash.hexdigest())
        return self._digests


def toc_from_tar(chunks: Iterator[bytes]) -> tuple[list[ztoc.FileMetadata], int]:
    """(entries, the archive's size as Go's tar reader sees it); drains ``chunks``."""
    fwd = ForwardFile(chunks)
    files: list[ztoc.FileMetadata] = []
    try:
        tf = tarfile.TarFile(
            fileobj=cast(IO[bytes], fwd), mode="r", encoding="utf-8", tarinfo=GuardedTarInfo
        )
        while (info := tf.next()) is not None:
            tf.members.clear()  # type: ignore[attr-defined]  # never extracted: drop them
            files.append(_metadata(info, tf.pax_headers))
        stop = tf.offset
        _check_stop(fwd, stop)
    except tarfile.ReadError as exc:
        raise CorruptLayer(f"layer is not a readable tar: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptLayer(f"layer is not a readable tar: {exc}") from exc
    total = fwd.drain()
    return files, min(total, stop + 2 * _BLOCK)


def _check_stop(fwd: ForwardFile, offset: int) -> None:
    """tarfile stops quietly at a header it rejects: only zeros or the end may follow."""
    for start, data in reversed(fwd.recent):
        if start <= offset < start + len(data):
            if data[offset - start : offset - start + _BLOCK].strip(b"\0"):
                raise CorruptLayer(f"invalid tar header at uncompressed offset {offset}")
            return


def _metadata(info: tarfile.TarInfo, global_pax: Mapping[str, str]) -> ztoc.FileMetadata:
    kind = _TYPES.get(info.type)
    if kind is None:
        what = "a sparse file" if info.type == tarfile.GNUTYPE_SPARSE else f"type {info.type!r}"
        raise CorruptLayer(f"tar entry {info.name[:200]!r} is {what}, which a zTOC cannot list")
    if info.sparse:
        raise CorruptLayer(f"tar entry {info.name[:200]!r} is a sparse file (no zTOC for it)")
    pax = {k: v for k, v in info.pax_headers.items() if global_pax.get(k) != v}
    name = info.name + "/" if kind == "dir" and not info.name.endswith("/") else info.name
    return ztoc.FileMetadata(
        name=name,
        type=kind,
        uncompressed_offset=info.offset_data,
        uncompressed_size=info.size,
        linkname=info.linkname,
        mode=info.mode,
        uid=info.uid,
        gid=info.gid,
        uname=info.uname,
        gname=info.gname,
        mod_time=go_time(pax.get("mtime"), info.mtime),
        devmajor=info.devmajor,
        devminor=info.devminor,
        xattrs=tuple(sorted(pax.items())),
    )


def go_time(pax_mtime: str | None, mtime: float) -> str:
    """Go's ``time.MarshalText`` of a tar mtime, in UTC: RFC 3339 with nanoseconds."""
    seconds, nanos = int(mtime), 0
    if pax_mtime:
        whole, _, frac = pax_mtime.partition(".")
        try:
            seconds = int(whole)
            nanos = int((frac + "000000000")[:9]) if frac.isdigit() else 0
        except ValueError:
            pass
        if seconds < 0 and nanos:  # "-1.5" is 1.5 s before the epoch
            seconds, nanos = seconds - 1, 1_000_000_000 - nanos
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{stamp}{fraction}Z"
