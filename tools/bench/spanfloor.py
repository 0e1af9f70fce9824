"""One timed pass of ``SpanInflater`` over a local gzip blob, in a process of its own.

    python -m tools.bench.spanfloor BLOB ZTOC WORKERS
    (prints: seconds, the library, then "cpu SECONDS" of the whole process)

The pass ``extract`` makes through a SOCI zTOC, minus the network and the
writes: the blob read in 1 MiB chunks, each span copied once, its sha256
checked and inflated on a pool of WORKERS threads, every checkpoint checked
against the data, the decoded spans taken whole (``decoded()``). A process
of its own so that ``R8IMFS_ZRAN=libz`` and ``R8IMFS_ISAL=0`` can choose the
library (``zran``, ``isal`` and ``libdeflate`` pick it once, at import): the
floor with the system's libz, with zlib-ng, with ISA-L and with libdeflate
(all spans but the last, checked to end at the next checkpoint; the last one
zlib-ng), side by side in ``socimount``.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, cast

from r8imfs.engine.codecs import isal, libdeflate, zran, ztoc
from r8imfs.engine.codecs.spanstream import SpanInflater
from r8imfs.engine.tarindex import ForwardFile

CHUNK = 1024 * 1024


def _chunks(path: str) -> Iterator[bytes]:
    with Path(path).open("rb", buffering=0) as raw:
        while chunk := raw.read(CHUNK):
            yield chunk


def main(blob: str, ztoc_path: str, workers: int) -> None:
    z = ztoc.decode(Path(ztoc_path).read_bytes())
    spans = ztoc.validate(z, Path(blob).stat().st_size)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        raw = cast(IO[bytes], ForwardFile(_chunks(blob)))
        f = SpanInflater(raw, z, spans, pool=pool, window=2 * workers)
        for _ in f.decoded():
            pass
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    library = f"ISA-L + {zran.LIBRARY}" if isal.boundary_check else zran.LIBRARY
    if libdeflate.available:
        library = f"libdeflate + {library}"
    print(f"{wall:.4f} {library} cpu {cpu:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
