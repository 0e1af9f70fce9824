"""Byte sizes for people: ``MiB``, ``human_size`` (printing), ``parse_size`` (options).

At the bottom of the package (beside ``errors``), so every layer may use it.
"""

from __future__ import annotations

import math
import re

from r8imfs.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
_SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)


def human_size(n: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 GiB``: binary units, one decimal."""
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 5)
    return f"{n / 1024**exp:.1f} {'KMGTP'[exp - 1]}iB"


def parse_size(text: str) -> int:
    """``"10G"``, ``"500M"``, ``"64KiB"``, ``"1.5GB"``, ``"4096"``: binary units, in bytes."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise UsageError(f"invalid size {text!r}", hint="a number with K, M, G or T, e.g. 10G")
    return int(float(match[1]) * _UNITS[match[2].upper()])
