"""Buffers that are about to be overwritten whole: allocated, not zero-filled.

``bytearray(n)`` writes n zeros before anyone writes the real bytes. For the
hot buffers (a ranged GET's body, a span's decoded output) that is a second
pass over every byte: ~0.1 CPU-s per GiB when the heap's pages are warm, and
on fresh pages it is the write that faults them in. ``scratch`` is CPython's
own ``PyByteArray_FromStringAndSize(NULL, n)``, which allocates and leaves
the bytes as the allocator had them.

Those bytes may be anything this process freed before, credentials included,
so a scratch buffer is for code that fills it whole (or keeps only what it
wrote, ``del buf[made:]``) before a byte of it leaves the function; the
callers say so where they use it.

At the bottom of the package (beside ``_units``), so every layer may use it.
"""

from __future__ import annotations

import ctypes

_from_string_and_size = ctypes.pythonapi.PyByteArray_FromStringAndSize
_from_string_and_size.restype = ctypes.py_object
_from_string_and_size.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)


def scratch(n: int) -> bytearray:
    """A ``bytearray`` of ``n`` bytes whose contents are undefined (see above)."""
    if n < 0:
        raise ValueError(f"negative buffer size {n}")
    buf: bytearray = _from_string_and_size(None, n)
    return buf
