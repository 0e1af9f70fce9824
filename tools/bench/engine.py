"""Issue 3, the engine: index a gzip layer once, then random 64 KiB reads; index size.

The layer is the benchmark image's weights blob, read from its local file
through ``FileReadAt`` (page cache): these are the engine's CPU costs, with
no network in them. ``indexdb.load_or_build`` builds the index (tar entries
plus zran checkpoints every 4 MiB) and stores it in SQLite; reads go through
the ``LayerReader`` it opens, a fresh one per repeat. The base layer (10k
files) gives the index-load time that a mount with a cached index pays.
The same is measured with ``keep_decoded`` (what a mount does by default):
the pass keeps the decoded copy and reads become ``pread`` s of it.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from pathlib import Path

from r8imfs.engine.decodedcopy import decoded_path
from r8imfs.engine.indexdb import LayerIndex, index_path, load_or_build
from r8imfs.engine.readat import FileReadAt
from tools.bench.common import KiB, MiB, Row, Section, note, stat
from tools.bench.context import Bench
from tools.bench.image import LayerFile

READ_SIZE = 64 * KiB
READS = 200
LATENCY_MS = 20.0
INDEX_SHARE = 0.02


def load(layer: LayerFile, cache: Path, ra: FileReadAt, keep: bool = False) -> LayerIndex:
    return load_or_build(
        cache, layer.digest, layer.descriptor.media_type, ra, layer.size, keep_decoded=keep
    )


def random_read_ms(layer: LayerFile, cache: Path, seed: int, keep: bool = False) -> list[float]:
    """``READS`` random 64 KiB preads through a fresh reader; milliseconds each."""
    rng = random.Random(seed)
    with FileReadAt(layer.path) as ra:
        index = load(layer, cache, ra, keep)
        reader = index.open_reader(ra)
        try:
            lat = []
            for _ in range(READS):
                off = rng.randrange(0, index.uncompressed_size - READ_SIZE)
                start = time.perf_counter()
                got = reader.pread(off, READ_SIZE)
                lat.append((time.perf_counter() - start) * 1000)
                if len(got) != READ_SIZE:
                    raise RuntimeError(f"short read at {off}")
        finally:
            reader.close()
    return lat


def timed_load(layer: LayerFile, cache: Path, *, fresh: bool, keep: bool = False) -> float:
    """Seconds for ``load_or_build``: a first build when ``fresh``, else a cache load."""
    if fresh:
        shutil.rmtree(cache, ignore_errors=True)
    with FileReadAt(layer.path) as ra:
        start = time.perf_counter()
        load(layer, cache, ra, keep)
        return time.perf_counter() - start


def measure(b: Bench) -> Section:
    w, base = b.image.weights, b.image.base
    cache = b.work / "engine-cache"
    builds, medians, p90s = [], [], []
    for i in range(b.repeat):
        note(f"engine: index the weights layer {i + 1}/{b.repeat}")
        builds.append(timed_load(w, cache, fresh=True))
        lat = random_read_ms(w, cache, seed=i)
        medians.append(statistics.median(lat))
        p90s.append(statistics.quantiles(lat, n=10)[-1])
    index_bytes = index_path(cache, w.digest).stat().st_size
    kept, kept_medians = [], []
    for i in range(b.repeat):
        note(f"engine: index the weights layer keeping its decoded copy {i + 1}/{b.repeat}")
        kept.append(timed_load(w, cache, fresh=True, keep=True))
        kept_medians.append(statistics.median(random_read_ms(w, cache, seed=i, keep=True)))
    copy_bytes = decoded_path(cache, w.digest).stat().st_size
    base_build = stat([timed_load(base, cache, fresh=True) for _ in range(b.repeat)])
    base_load = stat([timed_load(base, cache, fresh=False) for _ in range(b.repeat)])
    shutil.rmtree(cache, ignore_errors=True)
    build, med = stat(builds), stat(medians)
    section = Section(
        "Issue 3: the engine (random reads, index size)",
        f"`indexdb.load_or_build` over `FileReadAt` of the weights blob ({w.size:,} B gzip, "
        f"{w.usize:,} B tar), then {READS} reads of 64 KiB at random offsets of the "
        "uncompressed layer through the reader it opens (a fresh one per repeat). The "
        "median row is the median over repeats of each repeat's median (p90 likewise).",
    )
    section.rows += [
        Row(
            "random 64 KiB read, median",
            f"≤ {LATENCY_MS:g} ms",
            med.fmt("ms", 1),
            f"{med.median / LATENCY_MS:.2f}× the limit",
            med.median <= LATENCY_MS,
        ),
        Row("random 64 KiB read, p90", "", stat(p90s).fmt("ms", 1)),
        Row(
            "index size (SQLite file)",
            f"≤ {INDEX_SHARE:.0%} of the uncompressed layer",
            f"{index_bytes:,} B",
            f"{index_bytes / w.usize:.2%}",
            index_bytes <= INDEX_SHARE * w.usize,
        ),
        Row(
            "indexing pass of the weights layer (build + store)",
            "",
            f"{build.fmt()}; {w.usize / MiB / build.median:,.0f} MiB/s of tar",
        ),
        Row(
            "with a decoded copy: indexing pass (build + copy + store)",
            "",
            f"{stat(kept).fmt()}; {w.usize / MiB / stat(kept).median:,.0f} MiB/s of tar",
        ),
        Row("with a decoded copy: random 64 KiB read, median", "", stat(kept_medians).fmt("ms", 2)),
        Row(
            "with a decoded copy: its size on disk (a cache, not the index)",
            "",
            f"{copy_bytes:,} B",
            f"{copy_bytes / w.usize:.0%} of the layer",
        ),
        Row(f"index of the base layer ({base.files:,} files): first build", "", base_build.fmt()),
        Row(
            "index of the base layer: load from the SQLite cache", "", base_load.fmt("ms", 0, 1000)
        ),
    ]
    return section
