"""``mount --writable`` and ``commit``: real mounts, real registry, umoci reads the result.

The base is a small cog-like image (OS, src/, weights). Each test changes
``rootfs/`` through the kernel like any program would, then commits; the
image is judged by skopeo + umoci (``readback.unpack``), never by r8imfs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.fuse import Mount, MountFactory, alive, is_mounted, r8imfs, wait_until
from tests.helpers.images import push
from tests.helpers.readback import (
    OS_FILES,
    SRC_FILES,
    Tree,
    expected,
    inspect_config,
    inspect_raw,
    layout_blob,
    tag_digest,
    unpack,
)
from tests.helpers.readback import tree as tree_of
from tests.helpers.registry import RegistryServer
from tools.demoimage import tar_of

KiB = 1024
MODEL = os.urandom(300 * KiB + 5)
WEIGHTS: dict[str, bytes | str | None] = {
    "src/weights": None,
    "src/weights/model.bin": MODEL,
    "src/weights/old.bin": b"old weights\n",
    "src/weights/keep.txt": b"keep me\n",
    "src/weights/sub": None,
    "src/weights/sub/a.bin": b"a" * 1000,
    "src/weights/sub/deep": None,
    "src/weights/sub/deep/b.bin": b"b" * 1000,
    "src/weights/mvdir": None,
    "src/weights/mvdir/x.bin": b"x" * 3000,
}


def _base(host: str, repo: str) -> str:
    ref = f"{host}/{repo}/base:v1"
    layers = [
        (tar_of(OS_FILES), "ADD os /", None),
        (tar_of(SRC_FILES), "COPY . /src # buildkit", "cog"),
        (tar_of(WEIGHTS), "COPY ./weights /src/weights # weights", "weights"),
    ]
    push(ref, layers=layers, manifest_type=mt.DOCKER_MANIFEST)
    return ref


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()


def _commit(m: Mount, dest: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return r8imfs("commit", str(m.path), "--dest", dest, *extra, env=m.env, timeout=120)


def _pushed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "@sha256:" in last, proc.stdout
    return last


def _one_error(proc: subprocess.CompletedProcess[str], command: str = "commit") -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"r8imfs {command}: error: "), lines[0]
    return lines[0]


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=60, capture_output=True)


def _change_everything(root: Path) -> Tree:
    """Added, modified, deleted, renamed, an opaque directory; the tree to expect."""
    w = root / "src/weights"
    want = expected(OS_FILES, SRC_FILES, WEIGHTS)
    (w / "new.bin").write_bytes(b"n" * 5000)  # added
    want["src/weights/new.bin"] = b"n" * 5000
    with (w / "model.bin").open("r+b") as f:  # modified in place: copy-up of lazy bytes
        f.seek(1000)
        f.write(b"CHANGED")
    want["src/weights/model.bin"] = MODEL[:1000] + b"CHANGED" + MODEL[1007:]
    (w / "old.bin").unlink()  # deleted
    del want["src/weights/old.bin"]
    (w / "keep.txt").rename(w / "kept.txt")  # renamed
    want["src/weights/kept.txt"] = want.pop("src/weights/keep.txt")
    shutil.rmtree(w / "sub")  # replaced directory: opaque
    (w / "sub").mkdir()
    (w / "sub/c.bin").write_bytes(b"c")
    for gone in ("sub/a.bin", "sub/deep", "sub/deep/b.bin"):
        del want[f"src/weights/{gone}"]
    want["src/weights/sub/c.bin"] = b"c"
    # a lower directory: rename(2) says EXDEV (as overlayfs does), mv copies and deletes
    subprocess.run(["mv", str(w / "mvdir"), str(w / "moved")], check=True, timeout=60)
    want["src/weights/moved"] = want.pop("src/weights/mvdir")
    want["src/weights/moved/x.bin"] = want.pop("src/weights/mvdir/x.bin")
    (w / "link").symlink_to("new.bin")  # symlink, mkdir
    want["src/weights/link"] = "-> new.bin"
    (w / "more/deeper").mkdir(parents=True)
    want["src/weights/more"] = want["src/weights/more/deeper"] = None
    return want


def test_commit_of_every_kind_of_change(
    registry: RegistryServer,
    proxy: CountingProxy,
    repo_name: str,
    mounted: MountFactory,
    tmp_path: Path,
) -> None:
    base = _base(proxy.host, repo_name)
    before = inspect_raw(f"{registry.host}/{repo_name}/base:v1")
    dest = f"{proxy.host}/{repo_name}/out:v2"
    with mounted(base, "--writable") as m:
        assert "changes are kept in" in m.mount_stderr
        want = _change_everything(m.rootfs)
        assert tree_of(m.rootfs) == want  # the mount shows the changes at once
        proxy.reset()
        line = _pushed(_commit(m, dest, "-m", "new weights"))
        # only the new layer went up; no base layer came down
        out = f"{registry.host}/{repo_name}/out:v2"
        raw = inspect_raw(out)
        new_layer = raw["layers"][-1]
        assert raw["layers"][:-1] == before["layers"]
        assert new_layer["mediaType"] == mt.DOCKER_LAYER_GZIP
        assert not {x["digest"] for x in before["layers"]} & set(proxy.blob_downloads())
        assert proxy.downloaded <= 64 * KiB
        assert proxy.uploaded <= 1.01 * new_layer["size"] + 64 * KiB
        assert line == f"{proxy.host}/{repo_name}/out@{tag_digest(out)}"
        history = inspect_config(out)["history"][-1]
        assert history["comment"] == "new weights"
        assert tree_of(m.rootfs) == want  # the mount keeps serving the same tree
        assert unpack(out, tmp_path / "umoci") == want
        layer_blob = layout_blob(tmp_path / "umoci/layout", new_layer["digest"])
        names = subprocess.run(
            ["tar", "-tzf", str(layer_blob)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert {
            "src/weights/.wh.old.bin",
            "src/weights/.wh.keep.txt",
            "src/weights/sub/.wh..wh..opq",
            "src/weights/kept.txt",
        } <= set(names)
        assert "src/predict.py" not in names  # only what changed
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert "uncommitted" not in done.stderr
    upper_root = m.cache_dir / "upper"
    assert not any(upper_root.iterdir()), "a fully committed upper dir stays in the cache"


def test_zstd_commit_reads_back(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    base = _base(registry.host, repo_name)
    dest = f"{registry.host}/{repo_name}/out:zstd"
    with mounted(base, "--writable") as m:
        want = _change_everything(m.rootfs)
        _pushed(_commit(m, dest, "--zstd"))
    raw = inspect_raw(dest)
    assert raw["mediaType"] == mt.OCI_MANIFEST  # zstd has no Docker media type
    layer = raw["layers"][-1]
    assert layer["mediaType"] == mt.OCI_LAYER_ZSTD
    # zstd:chunked, as `r8imfs zstd` writes it: its TOC located by the annotations
    assert "io.github.containers.zstd-chunked.manifest-checksum" in layer["annotations"]
    assert unpack(dest, tmp_path / "umoci", regzip=True) == want
    with mounted(dest, name="back") as back:  # served through the TOC, not indexed
        assert "TOC refused" not in back.mount_stderr + back.log_text()
        for rel, body in want.items():
            if isinstance(body, bytes):
                assert (back.rootfs / rel).read_bytes() == body, rel


def test_guard_refuses_a_code_change_and_tags_nothing(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    base = _base(registry.host, repo_name)
    dest = f"{registry.host}/{repo_name}/out:guard"
    with mounted(base, "--writable") as m:
        (m.rootfs / "src/weights/new.bin").write_bytes(b"fine")
        (m.rootfs / "src/predict.py").write_text("print('broken')\n")
        line = _one_error(_commit(m, dest))
        assert "this commit writes outside src/weights/" in line
        assert "src/predict.py" in line and "--allow-overwrite" in line
        assert tag_digest(dest) is None
        _pushed(_commit(m, dest, "--allow-overwrite"))
        (m.rootfs / "src/cog.yaml").unlink()  # a deletion of code is a change too
        line = _one_error(_commit(m, f"{registry.host}/{repo_name}/out:guard2"))
        assert "src/.wh.cog.yaml" in line
        _pushed(_commit(m, dest, "--weights-prefix", "src/", "--level", "6"))
    assert "src/cog.yaml" not in unpack(dest, tmp_path / "umoci")


def test_clear_errors(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    base = _base(registry.host, repo_name)
    dest = f"{registry.host}/{repo_name}/out:x"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "is not mounted" in _one_error(r8imfs("commit", str(plain), "--dest", dest))
    with mounted(base, name="ro") as m:
        assert "read-only" in _one_error(_commit(m, dest))
        with pytest.raises(OSError, match="Read-only"):
            (m.rootfs / "src/weights/x").write_bytes(b"x")
    with mounted(base, "--writable", name="rw") as m:
        assert "nothing to commit" in _one_error(_commit(m, dest))
        with pytest.raises(OSError, match="Operation not permitted"):
            (m.rootfs / "src/weights/.wh.x").write_bytes(b"")
        with pytest.raises(OSError, match="Read-only"):
            (m.path / "config.json").write_bytes(b"{}")
    assert tag_digest(dest) is None


def test_two_writers_at_once(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    """Two threads write new files and the same lower file (one shared copy-up)."""
    base = _base(registry.host, repo_name)
    bodies = [os.urandom(2 * 1024 * KiB + i) for i in range(2)]
    with mounted(base, "--writable") as m:
        w = m.rootfs / "src/weights"
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            try:
                with (w / f"w{i}.bin").open("wb") as f:
                    for off in range(0, len(bodies[i]), 64 * KiB):
                        f.write(bodies[i][off : off + 64 * KiB])
                fd = os.open(w / "model.bin", os.O_WRONLY)
                try:
                    os.pwrite(fd, b"%d" % i * 10, 100 * KiB * i)
                finally:
                    os.close(fd)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        model = bytearray(MODEL)
        for i in range(2):
            assert (w / f"w{i}.bin").read_bytes() == bodies[i]
            model[100 * KiB * i : 100 * KiB * i + 10] = b"%d" % i * 10
        assert (w / "model.bin").read_bytes() == bytes(model)
        dest = f"{registry.host}/{repo_name}/out:two"
        _pushed(_commit(m, dest))
    got = unpack(dest, tmp_path / "umoci")
    assert got["src/weights/model.bin"] == bytes(model)
    assert [got[f"src/weights/w{i}.bin"] for i in range(2)] == bodies


def test_killed_daemon_leaves_a_usable_upper_dir(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    base = _base(registry.host, repo_name)
    dest = f"{registry.host}/{repo_name}/out:killed"
    with mounted(base, "--writable") as m:
        w = m.rootfs / "src/weights"
        (w / "done.bin").write_bytes(b"written before the crash")
        (w / "old.bin").unlink()
        pid = m.pid()
        assert pid is not None
        started = threading.Event()
        result: list[BaseException] = []

        def endless() -> None:
            try:
                with (w / "partial.bin").open("wb") as f:
                    while True:
                        f.write(b"p" * 64 * KiB)
                        started.set()
            except OSError as exc:
                result.append(exc)
            started.set()

        t = threading.Thread(target=endless)
        t.start()
        assert started.wait(30)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        assert result, "the writer did not notice the dead daemon"
        assert wait_until(lambda: not alive(pid), 10)
        # the dead mount's changes can be committed straight away
        _pushed(_commit(m, dest))
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)
    got = unpack(dest, tmp_path / "umoci")
    assert got["src/weights/done.bin"] == b"written before the crash"
    assert "src/weights/old.bin" not in got
    assert set(got["src/weights/partial.bin"] or b"") <= {ord("p")}


def test_uncommitted_changes_survive_umount_and_can_be_discarded(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    base = _base(registry.host, repo_name)
    upper = tmp_path / "my-upper"
    with mounted(base, "--upper", str(upper), name="first") as m:
        (m.rootfs / "src/weights/new.bin").write_bytes(b"kept")
        (m.rootfs / "src/weights/old.bin").unlink()
        pid = m.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(pid), 10)
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert f"uncommitted changes are kept in {upper}" in done.stderr
    with mounted(base, "--upper", str(upper), name="second") as m:
        assert "resuming" in m.mount_stderr
        assert (m.rootfs / "src/weights/new.bin").read_bytes() == b"kept"
        assert not (m.rootfs / "src/weights/old.bin").exists()
        done = r8imfs("umount", "--discard", str(m.path), env=m.env)
        assert done.returncode == 0, done.stderr
        assert "discarded" in done.stderr
    assert not upper.exists()


def test_overwrites_and_unchanged_files_are_not_downloaded(
    registry: RegistryServer,
    proxy: CountingProxy,
    repo_name: str,
    mounted: MountFactory,
    tmp_path: Path,
) -> None:
    """Over a plain layer (indexed from its headers, read by ranges): replacing a
    16 MiB file with O_TRUNC, adding one, and committing fetch none of its body."""
    big = os.urandom(16 * 1024 * KiB)
    files: dict[str, bytes | str | None] = {
        "src/weights": None,
        "src/weights/big.bin": big,
        "src/weights/small.bin": b"s",
    }
    ref = f"{proxy.host}/{repo_name}/plain:v1"
    layers = [(tar_of(SRC_FILES), "COPY . /src", None), (tar_of(files), "COPY w # weights", None)]
    push(ref, layers=layers, manifest_type=mt.OCI_MANIFEST, compression="none")
    weights_layer = inspect_raw(f"{registry.host}/{repo_name}/plain:v1")["layers"][-1]
    assert weights_layer["mediaType"] == mt.OCI_LAYER
    dest = f"{proxy.host}/{repo_name}/plain:v2"
    with mounted(ref, "--writable") as m:
        w = m.rootfs / "src/weights"
        (w / "big.bin").write_bytes(b"replaced")  # open(O_TRUNC): nothing to copy up
        (w / "new.bin").write_bytes(b"new")
        assert (w / "small.bin").read_bytes() == b"s"
        _pushed(_commit(m, dest))
    fetched = proxy.blob_downloads().get(weights_layer["digest"], 0)
    assert fetched < len(big) // 2, f"{fetched} bytes of the weights layer were downloaded"
    got = unpack(f"{registry.host}/{repo_name}/plain:v2", tmp_path / "umoci")
    assert got["src/weights/big.bin"] == b"replaced"
    assert got["src/weights/new.bin"] == b"new"


def test_everyday_tools_work_in_the_mount(
    registry: RegistryServer, repo_name: str, mounted: MountFactory, tmp_path: Path
) -> None:
    """sed -i (temp file renamed over a lower file), cp -a, tar -x, truncate, chmod, touch."""
    base = _base(registry.host, repo_name)
    src = tmp_path / "src-dir"
    (src / "inner").mkdir(parents=True)
    (src / "inner/f.txt").write_bytes(b"from cp -a")
    os.chmod(src / "inner/f.txt", 0o600)
    tarball = tmp_path / "x.tar"
    tarball.write_bytes(tar_of({"untarred": None, "untarred/u.bin": b"u" * 2000}))
    with mounted(base, "--writable") as m:
        w = m.rootfs / "src/weights"
        _sh("sed", "-i", "s/old/new/", str(w / "old.bin"))
        _sh("cp", "-a", str(src), str(w / "copied"))
        _sh("tar", "-xf", str(tarball), "-C", str(w))
        _sh("truncate", "-s", "10", str(w / "model.bin"))
        _sh("chmod", "600", str(w / "keep.txt"))
        _sh("touch", "-d", "@978307200", str(w / "sub/a.bin"))
        assert (w / "old.bin").read_bytes() == b"new weights\n"
        assert (w / "copied/inner/f.txt").stat().st_mode & 0o777 == 0o600
        assert (w / "model.bin").read_bytes() == MODEL[:10]
        assert (w / "keep.txt").stat().st_mode & 0o777 == 0o600
        assert int((w / "sub/a.bin").stat().st_mtime) == 978307200
        want = tree_of(m.rootfs)
        dest = f"{registry.host}/{repo_name}/out:tools"
        _pushed(_commit(m, dest))
    got = unpack(dest, tmp_path / "umoci")
    assert got == want
    assert got["src/weights/untarred/u.bin"] == b"u" * 2000
