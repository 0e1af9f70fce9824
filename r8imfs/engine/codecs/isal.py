"""ISA-L's inflate through ctypes: a faster way to resume a gzip span.

Intel's ISA-L (``libisal2`` on Debian) inflates deflate about 25% faster than
zlib-ng on this project's machines (docs/benchmarks.md), and like libz it can
start in the middle of a byte: its ``inflate_state`` keeps unconsumed bits
in ``read_in`` (least significant first) and their count in
``read_in_length``, so a checkpoint's 1-7 leftover bits are pushed there
after ``isal_inflate_init`` (what ``inflatePrime`` does for libz), and its
32 KiB window goes in with ``isal_inflate_set_dict``.

Only the first fields of ``inflate_state`` are touched (``_Head``); their
layout has not changed since ISA-L 2.0. The state itself is an opaque buffer
at least ``STATE_SIZE`` bytes (the real struct is ~85 KiB in 2.30), one per
thread, reused. A load-time self-test inflates a known stream and compares;
if the library is missing, differs, or ``R8IMFS_ISAL=0``, ``available`` is
False and ``zran`` uses libz/zlib-ng alone.

This is a fast path only: ``inflate`` returns None whenever it cannot make
all the bytes asked for (a corrupt stream, a gzip member ending inside the
span, input running out), and the caller then does the span again with
libz, whose errors and member handling are the reference.

**Checking where a span ends** (``end_bits``). A reader of a whole layer
through its zTOC (``spanstream``) must know that each span's output stops
exactly at the next checkpoint: at a block boundary, with the checkpoint's
bit count left in its last byte. libz says so with ``Z_BLOCK``; ISA-L has no
such stop, but its state says where it stands, read from a second group of
fields (``_Tail``, after the Huffman tables, at ISA-L 2.30's offsets).
Given exactly the span's bytes (up to the next checkpoint's first full
byte) and exactly the span's output room, the span ends at the checkpoint
if and only if ISA-L then has filled the room, holds no output ahead
(``tmp_out``, overflow fields), has read all input but ``end_bits`` bits
(``read_in_length``, nothing stashed in ``tmp_in``), and is about to read a
block header (``block_state`` ``NEW_HDR`` or ``HDR``: a header is read only
where a block starts) of a block that is not the member's last (``bfinal``
unset). Anything else, including a layout that is not what these offsets
say, is a refusal, never an acceptance: the caller then does the span with
libz, whose check is the reference. The self-test checks the offsets
against a known stream: a span boundary must be accepted, a shifted one
refused, and a finished stream must read ``ISAL_BLOCK_FINISH`` with
``bfinal`` set; if not, ``boundary_check`` is False.
"""

from __future__ import annotations

import ctypes
import os
import threading
import zlib

from r8imfs.engine.codecs._native import cdll

#: Bytes reserved for one ``inflate_state`` (87,368 in ISA-L 2.30).
STATE_SIZE = 192 * 1024
_OK = 0  # ISAL_DECOMP_OK; negative values are errors


class _Head(ctypes.Structure):
    """The leading fields of ISA-L's ``struct inflate_state``."""

    _fields_ = [  # noqa: RUF012 (ctypes wants a class attribute)
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint32),
        ("total_out", ctypes.c_uint32),
        ("next_in", ctypes.c_void_p),
        ("read_in", ctypes.c_uint64),
        ("avail_in", ctypes.c_uint32),
        ("read_in_length", ctypes.c_int32),
    ]


class _Tail(ctypes.Structure):
    """``struct inflate_state`` from ``block_state`` to ``tmp_out_processed`` (2.30)."""

    _fields_ = [  # noqa: RUF012 (ctypes wants a class attribute)
        ("block_state", ctypes.c_int32),
        ("dict_length", ctypes.c_uint32),
        ("bfinal", ctypes.c_uint32),
        ("crc_flag", ctypes.c_uint32),
        ("crc", ctypes.c_uint32),
        ("hist_bits", ctypes.c_uint32),
        ("count", ctypes.c_int32),
        ("write_overflow_lits", ctypes.c_int32),
        ("write_overflow_len", ctypes.c_int32),
        ("copy_overflow_length", ctypes.c_int32),
        ("copy_overflow_distance", ctypes.c_int32),
        ("wrapper_flag", ctypes.c_int16),
        ("tmp_in_size", ctypes.c_int16),
        ("tmp_out_valid", ctypes.c_int32),
        ("tmp_out_processed", ctypes.c_int32),
    ]


#: Offset of ``block_state`` in ISA-L 2.30's ``inflate_state`` (igzip_lib.h:
#: the head's 40 bytes, then the lit/len and distance Huffman tables).
_TAIL_OFFSET = 21160
_BLOCK_NEW_HDR, _BLOCK_HDR, _BLOCK_FINISH = 0, 1, 5


def _load() -> ctypes.CDLL | None:
    if os.environ.get("R8IMFS_ISAL", "1") == "0":
        return None
    try:
        lib = cdll("libisal.so.2", "isal")
    except OSError:
        return None
    lib.isal_inflate_init.argtypes = [ctypes.c_void_p]
    lib.isal_inflate_init.restype = None
    lib.isal_inflate_set_dict.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32]
    lib.isal_inflate_set_dict.restype = ctypes.c_int
    lib.isal_inflate.argtypes = [ctypes.c_void_p]
    lib.isal_inflate.restype = ctypes.c_int
    return lib


_lib = _load()
_local = threading.local()


def _state() -> ctypes.Array[ctypes.c_char]:
    state: ctypes.Array[ctypes.c_char] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = ctypes.create_string_buffer(STATE_SIZE)
    return state


def inflate(
    bits: int,
    first: int,
    window: bytes,
    base: int,
    length: int,
    out_base: int,
    out_len: int,
    *,
    end_bits: int | None = None,
) -> int | None:
    """Raw-inflate ``length`` bytes at address ``base`` into the ``out_len`` bytes at
    ``out_base``, resuming after ``bits`` bits taken from the byte ``first`` (the
    one before ``base``; ignored when ``bits`` is 0), with ``window`` as history.
    ``out_len`` (all of it) on success; None if ISA-L is absent or stopped short.

    With ``end_bits``, also None unless the output ends at a block boundary
    ``end_bits`` bits before the end of the input (see the module's doc): the
    input must then be exactly the span's bytes.
    """
    if end_bits is not None and not boundary_check:
        return None
    return _inflate(bits, first, window, base, length, out_base, out_len, end_bits)


def _inflate(
    bits: int,
    first: int,
    window: bytes,
    base: int,
    length: int,
    out_base: int,
    out_len: int,
    end_bits: int | None,
) -> int | None:
    if _lib is None or not out_len:
        return None
    state = _state()
    _lib.isal_inflate_init(state)
    if window and _lib.isal_inflate_set_dict(state, window, len(window)) != _OK:
        return None
    head = _Head.from_buffer(state)
    if bits:
        head.read_in = first >> (8 - bits)
        head.read_in_length = bits
    head.next_in, head.avail_in = base, length
    head.next_out, head.avail_out = out_base, out_len
    if _lib.isal_inflate(state) < 0 or head.avail_out:
        return None
    if end_bits is not None and not _at_boundary(state, head, end_bits):
        return None
    return out_len


def _at_boundary(state: ctypes.Array[ctypes.c_char], head: _Head, end_bits: int) -> bool:
    """Whether a span's inflate, its room filled, stands at a block boundary
    with ``end_bits`` bits of its input unread, and nothing decoded ahead."""
    tail = _Tail.from_buffer(state, _TAIL_OFFSET)
    return (
        head.avail_in == 0
        and head.read_in_length == end_bits
        and tail.block_state in (_BLOCK_NEW_HDR, _BLOCK_HDR)
        and tail.bfinal == 0
        and tail.tmp_in_size == 0
        and tail.tmp_out_valid == tail.tmp_out_processed
        and tail.write_overflow_len == 0
        and tail.copy_overflow_length == 0
    )


def _self_test() -> bool:
    """Inflate a known stream, from its start and from a byte boundary inside it."""
    data = bytes(range(256)) * 64 + b"r8imfs" * 1000
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = packer.compress(data) + packer.flush()
    src = ctypes.create_string_buffer(stream, len(stream))
    out = ctypes.create_string_buffer(len(data))
    got = inflate(0, 0, b"", ctypes.addressof(src), len(stream), ctypes.addressof(out), len(data))
    return got == len(data) and out.raw == data


def _self_test_boundary() -> bool:
    """The tail offsets, on a stream cut at a full flush (a block boundary on a
    byte): the cut accepted, the cut a bit off refused, the end read as the end."""
    assert _lib is not None
    head_data = bytes(range(256)) * 40
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = packer.compress(head_data) + packer.flush(zlib.Z_FULL_FLUSH)
    rest = packer.compress(b"r8imfs " * 500) + packer.flush()
    stream = first + rest
    src = ctypes.create_string_buffer(stream, len(stream))
    out = ctypes.create_string_buffer(len(head_data))
    base, obase = ctypes.addressof(src), ctypes.addressof(out)
    at = _inflate(0, 0, b"", base, len(first), obase, len(head_data), 0)
    off = _inflate(0, 0, b"", base, len(first), obase, len(head_data), 1)
    short = _inflate(0, 0, b"", base, len(first) - 1, obase, len(head_data), 0)
    if at != len(head_data) or off is not None or short is not None:
        return False
    whole = ctypes.create_string_buffer(len(head_data) + 3500)
    state = _state()
    _lib.isal_inflate_init(state)
    head = _Head.from_buffer(state)
    head.next_in, head.avail_in = base, len(stream)
    head.next_out, head.avail_out = ctypes.addressof(whole), len(whole)
    tail = _Tail.from_buffer(state, _TAIL_OFFSET)
    return _lib.isal_inflate(state) == _OK and (tail.block_state, tail.bfinal) == (
        _BLOCK_FINISH,
        1,
    )


available = _lib is not None and _self_test()
if not available:
    _lib = None
#: ISA-L's state can be read to check where a span ends (``end_bits``).
boundary_check = available and _self_test_boundary()
