"""``extract`` of a seekable zstd or plain layer: ranged GETs and decodes in parallel.

A layer whose units are known without reading it (a seekable zstd blob's
seek table, one ranged GET of its tail; a plain tar cut in equal chunks) is
read by a ``fetchplan.UnitReader`` over plain ranged GETs: several in
flight, units decoded on every core, yielded in order
(``iter_range(keep=False)``) into the same untar worker as the streamed
path. The blob's digest is computed once, from the fetched ranges as they
arrive (``OrderedHash``), and checked before anything is published.

When this path cannot serve (no seek table, a registry that ignores
``Range``) ``extract_by_units`` returns None and the caller streams the
layer. When it fails on the layer's bytes (a frame that does not decode, a
digest that does not match, a broken tar), it raises ``UnitsFailed`` after
the sink took back what the layer wrote; the caller then streams the layer,
whose single pass tells a corrupt blob from a bad layer.
"""

from __future__ import annotations

import contextlib
import struct
import tarfile
from collections.abc import Callable
from typing import IO

import trio

from r8imfs._buffers import scratch
from r8imfs.engine.codecs.table import Compression
from r8imfs.engine.codecs.units import Decoder, UnitTable, decode_zstd, fixed_units, frame_units
from r8imfs.engine.codecs.zstdindex import read_seek_table
from r8imfs.errors import (
    CorruptLayer,
    DigestMismatch,
    R8imfsError,
    RangeUnsupported,
    RegistryError,
)
from r8imfs.image.fetchplan import DecodedCache, UnitReader
from r8imfs.image.orderedhash import OrderedHash
from r8imfs.image.pipe import consume_stream
from r8imfs.oci.config import Layer
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.mediatypes import LAYER_COMPRESSION
from r8imfs.oci.reference import Repository
from r8imfs.registry.client import RegistryClient

MiB = 1024 * 1024
#: stored bytes per unit of a plain layer (one ranged GET moves several)
PLAIN_UNIT = 1 * MiB
#: decoded bytes read ahead of the untar, and GET sizes: RSS stays near
#: WINDOW + PARALLEL * MAX_RANGE (compressed in flight) + what waits to be hashed
WINDOW = 16 * MiB  # 32 MiB: +50% peak RSS on a 512 MiB plain layer, no faster
MAX_RANGE = 8 * MiB
#: decoded units kept: the read-ahead must fit, or a prefetched unit is dropped
#: before the untar reaches it and fetched again (a single pass keeps none once read)
CACHE_BUDGET = WINDOW + 2 * MAX_RANGE
_FOOTER = 9  # the seekable format's footer: frame count, descriptor, magic

#: ``untar(decoded_tar) -> names``: the worker that reads the decoded tar to its end
Untar = Callable[[IO[bytes]], list[str]]


class UnitsFailed(Exception):
    """The units path failed on the layer's bytes (``error`` says how)."""

    def __init__(self, error: R8imfsError) -> None:
        super().__init__(error.message)
        self.error = error


async def extract_by_units(
    client: RegistryClient, repo: Repository, layer: Layer, untar: Untar
) -> list[str] | None:
    """The layer through ranged GETs and parallel decodes; None if it has no units.

    ``untar`` must read its file to the end (the blob is hashed from the
    ranges fetched) and must not commit: the caller commits after this
    returns, since only then is the digest known to match.
    """
    desc = layer.descriptor
    try:
        plan = await _plan(client, repo, desc)
    except RangeUnsupported:
        return None
    if plan is None:
        return None
    table, decode = plan
    try:
        return await _run(client, repo, desc, table, decode, untar)
    except RangeUnsupported:
        return None
    except (CorruptLayer, DigestMismatch) as exc:
        raise UnitsFailed(exc) from exc
    except tarfile.TarError as exc:
        bad = CorruptLayer(f"layer {layer.index} ({desc.digest}) is not a valid tar: {exc}")
        raise UnitsFailed(bad) from exc


async def _run(
    client: RegistryClient,
    repo: Repository,
    desc: Descriptor,
    table: UnitTable,
    decode: Decoder | None,
    untar: Untar,
) -> list[str]:
    try:
        return await _run_in_nursery(client, repo, desc, table, decode, untar)
    except BaseExceptionGroup as group:  # errors come out bare, as from the streamed path
        raise _first(group) from None


def _first(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        return _first(exc) if isinstance(exc, BaseExceptionGroup) else exc
    return group


async def _run_in_nursery(
    client: RegistryClient,
    repo: Repository,
    desc: Descriptor,
    table: UnitTable,
    decode: Decoder | None,
    untar: Untar,
) -> list[str]:
    async with trio.open_nursery() as nursery:
        hashed = OrderedHash(desc.digest.partition(":")[0], nursery)

        async def fetch(start: int, end: int) -> bytearray:
            return await _get_range(client, repo, desc.digest, start, end)

        reader = UnitReader(
            table,
            fetch,
            decode,
            nursery,
            cache=DecodedCache(CACHE_BUDGET),
            max_range=MAX_RANGE,
            max_window=WINDOW,
            on_fetched=hashed.add,
        )
        try:
            chunks = reader.iter_range(0, table.uncompressed_size, keep=False)
            async with contextlib.aclosing(chunks) as decoded:
                names = await consume_stream(decoded, untar)
            await hashed.verify(desc.size, desc.digest, f"blob {desc.digest}")
        finally:
            reader.close()
    return names


async def _plan(
    client: RegistryClient, repo: Repository, desc: Descriptor
) -> tuple[UnitTable, Decoder | None] | None:
    """The layer's units from what the registry says of it, without reading it all."""
    compression = LAYER_COMPRESSION.get(desc.media_type)
    if compression is Compression.NONE:
        return fixed_units(desc.size, PLAIN_UNIT), None
    if compression is not Compression.ZSTD or desc.size < 17:
        return None
    footer = await _get_range(client, repo, desc.digest, desc.size - _FOOTER, desc.size)
    count, descriptor, _ = struct.unpack("<IBI", footer)
    table_len = 8 + count * (12 if descriptor & 0x80 else 8) + _FOOTER
    if table_len > desc.size:
        return None
    tail = await _get_range(client, repo, desc.digest, desc.size - table_len, desc.size)
    frames = read_seek_table(_Tail(tail, desc.size), desc.size)
    if frames is None:
        return None
    return frame_units(frames, desc.size), decode_zstd


class _Tail:
    """A ``ReadAt`` over the last bytes of a blob, addressed by blob offsets."""

    def __init__(self, data: bytearray, size: int) -> None:
        self._data = data
        self._base = size - len(data)
        self.size = size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < self._base:
            raise CorruptLayer("seek table read outside the blob's tail")
        return bytes(self._data[offset - self._base : offset - self._base + size])


async def _get_range(
    client: RegistryClient, repo: Repository, digest: str, start: int, end: int
) -> bytearray:
    """Exactly ``[start, end)`` of a blob; ``RangeUnsupported`` if the registry sends all."""
    async with client.open_blob(repo, digest, start, end) as stream:
        if stream.status == 200 or stream.start != start:
            raise RangeUnsupported(f"{repo.registry} ignores Range for {digest}")
        buf = scratch(end - start)  # the final size; returned only if filled whole
        view, got = memoryview(buf), 0
        async for chunk in stream.chunks():
            if got + len(chunk) > len(buf):
                got += len(chunk)
                break
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
    if got != end - start:
        raise RegistryError(f"{repo.registry} sent {got} of {end - start} bytes of {digest}")
    return buf
