"""One timed pass of ``SpanInflater`` over a local gzip blob, in a process of its own.

    python -m tools.bench.spanfloor BLOB ZTOC WORKERS     (prints seconds)

A process of its own so that ``R8IMFS_ZRAN=libz`` can choose the library
(``zran`` picks it once, at import): the floor with the system's libz and
with zlib-ng, side by side in ``socimount``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r8imfs.engine.codecs import zran, ztoc
from r8imfs.engine.codecs.spanstream import SpanInflater


def main(blob: str, ztoc_path: str, workers: int) -> None:
    z = ztoc.decode(Path(ztoc_path).read_bytes())
    spans = ztoc.validate(z, Path(blob).stat().st_size)
    start = time.perf_counter()
    with Path(blob).open("rb", buffering=0) as raw, ThreadPoolExecutor(workers) as pool:
        f = SpanInflater(raw, z, spans, pool=pool, window=2 * workers)
        while f.read(-1):
            pass
    print(f"{time.perf_counter() - start:.4f} {zran.LIBRARY}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
