"""zran checkpoints for gzip, with libz through ctypes: build them, resume from them.

Theory of operation (zlib's ``examples/zran.c``; SOCI's ``gzip_zinfo.c`` is the
same algorithm and these are its checkpoints). Deflate can only be resumed
where a block starts, given the 32 KiB of output before that point (the
window back-references may reach into). One inflate pass with ``Z_BLOCK``
stops at every block boundary; there, ``data_type`` tells:

* bit 7: we are at a block boundary (or just after the gzip header);
* bit 6: the block just finished was the member's last (no checkpoint there);
* bits 0-2: how many bits of the byte before ``total_in`` belong to the next
  block (deflate blocks are not byte aligned).

A checkpoint is taken at a boundary when nothing has been output yet, or when
more than ``span`` bytes were output since the last one (SOCI's rule, so our
span boundaries are SOCI's). Resuming needs ``inflatePrime`` to push those
0-7 bits back into a raw inflater, which stdlib ``zlib`` does not expose (and
shifting the byte stream instead breaks on stored blocks, which are byte
aligned relative to the *original* stream): hence libz through ctypes.

Concatenated gzip members (pigz, mgzip) are followed: at a member's end the
inflater is reset for the next header. A resumed raw inflater, at a member end,
skips the 8-byte trailer and switches to gzip mode for the members after.

Speed: output goes into one large buffer that slides (its last 32 KiB are
moved to the front when full), so a checkpoint's window is a slice, and each
libz call gets megabytes. ctypes drops the GIL around every foreign call, so
several threads inflate at once. Resuming (``inflate_into``) reads the
compressed bytes where they are and writes straight into the caller's
buffer (``_Pinned``: the buffer protocol, no ``bytes()`` copies), and can
check that a span ends exactly at the next checkpoint (``end``), which is
what lets ``spanstream`` verify a whole zTOC against its data.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from r8imfs._buffers import scratch
from r8imfs.engine.codecs import isal, libdeflate
from r8imfs.engine.codecs._native import address, cdll
from r8imfs.errors import CorruptLayer

WINDOW = 32768
#: SOCI's default span: a checkpoint every 4 MiB of uncompressed output.
SPAN_SIZE = 1 << 22
#: Output buffer of the one-pass builder (plus the window kept in front).
OUT_BUFFER = 4 << 20

Z_NO_FLUSH = 0
Z_BLOCK = 5
Z_OK = 0
Z_STREAM_END = 1
Z_NEED_DICT = 2
Z_BUF_ERROR = -5
_GZIP_AUTO = 47  # 32 + 15: zlib or gzip header, detected
_RAW = -15
_TRAILER = 8  # CRC32 + ISIZE after each gzip member


class _ZStream(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 (ctypes wants a class attribute)
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


class _ZngStream(ctypes.Structure):
    """zlib-ng's native ``zng_stream``: ``z_stream`` but for a 32-bit ``adler``."""

    _fields_ = [  # noqa: RUF012 (ctypes wants a class attribute)
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint32),
        ("total_in", ctypes.c_size_t),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint32),
        ("total_out", ctypes.c_size_t),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_uint32),
        ("reserved", ctypes.c_ulong),
    ]


@dataclass(frozen=True, slots=True)
class _Binding:
    """The few inflate calls zran needs, from libz or zlib-ng (``name``)."""

    name: str
    stream: type[ctypes.Structure]
    init: Callable[[Any, int], int]
    inflate: Callable[[Any, int], int]
    end: Callable[[Any], int]
    reset2: Callable[[Any, int], int]
    prime: Callable[[Any, int, int], int]
    set_dictionary: Callable[[Any, bytes, int], int]


def _declare(lib: ctypes.CDLL, prefix: str, ptr: Any) -> None:
    getattr(lib, prefix + "inflate").argtypes = [ptr, ctypes.c_int]
    getattr(lib, prefix + "inflateEnd").argtypes = [ptr]
    getattr(lib, prefix + "inflateReset2").argtypes = [ptr, ctypes.c_int]
    getattr(lib, prefix + "inflatePrime").argtypes = [ptr, ctypes.c_int, ctypes.c_int]
    getattr(lib, prefix + "inflateSetDictionary").argtypes = [ptr, ctypes.c_char_p, ctypes.c_uint]


def _libz() -> _Binding:
    lib = cdll("libz.so.1", "z")
    ptr = ctypes.POINTER(_ZStream)
    lib.zlibVersion.restype = ctypes.c_char_p
    lib.inflateInit2_.argtypes = [ptr, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    _declare(lib, "", ptr)
    version, size = lib.zlibVersion(), ctypes.sizeof(_ZStream)
    return _Binding(
        f"libz {version.decode()}",
        _ZStream,
        lambda ref, bits: int(lib.inflateInit2_(ref, bits, version, size)),
        lib.inflate,
        lib.inflateEnd,
        lib.inflateReset2,
        lib.inflatePrime,
        lib.inflateSetDictionary,
    )


def _zlib_ng() -> _Binding | None:
    """zlib-ng's native API, as exported by the ``zlib_ng`` extension module
    (``zng_`` symbols). About twice libz's inflate speed; None if absent."""
    try:
        from zlib_ng import zlib_ng

        lib = ctypes.CDLL(zlib_ng.__file__)
        lib.zng_inflateInit2.argtypes = [ctypes.POINTER(_ZngStream), ctypes.c_int]
        lib.zlibng_version.restype = ctypes.c_char_p
        version = lib.zlibng_version().decode()
    except (ImportError, OSError, AttributeError):
        return None
    _declare(lib, "zng_", ctypes.POINTER(_ZngStream))
    return _Binding(
        f"zlib-ng {version}",
        _ZngStream,
        lib.zng_inflateInit2,
        lib.zng_inflate,
        lib.zng_inflateEnd,
        lib.zng_inflateReset2,
        lib.zng_inflatePrime,
        lib.zng_inflateSetDictionary,
    )


def _load() -> _Binding:
    """zlib-ng when it is there, else the system's libz (``R8IMFS_ZRAN=libz`` forces
    libz, for comparisons)."""
    if os.environ.get("R8IMFS_ZRAN") != "libz":
        ng = _zlib_ng()
        if ng is not None:
            return ng
    return _libz()


_lib = _load()
#: which library inflates (for benchmarks and bug reports)
LIBRARY = _lib.name


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where inflate can resume: compressed offset ``cin`` (first full byte),
    uncompressed offset ``out``, ``bits`` (0-7) taken from byte ``cin - 1``,
    and the 32 KiB of output before ``out`` (zero-padded at the stream start).
    """

    cin: int
    out: int
    bits: int
    window: bytes

    @property
    def start(self) -> int:
        """The first compressed byte a resume reads (the partial byte, if any)."""
        return self.cin - 1 if self.bits else self.cin


class _Inflater:
    """One z_stream; ``inflateEnd`` on close (also when collected)."""

    def __init__(self, window_bits: int) -> None:
        self._open = False
        self.strm: Any = _lib.stream()
        self._ref = ctypes.byref(self.strm)
        ret = _lib.init(self._ref, window_bits)
        if ret != Z_OK:
            raise CorruptLayer(f"libz inflateInit2 failed ({ret})")
        self._open = True

    def inflate(self, flush: int) -> int:
        ret: int = _lib.inflate(self._ref, flush)
        if ret == Z_NEED_DICT or ret < 0 and ret != Z_BUF_ERROR:
            msg = self.strm.msg.decode(errors="replace") if self.strm.msg else f"error {ret}"
            raise CorruptLayer(f"gzip stream is corrupt: {msg}")
        return ret

    def reset(self, window_bits: int) -> None:
        if _lib.reset2(self._ref, window_bits) != Z_OK:
            raise CorruptLayer("libz inflateReset2 failed")

    def prime(self, bits: int, value: int) -> None:
        if _lib.prime(self._ref, bits, value) != Z_OK:
            raise CorruptLayer("libz inflatePrime failed")

    def set_dictionary(self, window: bytes) -> None:
        if _lib.set_dictionary(self._ref, window, len(window)) != Z_OK:
            raise CorruptLayer("libz inflateSetDictionary failed")

    def close(self) -> None:
        if self._open:
            self._open = False
            _lib.end(self._ref)

    def __del__(self) -> None:
        self.close()


class _SpanHasher:
    """sha256 of each span's compressed bytes, SOCI's way: span ``i`` is
    ``[start_i, cin_{i+1})``, the last one runs to the end of the blob; with
    ``bits`` the partial byte belongs to both neighbours.
    """

    def __init__(self) -> None:
        self.digests: list[str] = []
        self._hash: hashlib._Hash | None = None
        self._pos = 0  # bytes of the stream hashed (into the current span) so far
        self._last = b""  # the previous chunk's last byte: a partial byte may be there

    def checkpoint(self, chunk: memoryview, chunk_start: int, cp: Checkpoint) -> None:
        """A new span starts at ``cp``; ``chunk`` (at ``chunk_start``) holds ``cin``."""
        if self._hash is not None:
            self._hash.update(chunk[self._pos - chunk_start : cp.cin - chunk_start])
            self.digests.append("sha256:" + self._hash.hexdigest())
        self._hash = hashlib.sha256()
        if cp.bits:
            at = cp.cin - 1 - chunk_start
            self._hash.update(chunk[at : at + 1] if at >= 0 else self._last)
        self._pos = cp.cin

    def chunk_done(self, chunk: memoryview, chunk_start: int) -> None:
        if self._hash is not None:
            self._hash.update(chunk[self._pos - chunk_start :])
        self._pos = chunk_start + len(chunk)
        self._last = bytes(chunk[-1:])

    def finish(self) -> None:
        if self._hash is not None:
            self.digests.append("sha256:" + self._hash.hexdigest())
            self._hash = None


class CheckpointBuilder:
    """One pass over a gzip stream: checkpoints, span digests and the output.

    ``feed(chunk)`` takes compressed bytes in order and returns the
    uncompressed bytes they produced; ``finish()`` checks the stream ended.
    """

    def __init__(self, span: int = SPAN_SIZE, *, out_buffer: int = OUT_BUFFER) -> None:
        if span <= 0:
            raise ValueError("span must be positive")
        self.span = span
        self.checkpoints: list[Checkpoint] = []
        self.total_in = 0
        self.total_out = 0
        self._z = _Inflater(_GZIP_AUTO)
        self._out = bytearray(WINDOW + out_buffer)  # the window, then fresh output
        self._out_addr = address(self._out)
        self._pos = WINDOW
        self._last = 0
        self._ended = False  # the last member ended; more input means another member
        self._hasher = _SpanHasher()
        self._flushed = WINDOW  # output before this was returned already

    @property
    def span_digests(self) -> list[str]:
        return self._hasher.digests

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        view = memoryview(chunk)
        start = self.total_in
        produced: list[bytes] = []
        keep = chunk  # the buffer next_in points into must outlive the calls
        self._z.strm.next_in = ctypes.cast(ctypes.c_char_p(keep), ctypes.c_void_p)
        self._z.strm.avail_in = len(chunk)
        while self._z.strm.avail_in:
            self._step(produced, view, start)
        self._hasher.chunk_done(view, start)
        if self._pos > WINDOW:
            produced.append(bytes(self._out[self._flushed : self._pos]))
            self._flushed = self._pos
        return produced

    def _step(self, produced: list[bytes], chunk: memoryview, chunk_start: int) -> None:
        z = self._z
        if self._ended:
            z.reset(_GZIP_AUTO)
            self._ended = False
        if self._pos == len(self._out):
            produced.append(bytes(self._out[self._flushed : self._pos]))
            self._out[:WINDOW] = self._out[-WINDOW:]
            self._pos = self._flushed = WINDOW
        z.strm.next_out = self._out_addr + self._pos
        z.strm.avail_out = avail_out = len(self._out) - self._pos
        avail_in = z.strm.avail_in
        ret = z.inflate(Z_BLOCK)
        self.total_in += avail_in - z.strm.avail_in
        made = avail_out - z.strm.avail_out
        self.total_out += made
        self._pos += made
        if ret == Z_STREAM_END:
            self._ended = True
            return
        if ret == Z_BUF_ERROR and z.strm.avail_in:
            raise CorruptLayer("gzip stream is corrupt: inflate made no progress")
        dt = z.strm.data_type
        if (
            dt & 128
            and not dt & 64
            and (self.total_out == 0 or self.total_out - self._last > self.span)
        ):
            cp = Checkpoint(
                self.total_in,
                self.total_out,
                dt & 7,
                bytes(self._out[self._pos - WINDOW : self._pos]),
            )
            self.checkpoints.append(cp)
            self._hasher.checkpoint(chunk, chunk_start, cp)
            self._last = self.total_out

    def finish(self) -> None:
        """Raise ``CorruptLayer`` unless the stream ended cleanly; free libz state."""
        try:
            if not self._ended or not self.checkpoints:
                raise CorruptLayer("gzip stream is truncated")
            self._hasher.finish()
        finally:
            self._z.close()

    def close(self) -> None:
        self._z.close()


def inflate_from(
    cp: Checkpoint,
    data: bytes | bytearray | memoryview,
    skip: int,
    size: int,
    *,
    end_hint: Checkpoint | None = None,
) -> bytes | bytearray:
    """``size`` uncompressed bytes starting ``skip`` bytes after ``cp.out``.

    ``data`` holds the compressed stream from ``cp.start`` on (at least up to
    where the wanted bytes end). Fewer bytes come back only if the stream ends
    first; compressed bytes running out before that is a ``CorruptLayer``.

    ``end_hint``: the next checkpoint, where the span should end when the
    whole span is wanted (``skip`` 0, ``size`` up to it), ``data`` ending with
    the byte of its first bit. libdeflate, the fastest path, needs it; the
    span goes the other ways if that is not where the span ends (an index
    may have a point at the stream's end, which is not a block boundary).

    The buffer inflated into is what comes back, not a copy of it: the copy
    was ~9% of the mount's decode threads' samples on a gzip ``cp`` (perf),
    and the daemon's CPU for that ``cp`` went 8.53 → 8.20 s without it.
    """
    if size <= 0:
        return b""
    if not skip and end_hint is not None and libdeflate.available:
        out = _roomy(size)
        done = _libdeflate_span(cp, data, out, end_hint, room=True)
        _trim(out)
        if done:
            return out
    else:
        out = scratch(skip + size)
    got = inflate_into(cp, data, out)
    if got <= skip:
        return b""
    del out[got:]  # (the stream ended early: nothing moves)
    if skip:
        del out[:skip]
    return out


def inflate_into(
    cp: Checkpoint,
    data: bytes | bytearray | memoryview,
    out: bytearray,
    *,
    end: Checkpoint | None = None,
    to_end: bool = False,
) -> int:
    """Inflate from ``cp`` straight into ``out`` until it is full or the stream
    ends; the bytes made. ``data`` (the compressed stream from ``cp.start`` on)
    is read in place, not copied (see ``_Pinned``).

    With ``end``, the checkpoint that should follow, also check that the
    output stops exactly there: at a deflate block boundary, at compressed
    offset ``end.cin`` (relative to ``cp.start`` being ``data``'s first byte)
    with ``end.bits`` left in the byte before, else ``CorruptLayer``. A reader
    that inflates every span of a stream, checks each span against the next
    checkpoint and each window against the output before it
    (``spanstream``) then gets the stream's own bytes whatever the zTOC says.

    With ``to_end`` (the last span), also check that what the stream holds
    after ``out`` is zeros (a tar's padding) up to its end, and that it ends
    with ``data`` (zero bytes after the last member are tolerated, as gunzip
    does): a zTOC cannot cut the tar short.

    Except for the last span (``to_end``), a fast path inflates the span
    when it is there: with ``end``, libdeflate (``libdeflate``), ~20% faster
    than ISA-L, which checks where the span ends with a random marker put
    there; else, or if it refuses, ISA-L (``isal``), a quarter faster than
    zlib-ng, which checks the end with ``isal.inflate``'s ``end_bits``. A
    span neither can finish, or whose end neither can vouch for, is done
    again here, so errors, gzip member ends and the end check are libz's.
    """
    if end is not None and not to_end and _libdeflate_span(cp, data, out, end):
        return len(out)
    return _inflate_into(cp, data, out, end=end, to_end=to_end)


def inflate_span(
    cp: Checkpoint,
    data: bytes | bytearray | memoryview,
    size: int,
    *,
    end: Checkpoint | None = None,
    to_end: bool = False,
    in_place: bool = False,
) -> tuple[bytearray, int]:
    """``inflate_into`` a new buffer of ``size`` bytes: (the buffer, the bytes made);
    the buffer is cut to what was made.

    Made with room around it for libdeflate's window and end marker (trimmed
    after, in O(1)), so the span's output is not copied, and not zero-filled.
    ``in_place``: ``data`` came from ``spacious`` and holds the span alone; it
    is then edited in place rather than copied (and left as it was).
    """
    if end is None or to_end or not libdeflate.available:
        out = scratch(size)
        made = _inflate_into(cp, data, out, end=end, to_end=to_end)
    else:
        out = _roomy(size)
        done = _libdeflate_span(cp, data, out, end, room=True, in_place=in_place)
        _trim(out)
        made = size if done else _inflate_into(cp, data, out, end=end, to_end=to_end)
    del out[made:]  # (the stream ended early: nothing moves)
    return out, made


def _roomy(size: int) -> bytearray:
    """A buffer for ``size`` bytes with libdeflate's room before and after them
    (not zero-filled: the callers keep only what was made)."""
    return scratch(WINDOW + size + libdeflate.TAIL)


def _trim(out: bytearray) -> None:
    """``_roomy``'s buffer cut down to its ``size`` bytes (bytearray: O(1) at the
    front; the tail is a shrink in place)."""
    del out[:WINDOW]
    del out[len(out) - libdeflate.TAIL :]


def _inflate_into(
    cp: Checkpoint,
    data: bytes | bytearray | memoryview,
    out: bytearray,
    *,
    end: Checkpoint | None = None,
    to_end: bool = False,
) -> int:
    """``inflate_into`` by ISA-L, else libz."""
    if not to_end and isal.available:  # the fast path
        with _Pinned(data) as (base, length), _Pinned(out, writable=True) as (obase, olen):
            first = ctypes.c_ubyte.from_address(base).value if cp.bits and length else 0
            skip = 1 if cp.bits else 0
            if end is not None:  # exactly the span's bytes: its end is then checked
                length = min(length, end.cin - cp.start)
            if length > skip and isal.inflate(
                cp.bits,
                first,
                cp.window,
                base + skip,
                length - skip,
                obase,
                olen,
                end_bits=None if end is None else end.bits,
            ):
                return olen
    z = _Inflater(_RAW)
    try:
        with _Pinned(data) as (base, length):
            offset = 0
            if cp.bits:
                if not length:
                    raise CorruptLayer("span is empty")
                z.prime(cp.bits, ctypes.c_ubyte.from_address(base).value >> (8 - cp.bits))
                offset = 1
            z.set_dictionary(cp.window)
            with _Pinned(out, writable=True) as (out_base, out_len):
                exact = end is not None
                got, raw, ended = _run(z, base, length, offset, out_base, out_len, exact)
                if end is not None:
                    _check_end(z, base, length, raw, cp, end, got == out_len)
                if to_end and not ended:
                    _check_rest(z, base, length, raw)
                return got
    finally:
        z.close()


def _libdeflate_span(
    cp: Checkpoint,
    data: bytes | bytearray | memoryview,
    out: bytearray,
    end: Checkpoint,
    *,
    room: bool = False,
    in_place: bool = False,
) -> bool:
    """Whether libdeflate filled ``out`` with the span from ``cp``, ending at ``end``;
    ``room``: ``out`` is ``_roomy`` (the span goes between its rooms);
    ``in_place``: ``data`` is a ``spacious`` buffer, to be edited in place (its
    bytes as they were afterwards) rather than copied."""
    if not libdeflate.available or (room and len(cp.window) > WINDOW):
        return False
    front, back = (WINDOW, libdeflate.TAIL) if room else (0, 0)
    with _Pinned(data) as (base, length), _Pinned(out, writable=True) as (obase, olen):
        skip = 1 if cp.bits else 0
        span = end.cin - cp.start - skip
        if not length >= span + skip > skip:
            return False
        return bool(
            libdeflate.inflate(
                cp.bits,
                ctypes.c_ubyte.from_address(base).value if skip else 0,
                cp.window,
                base + skip,
                span,
                obase + front,
                olen - front - back,
                end_bits=end.bits,
                room=room,
                in_place=in_place
                and len(cp.window) <= WINDOW
                and length == span + skip
                and _spacious(data, base, length),
            )
        )


def spacious(n: int) -> memoryview:
    """A writable buffer for a compressed span of ``n`` bytes (a view of it) with
    the room around it that libdeflate's edits need, so that ``inflate_span``
    edits the span in place instead of copying it first (~0.2 CPU-s per GiB)."""
    buf = scratch(libdeflate.ROOM_BEFORE + n + libdeflate.ROOM_AFTER)
    return memoryview(buf)[libdeflate.ROOM_BEFORE : libdeflate.ROOM_BEFORE + n]


def _spacious(data: bytes | bytearray | memoryview, base: int, length: int) -> bool:
    """Whether ``data`` (``length`` bytes at ``base``) is just what ``spacious``
    made: libdeflate's edits then land in its rooms, never on other bytes."""
    if not isinstance(data, memoryview) or data.readonly or not isinstance(data.obj, bytearray):
        return False
    whole = data.obj
    return (
        len(whole) == libdeflate.ROOM_BEFORE + length + libdeflate.ROOM_AFTER
        and base - address(whole) == libdeflate.ROOM_BEFORE
    )


class _Pinned:
    """A buffer's address for libz, without copying it, for a ``with`` block.

    ``bytes`` give theirs through ``c_char_p``; anything else (``bytearray``,
    a ``memoryview`` slice, read-only or not) through the buffer protocol
    (``PyObject_GetBuffer``, released on exit), so a span cut out of a bigger
    buffer is not copied first (``bytes(data)`` was one more pass over every
    compressed byte).
    """

    def __init__(self, data: bytes | bytearray | memoryview, *, writable: bool = False) -> None:
        self._data = data
        self._flags = _PyBUF_WRITABLE if writable else _PyBUF_SIMPLE
        self._view: _PyBuffer | None = None

    def __enter__(self) -> tuple[int, int]:
        data = self._data
        if isinstance(data, bytes):
            return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0, len(data)
        view = _PyBuffer()
        if _get_buffer(ctypes.py_object(data), ctypes.byref(view), self._flags) != 0:
            raise BufferError("a contiguous buffer is needed")  # Python raised it already
        self._view = view
        return view.buf or 0, view.len

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            _release_buffer(ctypes.byref(self._view))
            self._view = None


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (stable layout since 3.3)."""

    _fields_ = [  # noqa: RUF012 (ctypes wants a class attribute)
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyBUF_SIMPLE = 0
_PyBUF_WRITABLE = 1
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


def _run(
    z: _Inflater, base: int, length: int, offset: int, out_base: int, out_len: int, exact: bool
) -> tuple[int, bool, bool]:
    """Inflate ``length`` bytes at ``base`` (from ``offset``) into ``out_len`` bytes
    at ``out_base`` until full or the stream ends: (bytes made, still raw, ended).

    ``exact``: leave the stream where the output ends. ``Z_NO_FLUSH`` with the
    buffer full at a block's end goes on to decode the next block's header
    (it needs no room), so the last byte is made with ``Z_BLOCK``, which stops
    at the boundary; one call per span more, not one per block.
    """
    z.strm.next_in = base + offset
    z.strm.avail_in = length - offset
    z.strm.next_out = out_base
    held = 1 if exact and out_len else 0
    z.strm.avail_out = out_len - held
    flush = Z_NO_FLUSH
    raw = True
    ended = False
    while True:
        if not z.strm.avail_out:
            if not held:
                break
            z.strm.avail_out, held, flush = held, 0, Z_BLOCK
        ret = z.inflate(flush)
        if ret == Z_STREAM_END:
            consumed = length - z.strm.avail_in
            if raw:  # a raw inflater leaves the member's trailer unread
                consumed += _TRAILER
                raw = False
            if consumed >= length:
                ended = True
                break  # the end of the (last) member
            z.reset(_GZIP_AUTO)
            z.strm.next_in = base + consumed
            z.strm.avail_in = length - consumed
        elif z.strm.avail_out and (ret == Z_BUF_ERROR or z.strm.avail_in == 0):
            if flush == Z_BLOCK and ret != Z_BUF_ERROR and z.strm.data_type & 128:
                continue  # stopped at a block boundary, with input left to read
            raise CorruptLayer("compressed span ends before the data it should hold")
    return out_len - held - int(z.strm.avail_out), raw, ended


def _check_rest(z: _Inflater, base: int, length: int, raw: bool) -> None:
    """Inflate what is left of ``data``: zeros only, then the stream's end."""
    scratch = bytearray(1 << 16)
    with _Pinned(scratch, writable=True) as (out_base, out_len):
        while True:
            z.strm.next_out, z.strm.avail_out = out_base, out_len
            before = z.strm.avail_in
            ret = z.inflate(Z_NO_FLUSH)
            made = out_len - int(z.strm.avail_out)
            if scratch[:made].strip(b"\0"):
                raise CorruptLayer("the stream goes on with data after the tar's end")
            if ret == Z_STREAM_END:
                consumed = length - int(z.strm.avail_in) + (_TRAILER if raw else 0)
                raw = False
                if consumed >= length or not ctypes.string_at(
                    base + consumed, length - consumed
                ).strip(b"\0"):
                    return  # the end of the last member (and zero padding after it)
                z.reset(_GZIP_AUTO)
                z.strm.next_in = base + consumed
                z.strm.avail_in = length - consumed
            elif not made and z.strm.avail_in == before:
                raise CorruptLayer("the stream is cut short after the tar's end")


def _check_end(
    z: _Inflater, base: int, length: int, raw: bool, cp: Checkpoint, end: Checkpoint, full: bool
) -> None:
    """After a span's output: the stream must be at ``end``'s block boundary.

    ``inflate(Z_BLOCK)`` with no room for output decodes what needs none (the
    block's end code, a member's trailer and the next member's header) and
    stops where the next block starts; ``data_type`` then has bit 7 set and
    the count of bits left in the last byte read.
    """
    where = f"span from compressed offset {cp.start} does not end at the next checkpoint"
    if not full:
        raise CorruptLayer(f"{where}: its stream ends first")
    for _ in range(4):  # end code; or member end, trailer, header (then bit 7)
        dt = z.strm.data_type
        if dt & 128 and not dt & 64:
            break
        ret = z.inflate(Z_BLOCK)
        if ret == Z_STREAM_END:
            consumed = length - z.strm.avail_in + (_TRAILER if raw else 0)
            raw = False
            if consumed >= length:
                raise CorruptLayer(f"{where}: its stream ends there")
            z.reset(_GZIP_AUTO)
            z.strm.next_in = base + consumed
            z.strm.avail_in = length - consumed
    dt = z.strm.data_type
    at = cp.start + length - int(z.strm.avail_in)
    if not dt & 128 or dt & 64 or at != end.cin or dt & 7 != end.bits:
        raise CorruptLayer(
            f"{where}: it stops at byte {at}, bit {dt & 7}"
            f"{'' if dt & 128 else ' inside a block'}; the checkpoint says byte {end.cin}, "
            f"bit {end.bits}"
        )


def gzip_header_end(data: bytes | bytearray | memoryview) -> int | None:
    """Where the gzip header at the start of ``data`` ends (the first deflate byte);
    None if ``data`` does not hold a whole header."""
    z = _Inflater(_GZIP_AUTO)
    try:
        with _Pinned(data) as (base, length):
            z.strm.next_in = base
            z.strm.avail_in = length
            z.strm.next_out = base  # never written: Z_BLOCK stops before any output
            z.strm.avail_out = 0
            z.inflate(Z_BLOCK)
            if not z.strm.data_type & 128:
                return None
            return length - int(z.strm.avail_in)
    finally:
        z.close()
