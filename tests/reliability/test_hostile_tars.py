"""Hostile archives: layers and affix tars that try to escape, hang, or lie.

Every case: a clear one-line error (or, for extract --dir, a success that
wrote nothing outside its directory), no traceback, bounded time. Layers
are pushed as raw blobs with r8imfs's own upload and push code.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from r8imfs.oci import mediatypes as mt
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import (
    RawLayer,
    is_mounted,
    one_line_error,
    push_blobs,
    run,
    run_here,
    sha256,
    tag_is_whole,
)
from tools.demoimage import tar_of
from tools.faultproxy import FaultProxy

#: every hostile input must be refused well within this
QUICK = 30.0

# -- archives -------------------------------------------------------------------------


def build(members: list[tuple[dict[str, object], bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for fields, data in members:
            info = tarfile.TarInfo(str(fields["name"]))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def raw_header(name: str, body: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A special header (PAX, GNU long name) with an arbitrary body, then its padding."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(body)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + body + b"\0" * (-len(body) % 512)


def pax_record(key: str, value: str) -> bytes:
    """``<length> key=value\n``, the length counting itself."""
    rest = f" {key}={value}\n".encode()
    n = len(rest) + 1
    while len(str(n).encode() + rest) != n:
        n += 1
    return str(n).encode() + rest


def escaping(outside: Path) -> bytes:
    return build(
        [
            ({"name": f"src/weights/../../../..{outside}/dotdot"}, b"x"),
            ({"name": f"{outside}/absolute"}, b"x"),
            ({"name": "src/weights/link", "type": tarfile.SYMTYPE, "linkname": str(outside)}, None),
            ({"name": "src/weights/link/through-symlink"}, b"x"),
            (
                {"name": "src/weights/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"},
                None,
            ),
            ({"name": "src/weights/ok.bin"}, b"fine"),
        ]
    )


def redos_pax() -> bytes:
    """CVE-2024-6232: 200 KB of digits take the stdlib minutes to parse."""
    body = pax_record("comment", "1" * 200_000)
    return raw_header("././@PaxHeader", body) + tar_of({"src/weights/a.bin": b"abc"})


def huge_pax() -> bytes:
    return build(
        [({"name": "src/weights/a.bin", "pax_headers": {"comment": "x" * (2 << 20)}}, b"abc")]
    )


def negative_size() -> bytes:
    """A PAX ``size=-1536`` sends a seekable walk back two blocks, forever (CVE-2025-8194)."""
    record = pax_record("size", "-1536")
    good = tar_of({"src/weights/a.bin": b"abc"})[:1024]  # header + body, no end blocks
    return good + raw_header("././@PaxHeader", record) + tar_of({"src/weights/b": b""})


def nan_mtime() -> bytes:
    record = pax_record("mtime", "nan")
    return raw_header("././@PaxHeader", record) + tar_of({"src/weights/c": b"x"})


def huge_uid() -> bytes:
    record = pax_record("uid", "99999999999999")
    return raw_header("././@PaxHeader", record) + tar_of({"src/weights/d": b"x"})


HOSTILE_HEADERS: dict[str, Callable[[], bytes]] = {
    "redos-pax": redos_pax,
    "huge-pax": huge_pax,
    "negative-size": negative_size,
    "nan-mtime": nan_mtime,
    "huge-uid": huge_uid,
}


def push_plain(registry: RegistryServer, repo: str, tar: bytes) -> str:
    ref = f"{registry.host}/{repo}:v1"
    push_blobs(ref, [RawLayer(tar, mt.OCI_LAYER, sha256(tar))])
    return ref


def test_tar_headers_build_what_they_claim() -> None:
    """The fixtures are what their names say (a broken fixture would test nothing)."""
    assert len(redos_pax()) > 200_000 and b"size=-1536" in negative_size()
    with tarfile.open(fileobj=io.BytesIO(nan_mtime())) as tf:
        assert str(tf.getmembers()[0].mtime) == "nan"
    with tarfile.open(fileobj=io.BytesIO(huge_uid())) as tf:
        assert tf.getmembers()[0].uid == 99999999999999


# -- escaping paths ------------------------------------------------------------------


def test_extract_dir_writes_nothing_outside(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ref = push_plain(registry, repo_name, escaping(outside))
    target = tmp_path / "target"
    proc = run("extract", ref, "--dir", str(target), timeout=QUICK)
    assert proc.returncode == 0, proc.stderr
    assert list(outside.iterdir()) == []
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["link/through-symlink", "ok.bin"]  # the symlink itself is not extracted
    assert not any(p.is_symlink() for p in target.rglob("*"))


def test_extract_dir_does_not_follow_a_symlink_already_there(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ref = push_plain(registry, repo_name, tar_of({"src/weights/link/x.bin": b"x"}))
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(outside)
    one_line_error(run("extract", ref, "--dir", str(target), timeout=QUICK), contains="outside")
    assert list(outside.iterdir()) == []


def test_affix_refuses_escaping_tars_before_writing_anything(
    image_ref: str, proxy: FaultProxy, repo_name: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    tar = tmp_path / "evil.tar"
    tar.write_bytes(escaping(outside))
    dest = f"{proxy.host}/{repo_name}:evil"
    line = one_line_error(run("affix", "--base", image_ref, "--dest", dest, "--tar", str(tar)))
    for why in ("'..' in path", "absolute path", "below symlink", "=> /etc/passwd"):
        assert why in line
    assert [r for r in proxy.requests if r.method not in ("GET", "HEAD")] == []
    assert not tag_is_whole(proxy.upstream, repo_name, "evil")


@pytest.mark.fuse
def test_mount_refuses_a_layer_that_climbs_out(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    ref = push_plain(registry, repo_name, escaping(tmp_path / "outside"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = run("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "c"), timeout=QUICK)
    one_line_error(proc, contains="climbs out")
    assert not is_mounted(mnt)


# -- headers that hang, exhaust or lie ---------------------------------------------------


@pytest.fixture
def image_ref(registry: RegistryServer, proxy: FaultProxy, repo_name: str) -> str:
    ref = f"{registry.host}/{repo_name}/base:v1"
    push_blobs(ref, [RawLayer(tar_of({"etc/hostname": b"h\n"}), mt.OCI_LAYER, None, "ADD /", None)])
    return f"{proxy.host}/{repo_name}/base:v1"


@pytest.mark.parametrize("kind", sorted(HOSTILE_HEADERS))
def test_hostile_headers_in_a_layer_are_refused_quickly(
    registry: RegistryServer, repo_name: str, tmp_path: Path, kind: str
) -> None:
    ref = push_plain(registry, repo_name, HOSTILE_HEADERS[kind]())
    line = one_line_error(run("extract", ref, "-o", str(tmp_path / "w.tar"), timeout=QUICK))
    assert "tar" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["redos-pax", "negative-size", "nan-mtime"])
@pytest.mark.fuse
def test_hostile_headers_fail_a_mount_quickly(
    registry: RegistryServer, repo_name: str, tmp_path: Path, kind: str
) -> None:
    ref = push_plain(registry, repo_name, HOSTILE_HEADERS[kind]())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = run("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "c"), timeout=QUICK)
    one_line_error(proc, contains="layer 0")
    assert not is_mounted(mnt)


@pytest.mark.parametrize("kind", ["redos-pax", "huge-pax", "negative-size"])
def test_hostile_headers_in_an_affix_tar_are_refused_quickly(
    image_ref: str, proxy: FaultProxy, repo_name: str, tmp_path: Path, kind: str
) -> None:
    tar = tmp_path / "w.tar"
    tar.write_bytes(HOSTILE_HEADERS[kind]())
    dest = f"{proxy.host}/{repo_name}:out"
    one_line_error(
        run("affix", "--base", image_ref, "--dest", dest, "--tar", str(tar), timeout=QUICK),
        contains="tar",
    )
    assert not tag_is_whole(proxy.upstream, repo_name, "out")


# -- compressed streams that are not what they say ------------------------------------------

TAR = tar_of({"src/weights/w.bin": os.urandom(200_000)})
_GZ = gzip.compress(TAR)
_ZS = b"".join(
    zstandard.ZstdCompressor().compress(TAR[i : i + 65536]) for i in range(0, len(TAR), 65536)
)

BROKEN: dict[str, RawLayer] = {
    "random-as-gzip": RawLayer(os.urandom(4096), mt.OCI_LAYER_GZIP, sha256(TAR)),
    "truncated-gzip": RawLayer(_GZ[: len(_GZ) // 2], mt.OCI_LAYER_GZIP, sha256(TAR)),
    "gzip-bad-crc": RawLayer(_GZ[:-8] + bytes(4) + _GZ[-4:], mt.OCI_LAYER_GZIP, sha256(TAR)),
    "random-as-zstd": RawLayer(os.urandom(4096), mt.OCI_LAYER_ZSTD, sha256(TAR)),
    "truncated-zstd": RawLayer(_ZS[: len(_ZS) - 1000], mt.OCI_LAYER_ZSTD, sha256(TAR)),
    "gzip-of-non-tar": RawLayer(gzip.compress(os.urandom(4096)), mt.OCI_LAYER_GZIP),
    "non-tar-plain": RawLayer(os.urandom(4096), mt.OCI_LAYER),
    "empty-gzip": RawLayer(b"", mt.OCI_LAYER_GZIP),
}
assert zlib.crc32(TAR) != 0  # the bad-crc case zeroes a crc that was not zero


@pytest.mark.parametrize("kind", sorted(set(BROKEN) - {"gzip-of-non-tar"}))
def test_broken_compressed_layers_fail_extract(
    registry: RegistryServer, repo_name: str, tmp_path: Path, kind: str
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    push_blobs(ref, [BROKEN[kind]])
    one_line_error(run("extract", ref, "-o", str(tmp_path / "w.tar"), timeout=QUICK))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kind", ["truncated-gzip", "random-as-zstd", "truncated-zstd", "gzip-of-non-tar"]
)
@pytest.mark.fuse
def test_broken_compressed_layers_fail_a_mount(
    registry: RegistryServer, repo_name: str, tmp_path: Path, kind: str
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    push_blobs(ref, [BROKEN[kind]])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = run("mount", ref, str(mnt), "--cache-dir", str(tmp_path / "c"), timeout=QUICK)
    one_line_error(proc, contains="layer 0")
    assert not is_mounted(mnt)


@pytest.mark.parametrize("kind", ["random-as-gzip", "truncated-gzip", "gzip-bad-crc"])
def test_broken_compressed_layers_fail_zstd_and_push_nothing(
    registry: RegistryServer, repo_name: str, kind: str
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    push_blobs(ref, [BROKEN[kind]])
    one_line_error(run("zstd", ref, "--dest", f"{registry.host}/{repo_name}:z", timeout=QUICK))
    assert not tag_is_whole(registry.host, repo_name, "z")


# -- affix input that is not a tar ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (os.urandom(3000), "not a readable tar"),
        (gzip.compress(TAR), "gzip-compressed"),
        (b"", "empty"),
        (TAR[:1500], "not a readable tar"),
    ],
    ids=["random", "gzip", "empty", "truncated"],
)
def test_affix_refuses_input_that_is_not_a_tar(
    image_ref: str,
    proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    content: bytes,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tar = tmp_path / "in.tar"
    tar.write_bytes(content)
    dest = f"{proxy.host}/{repo_name}:out"
    proc = run_here(capsys, "affix", "--base", image_ref, "--dest", dest, "--tar", str(tar))
    one_line_error(proc, contains=words)
    assert [r for r in proxy.requests if r.method not in ("GET", "HEAD")] == []


def test_extract_into_a_place_that_cannot_be_a_directory(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    """A local OSError (here: a file where a directory must go) is one line too."""
    ref = push_plain(registry, repo_name, tar_of({"src/weights/a.bin": b"a"}))
    (tmp_path / "file").write_bytes(b"")
    proc = run("extract", ref, "--dir", str(tmp_path / "file" / "sub"), timeout=QUICK)
    one_line_error(proc, contains="file/sub")
