"""Helpers of the reliability suite: run the CLI, judge its failure, judge the registry.

The promises the suite checks (issue 5), as functions:

* ``run(...)``: the CLI in a subprocess, always with a timeout (a hang is
  a failure, never a stuck CI job);
* ``one_line_error(proc)``: a failure is a non-zero exit and one line
  ``r8imfs CMD: error: ...`` as the last line of stderr, no traceback;
* ``tag_is_whole(host, repo, tag)``: a tag either does not exist, or its
  manifest's config and every layer answer HEAD 200 with their full size
  and ``skopeo inspect`` reads it;
* ``mounted(...)``: ``r8imfs mount`` / ``r8imfs umount`` in subprocesses,
  unmounted in ``finally`` whatever happened (then ``fusermount3 -uz``).

``push_blobs`` builds images from raw blobs (corrupt gzip, non-tars, a
layer whose blob is missing) with r8imfs's own upload and push code.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyzstd
import trio

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import parse
from r8imfs.registry.client import ClientOptions, RegistryClient
from r8imfs.registry.push import push_manifest
from r8imfs.registry.upload import upload_stream
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer
from tools.demoimage import tar_of

MiB = 1024 * 1024
CMD_TIMEOUT = 90.0
MOUNT_TIMEOUT = 60.0


# -- the command line --------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COG_TOKEN"}
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m r8imfs ARGS``; a command still running after ``timeout`` fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "r8imfs", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


def run_bytes(
    *args: str, env: dict[str, str] | None = None, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "r8imfs", *args],
        capture_output=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *, contains: str = "") -> str:
    """Assert a clean failure; returns the error line."""
    err = proc.stderr
    assert proc.returncode not in (0, None), f"expected a failure, got 0:\n{err}"
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, f"expected one error line:\n{err}"
    assert lines[-1] == errors[0], f"the error line is not the last:\n{err}"
    assert errors[0].startswith("r8imfs "), errors[0]
    assert contains.lower() in errors[0].lower(), f"{contains!r} not in {errors[0]!r}"
    if os.environ.get("R8IMFS_SHOW_ERRORS"):
        print(f"\n    {errors[0]}", file=sys.stderr)
    return errors[0]


def succeeded(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert success; the ``REPOSITORY@sha256:...`` a writing command printed last."""
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


# -- the registry, read back ---------------------------------------------------------


async def _tag_state(ref: str) -> dict[str, Any] | None:
    parsed = parse(ref)
    async with RegistryClient() as client:
        if await client.head_manifest(parsed) is None:
            return None
        top = await client.get_manifest(parsed)
        manifests = [top]
        if hasattr(top, "manifests"):
            manifests = [
                await client.get_manifest(parsed.with_digest(d.digest)) for d in top.manifests
            ]
        blobs: dict[str, tuple[int, int | None]] = {}
        for m in manifests:
            for d in [m.config, *m.layers]:  # type: ignore[union-attr]
                blobs[d.digest] = (d.size, await client.head_blob(parsed.repository, d.digest))
        return {"blobs": blobs}


async def _verify_layers(ref: str) -> list[str]:
    parsed = parse(ref)
    async with RegistryClient() as client:
        image = await client.resolve(parsed)
        diff_ids = []
        for d in image.manifest.layers:
            blob = await client.get_blob(parsed.repository, d.digest, 1 << 30)  # checks the digest
            diff_ids.append(sha256(_decompress(blob, d.media_type)))
        assert diff_ids == list(image.config.diff_ids), f"{ref}: layers do not match diff_ids"
        return diff_ids


def _decompress(blob: bytes, media_type: str) -> bytes:
    if media_type.endswith("gzip"):
        return gzip.decompress(blob)
    if media_type.endswith("zstd"):
        return bytes(pyzstd.decompress(blob))
    return blob


def verify_image(host: str, repo: str, tag: str) -> None:
    """The tag exists, is whole, and every layer decompresses to its diff_id (stdlib/pyzstd)."""
    assert tag_is_whole(host, repo, tag), f"{host}/{repo}:{tag} does not exist"
    trio.run(_verify_layers, f"{host}/{repo}:{tag}")


def tag_is_whole(host: str, repo: str, tag: str) -> bool:
    """False if the tag does not exist; True if it exists and is whole; else AssertionError."""
    ref = f"{host}/{repo}:{tag}"
    state = trio.run(_tag_state, ref)
    if state is None:
        return False
    for digest, (size, found) in state["blobs"].items():
        assert found == size, f"{ref}: blob {digest} is {found} bytes on the registry, not {size}"
    subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return True


# -- images from raw blobs ---------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def delete_blob(host: str, repo: str, digest: str) -> None:
    """Remove a blob behind its manifests' back (the registry allows deletes)."""
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("DELETE", f"/v2/{repo}/blobs/{digest}")
        with conn.getresponse() as resp:
            resp.read()
            assert resp.status == 202, resp.status
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class RawLayer:
    blob: bytes
    media_type: str = mt.OCI_LAYER_GZIP
    diff_id: str | None = None  # default: sha256 of the blob (right for plain tars)
    created_by: str = "COPY w /src/weights # weights"
    comment: str | None = "weights"
    annotations: dict[str, str] | None = None  # of the layer descriptor (a TOC's digest)


async def _push_blobs(ref: str, layers: Sequence[RawLayer], manifest_type: str) -> str:
    parsed = parse(ref)
    async with RegistryClient(ClientOptions()) as client:
        new = []
        for layer in layers:
            digest = sha256(layer.blob)

            async def body(data: bytes = layer.blob) -> AsyncIterator[bytes]:
                yield data

            await upload_stream(client, parsed.repository, body())
            desc = Descriptor(
                layer.media_type, digest, len(layer.blob), annotations=layer.annotations
            )
            diff_id = layer.diff_id or digest
            new.append(mutate.NewLayer(desc, diff_id, layer.created_by, layer.comment))
        config = mutate.append_layers(mutate.new_config(), new)
        descriptors = [n.descriptor for n in new]
        return await push_manifest(client, parsed, manifest_type, config, descriptors)


def push_blobs(ref: str, layers: Sequence[RawLayer], manifest_type: str = mt.OCI_MANIFEST) -> str:
    """Push an image whose layers are exactly these blobs; the manifest digest."""
    return trio.run(_push_blobs, ref, layers, manifest_type)


def manifest_of(ref: str) -> dict[str, Any]:
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- mounts --------------------------------------------------------------------------


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no usable /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def is_mounted(path: Path) -> bool:
    real = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")[0].split()
        if len(fields) > 4 and fields[4] == real:
            return True
    return False


@dataclass
class Mount:
    path: Path
    cache_dir: Path
    log: Path
    env: dict[str, str]
    stderr: str = ""

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def pid(self) -> int | None:
        files = list(Path(self.env["XDG_RUNTIME_DIR"]).glob("r8imfs-*/mounts/*.pid"))
        return int(files[0].read_text().strip()) if len(files) == 1 else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def mounted(
    ref: str,
    workdir: Path,
    *extra: str,
    name: str = "mnt",
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """``r8imfs mount`` in daemon mode; always unmounted (and checked gone) on exit."""
    mountpoint = workdir / name
    mountpoint.mkdir()
    runtime = workdir / f"run-{name}"
    runtime.mkdir(mode=0o700)
    menv = {**(env if env is not None else clean_env()), "XDG_RUNTIME_DIR": str(runtime)}
    m = Mount(mountpoint, cache_dir or workdir / f"cache-{name}", workdir / f"{name}.log", menv)
    try:
        proc = run(
            "mount",
            ref,
            str(mountpoint),
            "--cache-dir",
            str(m.cache_dir),
            "--log",
            str(m.log),
            *extra,
            env=menv,
            timeout=MOUNT_TIMEOUT,
        )
        m.stderr = proc.stderr
        assert proc.returncode == 0, f"mount failed: {proc.stderr}"
        assert is_mounted(mountpoint)
        yield m
    finally:
        unmount(m)


def unmount(m: Mount) -> None:
    if is_mounted(m.path):
        with suppress(subprocess.TimeoutExpired):
            run("umount", str(m.path), env=m.env, timeout=30)
    if is_mounted(m.path):
        subprocess.run(
            ["fusermount3", "-u", "-z", str(m.path)], capture_output=True, timeout=30, check=False
        )
    pid = m.pid()
    deadline = time.monotonic() + 15
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def pread_within(
    path: Path, offset: int, size: int, timeout: float = 60.0, *, random_access: bool = False
) -> bytes | int:
    """``size`` bytes at ``offset`` of a (mounted) file, or the errno the read failed with.

    In a thread, so that a read that hangs fails the test after ``timeout``
    instead of hanging it. ``random_access``: no kernel readahead.
    """
    result: list[bytes | int] = []

    def read() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if random_access:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                result.append(os.pread(fd, size, offset))
            finally:
                os.close(fd)
        except OSError as exc:
            result.append(exc.errno or -1)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"a read of {path} still hangs after {timeout} s"
    return result[0]


def read_checked(
    path: Path, expected: bytes, offset: int = 0, size: int | None = None, timeout: float = 60.0
) -> str | int:
    """Read ``[offset, offset+size)`` to its end, checking every byte against ``expected``.

    Returns "ok", the errno a read failed with (after any right bytes before
    it: a long read that fails part-way comes back short first), or a
    description of the first wrong or missing byte.
    """
    end = len(expected) if size is None else min(len(expected), offset + size)
    pos = offset
    while pos < end:
        got = pread_within(path, pos, min(MiB, end - pos), timeout)
        if isinstance(got, int):
            return got
        if not got:
            return f"file ends at {pos}, expected {end} bytes"
        if got != expected[pos : pos + len(got)]:
            pairs = zip(got, expected[pos:], strict=False)
            first = next(i for i, (a, b) in enumerate(pairs) if a != b)
            return f"wrong bytes at {pos + first}"
        pos += len(got)
    return "ok"


def run_here(capsys: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's ``main`` in this process (no interpreter start-up), for quick failures.

    For commands that fail before doing real work: usage errors, bad
    manifests, bad challenges. stdout/stderr come from pytest's ``capsys``.
    """
    import logging

    from r8imfs.cli.main import main

    loggers = [logging.getLogger(n) for n in ("", "httpx", "httpcore")]
    saved = [(lg, lg.level, lg.handlers[:]) for lg in loggers]
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    finally:  # main configures logging for a process; leave the test session's alone
        for lg, level, handlers in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["r8imfs", *args], code, out, err)


# -- the cog-like test image (was in tests/reliability/conftest.py) -----------------


@dataclass(frozen=True)
class Image:
    repo: str  # repository path on the registry (no host)
    tag: str
    weights: dict[str, bytes]  # src/weights/... name → body
    layer_digests: tuple[str, ...]
    weights_digest: str  # the weights layer's blob digest

    def ref(self, host: str) -> str:
        return f"{host}/{self.repo}:{self.tag}"


def cog_layers(weights: dict[str, bytes]) -> list[tuple[bytes, str, str | None]]:
    return [
        (tar_of({"etc": None, "etc/os-release": b"ID=test\n"}), "ADD rootfs /", None),
        (tar_of({"src": None, "src/predict.py": b"print('hi')\n"}), "COPY . /src", "cog"),
        (
            tar_of({"src/weights": None, **{f"src/weights/{k}": v for k, v in weights.items()}}),
            "COPY w /src/weights # weights",
            "weights",
        ),
    ]


def push_image(
    registry: RegistryServer, repo: str, weights: dict[str, bytes], **kw: object
) -> Image:
    ref = f"{registry.host}/{repo}:v1"
    push(ref, layers=cog_layers(weights), **kw)
    layers = tuple(d["digest"] for d in manifest_of(ref)["layers"])
    return Image(repo, "v1", weights, layers, layers[-1])
