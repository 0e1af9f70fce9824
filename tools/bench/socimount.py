"""Issue 14: mount and extract through a SOCI index, against ``skopeo copy`` + ``tar x``.

The image is indexed once (``r8imfs index REF`` → ``REF-soci``, SOCI v2). Then:

``ready``
    a cold mount (empty cache) of ``REF-soci`` through the counting proxy:
    its wall time (``mount`` returns once serving) and every byte that
    crossed the wire before it returned, layer bodies apart;
``small``
    on that mount, ``cat`` of two small files of the base layer: the bytes
    of the base blob it moved;
``cp``
    a cold mount of ``REF-soci`` straight on the registry, ``cp -r`` of the
    weights, ``umount``;
``extract``
    ``r8imfs extract REF-soci --dir DEST`` (spans inflated on every core), and
    ``--no-soci`` (one core) and with libdeflate off (spans by ISA-L) for comparison;
``floor``
    in this process, no network: the weights blob read from its local file
    through ``SpanInflater`` with 1 and 2 span workers (sha256 + inflate per span),
    with the system libz, zlib-ng, ISA-L and libdeflate (``spanfloor``, a process each),
    next to ``gzip -dc`` and one zlib-ng stream: what inflating costs here.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tools.bench.common import R8IMFS, GiB, MiB, Row, Run, Section, mib, note, rate, run, stat
from tools.bench.context import Bench
from tools.bench.image import _base_name
from tools.bench.mount import mounted

REPO = Path(__file__).resolve().parents[2]
SPEEDUP = 5.0
READY_SECS = 1.0
READY_SHARE = 0.02
SMALL_BYTES = 5 * MiB
SMALL_FILES = (_base_name(1001), _base_name(8123))


def index_once(b: Bench) -> tuple[str, Run]:
    note("soci: r8imfs index (once)")
    done = run([*R8IMFS, "index", b.image.ref], env=b.env)
    return b.image.ref + "-soci", done


def ready_once(b: Bench, proxy: CountingProxy, ref: str) -> tuple[float, int, int, int]:
    """Cold mount through the proxy, then two small files: (secs, bytes before serving,
    layer-body bytes before serving, base-blob bytes for the two files)."""
    layers = {x.digest for x in b.image.layers}
    mnt, cache = b.scratch("soci-mnt"), b.scratch("soci-cache")
    proxy.reset()
    with mounted(b, cache, mnt, ref.replace(b.image.host, proxy.host, 1)) as m:
        before = proxy.downloaded
        bodies = sum(n for d, n in proxy.blob_downloads().items() if d in layers)
        for name in SMALL_FILES:
            run(["cat", str(mnt / "rootfs" / name)])
        small = proxy.blob_downloads().get(b.image.base.digest, 0)
        run([*R8IMFS, "umount", str(mnt)], env=b.env)
    return m.secs, before, bodies, small


def cp_once(b: Bench, ref: str) -> tuple[float, float, float]:
    """Cold mount + cp -r of the weights + umount: (mount, cp, umount) seconds."""
    mnt, cache, dest = b.scratch("soci-mnt"), b.scratch("soci-cache"), b.work / "soci-cp"
    shutil.rmtree(dest, ignore_errors=True)
    with mounted(b, cache, mnt, ref) as m:
        cp = run(["cp", "-r", f"{mnt}/rootfs/src/weights", str(dest)])
        um = run([*R8IMFS, "umount", str(mnt)], env=b.env)
    if (dest / "model.bin").stat().st_size != b.image.model_bytes:
        raise RuntimeError("cp through the SOCI mount gave a model.bin of the wrong size")
    shutil.rmtree(dest)
    return m.secs, cp.secs, um.secs


def extract_once(b: Bench, ref: str, *extra: str, isal: bool = False) -> Run:
    """``extract --dir`` of ``ref``; ``isal``: with libdeflate turned off, the
    spans inflated by ISA-L (a comparison row for ``codecs/libdeflate.py``)."""
    out = b.scratch("soci-extract")
    env = {**b.env, "R8IMFS_LIBDEFLATE": "0"} if isal else b.env
    done = run([*R8IMFS, "extract", ref, "--dir", str(out / "w"), *extra], env=env)
    if (out / "w" / "model.bin").stat().st_size != b.image.model_bytes:
        raise RuntimeError("extract through SOCI wrote a model.bin of the wrong size")
    shutil.rmtree(out)
    return done


def measure(b: Bench) -> Section:
    peers = b.peer_skopeo_tar()
    ref, indexed = index_once(b)
    proxy = start_counting_proxy(b.image.host)
    ready, cps, soci_x, isal_x, plain_x = [], [], [], [], []
    try:
        for i in range(b.repeat):
            note(f"soci: cold mount ready + two small files {i + 1}/{b.repeat}")
            ready.append(ready_once(b, proxy, ref))
            note(f"soci: cold mount + cp -r {i + 1}/{b.repeat}")
            cps.append(cp_once(b, ref))
            note(f"soci: extract --dir {i + 1}/{b.repeat}")
            soci_x.append(extract_once(b, ref))
            note(f"soci: extract --dir, spans by ISA-L {i + 1}/{b.repeat}")
            isal_x.append(extract_once(b, ref, isal=True))
            note(f"soci: extract --dir --no-soci {i + 1}/{b.repeat}")
            plain_x.append(extract_once(b, ref, "--no-soci"))
    finally:
        proxy.stop()
        shutil.rmtree(b.work / "soci-cache", ignore_errors=True)
    s = Section(
        "Issue 14: mount and extract through a SOCI index",
        f"`r8imfs index {b.image.ref}` once (SOCI v2 at `…:v1-soci`, 4 MiB spans), then, "
        "each a fresh process with an empty cache: `r8imfs mount …:v1-soci` through a "
        "counting proxy and `cat` of two small files of the base layer; `mount` + `cp -r "
        "rootfs/src/weights` + `umount`; `extract --dir` (also with spans by ISA-L, and "
        "`--no-soci`). Peer: `skopeo "
        "copy` + `tar -xzf` of the weights layer, as in issue 3.",
    )
    s.rows.append(Row("r8imfs index (once, not a target)", "", f"{indexed.secs:.1f} s"))
    s.rows += ready_rows(b, ready)
    s.rows += out_rows(b, peers, cps, soci_x, isal_x, plain_x)
    s.rows += floor_rows(b, ref)
    return s


def ready_rows(b: Bench, ready: list[tuple[float, int, int, int]]) -> list[Row]:
    layer_bytes = sum(x.size for x in b.image.layers)
    secs = stat([r[0] for r in ready])
    moved = max(r[1] for r in ready)
    bodies = max(r[2] for r in ready)
    small = max(r[3] for r in ready)
    return [
        Row(
            "cold mount ready (`mount` returns)",
            f"≤ {READY_SECS:g} s",
            secs.fmt(),
            f"{secs.median / READY_SECS:.2f}× the limit",
            secs.median <= READY_SECS,
        ),
        Row(
            "bytes moved before serving (manifests, SOCI index, zTOCs; max of runs)",
            f"≤ {READY_SHARE:.0%} of the layer bytes",
            f"{mib(moved)} of {mib(layer_bytes)}",
            f"{moved / layer_bytes:.2%}",
            moved <= READY_SHARE * layer_bytes,
        ),
        Row("  of which layer bodies", "0", f"{bodies:,} B", "", bodies == 0),
        Row(
            "two small files of the base layer: base bytes moved (max of runs)",
            f"≤ {mib(SMALL_BYTES)}",
            mib(small),
            f"{small / SMALL_BYTES:.2f}× the limit",
            small <= SMALL_BYTES,
        ),
    ]


def out_rows(
    b: Bench,
    peers: list[tuple[Run, Run]],
    cps: list[tuple[float, float, float]],
    soci_x: list[Run],
    isal_x: list[Run],
    plain_x: list[Run],
) -> list[Row]:
    peer = stat([c.secs + t.secs for c, t in peers])
    total = stat([sum(r) for r in cps])
    rows = [
        Row("peer: skopeo copy + tar -xzf", "", peer.fmt()),
        Row(
            "cold mount + cp -r + umount",
            f"≥ {SPEEDUP:g}× faster than the peer",
            total.fmt(),
            f"{peer.median / total.median:.2f}×",
            peer.median / total.median >= SPEEDUP,
        ),
        Row(
            "  of which cp -r",
            "",
            f"{stat([r[1] for r in cps]).fmt()}; "
            f"{rate(b.image.weights_bytes, stat([r[1] for r in cps]).median)}",
        ),
    ]
    for label, runs, graded in (
        ("extract --dir (SOCI spans, all cores)", soci_x, True),
        ("extract --dir, spans by ISA-L (`R8IMFS_LIBDEFLATE=0`)", isal_x, False),
        ("extract --dir --no-soci (one core)", plain_x, False),
    ):
        secs = stat([r.secs for r in runs])
        speedup = peer.median / secs.median
        rows.append(
            Row(
                label,
                f"≥ {SPEEDUP:g}× faster than the peer" if graded else "(comparison)",
                f"{secs.fmt()}; {rate(b.image.weights_bytes, secs.median)}",
                f"{speedup:.2f}×",
                speedup >= SPEEDUP if graded else None,
            )
        )
    rss = max(r.maxrss for r in soci_x)
    rows.append(Row("  extract through SOCI, peak RSS (max of runs)", "", f"{rss / 1e6:.0f} MB"))
    return rows


def floor_rows(b: Bench, ref: str) -> list[Row]:
    """Inflating the weights blob from a local file: the floor under any of the above."""
    w = b.image.weights
    ztoc_path = b.work / "weights.ztoc"
    ztoc_path.write_bytes(fetch_weights_ztoc(b, ref))
    rows = []
    for lib in ("libz", "zlib-ng", "ISA-L", "libdeflate"):
        for workers in (1, 2):
            note(f"soci floor: SpanInflater, {lib}, {workers} worker(s)")
            secs = stat([span_pass(b, w.path, ztoc_path, workers, lib) for _ in range(b.repeat)])
            rows.append(
                Row(
                    f"floor: span sha256 + inflate ({lib}, ctypes) over the local blob, "
                    f"{workers} worker(s)",
                    "",
                    f"{secs.fmt()}; {rate(w.usize, secs.median)} of tar; "
                    f"{secs.median / (w.usize / GiB):.2f} s/GiB",
                )
            )
    note("soci floor: gzip -dc")
    secs = stat([run(f"gzip -dc {w.path} > /dev/null").secs for _ in range(b.repeat)])
    rows.append(
        Row(
            "for scale: gzip -dc of the blob (one core)",
            "",
            f"{secs.fmt()}; {rate(w.usize, secs.median)}",
        )
    )
    note("soci floor: zlib-ng, one stream")
    secs = stat([zlib_ng_pass(w.path) for _ in range(b.repeat)])
    rows.append(
        Row(
            "for scale: zlib-ng, one stream (one core)",
            "",
            f"{secs.fmt()}; {rate(w.usize, secs.median)}; "
            f"{secs.median / (w.usize / GiB):.2f} s/GiB",
        )
    )
    return rows


def fetch_weights_ztoc(b: Bench, ref: str) -> bytes:
    import trio

    from r8imfs.oci.manifest import Manifest
    from r8imfs.oci.reference import parse
    from r8imfs.registry.client import RegistryClient
    from r8imfs.registry.referrers import fetch_ztoc, find_soci_index

    async def get() -> bytes:
        parsed = parse(ref)
        async with RegistryClient() as client:
            image = await client.resolve(parsed, None)
            assert isinstance(image.manifest, Manifest)
            found = await find_soci_index(client, parsed.repository, image.manifest)
            assert found is not None
            return await fetch_ztoc(client, parsed.repository, found.ztocs[b.image.weights.digest])

    return trio.run(get)


def span_pass(b: Bench, blob: Path, ztoc_path: Path, workers: int, lib: str) -> float:
    env = {**b.env, "R8IMFS_ISAL": "0", "R8IMFS_LIBDEFLATE": "0", "R8IMFS_ZRAN": lib}
    if lib == "ISA-L":  # ISA-L for each span but the last
        env = {**b.env, "R8IMFS_ISAL": "1", "R8IMFS_LIBDEFLATE": "0"}
    elif lib == "libdeflate":  # what extract does: libdeflate, ISA-L where it refuses
        env = {**b.env, "R8IMFS_ISAL": "1", "R8IMFS_LIBDEFLATE": "1"}
    done = run(
        [sys.executable, "-m", "tools.bench.spanfloor", str(blob), str(ztoc_path), str(workers)],
        env=env,
        cwd=REPO,
    )
    secs, name = done.stdout.decode().split(" ", 1)
    if not name.startswith(lib):
        raise RuntimeError(f"asked for {lib}, got {name.strip()}")
    return float(secs)


def zlib_ng_pass(path: Path) -> float:
    from zlib_ng import zlib_ng

    start = time.perf_counter()
    d = zlib_ng.decompressobj(31)
    with path.open("rb", buffering=0) as raw:
        while chunk := raw.read(4 * MiB):
            d.decompress(chunk)
    return time.perf_counter() - start
