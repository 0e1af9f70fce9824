"""An independent zTOC reader and checker, written from the schema alone.

It shares no code with ``r8imfs.archive`` (not the FlatBuffers reader, not
the zran code): it walks the FlatBuffer by hand from soci-snapshotter's
``ztoc/fbs/ztoc.fbs`` field order, resumes inflate at each checkpoint with its
own ctypes binding of libz (``inflatePrime`` + ``inflateSetDictionary``, as
``gzip_zinfo.c`` ``extract_data_from_buffer`` does), and compares with a plain
gunzip, with sha256 of the spans and with ``tarfile``'s offsets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import hashlib
import io
import struct
import tarfile
from typing import Any

WIN = 32768


# -- FlatBuffers by hand -----------------------------------------------------------


def _u32(b: bytes, p: int) -> int:
    return int(struct.unpack_from("<I", b, p)[0])


def _field(b: bytes, table: int, index: int) -> int | None:
    vtable = table - struct.unpack_from("<i", b, table)[0]
    vsize = struct.unpack_from("<H", b, vtable)[0]
    if 4 + 2 * index >= vsize:
        return None
    off = struct.unpack_from("<H", b, vtable + 4 + 2 * index)[0]
    return table + off if off else None


def _deref(b: bytes, at: int) -> int:
    return at + _u32(b, at)


def _str(b: bytes, table: int, index: int) -> str | None:
    at = _field(b, table, index)
    if at is None:
        return None
    s = _deref(b, at)
    return b[s + 4 : s + 4 + _u32(b, s)].decode("utf-8", "surrogateescape")


def _num(b: bytes, table: int, index: int, fmt: str, default: int = 0) -> int:
    at = _field(b, table, index)
    return default if at is None else int(struct.unpack_from(fmt, b, at)[0])


def _vec(b: bytes, table: int, index: int) -> tuple[int, int]:
    at = _field(b, table, index)
    if at is None:
        return 0, 0
    v = _deref(b, at)
    return v + 4, _u32(b, v)


def read_ztoc(b: bytes) -> dict[str, Any]:
    """The zTOC as plain dicts: Ztoc fields 0-5, TOC.metadata, CompressionInfo 0-3."""
    root = _u32(b, 0)
    toc = _deref(b, _field(b, root, 4))  # type: ignore[arg-type]
    info = _deref(b, _field(b, root, 5))  # type: ignore[arg-type]
    start, n = _vec(b, toc, 0)
    files = []
    for k in range(n):
        t = _deref(b, start + 4 * k)
        xs, xn = _vec(b, t, 13)
        xattrs = {}
        for j in range(xn):
            x = _deref(b, xs + 4 * j)
            xattrs[_str(b, x, 0)] = _str(b, x, 1)
        files.append(
            {
                "name": _str(b, t, 0),
                "type": _str(b, t, 1),
                "offset": _num(b, t, 2, "<q"),
                "size": _num(b, t, 3, "<q"),
                "linkname": _str(b, t, 4),
                "mode": _num(b, t, 5, "<q"),
                "uid": _num(b, t, 6, "<I"),
                "gid": _num(b, t, 7, "<I"),
                "mod_time": _str(b, t, 10),
                "xattrs": xattrs,
            }
        )
    ds, dn = _vec(b, info, 2)
    digests = []
    for k in range(dn):
        s = _deref(b, ds + 4 * k)
        digests.append(b[s + 4 : s + 4 + _u32(b, s)].decode())
    cs, cn = _vec(b, info, 3)
    return {
        "version": _str(b, root, 0),
        "build_tool": _str(b, root, 1),
        "compressed_size": _num(b, root, 2, "<q"),
        "uncompressed_size": _num(b, root, 3, "<q"),
        "files": files,
        "algorithm": _num(b, info, 0, "<b", 1),
        "max_span_id": _num(b, info, 1, "<i"),
        "digests": digests,
        "checkpoints": b[cs : cs + cn],
    }


def read_zinfo(blob: bytes) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    """(span size, [(in, out, bits, window)]) of a v2 gzip_zinfo blob."""
    count, span = struct.unpack_from("<iq", blob, 0)
    assert len(blob) == 12 + count * (17 + WIN), "a v2 blob holds every checkpoint"
    cps = []
    for k in range(count):
        p = 12 + k * (17 + WIN)
        cin, out, bits = struct.unpack_from("<qqB", blob, p)
        cps.append((cin, out, bits, blob[p + 17 : p + 17 + WIN]))
    return span, cps


# -- libz by hand --------------------------------------------------------------------


class _Z(ctypes.Structure):
    _fields_ = [  # noqa: RUF012
        ("next_in", ctypes.c_char_p),
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


_libz = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
_libz.zlibVersion.restype = ctypes.c_char_p


def inflate_at(blob: bytes, cin: int, bits: int, window: bytes, size: int) -> bytes:
    """``size`` bytes inflated from a checkpoint (single gzip member only)."""
    z = _Z()
    assert _libz.inflateInit2_(ctypes.byref(z), -15, _libz.zlibVersion(), ctypes.sizeof(z)) == 0
    try:
        data = blob[cin:]
        if bits:
            assert _libz.inflatePrime(ctypes.byref(z), bits, blob[cin - 1] >> (8 - bits)) == 0
        assert _libz.inflateSetDictionary(ctypes.byref(z), window, len(window)) == 0
        out = ctypes.create_string_buffer(size)
        z.next_in, z.avail_in = data, len(data)
        z.next_out, z.avail_out = ctypes.addressof(out), size
        while z.avail_out:
            ret = _libz.inflate(ctypes.byref(z), 0)
            assert ret in (0, 1), f"inflate failed at checkpoint in={cin}: {ret}"
            if ret == 1:
                break
        return out.raw[: size - z.avail_out]
    finally:
        _libz.inflateEnd(ctypes.byref(z))


# -- the checks --------------------------------------------------------------------


def check_gzip_ztoc(ztoc_bytes: bytes, blob: bytes, span_size: int) -> dict[str, Any]:
    """Assert a gzip layer's zTOC is right about ``blob``; the parsed zTOC."""
    z = read_ztoc(ztoc_bytes)
    tar = gzip.decompress(blob)
    assert z["compressed_size"] == len(blob)
    assert z["algorithm"] == 1
    span, cps = read_zinfo(z["checkpoints"])
    assert span == span_size
    assert len(cps) == z["max_span_id"] + 1 == len(z["digests"])
    assert cps[0][1] == 0
    for k, (cin, out, bits, window) in enumerate(cps):
        want_window = tar[max(0, out - WIN) : out].rjust(WIN, b"\0")
        assert window == want_window, f"checkpoint {k}: window is not the 32 KiB before it"
        end = cps[k + 1][1] if k + 1 < len(cps) else len(tar)
        assert inflate_at(blob, cin, bits, window, end - out) == tar[out:end], f"checkpoint {k}"
        if k:
            assert out - cps[k - 1][1] > span_size, "checkpoints come after more than a span"
        start = cin - 1 if bits else cin
        cend = cps[k + 1][0] if k + 1 < len(cps) else len(blob)
        assert z["digests"][k] == "sha256:" + hashlib.sha256(blob[start:cend]).hexdigest()
    check_toc(z, tar)
    return z


def check_tar_ztoc(ztoc_bytes: bytes, blob: bytes, span_size: int) -> dict[str, Any]:
    """Assert an uncompressed layer's zTOC: fixed spans, their digests, the TOC."""
    z = read_ztoc(ztoc_bytes)
    assert z["algorithm"] == 2
    assert z["compressed_size"] == len(blob)
    zi = z["checkpoints"]
    root = _u32(zi, 0)
    assert (_num(zi, root, 0, "<i"), _num(zi, root, 1, "<q"), _num(zi, root, 2, "<q")) == (
        2,
        span_size,
        len(blob),
    )
    spans = [blob[i : i + span_size] for i in range(0, len(blob), span_size)]
    assert z["digests"] == ["sha256:" + hashlib.sha256(s).hexdigest() for s in spans]
    check_toc(z, blob)
    return z


def check_toc(z: dict[str, Any], tar: bytes) -> None:
    """Every tarfile member is listed with its data offset, size, type and link."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
        assert len(members) == len(z["files"])
        for m, f in zip(members, z["files"], strict=True):
            assert f["name"].rstrip("/") == m.name
            assert f["offset"] == m.offset_data
            assert f["size"] == m.size
            assert f["mode"] == m.mode
            assert f["uid"] == m.uid
            kind = {"0": "reg", "5": "dir", "2": "symlink", "1": "hardlink", "6": "fifo"}
            assert f["type"] == kind[m.type.decode()]
            if m.issym() or m.islnk():
                assert f["linkname"] == m.linkname
            if m.isreg():
                body = tf.extractfile(m)
                assert body is not None
                assert tar[f["offset"] : f["offset"] + f["size"]] == body.read()
    assert z["uncompressed_size"] <= len(tar)
