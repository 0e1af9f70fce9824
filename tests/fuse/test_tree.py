"""A mounted image shows exactly its layers: rootfs, layers/, manifest and config.

One three-layer image, pushed gzip (Docker v2 manifest), zstd and
uncompressed (OCI), each mounted once for the module. Its layers hold what
trips merged views up: a file and a directory whited out, an opaque
directory whose marker comes before the directory's own entry, a whiteout
and a new entry of the same name in one layer (a directory becoming a file,
a directory recreated), a directory where a symlink was, hardlinks within a
layer and into a lower one, absolute and relative symlinks, a PAX xattr, a
0-byte file, a path over 100 characters, owners and modes, and a directory
of 300 entries (several readdir calls). The expected tree comes from
``fusekit.build_reference``, which uses no r8imfs code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.fuse import (
    CMD_TIMEOUT,
    Member,
    Mount,
    build_reference,
    diff,
    make_tar,
    mount_image,
    reference_snapshot,
    snapshot,
)
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer

MANIFEST_TYPES = {"gzip": mt.DOCKER_MANIFEST, "zstd": mt.OCI_MANIFEST, "none": mt.OCI_MANIFEST}
LONG_DIR = "deep/" + "d" * 60
LONG_FILE = f"{LONG_DIR}/{'f' * 70}.txt"
NOTE = "hello from a PAX record"
READERS = 8


def _rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


#: data/f<i>: sizes that straddle pages, 4 MiB cache blocks and read sizes
DATA = {f"data/f{i}": _rand(i, 97_000 * (i + 1) + 4093 * i) for i in range(READERS)}


def _layers() -> list[bytes]:
    base = [
        Member("etc", "d"),
        Member("etc/os-release", data=b'NAME="lower"\n'),
        Member("etc/remove-me", data=b"whited out above\n"),
        Member("etc/empty"),
        Member("etc/noted", data=b"has an xattr\n", pax={"SCHILY.xattr.user.note": NOTE}),
        Member("etc/link-abs", "l", link="/etc/os-release"),
        Member("usr", "d"),
        Member("usr/bin", "d"),
        Member("usr/bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755),
        Member("usr/bin/tool-alias", "h", link="usr/bin/tool"),
        Member("bin", "l", link="usr/bin"),
        Member("opt", "d"),
        Member("opt/gone", "d"),
        Member("opt/gone/a.txt", data=b"a"),
        Member("opt/gone/sub", "d"),
        Member("opt/gone/sub/b.txt", data=b"b"),
        Member("opt/reborn", "d"),
        Member("opt/reborn/old.txt", data=b"old"),
        Member("opt/again", "d"),
        Member("opt/again/old.txt", data=b"old"),
        Member("lib", "l", link="usr/lib"),
        Member("var", "d"),
        Member("var/cache", "d"),
        Member("var/cache/old1", data=b"old1"),
        Member("var/cache/sub", "d"),
        Member("var/cache/sub/old2", data=b"old2"),
        Member("home", "d"),
        Member("home/user", "d", mode=0o750, owner=(1000, 1000)),
        Member("home/user/secret", data=b"s3cret\n", mode=0o600, owner=(1000, 1000)),
        Member("deep", "d"),
        Member(LONG_DIR, "d"),
        Member(LONG_FILE, data=b"a long path\n"),
    ]
    upper = [
        Member("etc", "d"),
        Member("etc/.wh.remove-me"),
        Member("etc/os-release", data=b'NAME="upper"\nVERSION="2"\n'),
        Member("opt", "d"),
        Member("opt/.wh.gone"),
        Member("opt/.wh.reborn"),
        Member("opt/reborn", data=b"a file now\n"),
        Member("opt/.wh.again"),
        Member("opt/again", "d", mode=0o711),
        Member("opt/again/new.txt", data=b"new"),
        Member("lib", "d"),  # a directory where a symlink was
        Member("lib/libx.so", data=b"\x7fELF"),
        Member("etc/noted-link", "h", link="etc/noted"),  # to a lower layer's file
        Member("var", "d"),
        Member("var/cache/.wh..wh..opq"),  # before its directory's own entry
        Member("var/cache", "d", mode=0o700),
        Member("var/cache/new", data=b"new\n"),
        Member("src", "d"),
        Member("src/predict.py", data=b"print('hi')\n"),
        Member("src/predict-copy.py", "h", link="src/predict.py"),
        Member("src/model.bin", data=_rand(100, 300_000)),
    ]
    data = [Member("data", "d"), *(Member(p, data=body) for p, body in DATA.items())]
    data += [Member("many", "d")]
    data += [Member(f"many/entry-{i:03d}-{'x' * (i % 40)}", data=b"%d" % i) for i in range(300)]
    return [make_tar(base), make_tar(upper), make_tar(data)]


@dataclass(frozen=True)
class Pushed:
    ref: str
    compression: str
    host: str
    name: str
    tag: str


@pytest.fixture(scope="module")
def layers() -> list[bytes]:
    return _layers()


@pytest.fixture(scope="module", params=list(MANIFEST_TYPES))
def image(request: pytest.FixtureRequest, registry: RegistryServer, layers: list[bytes]) -> Pushed:
    compression = request.param
    name, tag = f"fuse/tree-{compression}", "v1"
    ref = f"{registry.host}/{name}:{tag}"
    push(
        ref,
        layers=[(tar, f"layer {i}", None) for i, tar in enumerate(layers)],
        manifest_type=MANIFEST_TYPES[compression],
        compression=compression,
    )
    return Pushed(ref, compression, registry.host, name, tag)


@pytest.fixture(scope="module")
def mount(image: Pushed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with mount_image(image.ref, tmp_path_factory.mktemp(f"mount-{image.compression}")) as m:
        yield m


def _registry_manifest(image: Pushed) -> bytes:
    accept = ", ".join((mt.OCI_MANIFEST, mt.DOCKER_MANIFEST))
    url = f"http://{image.host}/v2/{image.name}/manifests/{image.tag}"
    resp = httpx.get(url, headers={"Accept": accept}, timeout=30)
    resp.raise_for_status()
    return resp.content


def _registry_blob(image: Pushed, digest: str) -> bytes:
    resp = httpx.get(f"http://{image.host}/v2/{image.name}/blobs/{digest}", timeout=30)
    resp.raise_for_status()
    return resp.content


def _layer_names(manifest: bytes) -> list[str]:
    layers = json.loads(manifest)["layers"]
    return [f"{i:02d}-{d['digest'].split(':')[1][:12]}" for i, d in enumerate(layers)]


# -- what the mount shows ------------------------------------------------------------


def test_rootfs_matches_reference(mount: Mount, layers: list[bytes], tmp_path: Path) -> None:
    expected = reference_snapshot(build_reference(layers, tmp_path / "reference"))
    got = snapshot(mount.rootfs)
    assert diff(expected, got) == []
    # the fixture itself, spot-checked, so a wrong reference cannot hide a bug
    assert {"etc/remove-me", "opt/gone", "var/cache/old1", "var/cache/sub"}.isdisjoint(got)
    assert got["lib"]["mode"] == oct(stat.S_IFDIR | 0o755)
    assert got["opt/reborn"]["body"] == b"a file now\n"
    assert "opt/again/old.txt" not in got and "opt/again/new.txt" in got
    assert got["etc/noted-link"]["nlink"] == 2
    assert got["var/cache"]["mode"] == oct(stat.S_IFDIR | 0o700)
    assert got["etc/noted"]["xattrs"] == {"user.note": NOTE.encode()}
    assert got[LONG_FILE]["body"] == b"a long path\n"
    assert not any(".wh." in p for p in got)


def test_manifest_and_config_are_the_registrys_bytes(mount: Mount, image: Pushed) -> None:
    manifest = _registry_manifest(image)
    assert (mount.path / "manifest.json").read_bytes() == manifest
    config_digest = json.loads(manifest)["config"]["digest"]
    assert (mount.path / "config.json").read_bytes() == _registry_blob(image, config_digest)
    assert sorted(os.listdir(mount.path)) == ["config.json", "layers", "manifest.json", "rootfs"]


def test_layer_dirs_show_each_layer_as_stored(
    mount: Mount, layers: list[bytes], image: Pushed, tmp_path: Path
) -> None:
    names = _layer_names(_registry_manifest(image))
    assert sorted(os.listdir(mount.path / "layers")) == names
    for i, (name, tar) in enumerate(zip(names, layers, strict=True)):
        expected = reference_snapshot(
            build_reference([tar], tmp_path / f"layer-{i}", whiteouts=False)
        )
        got = snapshot(mount.path / "layers" / name)
        assert diff(expected, got) == [], name
    upper = set(snapshot(mount.path / "layers" / names[1]))
    assert {"etc/.wh.remove-me", "opt/.wh.gone", "var/cache/.wh..wh..opq"} <= upper


def test_st_blocks_count_512_byte_units(mount: Mount) -> None:
    checked = 0
    for dirpath, _dirs, files in os.walk(mount.path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                assert st.st_blocks == -(-st.st_size // 512), os.path.join(dirpath, name)
                checked += 1
    assert checked > 300


def test_hardlinks_share_an_inode(mount: Mount) -> None:
    for a, b in (("usr/bin/tool", "usr/bin/tool-alias"), ("src/predict.py", "src/predict-copy.py")):
        sa, sb = os.lstat(mount.rootfs / a), os.lstat(mount.rootfs / b)
        assert sa.st_ino == sb.st_ino, (a, b)
        assert sa.st_nlink == sb.st_nlink == 2, (a, b)
    assert os.lstat(mount.rootfs / "etc/os-release").st_nlink == 1


def test_inode_numbers_are_stable(mount: Mount) -> None:
    first = {p: os.lstat(mount.rootfs / p).st_ino for p in ("etc", "etc/noted", "src/model.bin")}
    subprocess.run(["ls", "-laR", str(mount.rootfs)], capture_output=True, timeout=CMD_TIMEOUT)
    again = {p: os.lstat(mount.rootfs / p).st_ino for p in first}
    assert first == again
    assert len(set(first.values())) == len(first)


@pytest.mark.parametrize(
    ("path", "flags"),
    [
        ("etc/os-release", os.O_WRONLY),
        ("etc/os-release", os.O_RDWR),
        ("etc/os-release", os.O_WRONLY | os.O_TRUNC),
        ("etc/new-file", os.O_WRONLY | os.O_CREAT),
        ("../manifest.json", os.O_WRONLY),
    ],
)
def test_writing_gives_erofs(mount: Mount, path: str, flags: int) -> None:
    with pytest.raises(OSError, match="Read-only") as info:
        os.open(mount.rootfs / path, flags, 0o644)
    assert info.value.errno == errno.EROFS


def test_changing_metadata_gives_erofs(mount: Mount) -> None:
    for attempt in (
        lambda: os.mkdir(mount.rootfs / "newdir"),
        lambda: os.unlink(mount.rootfs / "etc/os-release"),
        lambda: os.chmod(mount.rootfs / "etc/os-release", 0o600),
        lambda: os.setxattr(mount.rootfs / "etc/noted", "user.other", b"x"),
    ):
        with pytest.raises(OSError, match="Read-only") as info:
            attempt()
        assert info.value.errno == errno.EROFS


def test_readdir_offsets_are_stable(mount: Mount) -> None:
    many = mount.rootfs / "many"
    first, second = os.listdir(many), os.listdir(many)
    assert first == second
    assert len(first) == len(set(first)) == 300
    out = subprocess.run(
        ["ls", "-f", str(many)], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=True
    )
    assert set(out.stdout.split()) - {".", ".."} == set(first)
    with os.scandir(many) as it:  # a reader that stops and starts again
        head = [next(it).name for _ in range(10)]
    assert head == first[:10]


def test_xattrs(mount: Mount) -> None:
    noted = mount.rootfs / "etc/noted"
    assert os.listxattr(noted) == ["user.note"]
    assert os.getxattr(noted, "user.note") == NOTE.encode()
    with pytest.raises(OSError, match="No data") as info:
        os.getxattr(noted, "user.absent")
    assert info.value.errno == errno.ENODATA
    assert os.listxattr(mount.rootfs / "etc/os-release") == []
    assert os.listxattr(mount.path / "manifest.json") == []


def test_symlinks(mount: Mount) -> None:
    assert os.readlink(mount.rootfs / "bin") == "usr/bin"
    assert os.readlink(mount.rootfs / "etc/link-abs") == "/etc/os-release"
    assert (mount.rootfs / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    with pytest.raises(OSError, match="Invalid argument") as info:
        os.readlink(mount.rootfs / "etc/os-release")
    assert info.value.errno == errno.EINVAL


def test_statfs(mount: Mount) -> None:
    st = os.statvfs(mount.path)
    assert st.f_bavail == 0
    assert st.f_flag & os.ST_RDONLY


def test_reads_at_any_offset(mount: Mount) -> None:
    body = DATA["data/f5"]
    with open(mount.rootfs / "data/f5", "rb", buffering=0) as f:
        end = len(body)
        for offset, size in ((0, 1), (4095, 2), (end - 10, 100), (end, 10), (123_457, 65_536)):
            f.seek(offset)
            assert f.read(size) == body[offset : offset + size], (offset, size)


def test_mmap(mount: Mount) -> None:
    import mmap

    with (
        open(mount.rootfs / "src/model.bin", "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
    ):
        assert mapped[:] == _rand(100, 300_000)


# -- concurrency ---------------------------------------------------------------------


def test_concurrent_readers_get_their_own_bytes(image: Pushed, tmp_path: Path) -> None:
    """Eight threads, eight files, a cold cache: every reader gets exactly its file."""
    with mount_image(image.ref, tmp_path) as m:
        results: dict[str, str] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(READERS)

        def reader(path: str, chunk: int) -> None:
            try:
                h = hashlib.sha256()
                barrier.wait(timeout=30)
                with open(m.rootfs / path, "rb", buffering=0) as f:
                    while block := f.read(chunk):
                        h.update(block)
                results[path] = h.hexdigest()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=reader, args=(path, 8192 + 4099 * i))
            for i, path in enumerate(DATA)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=CMD_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a reader hung"
        assert errors == []
        assert results == {p: hashlib.sha256(body).hexdigest() for p, body in DATA.items()}
