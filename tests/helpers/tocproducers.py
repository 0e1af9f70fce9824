"""TOC layers made by tools nobody here wrote: skopeo (zstd:chunked, legacy
dialect) and ctr-remote on a throwaway containerd (eStargz; stargz's
zstd:chunked). Each producer reads an OCI layout we write and leaves one; the
tests read the converted layer blob and its descriptor annotations from it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class Layer:
    blob: Path
    annotations: dict[str, str]
    media_type: str


def source_tar() -> bytes:
    """A layer exercising the TOC: dirs, empty and small files, files larger
    than eStargz's 4 MiB chunk, links, a device, PAX names and xattrs."""
    buf = io.BytesIO()
    rnd = hashlib.sha256(b"seed").digest()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        _add(t, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(t, "etc/empty", data=b"")
        for i in range(40):
            _add(t, f"etc/f{i:02d}", data=rnd * (i * 7 + 1))
        _add(t, "usr", tarfile.DIRTYPE, mode=0o755)
        _add(t, "usr/big.bin", data=_noise(9 * MiB + 4321))
        _add(t, "usr/zeros.bin", data=bytes(5 * MiB))
        _add(t, "usr/link", tarfile.SYMTYPE, link="big.bin")
        _add(t, "usr/hard", tarfile.LNKTYPE, link="etc/f03")
        _add(t, "usr/" + "n" * 150, data=b"long name\n")
        _add(t, "usr/xattr", data=b"x\n", pax={"SCHILY.xattr.user.note": "hello"})
    return buf.getvalue()


def _noise(size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(b"noise").digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 4  # compressible, not trivially
    return bytes(out[:size])


def _add(
    t: tarfile.TarFile,
    name: str,
    type_: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    link: str = "",
    mode: int = 0o644,
    pax: dict[str, str] | None = None,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = type_, mode, link, 1_700_000_000
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    info.pax_headers = pax or {}
    t.addfile(info, io.BytesIO(data) if info.size else None)


def write_layout(root: Path, tar: bytes, tag: str = "v1") -> None:
    """An OCI image layout holding one image of one gzip layer."""
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_digest(tar)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _desc(root, config, "application/vnd.oci.image.config.v1+json"),
            "layers": [_desc(root, layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
        }
    ).encode()
    entry = _desc(root, manifest, "application/vnd.oci.image.manifest.v1+json")
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _desc(root: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = _digest(data)
    path = root / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def first_layer(root: Path) -> Layer:
    """The first layer of the (only, or first) image in an OCI layout."""
    doc = json.loads((root / "index.json").read_text())
    while True:
        desc = doc["manifests"][0] if "manifests" in doc else None
        if desc is None:
            break
        doc = json.loads(_blob(root, desc["digest"]).read_text())
    layer = doc["layers"][0]
    return Layer(_blob(root, layer["digest"]), layer.get("annotations", {}), layer["mediaType"])


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":")[1]


def skopeo_zstd_chunked(work: Path, tar: bytes) -> Layer:
    src, dst = work / "src", work / "dst"
    write_layout(src, tar)
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-compress-format",
            "zstd:chunked",
            f"oci:{src}:v1",
            f"oci:{dst}:v1",
        ],
        check=True,
        capture_output=True,
    )
    return first_layer(dst)


@contextmanager
def containerd(work: Path) -> Iterator[list[str]]:
    """A throwaway containerd (own root, state and socket); yields the ctr-remote
    command prefix. Stopped (our own process, by its handle) on exit."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "c.sock"
    (work / "config.toml").write_text(
        "version = 2\n"
        f'root = "{work}/root"\nstate = "{work}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
    )
    log = (work / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["containerd", "--config", str(work / "config.toml")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"containerd did not start: {(work / 'containerd.log').read_text()}"
                )
            time.sleep(0.05)
        yield ["ctr-remote", "-a", str(sock), "-n", "toctest"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def ctr_remote_convert(ctr: list[str], work: Path, tar: bytes, flag: str) -> Layer:
    """``images import`` our layout, ``images convert <flag> --oci``, ``images export``."""
    src = work / f"src{flag}"
    write_layout(src, tar)
    archive = work / f"src{flag}.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(src), "."], check=True)
    name = f"example.com/toc/x:{flag.strip('-')}"
    run = [
        [*ctr, "images", "import", "--no-unpack", "--index-name", name + "-src", str(archive)],
        [*ctr, "images", "convert", flag, "--oci", name + "-src", name],
        [*ctr, "images", "export", str(work / f"out{flag}.tar"), name],
    ]
    for argv in run:
        subprocess.run(argv, check=True, capture_output=True)
    out = work / f"out{flag}"
    out.mkdir()
    subprocess.run(["tar", "xf", str(work / f"out{flag}.tar"), "-C", str(out)], check=True)
    return first_layer(out)


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools) and os.geteuid() == 0
