"""Network faults under every command but mount: complete and verified, or one line and no tag.

Each command runs in a subprocess with a timeout against the fault proxy.
A success is judged by reading the result back (extract's files against
the sources; a pushed image's blobs HEAD 200 at their full size, skopeo
reads it, every layer decompresses to its diff_id). A failure must be one
``r8imfs CMD: error:`` line, and its destination tag must not exist: the
manifest is the last thing a command writes, so a failure before it leaves
no half image.

``clone-x`` is a clone across registries: the one case where a writing
command streams layer bytes from one registry to another (same-registry
commands mount them), so faults on blob bodies reach an upload.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer, start_registry
from tests.helpers.reliability import (
    Image,
    MiB,
    one_line_error,
    run,
    run_bytes,
    succeeded,
    tag_is_whole,
    verify_image,
)
from tools.demoimage import tar_of
from tools.faultproxy import (
    BLOB_PATH,
    Corrupt,
    Delay,
    DropBody,
    DropUpload,
    Fault,
    FaultProxy,
    RedirectBlobs,
    Status,
    Truncate,
)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("other-registry"), "open")
    yield server
    server.stop()


@pytest.fixture
def other_proxy(other: RegistryServer) -> Iterator[FaultProxy]:
    p = FaultProxy(other.host).start()
    yield p
    p.stop()


@pytest.fixture
def weights_tar(tmp_path: Path) -> Path:
    path = tmp_path / "new-weights.tar"
    path.write_bytes(tar_of({"src/weights/new.bin": os.urandom(600 * 1024)}))
    return path


class Case:
    """One command against the proxies: ``run()`` it, then ``check`` its success."""

    def __init__(
        self,
        image: Image,
        proxy: FaultProxy,
        other_proxy: FaultProxy,
        dest_repo: str,
        tmp_path: Path,
        weights_tar: Path,
    ) -> None:
        self.image, self.proxy, self.other_proxy = image, proxy, other_proxy
        self.dest_repo, self.tmp, self.tar = dest_repo, tmp_path, weights_tar

    @property
    def src(self) -> str:
        return self.image.ref(self.proxy.host)

    def dest_host(self, command: str) -> FaultProxy:
        return self.other_proxy if command == "clone-x" else self.proxy

    def args(self, command: str) -> list[str]:
        dest = f"{self.dest_host(command).host}/{self.dest_repo}:out"
        return {
            "layers": ["layers", self.src],
            "extract": ["extract", self.src, "-o", str(self.tmp / "w.tar")],
            "affix": ["affix", "--base", self.src, "--dest", dest, "--tar", str(self.tar)],
            "remix": ["remix", "--base", self.src, "--weights", self.src, "--dest", dest],
            "zstd": ["zstd", self.src, "--dest", dest],
            "clone": ["clone", "--base", self.src, "--dest", dest],
            "clone-x": ["clone", "--base", self.src, "--dest", dest],
        }[command]

    def check(self, command: str, out: str) -> None:
        if command == "layers":
            assert all(d.split(":")[1][:12] in out for d in self.image.layer_digests), out
        elif command == "extract":
            with tarfile.open(self.tmp / "w.tar") as tf:
                got = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
            assert got == self.image.weights
        else:
            upstream = self.dest_host(command).upstream
            verify_image(upstream, self.dest_repo, "out")

    def tag_exists(self, command: str) -> bool:
        return tag_is_whole(self.dest_host(command).upstream, self.dest_repo, "out")


@pytest.fixture
def case(
    image: Image,
    proxy: FaultProxy,
    other_proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    weights_tar: Path,
) -> Case:
    return Case(image, proxy, other_proxy, repo_name, tmp_path, weights_tar)


def weights_blob(image: Image) -> str:
    return f"/blobs/{image.weights_digest}"


# -- faults the commands must ride out -------------------------------------------------

RECOVERABLE: dict[str, Callable[[Image], list[Fault]]] = {
    # the client resumes with Range from the byte it got
    "drop-twice": lambda im: [DropBody(after=256 * 1024, times=2, match=weights_blob(im))],
    "503-then-ok": lambda im: [Status(code=503, retry_after="0", times=3)],
    "429-retry-after": lambda im: [Status(code=429, retry_after="1", times=1)],
    "slow-blobs": lambda im: [Delay(seconds=0.5, match=BLOB_PATH, times=2)],
    "redirect": lambda im: [RedirectBlobs()],
}
RIDE_OUT = [
    *[("extract", f) for f in sorted(RECOVERABLE) if f != "429-retry-after"],
    ("zstd", "drop-twice"),
    ("zstd", "redirect"),
    ("clone-x", "drop-twice"),
    ("clone-x", "503-then-ok"),
    ("affix", "503-then-ok"),
    ("remix", "503-then-ok"),
    ("layers", "429-retry-after"),
]


@pytest.mark.parametrize(("command", "fault"), RIDE_OUT)
def test_recoverable_faults_complete_verified(case: Case, command: str, fault: str) -> None:
    case.proxy.set_faults(RECOVERABLE[fault](case.image))
    proc = run(*case.args(command))
    succeeded(proc)
    case.check(command, proc.stdout)
    assert any(r.faults for r in case.proxy.requests), "the fault never fired"


# -- faults that must fail cleanly ------------------------------------------------------

FATAL: dict[str, tuple[Callable[[Image], list[Fault]], tuple[str, ...], str]] = {
    "corrupt-blob": (
        lambda im: [Corrupt(offset=MiB, match=weights_blob(im))],
        ("extract", "zstd", "clone-x"),
        "",
    ),
    "truncated-manifest": (
        lambda im: [Truncate(keep=120, match="/manifests/v1")],
        ("layers", "affix"),
        "manifest",
    ),
    "manifest-put-500": (
        lambda im: [Status(code=500, retry_after="0", match="/manifests/out", methods=("PUT",))],
        ("remix", "zstd", "clone-x"),
        "HTTP 500",
    ),
    "upload-dropped": (
        lambda im: [DropUpload(after=64 * 1024)],
        ("affix", "zstd", "clone-x"),
        "",
    ),
    "blob-vanished": (
        lambda im: [Status(code=404, match=weights_blob(im), methods=("GET", "HEAD"))],
        ("extract", "clone-x"),
        "not found",
    ),
    "503-forever": (
        lambda im: [Status(code=503, retry_after="0")],
        ("layers", "clone"),
        "HTTP 503",
    ),
}


@pytest.mark.parametrize(
    ("fault", "command"), [(f, c) for f, (_, cmds, _) in sorted(FATAL.items()) for c in cmds]
)
def test_fatal_faults_fail_with_one_line_and_no_tag(case: Case, fault: str, command: str) -> None:
    faults, _, words = FATAL[fault]
    for p in (case.proxy, case.other_proxy):
        p.set_faults(faults(case.image))
    one_line_error(run(*case.args(command)), contains=words)
    if command not in ("layers", "extract"):
        assert not case.tag_exists(command)
    if command == "extract":
        assert not (case.tmp / "w.tar").exists()
        assert not [p for p in case.tmp.iterdir() if p.name.startswith(".w.tar")]


def test_a_connection_that_keeps_dropping_gives_up(case: Case) -> None:
    """Every response cut after 256 KiB: resumed five times, then one line (bounded)."""
    case.proxy.set_faults([DropBody(after=256 * 1024, match=weights_blob(case.image))])
    one_line_error(run(*case.args("extract")), contains="kept dropping")
    drops = [r for r in case.proxy.requests if r.faults]
    assert 3 <= len(drops) <= 6


def test_extract_to_stdout_poisons_a_failed_tar(case: Case) -> None:
    """stdout cannot be taken back: on failure the stream ends so that GNU tar fails too."""
    case.proxy.set_faults([Corrupt(offset=MiB, match=weights_blob(case.image))])
    proc = run_bytes("extract", case.src)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    out = case.tmp / "x"
    out.mkdir()
    untar = subprocess.run(
        ["tar", "-x", "-C", str(out)],
        input=proc.stdout,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert untar.returncode != 0, "tar accepted the output of a failed extract"
