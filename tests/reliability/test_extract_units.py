"""``extract`` of seekable zstd and plain layers: parallel ranged GETs and decodes (issue 12).

The weights layer is read by ``ops.extractunits`` (several ranged GETs, frames
decoded on worker threads, the blob hashed from the ranges): checked here for
exact bytes (sha256 of every file, and GNU tar reading the output), for
really taking that path (ranged GETs of the weights blob), and for failing
cleanly: a frame that does not decode, or wrong bytes from the registry,
leave no output file, no partial, nothing in the target directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from r8imfs.engine.codecs.zstdindex import read_seek_table
from r8imfs.engine.codecs.zstdwrite import write_seekable
from r8imfs.engine.readat import BytesReadAt
from r8imfs.oci import mediatypes as mt
from r8imfs.ops.extract import PARALLEL_ENV, parallel_extract
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import MiB, RawLayer, one_line_error, push_blobs, run, sha256
from tools.demoimage import tar_of
from tools.faultproxy import Corrupt, DropBody, FaultProxy, Status

WEIGHTS = {
    "model.bin": b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(12 * MiB // 32)),
    "sub/tok.json": b'{"vocab": []}\n',
}


def _weights_tar() -> bytes:
    return tar_of({f"src/weights/{k}": v for k, v in WEIGHTS.items()})


def _seekable(tar: bytes) -> bytes:
    out = io.BytesIO()
    write_seekable(io.BytesIO(tar), out, frame_size=MiB)
    return out.getvalue()


def _push(host: str, repo: str, blob: bytes, media_type: str, diff_id: str) -> str:
    base = tar_of({"etc/hostname": b"x\n"})
    ref = f"{host}/{repo}:v1"
    layers = [
        RawLayer(base, mt.OCI_LAYER, created_by="ADD rootfs /", comment=None),
        RawLayer(blob, media_type, diff_id),
    ]
    push_blobs(ref, layers)
    return ref


@pytest.fixture(scope="module")
def images(registry: RegistryServer) -> dict[str, tuple[str, str]]:
    """Kind → (repository path, weights blob digest)."""
    tar = _weights_tar()
    zst = _seekable(tar)
    frames = read_seek_table(BytesReadAt(zst))
    assert frames is not None and len(frames.cstarts) >= 12
    bad = bytearray(zst)
    bad[frames.cstarts[5] + 40] ^= 0xFF  # inside frame 5: it no longer decodes
    out = {}
    for kind, blob, media in [
        ("zstd", zst, mt.OCI_LAYER_ZSTD),
        ("plain", tar, mt.OCI_LAYER),
        ("badframe", bytes(bad), mt.OCI_LAYER_ZSTD),
    ]:
        repo = f"rel/units-{kind}"
        _push(registry.host, repo, blob, media, sha256(tar))
        out[kind] = (repo, sha256(blob))
    return out


@pytest.fixture(autouse=True)
def parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The units path, whatever the cores (on fewer than 4 extract streams by default)."""
    monkeypatch.setenv(PARALLEL_ENV, "1")


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _expected() -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in WEIGHTS.items()}


def _ranged_gets(proxy: FaultProxy, digest: str) -> int:
    return sum(
        1
        for r in proxy.requests
        if r.method == "GET" and r.path.endswith(digest) and r.status == 206
    )


@pytest.mark.parametrize("kind", ["zstd", "plain"])
def test_extract_is_exact_and_uses_ranged_gets(
    images: dict[str, tuple[str, str]], proxy: FaultProxy, tmp_path: Path, kind: str
) -> None:
    repo, digest = images[kind]
    out = tmp_path / "w.tar"
    proc = run("extract", f"{proxy.host}/{repo}:v1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    # the seek table's tail, then frames in parallel ranges (16 MiB at most each)
    assert _ranged_gets(proxy, digest) >= 2
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(dest)], check=True)
    assert _files(dest) == _expected()
    into = tmp_path / "d"
    assert run("extract", f"{proxy.host}/{repo}:v1", "--dir", str(into)).returncode == 0
    assert _files(into) == _expected()


@pytest.mark.parametrize(
    "fault",
    [DropBody(after=3 * MiB, times=2), Status(code=503, retry_after="0", times=3)],
    ids=["drops", "503s"],
)
def test_extract_through_faults_is_exact(
    images: dict[str, tuple[str, str]], proxy: FaultProxy, tmp_path: Path, fault: object
) -> None:
    repo, _ = images["zstd"]
    proxy.set_faults([fault])  # type: ignore[list-item]
    into = tmp_path / "d"
    proc = run("extract", f"{proxy.host}/{repo}:v1", "--dir", str(into))
    assert proc.returncode == 0, proc.stderr
    assert _files(into) == _expected()


def _nothing_left(tmp_path: Path, into: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name or ".r8imfs-" in p.name]
    assert not into.exists() or not [p for p in into.rglob("*") if p.is_file()]


def test_a_frame_that_does_not_decode_fails_cleanly(
    images: dict[str, tuple[str, str]], proxy: FaultProxy, tmp_path: Path
) -> None:
    repo, _ = images["badframe"]
    out, into = tmp_path / "w.tar", tmp_path / "d"
    proc = run("extract", f"{proxy.host}/{repo}:v1", "-o", str(out))
    line = one_line_error(proc)
    assert "layer 1" in line and ("decompress" in line or "corrupt" in line), line
    proc = run("extract", f"{proxy.host}/{repo}:v1", "--dir", str(into))
    assert proc.returncode == 1
    _nothing_left(tmp_path, into, out)


def test_wrong_bytes_from_the_registry_fail_cleanly(
    images: dict[str, tuple[str, str]], proxy: FaultProxy, tmp_path: Path
) -> None:
    repo, digest = images["zstd"]
    # every response holding byte 7 MiB + 3 of the weights blob is flipped there
    proxy.set_faults([Corrupt(offset=7 * MiB + 3, match=digest)])
    out, into = tmp_path / "w.tar", tmp_path / "d"
    line = one_line_error(run("extract", f"{proxy.host}/{repo}:v1", "-o", str(out)))
    assert "corrupt" in line, line
    assert run("extract", f"{proxy.host}/{repo}:v1", "--dir", str(into)).returncode == 1
    _nothing_left(tmp_path, into, out)
    assert not os.path.exists(tmp_path / "d" / "model.bin")


@pytest.mark.parametrize(
    ("forced", "cores", "expected"),
    [("1", 2, True), ("0", 64, False), (None, 2, False), (None, 4, True), (None, None, False)],
)
def test_when_extract_reads_by_units(
    monkeypatch: pytest.MonkeyPatch, forced: str | None, cores: int | None, expected: bool
) -> None:
    if forced is None:
        monkeypatch.delenv(PARALLEL_ENV, raising=False)
    else:
        monkeypatch.setenv(PARALLEL_ENV, forced)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert parallel_extract() is expected
