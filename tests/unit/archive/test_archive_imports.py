"""The engine stays synchronous: importing it must not pull in trio, httpx or pyfuse3."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE = [
    "r8imfs.archive",
    "r8imfs.archive.entry",
    "r8imfs.archive.readat",
    "r8imfs.archive.tarindex",
    "r8imfs.archive.plain",
    "r8imfs.archive.gzipindex",
    "r8imfs.archive.zstdindex",
    "r8imfs.archive.zstdwrite",
    "r8imfs.archive.indexdb",
    "r8imfs.archive.merged",
    "r8imfs.archive.decodedcopy",
    "r8imfs.archive.writer",
    "r8imfs.archive.units",
]


@pytest.mark.parametrize("module", ENGINE)
def test_engine_module_imports_no_async_or_fuse(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in ('trio', 'httpx', 'pyfuse3') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
