"""Issue 4: ``r8imfs mount`` + ``cp -r`` + ``umount``; ls, cached mount, daemon RSS.

Kinds of run, each repeated, each with a fresh mountpoint and process:

``cold``
    empty cache dir: ``mount`` (which indexes every gzip layer: one streamed
    GET and one inflate per layer, keeping each layer's decoded copy),
    ``cp -r rootfs/src/weights DEST``, ``umount``; against ``skopeo copy`` +
    ``tar x``.
``warm``
    index and decoded copies cached: ``mount``, ``ls -R rootfs``, ``cp -r``,
    ``umount``.
``read``
    as warm, but ``cat model.bin > /dev/null`` instead of ``cp``: the
    mount's read speed under the same terms as ``curl -o /dev/null`` (no
    destination file to fill).
``checkpoints``
    ``--no-decoded-copies``: a first (untimed) mount builds the zran
    checkpoint index, the blob cache is then deleted, and ``mount``, ``ls
    -R``, ``cp -r`` follow: the copy downloads the blob through ranged GETs
    and inflates it from checkpoints as it goes.

The daemon's RSS is sampled from /proc/PID/status every 50 ms during the
copy (its pid from the mount's pid file); VmHWM, its peak over its whole
life (indexing included), is read just before ``umount``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from r8imfs.fs.daemon import daemon_pid, mounted_fstype, resolved
from tools.bench.common import R8IMFS, Row, Run, Section, note, rate, run, stat
from tools.bench.context import Bench

SPEEDUP = 5.0
CURL_SHARE = 0.5
LS_SECS = 0.5
MOUNT_SECS = 1.0
RSS_LIMIT = 300 * 1000 * 1000


def status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """The largest VmRSS of ``pid`` seen while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, status_bytes(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True, slots=True)
class MountRun:
    mount: float
    ls: float | None
    cp: float | None
    umount: float
    rss_during_cp: int
    hwm: int

    @property
    def total(self) -> float:
        return self.mount + (self.ls or 0) + (self.cp or 0) + self.umount


@contextlib.contextmanager
def mounted(b: Bench, cache: Path, mnt: Path, ref: str, *extra: str) -> Iterator[Run]:
    """``r8imfs mount``; always unmounted afterwards, even when the caller failed."""
    done = run([*R8IMFS, "mount", "--cache-dir", str(cache), *extra, ref, str(mnt)], env=b.env)
    try:
        yield done
    finally:
        if mounted_fstype(mnt) is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)


def one_run(
    b: Bench,
    cache: Path,
    *extra: str,
    ls: bool,
    cp: bool,
    read: bool = False,
    ref: str | None = None,
) -> MountRun:
    """One mount; ``cp`` copies the weights out, ``read`` cats model.bin to /dev/null."""
    mnt, dest = b.scratch("mnt"), b.work / "cp-dest"
    shutil.rmtree(dest, ignore_errors=True)
    with mounted(b, cache, mnt, ref or b.image.ref, *extra) as m:
        pid = daemon_pid(resolved(mnt))
        if pid is None:
            raise RuntimeError("no pid file for the mount")
        ls_run = run(f"ls -R {mnt}/rootfs > /dev/null") if ls else None
        model = mnt / "rootfs/src/weights/model.bin"
        with RssSampler(pid) as sampler:
            cp_run = run(["cp", "-r", f"{mnt}/rootfs/src/weights", str(dest)]) if cp else None
            if read:
                cp_run = run(f"cat {model} > /dev/null")
        hwm = status_bytes(pid, "VmHWM")
        um = run([*R8IMFS, "umount", str(mnt)], env=b.env)
    if cp and (dest / "model.bin").stat().st_size != b.image.model_bytes:
        raise RuntimeError("cp from the mount gave a model.bin of the wrong size")
    shutil.rmtree(dest, ignore_errors=True)
    return MountRun(
        m.secs,
        ls_run.secs if ls_run else None,
        cp_run.secs if cp_run else None,
        um.secs,
        sampler.peak,
        hwm,
    )


def measure(b: Bench) -> Section:
    peers = b.peer_skopeo_tar()
    curls = b.peer_curl()
    cold, warm, reads, index_only = [], [], [], []
    for i in range(b.repeat):
        cache = b.scratch("mount-cache")
        note(f"mount: cold {i + 1}/{b.repeat}")
        cold.append(one_run(b, cache, ls=False, cp=True))
        note(f"mount: index and decoded copies cached {i + 1}/{b.repeat}")
        warm.append(one_run(b, cache, ls=True, cp=True))
        note(f"mount: warm, cat > /dev/null {i + 1}/{b.repeat}")
        reads.append(one_run(b, cache, ls=False, cp=False, read=True))
        cache = b.scratch("mount-cache")
        note(f"mount: --no-decoded-copies, checkpoint index cached, blobs not {i + 1}/{b.repeat}")
        one_run(b, cache, "--no-decoded-copies", ls=False, cp=False)
        shutil.rmtree(cache / "blobs")
        index_only.append(one_run(b, cache, "--no-decoded-copies", ls=True, cp=True))
    zstd_ref = f"{b.image.host}/bench/model:zstd"
    note("mount: recompressing the image with r8imfs zstd (not timed)")
    run([*R8IMFS, "zstd", b.image.ref, zstd_ref], env=b.env)
    zstd_cold = []
    for i in range(b.repeat):
        note(f"mount: cold, zstd image {i + 1}/{b.repeat}")
        zstd_cold.append(one_run(b, b.scratch("mount-cache"), ls=False, cp=True, ref=zstd_ref))
    plain_ref = f"{b.image.host}/bench/model:skopeo-zstd"
    note("mount: recompressing the image with skopeo --dest-compress-format zstd (not timed)")
    run(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
            "--format",
            "oci",
            f"docker://{b.image.ref}",
            f"docker://{plain_ref}",
        ]
    )
    plain_cold = []
    for i in range(b.repeat):
        note(f"mount: cold, skopeo's zstd image {i + 1}/{b.repeat}")
        plain_cold.append(one_run(b, b.scratch("mount-cache"), ls=False, cp=True, ref=plain_ref))
    shutil.rmtree(b.work / "mount-cache", ignore_errors=True)
    s = report(b, peers, curls, cold, index_only, warm, reads)
    s.rows += zstd_rows(
        b,
        peers,
        curls,
        zstd_cold,
        "zstd image (after `r8imfs zstd`, seekable)",
        "downloads as it copies",
    )
    s.rows += zstd_rows(
        b,
        peers,
        curls,
        plain_cold,
        "zstd image (after `skopeo copy --dest-compress-format zstd`, no seek table)",
        "decoded copy made by indexing",
    )
    return s


def zstd_rows(
    b: Bench,
    peers: list[tuple[Run, Run]],
    curls: list[Run],
    runs: list[MountRun],
    label: str,
    cp_note: str,
) -> list[Row]:
    """The same image recompressed to zstd: what the mount does without gzip's inflate."""
    peer = stat([c.secs + t.secs for c, t in peers])
    curl_rate = b.image.weights.size / stat([c.secs for c in curls]).median
    total, cp = stat([r.total for r in runs]), stat([r.cp or 0 for r in runs])
    cp_rate = b.image.weights_bytes / cp.median
    rss = max(r.rss_during_cp for r in runs)
    return [
        Row(
            f"{label}: cold mount + cp -r + umount",
            "(comparison)",
            total.fmt(),
            f"{peer.median / total.median:.2f}× vs the peer",
        ),
        Row("  of which mount", "", stat([r.mount for r in runs]).fmt()),
        Row(
            f"  of which cp -r ({cp_note})",
            "",
            f"{cp.fmt()}; {rate(b.image.weights_bytes, cp.median)}",
            f"{cp_rate / curl_rate:.0%} of curl",
        ),
        Row("  daemon RSS during cp (max of runs)", "", f"{rss / 1e6:.0f} MB"),
    ]


CP_CASES = (
    ("cold (decoded copy made by indexing)", "cold"),
    ("warm (index and decoded copy cached)", "warm"),
    ("--no-decoded-copies, index cached, blob not (cp downloads)", "index_only"),
)


def report(
    b: Bench,
    peers: list[tuple[Run, Run]],
    curls: list[Run],
    cold: list[MountRun],
    index_only: list[MountRun],
    warm: list[MountRun],
    reads: list[MountRun],
) -> Section:
    img = b.image
    runs = {"cold": cold, "index_only": index_only, "warm": warm}
    peer = stat([c.secs + t.secs for c, t in peers])
    curl = stat([c.secs for c in curls])
    s = Section(
        "Issue 4: `r8imfs mount`",
        "`r8imfs mount --cache-dir C IMAGE MNT` (returns once serving), `cp -r "
        "MNT/rootfs/src/weights DEST`, `r8imfs umount MNT`. Peers: `skopeo copy` + `tar -xzf` "
        f"(as in issue 3) and `curl -o /dev/null {img.blob_url(img.weights)}`.",
    )
    total = stat([r.total for r in cold])
    speedup = peer.median / total.median
    s.rows += [
        Row(
            "cold: mount + cp -r + umount, empty cache",
            f"≥ {SPEEDUP:g}× faster than the peer",
            total.fmt(),
            f"{speedup:.2f}×",
            speedup >= SPEEDUP,
        ),
        Row(
            "  of which mount (indexes every layer, keeps decoded copies)",
            "",
            stat([r.mount for r in cold]).fmt(),
        ),
        Row("  of which cp -r", "", stat([r.cp or 0 for r in cold]).fmt()),
        Row("peer: skopeo copy + tar -xzf", "", peer.fmt()),
        Row(
            "peer: curl of the weights blob",
            "",
            f"{curl.fmt()}; {rate(img.weights.size, curl.median)}",
        ),
    ]
    s.rows += cp_rows(b, runs, img.weights.size / curl.median)
    cat = stat([r.cp or 0 for r in reads])
    cat_rate = img.model_bytes / cat.median
    s.rows.append(
        Row(
            "for scale: `cat model.bin > /dev/null` through a warm mount",
            "",
            f"{cat.fmt()}; {rate(img.model_bytes, cat.median)}",
            f"{cat_rate / (img.weights.size / curl.median):.0%} of curl",
        )
    )
    s.rows += fast_rows(b, index_only, warm)
    s.rows += rss_rows(runs)
    s.rows.append(Row("umount", "", stat([r.umount for r in cold + index_only + warm]).fmt()))
    return s


def cp_rows(b: Bench, runs: dict[str, list[MountRun]], curl_rate: float) -> list[Row]:
    """The target applies to what a mount does by default; ``--no-decoded-copies`` compares."""
    rows = []
    for label, key in CP_CASES:
        cp = stat([r.cp or 0 for r in runs[key]])
        cp_rate = b.image.weights_bytes / cp.median
        graded = key != "index_only"
        rows.append(
            Row(
                f"cp -r alone, {label}",
                f"≥ {CURL_SHARE:.0%} of curl's speed" if graded else "(comparison)",
                f"{cp.fmt()}; {rate(b.image.weights_bytes, cp.median)}",
                f"{cp_rate / curl_rate:.0%} of curl",
                cp_rate >= CURL_SHARE * curl_rate if graded else None,
            )
        )
    return rows


def fast_rows(b: Bench, index_only: list[MountRun], warm: list[MountRun]) -> list[Row]:
    img = b.image
    files = img.base.files + img.src.files + img.weights.files
    dirs = img.base.dirs + 2
    rows = []
    for label, runs in (("warm", warm), ("--no-decoded-copies, blob not cached", index_only)):
        ls = stat([r.ls or 0 for r in runs])
        rows.append(
            Row(
                f"ls -R rootfs ({files:,} files, ~{dirs:,} dirs), {label}",
                f"≤ {LS_SECS:g} s",
                ls.fmt(),
                f"{ls.median / LS_SECS:.2f}× the limit",
                ls.median <= LS_SECS,
            )
        )
    for label, runs in (("warm", warm), ("--no-decoded-copies, blob not cached", index_only)):
        m = stat([r.mount for r in runs])
        rows.append(
            Row(
                f"mount ready, {label}",
                f"≤ {MOUNT_SECS:g} s",
                m.fmt(),
                f"{m.median / MOUNT_SECS:.2f}× the limit",
                m.median <= MOUNT_SECS,
            )
        )
    return rows


def rss_rows(runs: dict[str, list[MountRun]]) -> list[Row]:
    rows = []
    for label, key in CP_CASES:
        peak = max(r.rss_during_cp for r in runs[key])
        rows.append(
            Row(
                f"daemon RSS during cp, {label.split(' (')[0]} (max of runs)",
                "≤ 300 MB",
                f"{peak / 1e6:.0f} MB",
                f"{peak / RSS_LIMIT:.2f}× the limit",
                peak <= RSS_LIMIT,
            )
        )
    hwm = max(r.hwm for r in runs["cold"])
    rows.append(
        Row("daemon VmHWM over its life, cold (indexing included)", "", f"{hwm / 1e6:.0f} MB")
    )
    return rows
