"""Streaming recompression of a layer to zstd:chunked + seekable zstd, for ``r8imfs zstd``.

Theory of operation. A layer blob streams in and a zstd blob streams out,
neither ever whole in memory:

    download ─▶ pipe.consume_stream (1 MiB pieces, hashed there: they must
    match the layer digest) ─▶ worker thread:
        ``GzipInflater`` (gzip members, zero padding; plain tars pass as they are)
        ─▶ zstdwrite.write_chunked: one zstd frame per run of tar headers and
           per body chunk (at most ``frame_size``; a safetensors header is a
           chunk of its own), compressed a batch at a time on ``threads``
           pool threads, in order; then the zstd:chunked TOC, tar-split and
           footer in skippable frames, and the seek table of the zstd seekable
           format last; hashes the tar (the diff_id, which must not change);
           the upload hashes the output
        ─▶ ``write`` callback: each batch of frames (one body chunk, or up to
           1 MiB of small files' frames) crosses back to trio into a bounded
           channel that the upload drains

The seek table sits in a skippable frame that every zstd decoder skips, so
the blob stays an ordinary ``tar+zstd`` layer (image-spec layer.md) while
the lazy reader (``zstdindex``) seeks by frame. Memory per layer is about
``2 × threads`` batches plus the channels.

Verification happens after the last byte went into the channel, and only a
verified pass may let the upload commit: ``recompress_stream`` returns (and
its caller then closes the channel) only when both digests matched.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, cast

from r8imfs import _threads
from r8imfs._units import MiB
from r8imfs.engine.codecs.decompress import INFLATE_ERRORS, READ, HashingReader
from r8imfs.engine.codecs.table import CODECS, Compression
from r8imfs.engine.codecs.zstdwrite import SeekableResult, write_chunked
from r8imfs.errors import CorruptLayer, DigestMismatch
from r8imfs.image.pipe import consume_stream
from r8imfs.oci.digest import Hasher

#: the largest chunk (frame) of body bytes: a random read fetches and decodes about one
#: (docs/engine-measurements.md, "Frame size of `r8imfs zstd` output")
FRAME_SIZE = 2 * MiB


@dataclass(frozen=True, slots=True)
class Recompressed:
    result: SeekableResult
    source_digest: str

    @property
    def diff_id(self) -> str:
        return self.result.diff_id


class _Writer:
    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write


def recompress_file(
    raw: IO[bytes],
    compression: str,
    write: Callable[[bytes], None],
    *,
    level: int = 3,
    frame_size: int = FRAME_SIZE,
    threads: int = 0,
    source_digest: Callable[[], str] | None = None,
) -> Recompressed:
    """Blocking: a compressed layer read from ``raw``, seekable zstd into ``write``.

    ``source_digest``: the blob is hashed elsewhere (``consume_stream``'s
    hasher) and this gives its digest once ``raw`` is read to the end; else
    it is hashed here. The output is never hashed here (the upload does).
    """
    codec = CODECS.get(cast(Compression, compression))
    if codec is None or codec.compression is Compression.ZSTD:  # zstd stays as it is
        raise CorruptLayer(f"cannot recompress a {compression!r} layer")
    src = HashingReader(raw) if source_digest is None else raw
    dst = cast(IO[bytes], _Writer(write))
    tar = codec.inflate(cast(IO[bytes], src))
    try:
        result = write_chunked(
            tar, dst, level=level, frame_size=frame_size, threads=threads, digest_output=False
        )
        while src.read(READ):  # the rest (padding after the last member) counts too
            pass
    except INFLATE_ERRORS as exc:
        raise CorruptLayer(f"layer does not decompress: {exc}") from exc
    if isinstance(src, HashingReader):
        return Recompressed(result, "sha256:" + src.hash.hexdigest())
    assert source_digest is not None
    return Recompressed(result, source_digest())


async def recompress_stream(
    source: AsyncIterable[bytes],
    compression: str,
    send: Callable[[bytes], Awaitable[object]],
    *,
    expected_digest: str,
    expected_diff_id: str | None,
    level: int = 3,
    frame_size: int = FRAME_SIZE,
    threads: int = 0,
) -> Recompressed:
    """Recompress ``source``; ``send`` is awaited on the trio side for each output piece.

    Returns only when the source hashed to ``expected_digest`` and the tar to
    ``expected_diff_id`` (when given); raises DigestMismatch/CorruptLayer otherwise.
    """

    def write(data: bytes) -> None:
        _threads.from_thread(send, data)

    hasher = Hasher()  # in the pump, off the worker thread that inflates

    def work(raw: IO[bytes]) -> Recompressed:
        return recompress_file(
            raw,
            compression,
            write,
            level=level,
            frame_size=frame_size,
            threads=threads,
            source_digest=lambda: hasher.digest,
        )

    try:
        done = await consume_stream(source, work, hasher=hasher)
    except CorruptLayer as exc:  # name the layer: the user sees one line
        exc.message = f"{expected_digest}: {exc.message}"
        raise
    verify(done, expected_digest, expected_diff_id)
    return done


def verify(done: Recompressed, expected_digest: str, expected_diff_id: str | None) -> None:
    if done.source_digest != expected_digest:
        raise DigestMismatch(f"layer {expected_digest} downloaded as {done.source_digest}")
    if expected_diff_id and done.diff_id != expected_diff_id:
        raise DigestMismatch(
            f"layer {expected_digest} decompresses to {done.diff_id}, but the image config "
            f"says its diff_id is {expected_diff_id}",
            hint="the image is inconsistent; nothing was pushed",
        )
