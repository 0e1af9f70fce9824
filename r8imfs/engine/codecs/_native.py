"""Loading the C libraries the codecs call through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util


def cdll(soname: str, name: str) -> ctypes.CDLL:
    """The library by its soname (``libz.so.1``), else wherever ``find_library``
    finds ``name``; ``OSError`` if neither loads.

    The soname first: ``find_library`` runs ``ldconfig -p`` in a child process,
    a fork of the whole interpreter, on every command that loads a codec.
    """
    try:
        return ctypes.CDLL(soname)
    except OSError:
        found = ctypes.util.find_library(name)
        if found is None:
            raise
        return ctypes.CDLL(found)


def address(buf: bytearray) -> int:
    """Where a ``bytearray``'s bytes are, for a C call (valid while it is not resized)."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
