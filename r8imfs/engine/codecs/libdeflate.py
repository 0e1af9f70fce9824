"""libdeflate through ctypes: the fastest inflate of a whole gzip span.

libdeflate (``libdeflate0`` on Debian) inflates this project's weights about
a quarter faster than ISA-L and more than twice as fast as zlib (bf16-like
data, one core, docs/benchmarks.md). It inflates a whole buffer in one call
and has no API to resume a stream: no preset dictionary, no way to start in
the middle of a byte, no way to stop at a block boundary. A zran span needs
all three (``zran``'s doc). They are given to it by editing its *input*, so
that the span becomes a complete deflate stream of its own:

1. **The window** goes first, as one stored block (non-final): the decoder
   outputs it, and the span's back-references then find it in its output,
   as they would in the real stream's. The output buffer has room for it in
   front (``WINDOW`` bytes more), and the caller gets what follows.
2. **The checkpoint's bits.** The span's first block starts ``8 - bits``
   bits into its first byte. Blocks that output nothing are put between the
   window and the span, with a total length that lands there: an empty
   fixed-Huffman block is 10 bits, and an empty dynamic-Huffman block is
   built here 103 bits long; one of those and 0-3 of these reach every bit
   position. The last of their bits share the byte with the span's first
   bits, which is why stored blocks in the span stay aligned as they were.
3. **The end.** The bits after the next checkpoint (where the span's last
   block ends) are replaced by a *final stored block* holding ``TAIL``
   (256) bytes drawn fresh from ``os.urandom`` for this call.

The span is accepted only if libdeflate then succeeds, having read exactly
the input and made exactly window + span + ``TAIL`` bytes, the last
``TAIL`` of them the random ones. That is the check ISA-L's state and
libz's ``Z_BLOCK`` make (``isal``'s doc), which a zTOC read through
``spanstream`` relies on: at a true block boundary the decoder reads the
edited bits as the header written there and copies the random bytes out.
Anywhere else it decodes them as whatever it is in the middle of, and the
random bytes must still come out last, with the input ending right after:

* inside a Huffman-coded block, they are read as codes. Copying ``TAIL``
  random bytes through codes that are fixed before they were drawn, and
  finishing (an end-of-block code, in a block marked final) within the
  same bits, means compressing random data: each code that outputs a byte
  in fewer than 8 bits pins that byte to the few values it codes for.
  An end check made with a *fixed* tail fails exactly here: a random search
  found a cut one byte into a full flush's empty final block, with 5 more
  output bytes claimed, whose edited bits read as a 5-byte match (the tests
  keep it);
* inside a stored block's data, they are copied as data, but so are the
  header bytes before them: a span whose output ends with those bytes is
  refused (``_echoes``; a true span's output ends with them by chance one
  time in 2^40 or so, and then goes to ISA-L);
* with the stream at a boundary but a different output count or bit, the
  header is misread or the sizes differ.

So a lying zTOC gets a span accepted only by guessing random bytes it has
not seen. The tests hold what this path accepts to libz's boundaries, on
streams with every kind of block, around every boundary and at random cuts
and output sizes (``tests/unit/engine/codecs/test_libdeflate.py``).

This is a fast path only, like ``isal``: ``inflate`` returns None when it
cannot vouch for all the bytes (a corrupt stream, a member ending inside
the span, a span over ``MAX_SPAN``), and the caller does the span again
with ISA-L or libz. The compressed span is copied once, into a per-thread
buffer (~0.1-0.25 s per GiB; the inflate saves ~0.7 s), unless the caller
made room around it (``in_place``, ``zran.spacious``: ``extract``'s spans,
~5% of its CPU): the edits are then made there and undone after. The output
goes straight into the caller's buffer when it has room around it (``room``).
``R8IMFS_LIBDEFLATE=0`` turns the path off.
"""

from __future__ import annotations

import ctypes
import os
import threading
import zlib

from r8imfs.engine.codecs._native import address, cdll

WINDOW = 32768
#: Spans bigger than this go to ISA-L, which writes straight into the caller's
#: buffer (the per-thread buffers here would keep that much memory per thread).
MAX_SPAN = 32 << 20

_SUCCESS = 0


class _Bits:
    """A deflate bit string, least significant bit first (RFC 1951, 3.1.1)."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, n: int) -> None:
        """A header field or extra bits: least significant bit first."""
        self.value |= value << self.count
        self.count += n

    def code(self, code: int, n: int) -> None:
        """A Huffman code: most significant bit first."""
        for i in range(n - 1, -1, -1):
            self.put((code >> i) & 1, 1)


def _fixed_empty() -> _Bits:
    b = _Bits()
    b.put(0, 1)  # BFINAL 0
    b.put(1, 2)  # BTYPE 01: fixed Huffman
    b.code(0, 7)  # end of block (symbol 256): 0000000
    return b


def _dynamic_empty() -> _Bits:
    """An empty dynamic-Huffman block, 103 bits: odd, which a fixed one is not.

    Every code in it is complete (no decoder special case is relied on): the
    literal/length code has literal 0 and end-of-block, one bit each; the
    distance code has two one-bit codes; the code-length code has ``1`` (one
    bit), ``0`` and ``18`` (two bits each), and the 255 zero lengths between
    literal 0 and end-of-block go as three runs of ``18``.
    """
    b = _Bits()
    b.put(0, 1)  # BFINAL 0
    b.put(2, 2)  # BTYPE 10: dynamic Huffman
    b.put(257 - 257, 5)  # HLIT: 257 literal/length codes
    b.put(2 - 1, 5)  # HDIST: 2 distance codes
    order = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
    lengths = {1: 1, 0: 2, 18: 2}
    b.put(18 - 4, 4)  # HCLEN: the first 18 of ``order`` (up to symbol 1)
    for sym in order[:18]:
        b.put(lengths.get(sym, 0), 3)
    one, run = (0, 1), (0b11, 2)  # canonical: 1 -> 0, 0 -> 10, 18 -> 11
    b.code(*one)  # literal 0: length 1
    for repeat in (138, 106, 11):  # literals 1-255: length 0
        b.code(*run)
        b.put(repeat - 11, 7)
    b.code(*one)  # end of block: length 1
    b.code(*one)  # distance 0: length 1
    b.code(*one)  # distance 1: length 1
    b.code(1, 1)  # the block's only symbol: end of block (literal 0 is 0, it 1)
    return b


def _pads() -> tuple[tuple[bytes, int], ...]:
    """For each bit position 0-7: empty non-final blocks ending there, as bytes
    (the last one partial), and the bits they fill in their last byte."""
    fixed, dynamic = _fixed_empty(), _dynamic_empty()
    assert (fixed.count, dynamic.count) == (10, 103)
    out = []
    for t in range(8):
        b = _Bits()
        if t % 2:
            b.put(dynamic.value, dynamic.count)
        while b.count % 8 != t:
            b.put(fixed.value, fixed.count)
        out.append((b.value.to_bytes((b.count + 7) // 8, "little"), t))
    return tuple(out)


_PADS = _pads()
#: ``inflate(in_place=True)``: the bytes before the span's first full byte that
#: the edits may use (the window as a stored block, the empty blocks; the byte
#: before the span included), and after its last (the final stored block).
ROOM_BEFORE = 5 + WINDOW + max(len(pad) for pad, _ in _PADS)
#: Random bytes in the final stored block put where the span must end (the
#: module's doc): what only a decoder at a block boundary there copies out.
TAIL = 256
ROOM_AFTER = 2 + 4 + TAIL


def _load() -> ctypes.CDLL | None:
    if os.environ.get("R8IMFS_LIBDEFLATE", "1") == "0":
        return None
    try:
        lib = cdll("libdeflate.so.0", "deflate")
    except OSError:
        return None
    lib.libdeflate_alloc_decompressor.argtypes = []
    lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
    lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
    lib.libdeflate_free_decompressor.restype = None
    size_p = ctypes.POINTER(ctypes.c_size_t)
    lib.libdeflate_deflate_decompress_ex.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
        ctypes.c_size_t,
        size_p,
        size_p,
    ]
    lib.libdeflate_deflate_decompress_ex.restype = ctypes.c_int
    return lib


_lib = _load()


class _Thread:
    """One thread's decompressor and buffers (libdeflate's is not thread-safe)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.d = lib.libdeflate_alloc_decompressor()
        if not self.d:
            raise MemoryError("libdeflate_alloc_decompressor")
        self.src = bytearray()
        self.dst = bytearray()
        self.got_in = ctypes.c_size_t()
        self.got_out = ctypes.c_size_t()

    def __del__(self) -> None:
        if getattr(self, "d", None):
            self.lib.libdeflate_free_decompressor(self.d)
            self.d = None


_local = threading.local()


def _thread(lib: ctypes.CDLL) -> _Thread:
    t: _Thread | None = getattr(_local, "t", None)
    if t is None:
        t = _local.t = _Thread(lib)
    return t


def inflate(
    bits: int,
    first: int,
    window: bytes,
    base: int,
    length: int,
    out_base: int,
    out_len: int,
    *,
    end_bits: int,
    room: bool = False,
    in_place: bool = False,
) -> int | None:
    """Raw-inflate the span at address ``base`` (``length`` bytes, exactly up to
    the next checkpoint's first full byte) into the ``out_len`` bytes at
    ``out_base``, resuming after ``bits`` bits taken from the byte ``first``
    (the one before ``base``; ignored when ``bits`` is 0) with ``window`` as
    history. ``out_len`` if the output fills exactly and ends at a block
    boundary ``end_bits`` bits before the input's end; else None (try ISA-L).

    ``room``: the ``len(window)`` bytes before ``out_base`` and the ``TAIL``
    bytes after its ``out_len`` are the caller's to overwrite, which saves
    copying the output.

    ``in_place``: likewise for the input. The ``ROOM_BEFORE`` bytes before
    ``base - 1`` and the ``ROOM_AFTER`` bytes after the span are the caller's
    to overwrite, and the edits are made there rather than in a copy of the
    span (the byte before ``base`` must be ``first`` when ``bits`` is not 0).
    The two bytes of the span that are edited (``base - 1`` and its last)
    are as they were again when this returns.
    """
    lib = _lib
    if lib is None or not 0 < out_len <= MAX_SPAN or length < 1 or len(window) > 65535:
        return None
    t = _thread(lib)
    pad, fill = _PADS[(8 - bits) % 8]
    head = 5 + len(window) if window else 0
    start = head + len(pad) - (1 if fill else 0)  # where the span's bytes go
    at = start + (1 if fill else 0)  # where its first full byte goes
    front = (_stored_header(len(window), final=False) + window if window else b"") + pad
    if in_place:
        src_base = base - at
    else:
        size = start + length + 8 + TAIL  # room for the final block
        if len(t.src) < size:
            t.src.extend(bytes(size - len(t.src)))
        src_base = address(t.src)
        ctypes.memmove(src_base + at, base, length)
    # the final stored block, ``end_bits`` bits before the end of the span's
    # last byte: its header bits (BFINAL 1, BTYPE 00), zero bits up to a
    # byte, its length and complement, and ``TAIL`` fresh random bytes
    cut, o = divmod((at + length) * 8 - end_bits, 8)
    data_at = cut + 1 if o + 3 <= 8 else cut + 2
    total = data_at + 4 + TAIL
    kept = (ctypes.string_at(src_base + start, 1), ctypes.string_at(src_base + cut, 1))
    ctypes.memmove(src_base, front, len(front))
    if fill:  # the pad's last bits, then the checkpoint's from ``first``
        _poke(src_base + start, pad[-1] | (first & (0xFF << fill) & 0xFF))
    _poke(src_base + cut, (kept[1][0] & ((1 << o) - 1)) | (1 << o))
    if data_at == cut + 2:
        _poke(src_base + cut + 1, 0)
    marker = os.urandom(TAIL)
    ending = _stored_header(TAIL, final=True)[1:] + marker
    ctypes.memmove(src_base + data_at, ending, len(ending))
    edited = ctypes.string_at(src_base + cut, data_at + 4 - cut)
    w = len(window)
    if room:
        dst_base = out_base - w
    else:
        dst = t.dst
        if len(dst) < w + out_len + TAIL:
            dst.extend(bytes(w + out_len + TAIL - len(dst)))
        dst_base = address(dst)
    made = w + out_len + TAIL
    try:
        ret = lib.libdeflate_deflate_decompress_ex(
            t.d, src_base, total, dst_base, made, t.got_in, t.got_out
        )
    finally:
        if in_place:  # the caller's bytes as they were
            ctypes.memmove(src_base + start, kept[0], 1)
            if cut < at + length:  # (else the end block starts in the room after)
                ctypes.memmove(src_base + cut, kept[1], 1)
    if ret != _SUCCESS or t.got_out.value != made or t.got_in.value != total:
        return None
    if ctypes.string_at(dst_base + w + out_len, TAIL) != marker:
        return None
    n = min(len(edited), w + out_len)  # (a tiny span: what there is)
    if _echoes(ctypes.string_at(dst_base + w + out_len - n, n), edited[len(edited) - n :]):
        return None
    if not room:
        ctypes.memmove(out_base, dst_base + w, out_len)
    return out_len


def _poke(where: int, value: int) -> None:
    ctypes.c_ubyte.from_address(where).value = value


def _stored_header(n: int, *, final: bool) -> bytes:
    """A stored block's header on a byte boundary: BFINAL, BTYPE 00 and the
    padding in one byte, then LEN and NLEN (its complement), little-endian."""
    return bytes((int(final), n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF))


def _echoes(out_tail: bytes, edited: bytes) -> bool:
    """Whether the span's output ends with the final block's header bytes: they
    may have been read as the data of a stored block (see the module's doc)."""
    return out_tail == edited


def _self_test() -> bool:
    """A known stream cut at a full flush: inflated from its start and from the
    cut (with a window), a wrong end refused."""
    data = bytes(range(256)) * 64 + b"r8imfs" * 1000
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = packer.compress(data[:20000]) + packer.flush(zlib.Z_FULL_FLUSH)
    rest = packer.compress(data[20000:]) + packer.flush(zlib.Z_FULL_FLUSH)
    stream = first + rest
    src = ctypes.create_string_buffer(stream, len(stream))
    out = ctypes.create_string_buffer(len(data))
    base, obase = ctypes.addressof(src), ctypes.addressof(out)
    if inflate(0, 0, b"", base, len(first), obase, 20000, end_bits=0) != 20000:
        return False
    window = bytes(WINDOW - 20000) + data[:20000]  # (zero-padded: the stream is short)
    n = len(data) - 20000
    whole = inflate(0, 0, window, base + len(first), len(rest), obase + 20000, n, end_bits=0)
    wrong = inflate(0, 0, b"", base, len(first), obase, 20000, end_bits=3)
    return whole == n and wrong is None and out.raw == data


available = _lib is not None and _self_test()
if not available:
    _lib = None
