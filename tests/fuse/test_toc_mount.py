"""Cold mounts of TOC images: ready from the TOCs alone, every file right.

Three producers, two of them not ours: ``r8imfs zstd`` (zstd:chunked, current
dialect), Debian's skopeo (zstd:chunked, legacy dialect) and ctr-remote on a
throwaway containerd (eStargz, and stargz-snapshotter's zstd:chunked). Each
image is mounted cold through ``counting_proxy``: once the mount says it is
ready, at most 10% of the layer bytes may have crossed the proxy (the TOCs,
not the bodies); then every file of the layer is read through the mount and compared with the
source tar, read with ``tarfile``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.fuse import MountFactory
from tests.helpers.images import cli, push
from tests.helpers.registry import RegistryServer
from tests.helpers.tocproducers import containerd, ctr_remote_convert, write_layout

MiB = 1024 * 1024
#: the share of layer bytes a cold mount of a TOC image may move before it is ready
READY_SHARE = 0.10
LANDMARKS = {".no.prefetch.landmark", ".prefetch.landmark"}


def base_tar() -> bytes:
    """A base layer of many small files (the case a full pass makes slow), a few
    big ones spanning several chunks, links, an empty file and a directory tree."""
    rng = hashlib.sha256(b"toc-mount")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in range(20):
            _add(t, f"usr/lib/d{d:02d}", tarfile.DIRTYPE)
            for i in range(60):
                rng.update(b"x")
                body = rng.digest() * (1 + (d * 60 + i) % 97)  # 32 B .. 3 KiB
                _add(t, f"usr/lib/d{d:02d}/f{i:03d}.so", data=body)
        _add(t, "opt/big.bin", data=os.urandom(9 * MiB + 123))
        _add(t, "opt/mid.bin", data=os.urandom(3 * MiB))
        _add(t, "opt/empty", data=b"")
        _add(t, "opt/link", tarfile.SYMTYPE, link="big.bin")
        _add(t, "opt/hard", tarfile.LNKTYPE, link="usr/lib/d03/f007.so")
    return buf.getvalue()


def _add(
    t: tarfile.TarFile,
    name: str,
    type_: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = type_, link, 1_700_000_000
    info.mode = 0o755 if type_ == tarfile.DIRTYPE else 0o644
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    t.addfile(info, io.BytesIO(data) if info.size else None)


def files_of(tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        out = {}
        for m in t.getmembers():
            if m.isreg():
                f = t.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
        return out


@pytest.fixture(scope="module")
def tar() -> bytes:
    return base_tar()


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()


def _skopeo_push(src: str, dest: str, *flags: str) -> None:
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "oci",
            *flags,
            src,
            f"docker://{dest}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def ours(registry: RegistryServer, tar: bytes, work: Path) -> str:
    src = f"{registry.host}/toc-mount/src:v1"
    push(src, layers=[(tar, "ADD rootfs /", None)])
    dest = f"{registry.host}/toc-mount/ours:z"
    proc = cli("zstd", src, dest)
    assert proc.returncode == 0, proc.stderr
    return dest


def skopeo(registry: RegistryServer, tar: bytes, work: Path) -> str:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (scripts/setup.sh installs it)")
    write_layout(work / "src", tar)
    dest = f"{registry.host}/toc-mount/skopeo:v1"
    _skopeo_push(f"oci:{work / 'src'}:v1", dest, "--dest-compress-format", "zstd:chunked")
    return dest


def _ctr_remote(registry: RegistryServer, tar: bytes, work: Path, flag: str) -> str:
    if not (shutil.which("ctr-remote") and shutil.which("containerd") and os.geteuid() == 0):
        pytest.skip("ctr-remote and containerd (Debian stargz-snapshotter) as root are needed")
    with containerd(work / "ctd") as ctr:
        ctr_remote_convert(ctr, work, tar, flag)
    tag = flag.strip("-")
    dest = f"{registry.host}/toc-mount/{tag}:v1"
    _skopeo_push(f"oci:{work / f'out{flag}'}:{tag}", dest)
    return dest


def estargz(registry: RegistryServer, tar: bytes, work: Path) -> str:
    return _ctr_remote(registry, tar, work, "--estargz")


def stargz_zstdchunked(registry: RegistryServer, tar: bytes, work: Path) -> str:
    """stargz-snapshotter's zstd:chunked: legacy keys plus the eStargz TOC digest."""
    return _ctr_remote(registry, tar, work, "--zstdchunked")


PRODUCERS = {
    "r8imfs-zstd": ours,
    "skopeo-zstd-chunked": skopeo,
    "ctr-remote-estargz": estargz,
    "ctr-remote-zstdchunked": stargz_zstdchunked,
}


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_a_cold_mount_of_a_toc_image_reads_only_the_tocs(
    producer: str,
    registry: RegistryServer,
    proxy: CountingProxy,
    tar: bytes,
    mounted: MountFactory,
    tmp_path: Path,
) -> None:
    ref = PRODUCERS[producer](registry, tar, tmp_path)
    proxy.reset()
    cache = tmp_path / "cache"
    with mounted(ref.replace(registry.host, proxy.host, 1), cache_dir=cache) as m:
        manifest = m.path / "manifest.json"
        layers = {d["digest"]: d["size"] for d in json.loads(manifest.read_bytes())["layers"]}
        moved = sum(n for d, n in proxy.blob_downloads().items() if d in layers)
        total = sum(layers.values())
        assert moved <= READY_SHARE * total, f"{moved} of {total} layer bytes moved before ready"
        assert "TOC refused" not in m.mount_stderr + m.log_text()
        expected = files_of(tar)
        gets = proxy.blob_gets()
        for name, body in expected.items():
            assert (m.rootfs / name).read_bytes() == body, name
        # read file by file, small files come a few hundred KiB per GET, not one each
        gets = proxy.blob_gets() - gets
        assert gets <= len(expected) / 8, f"{gets} GETs for {len(expected)} files"
        assert os.readlink(m.rootfs / "opt/link") == "big.bin"
        assert (m.rootfs / "opt/hard").read_bytes() == expected["usr/lib/d03/f007.so"]
        listed = {str(p.relative_to(m.rootfs)) for p in m.rootfs.rglob("*") if p.is_file()}
        listed -= LANDMARKS  # eStargz's converter adds one to the layer
        assert listed == set(expected) | {"opt/hard", "opt/link"}
    # Warm, without the blob bytes: the TOC's kept bytes make the mount free.
    for data in (cache / "blobs").rglob("*"):
        if data.is_file():
            data.unlink()
    proxy.reset()
    with mounted(ref.replace(registry.host, proxy.host, 1), name="warm", cache_dir=cache) as w:
        assert layers.keys().isdisjoint(proxy.blob_downloads()), "warm: layer bytes fetched"
        assert (w.rootfs / "opt/mid.bin").read_bytes() == expected["opt/mid.bin"]
