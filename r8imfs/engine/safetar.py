"""Tar headers from strangers: ``GuardedTarInfo`` for every ``tarfile`` that reads one.

Layers come from any registry and ``affix`` tars from any user, and the
stdlib ``tarfile`` (3.11 before 3.11.10, 3.12 before 3.12.6) trusts headers
in three ways a hostile archive turns into a hang or a crash:

* **Quadratic PAX parsing** (CVE-2024-6232): ``_proc_pax`` searches the
  header with regular expressions that backtrack over runs of digits and
  over records without ``=``; 300 KB of digits keep a thread busy for many
  minutes. The records are checked first, in one linear pass, with the rules
  the fixed ``tarfile`` applies (``<length> <key>=<value>\\n``, the length
  covering the record exactly), and the digit runs are bounded.
* **Negative numbers** (CVE-2025-8194 is one case): base-256 fields and PAX
  ``size=-N`` give a member a negative size, which sends a seekable walk back
  to an earlier header, forever.
* **Unbounded special headers**: PAX and GNU long-name headers are read
  whole into memory. Go's ``archive/tar``, which docker and containerd
  unpack layers with, refuses those over 1 MiB; so do we.

Also refused: times and ids no filesystem can represent (a NaN mtime would
break ``stat`` on a mount). A refusal is a ``HostileTar``, a
``tarfile.ReadError``, so every caller's existing mapping to ``CorruptLayer``
/ ``UnsafeLayer`` applies. Usage: ``tarfile.open(..., tarinfo=GuardedTarInfo)``.
"""

from __future__ import annotations

import math
import re
import tarfile
from typing import Any

#: Largest PAX or GNU long-name header read (Go's archive/tar: maxSpecialFileSize).
MAX_SPECIAL = 1024 * 1024
#: Bound on the sum of squared digit-run lengths in one PAX header: what the
#: old ``hdrcharset`` search costs; 10**7 steps is a few tens of milliseconds.
DIGIT_BUDGET = 10_000_000
#: mtimes beyond this many seconds overflow a nanosecond ``st_mtime_ns`` (int64).
MAX_TIME = 9.2e9
MAX_ID = 2**32 - 2  # uid_t and dev_t halves; 2**32 - 1 means "no id"

_SPECIAL = {
    tarfile.XHDTYPE: "PAX",
    tarfile.XGLTYPE: "PAX global",
    tarfile.SOLARIS_XHDTYPE: "PAX",
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
}
_DIGITS = re.compile(rb"\d+")


class HostileTar(tarfile.ReadError):
    """A header we refuse to parse: it would hang, exhaust memory or lie."""


class GuardedTarInfo(tarfile.TarInfo):
    """``TarInfo`` that checks each header before and after tarfile processes it."""

    def _proc_member(self, tarfile: Any) -> Any:
        _check_numbers(self)
        kind = _SPECIAL.get(self.type)
        if kind is not None and self.size > MAX_SPECIAL:
            raise HostileTar(
                f"a {kind} header of {self.size} bytes at offset {self.offset} "
                f"(the limit is {MAX_SPECIAL})"
            )
        member = super()._proc_member(tarfile)  # type: ignore[misc]
        _check_numbers(member)
        return member

    def _proc_pax(self, tarfile: Any) -> Any:
        real = tarfile.fileobj
        buf = real.read(self._block(self.size))  # type: ignore[attr-defined]
        check_pax_records(buf[: self.size], self.offset)
        tarfile.fileobj = _Replay(buf, real)  # the stdlib reads the header again from here
        try:
            return super()._proc_pax(tarfile)  # type: ignore[misc]
        finally:
            tarfile.fileobj = real


def check_pax_records(data: bytes, offset: int = 0) -> None:
    """Refuse a PAX header the stdlib would parse in super-linear time (or misparse)."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space] if space > pos else b""
        if not length.isdigit():
            raise HostileTar(f"malformed PAX record at offset {offset} (+{pos})")
        end = pos + int(length)
        record = data[space + 1 : end]
        if end <= space or end > len(data) or not record.endswith(b"\n") or record.find(b"=") < 1:
            raise HostileTar(f"malformed PAX record at offset {offset} (+{pos})")
        pos = end
    cost = sum((m.end() - m.start()) ** 2 for m in _DIGITS.finditer(data))
    if cost > DIGIT_BUDGET:
        raise HostileTar(
            f"the PAX header at offset {offset} holds digit runs that would take "
            "minutes to parse (CVE-2024-6232)"
        )


def _check_numbers(info: tarfile.TarInfo) -> None:
    name = info.name[:200]
    if info.size < 0:
        raise HostileTar(f"member {name!r} has a negative size ({info.size})")
    mtime = float(info.mtime)
    if not math.isfinite(mtime) or abs(mtime) > MAX_TIME:
        raise HostileTar(f"member {name!r} has an impossible mtime ({info.mtime!r})")
    for field in ("uid", "gid", "devmajor", "devminor"):
        value = getattr(info, field)
        if not 0 <= value <= MAX_ID:
            raise HostileTar(f"member {name!r} has an impossible {field} ({value})")


class _Replay:
    """The file tarfile reads from, with ``data`` (already read from it) put back in front."""

    def __init__(self, data: bytes, real: Any) -> None:
        self._data = data
        self._real = real

    def read(self, size: int = -1) -> bytes:
        if not self._data:
            return bytes(self._real.read(size))
        if size is None or size < 0:
            out, self._data = self._data + bytes(self._real.read()), b""
            return out
        out, self._data = self._data[:size], self._data[size:]
        if len(out) < size:
            out += bytes(self._real.read(size - len(out)))
        return out

    def tell(self) -> int:
        return int(self._real.tell()) - len(self._data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
