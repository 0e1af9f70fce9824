"""Issue 3: ``r8imfs extract`` against ``skopeo copy`` + ``tar x``, bytes fetched, peak RSS."""

from __future__ import annotations

import shutil

from tests.helpers.counting_proxy import start_counting_proxy
from tools.bench.common import R8IMFS, KiB, Row, Run, Section, note, rate, run, stat
from tools.bench.context import Bench

SPEEDUP = 5.0
FETCH_RATIO = 1.02
RSS_LIMIT = 250 * 1000 * 1000  # "250 MB"


def extract_once(b: Bench, mode: str) -> Run:
    out = b.scratch("extract-out")
    target = ["-o", str(out / "weights.tar")] if mode == "tar" else ["--dir", str(out / "w")]
    done = run([*R8IMFS, "extract", b.image.ref, *target], env=b.env)
    produced = out / "weights.tar" if mode == "tar" else out / "w" / "model.bin"
    if produced.stat().st_size < b.image.model_bytes:
        raise RuntimeError(f"extract ({mode}) wrote only {produced.stat().st_size} bytes")
    shutil.rmtree(out)
    return done


def measure(b: Bench) -> Section:
    peers = b.peer_skopeo_tar()
    runs: dict[str, list[Run]] = {"tar": [], "dir": []}
    for i in range(b.repeat):
        for mode in runs:
            note(f"extract --{mode} {i + 1}/{b.repeat}")
            runs[mode].append(extract_once(b, mode))
    section = Section(
        "Issue 3: `r8imfs extract`",
        f"`r8imfs extract {b.image.ref} -o weights.tar` (and `--dir`), a fresh process each "
        "time, against the docker-free way: `skopeo copy docker://… dir:…` of the image, then "
        "`tar -xzf` of the weights layer's blob.",
    )
    peer_total = stat([c.secs + t.secs for c, t in peers])
    section.rows.append(Row("peer: skopeo copy + tar -xzf (total)", "", peer_total.fmt()))
    section.rows.append(Row("  of which skopeo copy", "", stat([c.secs for c, _ in peers]).fmt()))
    section.rows.append(Row("  of which tar -xzf", "", stat([t.secs for _, t in peers]).fmt()))
    for mode, label in (("tar", "-o weights.tar"), ("dir", "--dir DIR")):
        secs = stat([r.secs for r in runs[mode]])
        speedup = peer_total.median / secs.median
        section.rows.append(
            Row(
                f"`extract {label}` wall time",
                f"≥ {SPEEDUP:g}× faster than the peer",
                f"{secs.fmt()}; {rate(b.image.weights_bytes, secs.median)} of weights",
                f"{speedup:.2f}×",
                speedup >= SPEEDUP,
            )
        )
    for mode, label in (("tar", "-o weights.tar"), ("dir", "--dir DIR")):
        rss = max(r.maxrss for r in runs[mode])
        section.rows.append(
            Row(
                f"`extract {label}` peak RSS (max of runs)",
                "≤ 250 MB",
                f"{rss / 1e6:.0f} MB",
                f"{rss / RSS_LIMIT:.2f}× the limit",
                rss <= RSS_LIMIT,
            )
        )
    section.rows += fetched_rows(b)
    section.rows += ceiling_rows(b)
    return section


def ceiling_rows(b: Bench) -> list[Row]:
    """What one core does with the weights blob alone: the floor under any extract."""
    w = b.image.weights
    rows = []
    for label, line in (
        ("gzip -dc of the weights blob > /dev/null", f"gzip -dc {w.path} > /dev/null"),
        ("sha256sum of the weights blob", f"sha256sum {w.path} > /dev/null"),
    ):
        note(f"ceiling: {label}")
        secs = stat([run(line).secs for _ in range(b.repeat)])
        rows.append(Row(f"for scale: {label}", "", f"{secs.fmt()}; {rate(w.usize, secs.median)}"))
    return rows


def fetched_rows(b: Bench) -> list[Row]:
    """One more extract, through the counting proxy: what crossed the wire."""
    note("extract through the counting proxy")
    proxy = start_counting_proxy(b.image.host)
    out = b.scratch("extract-proxy")
    try:
        ref = b.image.ref.replace(b.image.host, proxy.host, 1)
        run([*R8IMFS, "extract", ref, "-o", str(out / "weights.tar")], env=b.env)
        blobs = proxy.blob_downloads()
        total = proxy.downloaded
    finally:
        proxy.stop()
        shutil.rmtree(out)
    w = b.image.weights
    base_bytes = blobs.get(b.image.base.digest, 0)
    return [
        Row(
            "bytes fetched (all responses)",
            f"≤ {FETCH_RATIO}× the weights layer",
            f"{total:,} B (weights layer {w.size:,} B)",
            f"{total / w.size:.4f}×",
            total <= FETCH_RATIO * w.size,
        ),
        Row("bytes of the base layer fetched", "0", f"{base_bytes:,} B", "", base_bytes == 0),
        Row(
            "  other than the weights blob",
            "",
            f"{(total - blobs.get(w.digest, 0)) / KiB:.1f} KiB (manifest, config)",
        ),
    ]
