"""Mount and unmount: daemons come and go cleanly, failures say one line and leave nothing.

Also: a second mount with the same cache directory reuses the layer
indexes (no "indexing" on stderr, no blob fetched to mount).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r8imfs.fs.daemon import READ_AHEAD_KB
from r8imfs.oci import mediatypes as mt
from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.fuse import (
    CMD_TIMEOUT,
    MOUNT_TIMEOUT,
    Member,
    MountFactory,
    alive,
    daemons_for,
    force_unmount,
    is_mounted,
    make_tar,
    mount_env,
    mounts,
    r8imfs,
    wait_until,
)
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer

BODY = os.urandom(3 * 1024 * 1024 + 17)


@pytest.fixture(scope="module")
def small_image(registry: RegistryServer) -> str:
    ref = f"{registry.host}/fuse/lifecycle:v1"
    files = [Member("app", "d"), Member("app/blob.bin", data=BODY)]
    files += [Member(f"app/f{i:02d}.txt", data=b"%d\n" % i) for i in range(20)]
    push(ref, layers=[(make_tar(files), "COPY app", None)], manifest_type=mt.OCI_MANIFEST)
    return ref


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("r8imfs mount: error: "), lines[0]
    return lines[0]


# -- unmounting ----------------------------------------------------------------------


def test_umount_leaves_no_mount_and_no_daemon(small_image: str, mounted: MountFactory) -> None:
    with mounted(small_image) as m:
        pid = m.pid()
        assert pid is not None and alive(pid)
        assert daemons_for(m.path) == [pid]
        assert (m.rootfs / "app/blob.bin").read_bytes() == BODY
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)
        assert not alive(pid), "umount returned before the daemon exited"
        assert daemons_for(m.path) == []
        assert m.pid() is None, "the pid file outlived the daemon"
        assert "Traceback" not in m.log_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_daemon_unmounts_cleanly(
    small_image: str, mounted: MountFactory, sig: signal.Signals
) -> None:
    with mounted(small_image) as m:
        pid = m.pid()
        assert pid is not None
        assert os.listdir(m.rootfs / "app")
        os.kill(pid, sig)
        assert wait_until(lambda: not alive(pid), 20), f"daemon still alive after {sig.name}"
        assert not is_mounted(m.path)
        assert m.pid() is None
        assert "Traceback" not in m.log_text()


def test_foreground_mount_serves_until_ctrl_c(
    small_image: str, mountpoint: Path, tmp_path: Path
) -> None:
    mountpoint.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "r8imfs",
            "mount",
            small_image,
            str(mountpoint),
            "--foreground",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=mount_env(tmp_path, "fg"),
    )
    try:
        assert wait_until(lambda: is_mounted(mountpoint) or proc.poll() is not None, 30)
        assert is_mounted(mountpoint), proc.stderr.read() if proc.stderr else ""
        assert (mountpoint / "rootfs/app/f07.txt").read_bytes() == b"7\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "mounted at" in err and "Traceback" not in err
        assert not is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_a_mountpoint_with_a_space_and_non_ascii(small_image: str, mounted: MountFactory) -> None:
    """mountinfo escapes the space as \\040 and keeps the UTF-8: both must match."""
    with mounted(small_image, name="mnt dir ü") as m:
        assert (m.rootfs / "app/f01.txt").read_bytes() == b"1\n"
        again = r8imfs("mount", small_image, str(m.path), env=m.env, timeout=MOUNT_TIMEOUT)
        assert again.returncode != 0
        assert "already" in _error_line(again)
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)


def test_umount_after_the_daemon_was_killed(small_image: str, mounted: MountFactory) -> None:
    with mounted(small_image) as m:
        pid = m.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not alive(pid), 10)
        with pytest.raises(OSError, match="connect") as info:  # the kernel's words vary
            os.listdir(m.rootfs)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED), info.value
        again = r8imfs("mount", small_image, str(m.path), env=m.env, timeout=MOUNT_TIMEOUT)
        assert "already" in _error_line(again)
        done = m.umount()
        assert done.returncode == 0, done.stderr
        assert not is_mounted(m.path)
        assert m.pid() is None, "umount left the dead daemon's pid file"


def test_mount_options(small_image: str, mounted: MountFactory) -> None:
    with mounted(small_image, "--allow-other", "--cache-size", "64M") as m:
        options = _super_options(m.path)
        assert {"ro", "allow_other", "default_permissions"} <= options, options
        assert (m.rootfs / "app/blob.bin").read_bytes() == BODY


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a mount's readahead")
def test_the_kernel_readahead_is_widened_once_serving(
    small_image: str, mounted: MountFactory
) -> None:
    with mounted(small_image) as m:
        dev = _device(m.path)
        setting = Path(f"/sys/class/bdi/{dev}/read_ahead_kb")
        deadline = time.monotonic() + 10
        while setting.read_text().strip() != str(READ_AHEAD_KB) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert setting.read_text().strip() == str(READ_AHEAD_KB)
        assert (m.rootfs / "app/blob.bin").read_bytes() == BODY
        # and it stays (the kernel caps the readahead at our FUSE_INIT reply's
        # max_readahead: a widening before that reply would be capped, were
        # libfuse's max_readahead ever below it; today it is not)
        assert setting.read_text().strip() == str(READ_AHEAD_KB)


def _mountinfo(mountpoint: Path) -> tuple[list[str], list[str]]:
    """The mount's /proc/self/mountinfo fields: before and after the `` - ``."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == str(mountpoint):
            return left.split(), right.split()
    raise AssertionError(f"{mountpoint} is not mounted")


def _device(mountpoint: Path) -> str:
    return _mountinfo(mountpoint)[0][2]


def _super_options(mountpoint: Path) -> set[str]:
    left, right = _mountinfo(mountpoint)
    fstype, _source, superopts = right[:3]
    assert fstype == "fuse.r8imfs"
    return set(left[5].split(",")) | set(superopts.split(","))


def test_umount_of_something_not_mounted_fails(tmp_path: Path) -> None:
    proc = r8imfs("umount", str(tmp_path), env=mount_env(tmp_path, "x"))
    assert proc.returncode != 0
    assert "not mounted" in proc.stderr


# -- failing to mount ----------------------------------------------------------------


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    """A path to mount at, unmounted (and its daemon ended) whatever happens."""
    path = tmp_path / "mnt"
    yield path
    force_unmount(path, mount_env(tmp_path, "cleanup"))


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_mount_on_a_non_directory_fails_with_one_line(
    small_image: str, mountpoint: Path, tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        mountpoint.write_text("not a directory")
    proc = r8imfs(
        "mount",
        small_image,
        str(mountpoint),
        "--cache-dir",
        str(tmp_path / "cache"),
        env=mount_env(tmp_path, "m"),
        timeout=MOUNT_TIMEOUT,
    )
    assert proc.returncode != 0
    assert str(mountpoint) in _error_line(proc)
    assert not is_mounted(mountpoint)
    assert daemons_for(mountpoint) == []


def test_mount_on_a_mounted_dir_fails_and_keeps_the_first(
    small_image: str, mounted: MountFactory, tmp_path: Path
) -> None:
    with mounted(small_image) as m:
        before = sum(1 for p in _mount_lines() if p == str(m.path))
        pid = m.pid()
        proc = r8imfs(
            "mount",
            small_image,
            str(m.path),
            "--cache-dir",
            str(tmp_path / "cache2"),
            env=m.env,
            timeout=MOUNT_TIMEOUT,
        )
        assert proc.returncode != 0
        assert "already" in _error_line(proc)
        assert sum(1 for p in _mount_lines() if p == str(m.path)) == before == 1
        assert daemons_for(m.path) == [pid]
        assert (m.rootfs / "app/f03.txt").read_bytes() == b"3\n"


def _mount_lines() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        out.append(line.split()[4])
    return out


def test_mount_of_a_missing_image_fails_and_leaves_nothing(
    registry: RegistryServer, mountpoint: Path, tmp_path: Path
) -> None:
    mountpoint.mkdir()
    proc = r8imfs(
        "mount",
        f"{registry.host}/fuse/no-such-image:v1",
        str(mountpoint),
        "--cache-dir",
        str(tmp_path / "cache"),
        env=mount_env(tmp_path, "m"),
        timeout=MOUNT_TIMEOUT,
    )
    assert proc.returncode != 0
    assert "not found" in _error_line(proc) or "unknown" in proc.stderr.lower()
    assert not is_mounted(mountpoint)
    assert str(mountpoint) not in mounts()
    assert daemons_for(mountpoint) == []
    assert list((tmp_path / "run-m").glob("r8imfs-*/mounts/*.pid")) == []


# -- the cached index ------------------------------------------------------------------


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()


def test_second_mount_reuses_the_cached_index(
    small_image: str, proxy: CountingProxy, mounted: MountFactory, tmp_path: Path
) -> None:
    ref = small_image.replace(small_image.split("/")[0], proxy.host, 1)
    cache = tmp_path / "cache"
    with mounted(ref, name="first", cache_dir=cache) as first:
        manifest = json.loads((first.path / "manifest.json").read_bytes())
        layers = {d["digest"] for d in manifest["layers"]}
        assert "indexing" in first.mount_stderr
        assert layers <= proxy.blob_downloads().keys(), "the cold mount fetched no layer to index"
        assert first.umount().returncode == 0
    # Without the cached blob bytes, only the cached index can make the mount free.
    for data in (cache / "blobs").rglob("*"):
        if data.is_file():
            data.unlink()
    proxy.reset()
    with mounted(ref, name="second", cache_dir=cache) as second:
        assert "indexing" not in second.mount_stderr
        assert layers.isdisjoint(proxy.blob_downloads()), "the warm mount fetched layer bytes"
        out = subprocess.run(
            ["ls", "-R", str(second.rootfs)],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
            check=True,
        )
        assert "f19.txt" in out.stdout and "blob.bin" in out.stdout
        assert layers.isdisjoint(proxy.blob_downloads()), "listing fetched layer bytes"
        assert (second.rootfs / "app/blob.bin").read_bytes() == BODY
