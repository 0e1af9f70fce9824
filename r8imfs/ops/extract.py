"""``extract``: the weights of an image, reading only the layers that hold them.

r8im's rule: first the layers whose build step ends with `` # weights``
(or whose history comment is ``weights``); if none of those holds a file
under ``src/weights/``, the layers whose build step starts with
``COPY . /src``. Within them, regular files under ``src/weights/``, prefix
stripped, whiteouts ignored.

Each chosen layer is one streaming pass: download → decompress → untar, in
a worker thread (``image.pipe``), hashing the compressed bytes on the way.
A zstd layer made of many frames (``r8imfs zstd``'s zstd:chunked, the
seekable format) has its frames decoded on every core as they arrive
(``engine.codecs.zstdstream``); a plain layer's chunks are the tar.
Every file is staged and only published once its layer's digest checks out,
so a corrupt or truncated blob never yields a file (``DigestMismatch``).
Weights are big and read whole, so a straight stream beats random access
here: each byte moved once.

When the image has a SOCI index (``image.tocs``), a gzip layer with a usable
zTOC is still streamed once, but inflated span by span on every core
(``engine.codecs.spanstream``: each span's digest checked before it is
inflated, every checkpoint checked against the data, the files written in
tar order). Each byte is hashed once: a zTOC named by a SOCI **v2** index is
pinned by the image manifest (manifest annotation → index → zTOC, each by
digest), so its span digests are as good as the layer's and the verified
spans are the blob; the blob's own digest is then not computed. A **v1**
index is only tied to the image through referrers, which anyone who can
push may add: its span digests prove nothing, so the whole blob is hashed
as on the plain path (docs/soci.md, "Trust"). A zTOC that cannot be fetched
or does not fit its layer is one warning, and that layer is inflated the
plain way; so is a layer whose zTOC turns out not to describe its verified
bytes (``ZtocMismatch``), after taking back what it wrote.

A layer that fails to decompress or untar is hashed to its end to tell a
corrupt blob (its bytes do not hash to its digest: a bad proxy or CDN node,
usually) from a bad layer (they do). A corrupt blob is fetched once more,
its files from the first try taken back (``Sink.rewind``); if the second
copy is corrupt too: "blob sha256:… is corrupt (…)".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast

import trio

from r8imfs._threads import run_io, run_sync
from r8imfs.engine.codecs import ztoc
from r8imfs.engine.codecs.decompress import (
    DECOMPRESSION_ERRORS,
    BackgroundHash,
    HashedChunks,
    chunks_of,
    corrupt,
)
from r8imfs.engine.codecs.socireader import SpanDigestMismatch
from r8imfs.engine.codecs.spanstream import (
    BlobSizeMismatch,
    OnBytes,
    SpanInflater,
    ZtocMismatch,
)
from r8imfs.engine.codecs.table import CODECS, codec_for
from r8imfs.engine.safetar import GuardedTarInfo
from r8imfs.engine.tarindex import ForwardFile
from r8imfs.engine.writer import BackgroundWriter, Chunk
from r8imfs.errors import CorruptLayer, DigestMismatch, NoWeightsFound, R8imfsError, UnsafeLayer
from r8imfs.image.pipe import consume_stream
from r8imfs.image.tocs import soci_index
from r8imfs.oci.config import WEIGHTS_DIR, Layer, pair_layers, weights_candidates
from r8imfs.oci.digest import short
from r8imfs.oci.mediatypes import layer_compression
from r8imfs.oci.reference import Repository
from r8imfs.ops.extractunits import UnitsFailed, extract_by_units
from r8imfs.ops.tocextract import extract_via_toc
from r8imfs.registry.client import Image, RegistryClient
from r8imfs.registry.referrers import FoundIndex, fetch_ztoc

log = logging.getLogger("r8imfs.ops")

COPY_BUF = 1024 * 1024
#: "1" or "0": read seekable-zstd and plain layers by parallel ranged GETs and
#: decodes (``extractunits``) or stream them; unset: parallel from this many cores
PARALLEL_ENV = "R8IMFS_PARALLEL_EXTRACT"
PARALLEL_MIN_CORES = 4
OnFile = Callable[[str, int], None]


class Sink(Protocol):
    """Where extracted files go; called from the worker thread."""

    def add(self, name: str, info: tarfile.TarInfo, body: IO[bytes]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def rewind(self) -> bool:
        """Take back what the current layer wrote; False if that cannot be done."""
        ...


class BlobCorrupt(DigestMismatch):
    """A blob whose bytes are not its digest's; worth fetching again."""


def weights_name(path: str) -> str | None:
    """``src/weights/a/b`` → ``a/b``; None for anything else."""
    path = path.lstrip("/")
    path = path[2:] if path.startswith("./") else path
    if not path.startswith(WEIGHTS_DIR):
        return None
    rest = path[len(WEIGHTS_DIR) :].strip("/")
    if not rest or any(p in ("", ".", "..") for p in rest.split("/")):
        return None
    if rest.rsplit("/", 1)[-1].startswith(".wh."):
        return None
    return rest


class _Cuttable:
    """A write-only file that can be cut off: after ``cut()`` writes vanish.

    Once a failed extract has given up on its output, nothing more may
    reach it.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out: IO[bytes] | None = out

    def write(self, data: Chunk) -> int:
        if self._out is not None:
            self._out.write(data)
        return len(data)

    def cut(self) -> IO[bytes] | None:
        out, self._out = self._out, None
        return out


#: Written after the last good member when a streamed tar fails: GNU tar then
#: says "Skipping to next header" and exits 2 instead of accepting an archive
#: that merely lacks its end blocks (which it does silently).
POISON = b"r8imfs: extract failed; this archive is incomplete\n".ljust(tarfile.BLOCKSIZE, b"\0")


class TarSink:
    """Files into one output tar, streamed straight through.

    Headers come from ``TarInfo.tobuf`` (PAX, so long names and big sizes
    fit); bodies are copied in 1 MiB pieces rather than through
    ``TarFile.addfile``'s 16 KiB loop (a third of the CPU of a 1 GiB extract
    went there). The archive ends as tarfile ends one: two zero blocks,
    padded to a whole 10 KiB record.

    A tar cannot take back what it wrote, so the caller writes ``-o FILE``
    to a temporary name and renames it only on success; on stdout a failure
    ends the archive with ``POISON`` instead of its end blocks and the exit
    status is non-zero (``discard``).
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._file = out
        self._out = _Cuttable(out)
        self._writer = BackgroundWriter(self._out.write)
        self._offset = 0
        self._discarded = False
        self._base = out.tell() if out.seekable() else None
        self._mark = 0  # where the current layer began

    def _write(self, data: bytes) -> None:
        if not self._discarded:
            self._offset += self._writer.write(data)

    def add(self, name: str, info: tarfile.TarInfo, body: IO[bytes]) -> None:
        new = tarfile.TarInfo(name)
        new.size, new.mode, new.mtime = info.size, info.mode, info.mtime
        new.uid, new.gid, new.uname, new.gname = info.uid, info.gid, info.uname, info.gname
        self._write(new.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        left = info.size
        while left:
            piece = body.read(min(left, COPY_BUF))
            if not piece:
                raise CorruptLayer(f"{info.name}: the layer ends inside this file")
            self._write(piece)
            left -= len(piece)
        self._write(bytes(-info.size % tarfile.BLOCKSIZE))

    def commit(self) -> None:
        self._mark = self._offset

    def abort(self) -> None:
        pass

    def rewind(self) -> bool:
        """A file (``-o``): truncate back to the layer's start. A pipe cannot."""
        if self._base is None or self._discarded:
            return False
        self._writer.close()
        self._file.seek(self._base + self._mark)
        self._file.truncate()
        self._offset = self._mark
        self._writer = BackgroundWriter(self._out.write)
        return True

    def close(self) -> None:
        self._write(bytes(2 * tarfile.BLOCKSIZE))
        self._write(bytes(-self._offset % tarfile.RECORDSIZE))
        self._writer.close()

    def discard(self, poison: bool = False) -> None:
        """Give up: nothing more reaches the output, except ``POISON`` if asked."""
        self._discarded = True
        with contextlib.suppress(Exception):  # a failed write is one more reason to give up
            self._writer.close()
        out = self._out.cut()
        if out is not None and poison:
            out.write(POISON)
            out.flush()


class DirSink:
    """Files into a directory; nothing may land outside it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._staged: list[tuple[Path, Path]] = []

    def target(self, name: str) -> Path:
        target = (self.root / name).resolve()
        if self.root not in target.parents:
            raise UnsafeLayer(f"refusing {name!r}: it would land outside {self.root}")
        return target

    def add(self, name: str, info: tarfile.TarInfo, body: IO[bytes]) -> None:
        target = self.target(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target(name)  # again, now that parents exist (a symlinked parent)
        fd, tmp = tempfile.mkstemp(prefix=".r8imfs-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                _copy_body(body, f, info.size)
            os.chmod(tmp, info.mode & 0o777 or 0o644)
        except BaseException:
            os.unlink(tmp)  # a half-written file is not staged: abort() would miss it
            raise
        self._staged.append((Path(tmp), target))

    def commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
        self._staged.clear()

    def abort(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def rewind(self) -> bool:
        self.abort()  # nothing of a failed layer was published
        return True


def _copy_body(body: IO[bytes], out: IO[bytes], size: int) -> None:
    """A file's body into ``out``; a big one through a ``BackgroundWriter``."""
    if size < 4 * COPY_BUF:
        shutil.copyfileobj(body, out, COPY_BUF)
        return
    writer = BackgroundWriter[bytes](out.write)
    try:
        while piece := body.read(COPY_BUF):
            writer.write(piece)
    finally:
        writer.close()


class _Body:
    """A member's body read straight from the forward file, as views of its chunks.

    tarfile reads a member's headers and leaves the file at its body (in
    ``"r"`` mode it seeks to the next header itself afterwards); a short
    body is the tar's "unexpected end of data".
    """

    def __init__(self, tar: ForwardFile, size: int) -> None:
        self._tar = tar
        self._left = size

    def read(self, size: int = -1) -> memoryview:
        size = self._left if size < 0 else min(size, self._left)
        view = self._tar.read_view(size)
        if size and not view:
            raise tarfile.ReadError("unexpected end of data")
        self._left -= len(view)
        return view


def _body(tf: tarfile.TarFile, tar: ForwardFile, member: tarfile.TarInfo) -> IO[bytes]:
    if member.sparse is None and tar.tell() == member.offset_data:
        return cast(IO[bytes], _Body(tar, member.size))
    body = tf.extractfile(member)  # a GNU sparse file: tarfile knows its map
    assert body is not None
    return body


class _BytesForwardFile(ForwardFile):
    """A ``ForwardFile`` whose ``read`` gives ``bytes`` even over ``bytearray``
    chunks (decoded spans, handed on uncopied): tarfile's header parsing wants
    bytes. Only headers and skipped bodies go through ``read``; extracted bodies
    are views (``read_view``)."""

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        return data if type(data) is bytes else bytes(data)


def _untar_members(
    stream: IO[bytes] | Iterator[bytes] | Iterator[bytes | memoryview],
    sink: Sink,
    on_file: OnFile | None,
) -> list[str]:
    """The weights files of a decoded tar (a stream, or its chunks) into the sink;
    their names."""
    names: list[str] = []
    # tarfile over a forward-only file rather than in stream mode ("r|"),
    # for the headers only: bodies are views of the inflater's own output
    # (``_Body``), not copies through the stream mode's 10 KiB record loop.
    # a file object is an Iterator too (of *lines*): tell them apart by ``read``
    chunks = chunks_of(cast(IO[bytes], stream)) if hasattr(stream, "read") else iter(stream)
    tar = _BytesForwardFile(cast(Iterator[bytes], chunks))  # views: read() makes bytes
    with tarfile.TarFile(
        fileobj=cast(IO[bytes], tar), mode="r", encoding="utf-8", tarinfo=GuardedTarInfo
    ) as tf:
        for member in tf:
            name = weights_name(member.name)
            if name is None or not member.isreg():
                continue
            body = _body(tf, tar, member)
            sink.add(name, member, body)
            names.append(name)
            if on_file:
                on_file(name, member.size)
    return names


def _untar_decoded(tar: IO[bytes], sink: Sink, on_file: OnFile | None) -> list[str]:
    """Worker thread, units path: untar an already decoded layer, read to its end
    (the blob is hashed from the fetched ranges); the caller commits."""
    try:
        names = _untar_members(tar, sink, on_file)
        while tar.read(COPY_BUF):
            pass
    except BaseException:
        sink.abort()
        raise
    return names


@dataclass(frozen=True, slots=True)
class _Spans:
    """A layer's validated zTOC, the pool its spans inflate on, and whether the
    image manifest pins it (SOCI v2: its span digests are then trusted)."""

    z: ztoc.Ztoc
    spans: ztoc.Spans
    pool: Executor
    pinned: bool


class ZtocUnusable(R8imfsError):
    """A zTOC does not describe its layer's (intact) bytes: inflate it the plain way."""


def _untar_spans(
    raw: IO[bytes], layer: Layer, sink: Sink, on_file: OnFile | None, sp: _Spans
) -> list[str]:
    """Worker thread: the layer through its zTOC, spans inflated on the pool.

    Pinned (v2): every byte the tar comes from is in a span whose digest the
    manifest pins, and every checkpoint is checked against the data
    (``spanstream``), so the blob's digest is not computed: a span that fails
    its digest is a corrupt blob, as a wrong blob digest is on the plain path.
    Not pinned (v1): the blob is hashed as well; a zTOC whose spans or
    checkpoints do not fit an intact blob is ``ZtocUnusable``.
    """
    desc = layer.descriptor
    what = f"layer {layer.index} ({desc.digest})"
    blob_hash = None if sp.pinned else BackgroundHash()
    # views of immutable chunks: safe to queue for the hash thread
    on_bytes = None if blob_hash is None else cast(OnBytes, blob_hash.update)
    inflater = SpanInflater(raw, sp.z, sp.spans, pool=sp.pool, name=what, on_bytes=on_bytes)
    try:
        names = _untar_members(cast(Iterator[bytes], inflater.decoded()), sink, on_file)
        inflater.finish()
    except BaseException as exc:
        sink.abort()
        inflater.close()
        if isinstance(exc, (CorruptLayer, tarfile.TarError, SpanDigestMismatch)):
            raise _bad_spans(layer, inflater, blob_hash, exc) from exc
        raise
    if blob_hash is not None:
        digest = "sha256:" + blob_hash.hexdigest()
        if digest != desc.digest:
            sink.abort()
            raise BlobCorrupt(f"{what}: blob {desc.digest} is corrupt (its bytes hash to {digest})")
    sink.commit()
    return names


def _bad_spans(
    layer: Layer, inflater: SpanInflater, blob_hash: BackgroundHash | None, exc: BaseException
) -> R8imfsError:
    """What a failure on the span path means: a corrupt blob (retried), a zTOC
    that does not fit the blob (inflated the plain way) or a bad layer."""
    digest = layer.descriptor.digest
    if blob_hash is not None:  # v1: only the blob's own digest tells
        try:
            inflater.finish(check=False)  # the rest, hashed on the way
            intact = "sha256:" + blob_hash.hexdigest() == digest
        except (OSError, R8imfsError):
            intact = False
    else:  # pinned: a span that fails its digest, or a blob of the wrong length, is corrupt
        intact = not isinstance(exc, (SpanDigestMismatch, BlobSizeMismatch))
    detail = exc.message if isinstance(exc, R8imfsError) else f"is not a valid tar: {exc}"
    if not intact:
        return BlobCorrupt(f"layer {layer.index}: blob {digest} is corrupt ({detail})")
    if isinstance(exc, (ZtocMismatch, SpanDigestMismatch)):
        return ZtocUnusable(detail)
    sep = " " if detail.startswith(("is ", "does ")) else ": "
    return CorruptLayer(f"layer {layer.index} ({digest}){sep}{detail}")


def _untar_weights(
    raw: IO[bytes],
    layer: Layer,
    sink: Sink,
    on_file: OnFile | None,
    pool: Executor,
    spans: _Spans | None = None,
) -> list[str]:
    """Worker thread: hash, decompress and untar one layer into the sink.

    The blob's chunks are hashed as they pass, uncopied; the codec decodes
    them (a zstd layer's frames on ``pool``, a plain layer's chunks are the
    tar); what the untar leaves (padding, skippable frames) is hashed too.
    """
    if spans is not None:
        return _untar_spans(raw, layer, sink, on_file, spans)
    desc = layer.descriptor
    hashed = HashedChunks(raw)
    try:
        decoded = codec_for(desc.media_type).decode_chunks(hashed, pool)
        try:
            names = _untar_members(decoded, sink, on_file)
        finally:
            close = getattr(decoded, "close", None)
            if close is not None:
                close()  # frames in flight are dropped
        hashed.drain()
    except DECOMPRESSION_ERRORS as exc:
        sink.abort()
        raise _bad_layer(layer, hashed, exc) from exc
    except (tarfile.TarError, CorruptLayer) as exc:
        sink.abort()
        raise _bad_layer(layer, hashed, exc) from exc
    except BaseException:
        sink.abort()
        raise
    digest = "sha256:" + hashed.hash.hexdigest()
    if digest != desc.digest:
        sink.abort()
        raise BlobCorrupt(
            f"layer {layer.index}: blob {desc.digest} is corrupt (its bytes hash to {digest})"
        )
    sink.commit()
    return names


def _bad_layer(layer: Layer, hashed: HashedChunks, exc: BaseException) -> R8imfsError:
    """A corrupt blob (hash it to the end: not its digest) or a bad layer (it is)."""
    digest = layer.descriptor.digest
    what = f"layer {layer.index} ({digest})"
    if isinstance(exc, CorruptLayer):
        detail = exc.message
    elif isinstance(exc, tarfile.TarError):
        detail = f"is not a valid tar: {exc}"
    else:
        detail = corrupt("", exc).message.strip()
    try:
        hashed.drain()
        intact = "sha256:" + hashed.hash.hexdigest() == digest
    except (OSError, R8imfsError):
        intact = False  # the rest did not arrive: the transfer, not the layer
    if intact:
        sep = " " if detail.startswith(("is ", "does ")) else ": "
        return CorruptLayer(f"{what}{sep}{detail}")
    return BlobCorrupt(f"layer {layer.index}: blob {digest} is corrupt ({detail})")


async def extract(
    client: RegistryClient,
    image: Image,
    sink: Sink,
    on_file: OnFile | None = None,
    *,
    soci: bool = True,
) -> list[str]:
    """Write the image's weights into ``sink``; the names written.

    ``soci``: use the image's SOCI index, if any, to inflate on every core.
    """
    layers = pair_layers(image.manifest, image.config)
    first, fallback = weights_candidates(layers)
    # zstd frames and SOCI spans decode here, on every core
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="r8imfs-decode")
    repo = image.reference.repository
    try:
        # no layer a zTOC could describe (zstd), no lookup: one or two round trips less
        lookup = soci and any(_may_have_ztoc(layer) for layer in first + fallback)
        found = await soci_index(client, repo, image.manifest) if lookup else None
        for group in (first, fallback):
            # a group's zTOCs only when it is reached (the fallback rarely is), at once
            ztocs = await _ztocs(client, image, found, group, pool) if found else {}
            names: list[str] = []
            for layer in group:
                toc = await extract_via_toc(client, repo, layer, sink, weights_name, on_file)
                if toc is not None:  # only the weights' chunks, each verified (ops/tocextract)
                    names += toc
                    continue
                spans = ztocs.get(layer.descriptor.digest)
                names += await _extract_layer(client, image, layer, sink, on_file, pool, spans)
            if names:
                return names
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    raise NoWeightsFound(
        f"no weights found in {image.reference}",
        hint="looked for files under src/weights/ in layers made by '... # weights' "
        "or 'COPY . /src'",
    )


def _may_have_ztoc(layer: Layer) -> bool:
    """Whether the layer's codec says a zTOC can describe it (an unknown media
    type: no; extracting that layer fails on its own)."""
    compression = layer_compression(layer.descriptor.media_type)
    return compression is not None and CODECS[compression].ztoc_possible


def parallel_extract() -> bool:
    """Whether to read layers by units. On 2 cores the single stream wins: the
    decode threads, the receive loop and the untar share two cores under one GIL,
    and a 512 MiB layer took 1.4-2.0 s streamed against 2.6-2.8 s by units, at a
    third of the peak RSS (docs/benchmarks.md, "Issue 12")."""
    forced = os.environ.get(PARALLEL_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return (os.cpu_count() or 1) >= PARALLEL_MIN_CORES


async def _extract_by_units(
    client: RegistryClient, repo: Repository, layer: Layer, sink: Sink, on_file: OnFile | None
) -> list[str] | None:
    """The layer by ranged GETs and parallel decodes (``extractunits``), committed;
    None when that path cannot serve it or failed on its bytes (files taken back)."""
    untar = functools.partial(_untar_decoded, sink=sink, on_file=on_file)
    try:
        names = await extract_by_units(client, repo, layer, untar)
    except UnitsFailed as exc:
        if not await run_io(sink.rewind):
            raise exc.error from exc
        log.info("%s; streaming the layer instead", exc.error)
        return None
    except BaseException:
        with trio.CancelScope(shield=True):
            await run_io(sink.abort)
        raise
    if names is not None:
        await run_io(sink.commit)
    return names


async def _extract_layer(
    client: RegistryClient,
    image: Image,
    layer: Layer,
    sink: Sink,
    on_file: OnFile | None,
    pool: Executor,
    spans: _Spans | None,
) -> list[str]:
    """One layer into the sink; a corrupt blob is fetched once more before failing."""
    repo = image.reference.repository
    if spans is None and parallel_extract():
        by_units = await _extract_by_units(client, repo, layer, sink, on_file)
        if by_units is not None:
            return by_units
    untar = functools.partial(
        _untar_weights, layer=layer, sink=sink, on_file=on_file, pool=pool, spans=spans
    )
    try:
        async with client.open_blob(repo, layer.descriptor.digest) as blob:
            return await consume_stream(blob.chunks(), untar)
    except ZtocUnusable as exc:
        if not await run_io(sink.rewind):
            raise CorruptLayer(f"layer {layer.index}: {exc.message}") from exc
        log.warning(
            "layer %d (%s): its zTOC does not fit the layer: %s; inflating it on one core",
            layer.index,
            short(layer.descriptor.digest),
            exc.message,
        )
        untar = functools.partial(
            _untar_weights, layer=layer, sink=sink, on_file=on_file, pool=pool
        )
        try:
            async with client.open_blob(repo, layer.descriptor.digest) as blob:
                return await consume_stream(blob.chunks(), untar)
        except BlobCorrupt as again:
            if not await run_io(sink.rewind):
                raise
            log.info("%s; fetching it again", again)
    except BlobCorrupt as exc:
        if not await run_io(sink.rewind):
            raise
        log.info("%s; fetching it again", exc)
    try:
        async with client.open_blob(repo, layer.descriptor.digest) as blob:
            return await consume_stream(blob.chunks(), untar)
    except BlobCorrupt as exc:
        exc.message += "; the same when fetched again"
        raise


async def _ztocs(
    client: RegistryClient, image: Image, found: FoundIndex, layers: list[Layer], pool: Executor
) -> dict[str, _Spans]:
    """Validated zTOCs of ``layers``, by layer digest, fetched all at once."""
    repo = image.reference.repository
    # v2 only when found through the manifest's own annotation: pinned by its digest
    pinned = found.version == 2 and found.how == "annotation"
    refs = found.ztocs
    wanted = {x.descriptor.digest: x for x in layers if x.descriptor.digest in refs}
    got: dict[str, tuple[ztoc.Ztoc, ztoc.Spans] | R8imfsError] = {}

    def check(data: bytes, size: int, span_size: int | None) -> tuple[ztoc.Ztoc, ztoc.Spans]:
        z = ztoc.decode(data)
        return z, ztoc.validate(z, size, span_size)

    async def one(layer: Layer) -> None:
        desc, ref = layer.descriptor, refs[layer.descriptor.digest]
        try:
            data = await fetch_ztoc(client, repo, ref)
            got[desc.digest] = await run_sync(check, data, desc.size, ref.span_size)
        except R8imfsError as exc:
            got[desc.digest] = exc

    async with trio.open_nursery() as nursery:
        for layer in wanted.values():
            nursery.start_soon(one, layer)
    out: dict[str, _Spans] = {}
    for digest, layer in wanted.items():  # in layer order, for the log
        ref, result = refs[digest], got[digest]
        if isinstance(result, R8imfsError):
            log.warning(
                "layer %d (%s): zTOC %s is not usable: %s; inflating the layer on one core",
                layer.index,
                short(digest),
                short(ref.digest),
                result.message,
            )
            continue
        z, spans = result
        out[digest] = _Spans(z, spans, pool, pinned)
        log.info(
            "layer %d (%s): %d spans, inflated in parallel through zTOC %s",
            layer.index,
            short(digest),
            len(spans),
            short(ref.digest),
        )
    return out
