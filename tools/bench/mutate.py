"""Issue 6: ``affix`` and ``remix`` bytes on the wire, ``zstd`` throughput and RSS.

``affix`` puts a 100 MiB tar (``src/weights/extra.bin``, float16-like, see
``data``) on the benchmark image, to a new repository each repeat (so base
layers are cross-repository mounts and the new layer is really uploaded),
through the counting proxy. ``remix`` (``--replace-weights``) takes that
image's weights onto the benchmark image, again through the proxy.
``zstd`` recompresses the image holding only the weights layer, against
``gzip -dc layer | zstd -T2 -3 > out`` on the same file.
"""

from __future__ import annotations

import json
import tarfile
import urllib.request
from pathlib import Path

from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tools.bench.common import R8IMFS, KiB, MiB, Row, Run, Section, note, rate, run, stat
from tools.bench.context import Bench
from tools.bench.data import Float16Weights

AFFIX_BYTES = 100 * MiB
DOWN_LIMIT = 64 * KiB
UP_RATIO = 1.01
REMIX_LIMIT = 100 * KiB
ZSTD_SHARE = 0.7
RSS_LIMIT = 300 * 1000 * 1000
_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json,"
    "application/vnd.oci.image.manifest.v1+json"
)


def write_affix_tar(path: Path, size: int) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, copybufsize=4 * MiB) as tf:  # type: ignore[call-overload]
        info = tarfile.TarInfo("src/weights/extra.bin")
        info.size, info.mtime = size, 1_700_000_000
        tf.addfile(info, Float16Weights(size))


def manifest_layers(host: str, pinned: str) -> list[dict[str, object]]:
    """The layers of ``REPO@sha256:…`` (what a mutation command printed last)."""
    repo, digest = pinned.split("/", 1)[1].rsplit("@", 1)
    url = f"http://{host}/v2/{repo}/manifests/{digest}"
    req = urllib.request.Request(url, headers={"Accept": _ACCEPT})
    with urllib.request.urlopen(req, timeout=30) as resp:
        layers: list[dict[str, object]] = json.load(resp)["layers"]
    return layers


def last_line(done: Run) -> str:
    return done.stdout.decode().strip().splitlines()[-1]


def affix_once(b: Bench, proxy: CountingProxy, tar: Path, i: int) -> tuple[Run, int, int, int]:
    """One affix; (run, downloaded, uploaded, new layer's compressed size)."""
    proxy.reset()
    base = b.image.ref.replace(b.image.host, proxy.host, 1)
    dest = f"{proxy.host}/bench/affixed-{i}:v1"
    done = run([*R8IMFS, "affix", "--base", base, "--dest", dest, "--tar", str(tar)], env=b.env)
    new_layer = int(manifest_layers(b.image.host, last_line(done))[-1]["size"])  # type: ignore[call-overload]
    return done, proxy.downloaded, proxy.uploaded, new_layer


def measure(b: Bench, scale: float) -> Section:
    tar = b.work / "affix.tar"
    write_affix_tar(tar, max(int(AFFIX_BYTES * scale), 1024))
    proxy = start_counting_proxy(b.image.host)
    try:
        affixes = []
        for i in range(b.repeat):
            note(f"affix {i + 1}/{b.repeat}")
            affixes.append(affix_once(b, proxy, tar, i))
        remixes = []
        for i in range(b.repeat):
            note(f"remix {i + 1}/{b.repeat}")
            proxy.reset()
            h = proxy.host
            done = run(
                [
                    *R8IMFS,
                    "remix",
                    "--replace-weights",
                    "--base",
                    b.image.ref.replace(b.image.host, h, 1),
                    "--weights",
                    f"{h}/bench/affixed-0:v1",
                    "--dest",
                    f"{h}/bench/remixed-{i}:v1",
                ],
                env=b.env,
            )
            remixes.append((done, proxy.downloaded + proxy.uploaded))
    finally:
        proxy.stop()
    tar.unlink()
    s = Section(
        "Issue 6: mutation commands",
        f"`affix` of a {tar_mib(scale)} tar onto the benchmark image "
        f"({b.image.total_size / 1e9:.2f} GB of layers), to a new repository each time, and "
        "`remix --replace-weights` of the result, both through a counting proxy on loopback "
        "(bytes are HTTP bodies, both directions). `zstd` of the image holding only the "
        "weights layer, against the local pipeline `gzip -dc layer | zstd -T2 -3 > out`.",
    )
    s.rows += affix_rows(affixes) + remix_rows(remixes) + zstd_rows(b)
    return s


def tar_mib(scale: float) -> str:
    return f"{max(int(AFFIX_BYTES * scale), 1024) / MiB:,.0f} MiB"


def affix_rows(affixes: list[tuple[Run, int, int, int]]) -> list[Row]:
    down = max(a[1] for a in affixes)
    up, layer = max((a[2], a[3]) for a in affixes)
    allowed = UP_RATIO * layer + 64 * KiB
    return [
        Row(
            "affix: bytes downloaded (max of runs)",
            "≤ 64 KiB",
            f"{down / KiB:.1f} KiB",
            f"{down / DOWN_LIMIT:.2f}× the limit",
            down <= DOWN_LIMIT,
        ),
        Row(
            "affix: bytes uploaded (max of runs)",
            "≤ 1.01× new layer + 64 KiB",
            f"{up:,} B (new layer {layer:,} B)",
            f"{up / layer:.4f}× the layer",
            up <= allowed,
        ),
        Row("affix: wall time", "", stat([a[0].secs for a in affixes]).fmt()),
        Row(
            "affix: peak RSS (max of runs)", "", f"{max(a[0].maxrss for a in affixes) / 1e6:.0f} MB"
        ),
    ]


def remix_rows(remixes: list[tuple[Run, int]]) -> list[Row]:
    moved = max(m for _, m in remixes)
    return [
        Row(
            "remix, one registry: bytes moved (max of runs)",
            "≤ 100 KiB",
            f"{moved / KiB:.1f} KiB",
            f"{moved / REMIX_LIMIT:.2f}× the limit",
            moved <= REMIX_LIMIT,
        ),
        Row("remix: wall time", "", stat([r.secs for r, _ in remixes]).fmt()),
    ]


def zstd_rows(b: Bench) -> list[Row]:
    w = b.image.weights
    out = b.scratch("zstd-out")
    peers, ours = [], []
    for i in range(b.repeat):
        note(f"zstd: local pipeline {i + 1}/{b.repeat}")
        peers.append(run(f"gzip -dc {w.path} | zstd -T2 -3 -q > {out}/out.zst"))
        note(f"zstd: r8imfs zstd {i + 1}/{b.repeat}")
        ours.append(
            run(
                [*R8IMFS, "zstd", b.image.weights_ref, f"{b.image.host}/bench/zstd-{i}:v1"],
                env=b.env,
            )
        )
    peer, mine = stat([p.secs for p in peers]), stat([o.secs for o in ours])
    share = peer.median / mine.median
    rss = max(o.maxrss for o in ours)
    return [
        Row(
            "zstd of the weights layer",
            f"≥ {ZSTD_SHARE:g}× the pipeline's throughput",
            f"{mine.fmt()}; {rate(w.usize, mine.median)} of tar",
            f"{share:.2f}×",
            share >= ZSTD_SHARE,
        ),
        Row(
            "  local pipeline gzip -dc | zstd -T2 -3",
            "",
            f"{peer.fmt()}; {rate(w.usize, peer.median)}",
        ),
        Row(
            "zstd: peak RSS (max of runs)",
            "≤ 300 MB",
            f"{rss / 1e6:.0f} MB",
            f"{rss / RSS_LIMIT:.2f}× the limit",
            rss <= RSS_LIMIT,
        ),
    ]
