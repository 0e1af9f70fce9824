"""Issue 3, the engine: index a gzip layer once, then random 64 KiB reads; index size.

The layer is the benchmark image's weights blob, read from its local file
through ``FileReadAt`` (page cache): these are the engine's CPU costs, with
no network in them. ``indexdb.load_or_build`` builds the index (tar entries
plus zran checkpoints every 4 MiB) and stores it in SQLite; reads go through
the ``LayerReader`` it opens, a fresh one per repeat. The base layer (10k
files) gives the index-load time that a mount with a cached index pays.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time

from r8imfs.archive import FileReadAt, index_path, load_or_build
from tools.bench.common import KiB, Row, Section, note, stat, timed
from tools.bench.context import Bench
from tools.bench.image import LayerFile

READ_SIZE = 64 * KiB
READS = 200
LATENCY_MS = 20.0
INDEX_SHARE = 0.02


def random_read_ms(layer: LayerFile, cache: object, seed: int) -> list[float]:
    rng = random.Random(seed)
    with FileReadAt(layer.path) as ra:
        index = load_or_build(cache, layer.digest, layer.descriptor.media_type, ra, layer.size)  # type: ignore[arg-type]
        reader = index.open_reader(ra)
        try:
            lat = []
            for _ in range(READS):
                off = rng.randrange(0, index.uncompressed_size - READ_SIZE)
                start = time.perf_counter()
                got = reader.pread(off, READ_SIZE)
                lat.append((time.perf_counter() - start) * 1000)
                assert len(got) == READ_SIZE
        finally:
            reader.close()
    return lat


def build_once(layer: LayerFile, cache: object) -> float:
    shutil.rmtree(cache, ignore_errors=True)  # type: ignore[arg-type]
    with FileReadAt(layer.path) as ra:
        secs, _ = timed(lambda: load_or_build(cache, layer.digest, layer.descriptor.media_type, ra, layer.size))  # type: ignore[arg-type]
    return secs


def load_once(layer: LayerFile, cache: object) -> float:
    with FileReadAt(layer.path) as ra:
        secs, _ = timed(lambda: load_or_build(cache, layer.digest, layer.descriptor.media_type, ra, layer.size))  # type: ignore[arg-type]
    return secs


def measure(b: Bench) -> Section:
    w, base = b.image.weights, b.image.base
    cache = b.work / "engine-cache"
    builds, medians, p90s = [], [], []
    for i in range(b.repeat):
        note(f"engine: index the weights layer {i + 1}/{b.repeat}")
        builds.append(build_once(w, cache))
        lat = random_read_ms(w, cache, seed=i)
        medians.append(statistics.median(lat))
        p90s.append(statistics.quantiles(lat, n=10)[-1])
    index_bytes = index_path(cache, w.digest).stat().st_size
    base_build = stat([build_once(base, cache) for _ in range(b.repeat)])
    base_load = stat([load_once(base, cache) for _ in range(b.repeat)])
    shutil.rmtree(cache, ignore_errors=True)
    build = stat(builds)
    med = stat(medians)
    section = Section(
        "Issue 3: the engine (random reads, index size)",
        f"`indexdb.load_or_build` over `FileReadAt` of the weights blob ({w.size:,} B gzip, "
        f"{w.usize:,} B tar), then {READS} reads of 64 KiB at random offsets of the "
        "uncompressed layer through the reader it opens (a fresh one per repeat). The medians "
        "below are medians over repeats of each repeat's median (p90 likewise).",
    )
    section.rows += [
        Row("random 64 KiB read, median", f"≤ {LATENCY_MS:g} ms", med.fmt("ms", 1),
            f"{med.median / LATENCY_MS:.2f}× the limit", med.median <= LATENCY_MS),
        Row("random 64 KiB read, p90", "", stat(p90s).fmt("ms", 1)),
        Row("index size (SQLite file)", f"≤ {INDEX_SHARE:.0%} of the uncompressed layer",
            f"{index_bytes:,} B", f"{index_bytes / w.usize:.2%}", index_bytes <= INDEX_SHARE * w.usize),
        Row("indexing pass of the weights layer (build + store)", "",
            f"{build.fmt()}; {w.usize / 2**20 / build.median:,.0f} MiB/s of tar"),
        Row(f"index of the base layer ({base.files:,} files): first build", "", base_build.fmt()),
        Row("index of the base layer: load from the SQLite cache", "", base_load.fmt("ms", 0, 1000)),
    ]
    return section
