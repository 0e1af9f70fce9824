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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import zlib

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


def _load() -> ctypes.CDLL | None:
    if os.environ.get("R8IMFS_ISAL", "1") == "0":
        return None
    name = ctypes.util.find_library("isal") or "libisal.so.2"
    try:
        lib = ctypes.CDLL(name)
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
    bits: int, first: int, window: bytes, base: int, length: int, out_base: int, out_len: int
) -> int | None:
    """Raw-inflate ``length`` bytes at address ``base`` into the ``out_len`` bytes at
    ``out_base``, resuming after ``bits`` bits taken from the byte ``first`` (the
    one before ``base``; ignored when ``bits`` is 0), with ``window`` as history.
    ``out_len`` (all of it) on success; None if ISA-L is absent or stopped short.
    """
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
    return out_len


def _self_test() -> bool:
    """Inflate a known stream, from its start and from a byte boundary inside it."""
    data = bytes(range(256)) * 64 + b"r8imfs" * 1000
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = packer.compress(data) + packer.flush()
    src = ctypes.create_string_buffer(stream, len(stream))
    out = ctypes.create_string_buffer(len(data))
    got = inflate(0, 0, b"", ctypes.addressof(src), len(stream), ctypes.addressof(out), len(data))
    return got == len(data) and out.raw == data


available = _lib is not None and _self_test()
if not available:
    _lib = None
