"""Issue 10: the faults users meet on long transfers, on a blob of 100 MiB or more.

Each command runs through ``tools/faultproxy.py`` and either completes with
exact bytes (a sha256 against the source; a pushed image read back and every
layer decompressed to its diff_id) or fails with one clear line and leaves
nothing behind (no output file, no tag).

The blob: a 104 MiB weights file of random bytes (incompressible, so the
gzip blob is as big), made once per module with ``os.urandom`` and gzip
level 1. The faults:

1. a connection dropping every few MiB: resumed while attempts make progress;
2. 503 on every other request of a push: each request retried, the streamed
   layer made again for a new upload session;
3. a corrupted byte: fetched once more, then "blob sha256:… is corrupt (…)";
4. a registry that accepts the connection and sends nothing: bounded
   (``R8IMFS_STALL_TIMEOUT=1`` here, 30 s by default), retried, then failed;
5. a token expiring mid-pull or mid-push (401): authenticated again.

The mount's side of faults 1 and 4 is in ``test_long_mount.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.registry import RegistryServer, start_registry
from tests.helpers.reliability import (
    MiB,
    RawLayer,
    clean_env,
    one_line_error,
    push_blobs,
    run,
    sha256,
    succeeded,
    tag_is_whole,
    verify_image,
)
from tools.demoimage import tar_of
from tools.faultproxy import (
    UPLOAD_PATH,
    Corrupt,
    Delay,
    DropBody,
    DropUpload,
    ExpireToken,
    FaultProxy,
    Status,
)

SIZE = 104 * MiB
#: generous: a 104 MiB layer is compressed, sent and verified on 2 shared cores
TIMEOUT = 300.0


def gzip1(data: bytes) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


class Big:
    """An image whose weights layer holds one 104 MiB file."""

    def __init__(self, body: bytes, tar: bytes, blob: bytes) -> None:
        self.body, self.tar, self.blob = body, tar, blob
        self.sha = hashlib.sha256(body).hexdigest()
        self.digest = sha256(blob)

    def layers(self) -> list[RawLayer]:
        rootfs = tar_of({"etc": None, "etc/os-release": b"ID=test\n"})
        return [
            RawLayer(
                gzip1(rootfs), diff_id=sha256(rootfs), created_by="ADD rootfs /", comment=None
            ),
            RawLayer(self.blob, diff_id=sha256(self.tar)),
        ]

    def push(self, host: str, repo: str) -> str:
        ref = f"{host}/{repo}:v1"
        push_blobs(ref, self.layers())
        return ref


@pytest.fixture(scope="module")
def big() -> Big:
    body = os.urandom(SIZE)
    tar = tar_of({"src/weights": None, "src/weights/big.bin": body})
    return Big(body, tar, gzip1(tar))


@pytest.fixture(scope="module")
def big_repo(registry: RegistryServer, big: Big) -> str:
    big.push(registry.host, "rel/long")
    return "rel/long"


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("other-registry"), "open")
    yield server
    server.stop()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(8 * MiB):
            h.update(piece)
    return h.hexdigest()


def extract_dir(ref: str, out: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """``extract -v --dir out``: its stderr; asserts success and the exact bytes."""
    proc = run("extract", ref, "--dir", str(out), "-v", *extra, env=env, timeout=TIMEOUT)
    succeeded(proc)
    return proc.stderr


def assert_nothing_extracted(out: Path) -> None:
    left = list(out.rglob("*")) if out.exists() else []
    assert not left, f"a failed extract left {left}"


def blob_match(big: Big) -> str:
    return re.escape(f"/blobs/{big.digest}")


# -- 1. drops --------------------------------------------------------------------------


def test_a_blob_dropping_every_4_mib_resumes_to_the_end(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    proxy.set_faults([DropBody(after=4 * MiB, match=blob_match(big))])
    out = tmp_path / "out"
    err = extract_dir(f"{proxy.host}/{big_repo}:v1", out)
    assert file_sha(out / "big.bin") == big.sha
    resumes = [int(n) for n in re.findall(r"resumed (\d+) time", err)]
    assert resumes and resumes[0] >= SIZE // (4 * MiB) - 1, err  # -v says how many
    drops = [r for r in proxy.requests if r.faults]
    assert len(drops) >= 25


def test_drops_without_progress_fail_in_one_line_and_leave_nothing(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    proxy.set_faults([DropBody(after=256 * 1024, match=blob_match(big))])
    out_tar = tmp_path / "w.tar"
    proc = run("extract", f"{proxy.host}/{big_repo}:v1", "-o", str(out_tar), timeout=TIMEOUT)
    line = one_line_error(proc, contains="kept dropping")
    assert big.digest in line and "resume" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "extract left a file behind"


# -- 2. 503 on every other request of a push --------------------------------------------


def half_down() -> list[Status]:
    return [Status(code=503, retry_after="0", every=2)]


def test_affix_of_a_big_tar_completes_when_every_other_request_is_503(
    proxy: FaultProxy,
    registry: RegistryServer,
    big: Big,
    big_repo: str,
    tmp_path: Path,
    repo_name: str,
) -> None:
    tar = tmp_path / "new.tar"
    tar.write_bytes(big.tar)
    proxy.set_faults(half_down())
    dest = f"{proxy.host}/{repo_name}:out"
    proc = run(
        "affix",
        "--base",
        f"{proxy.host}/{big_repo}:v1",
        "--dest",
        dest,
        "--tar",
        str(tar),
        "-v",
        timeout=TIMEOUT,
    )
    succeeded(proc)
    assert "starting it again" in proc.stderr  # the streamed layer was made again
    methods = {r.method for r in proxy.requests if r.status == 503}
    assert {"HEAD", "POST", "PATCH", "PUT"} <= methods, methods
    verify_image(registry.host, repo_name, "out")
    out = tmp_path / "out"
    extract_dir(f"{registry.host}/{repo_name}:out", out)
    assert file_sha(out / "big.bin") == big.sha


@pytest.mark.parametrize("command", ["zstd", "clone"])
def test_zstd_and_clone_complete_when_every_other_request_is_503(
    proxy: FaultProxy,
    registry: RegistryServer,
    other: RegistryServer,
    big: Big,
    big_repo: str,
    tmp_path: Path,
    repo_name: str,
    command: str,
) -> None:
    """zstd streams each layer down and up again; clone to another registry copies it."""
    dest_proxy = FaultProxy(other.host if command == "clone" else registry.host).start()
    try:
        proxy.set_faults(half_down())
        # Every other request 503s, counted per method, so that an upload's
        # PATCH gets one whatever order concurrent requests arrive in (one
        # counter over all of them made which request met a 503 a race).
        dest_proxy.set_faults(
            [
                Status(code=503, retry_after="0", every=2, methods=(m,))
                for m in ("HEAD", "GET", "POST", "PUT")
            ]
            + [Status(code=503, retry_after="0", methods=("PATCH",), times=1)]
        )
        src = f"{proxy.host}/{big_repo}:v1"
        dest = f"{dest_proxy.host}/{repo_name}:out"
        args = (
            ["zstd", src, "--dest", dest]
            if command == "zstd"
            else ["clone", "--base", src, "--dest", dest]
        )
        proc = run(*args, "-v", timeout=TIMEOUT)
        succeeded(proc)
        assert any(r.method == "PATCH" and r.status == 503 for r in dest_proxy.requests)
        verify_image(dest_proxy.upstream, repo_name, "out")
    finally:
        dest_proxy.stop()


def test_an_upload_session_the_registry_lost_is_started_again(
    proxy: FaultProxy,
    registry: RegistryServer,
    big: Big,
    big_repo: str,
    tmp_path: Path,
    repo_name: str,
) -> None:
    tar = tmp_path / "new.tar"
    tar.write_bytes(big.tar)
    lost = Status(code=404, times=1, methods=("PATCH",), match=UPLOAD_PATH + ".+")
    proxy.set_faults([lost])
    dest = f"{proxy.host}/{repo_name}:out"
    proc = run(
        "affix",
        "--base",
        f"{proxy.host}/{big_repo}:v1",
        "--dest",
        dest,
        "--tar",
        str(tar),
        timeout=TIMEOUT,
    )
    succeeded(proc)
    assert lost.fired == 1
    assert sum(r.method == "POST" for r in proxy.requests) >= 2
    verify_image(registry.host, repo_name, "out")


def test_an_upload_chunk_cut_part_way_goes_on_from_where_the_registry_is(
    proxy: FaultProxy,
    registry: RegistryServer,
    big: Big,
    big_repo: str,
    tmp_path: Path,
    repo_name: str,
) -> None:
    """The monolithic PATCH is cut, then the first 16 MiB chunk of the replay too.

    The chunk is retried from memory. A registry that kept part of it answers
    416 and the upload goes on from the offset it reports; one that dropped
    the session answers 404 and the upload starts over in a new one.
    """
    tar = tmp_path / "new.tar"
    tar.write_bytes(big.tar)
    proxy.set_faults([DropUpload(after=5 * MiB, times=2, methods=("PATCH",))])
    dest = f"{proxy.host}/{repo_name}:out"
    proc = run(
        "affix",
        "--base",
        f"{proxy.host}/{big_repo}:v1",
        "--dest",
        dest,
        "--tar",
        str(tar),
        "-v",
        timeout=TIMEOUT,
    )
    succeeded(proc)
    assert sum(1 for r in proxy.requests if r.faults) == 2
    # docker's registry drops a session whose PATCH broke off (404 on the retry): a new
    # session; a registry that kept part of the chunk would answer 416 instead
    assert any(r.method == "PATCH" and r.status in (404, 416) for r in proxy.requests)
    verify_image(registry.host, repo_name, "out")


# -- 3. a corrupted byte ------------------------------------------------------------------


def test_a_blob_corrupted_once_is_fetched_again(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    proxy.set_faults([Corrupt(offset=50 * MiB, times=1, match=blob_match(big))])
    out = tmp_path / "out"
    err = extract_dir(f"{proxy.host}/{big_repo}:v1", out)
    assert "is corrupt" in err and "fetching it again" in err
    assert file_sha(out / "big.bin") == big.sha


def test_a_blob_corrupted_once_is_fetched_again_into_a_tar(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    """``-o``: what the first try wrote is cut off the tar before the second."""
    proxy.set_faults([Corrupt(offset=50 * MiB, times=1, match=blob_match(big))])
    out = tmp_path / "w.tar"
    proc = run("extract", f"{proxy.host}/{big_repo}:v1", "-o", str(out), "-v", timeout=TIMEOUT)
    succeeded(proc)
    assert "fetching it again" in proc.stderr
    listing = subprocess.run(
        ["tar", "-tvf", str(out)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert len(listing) == 1, listing  # GNU tar reads it: one member, no leftovers
    with tarfile.open(out) as tf:
        member = tf.extractfile("big.bin")
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == big.sha


@pytest.mark.parametrize("where", ["--dir", "-o"])
def test_a_blob_corrupt_every_time_fails_in_one_line_and_leaves_nothing(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path, where: str
) -> None:
    proxy.set_faults([Corrupt(offset=50 * MiB, match=blob_match(big))])
    target = tmp_path / "out"
    proc = run("extract", f"{proxy.host}/{big_repo}:v1", where, str(target), timeout=TIMEOUT)
    line = one_line_error(proc, contains=f"blob {big.digest} is corrupt (")
    assert "fetched again" in line
    assert sum(1 for r in proxy.requests if r.faults) == 2  # fetched once more, no more
    if where == "-o":
        assert list(tmp_path.iterdir()) == [], "extract -o left a file behind"
    assert_nothing_extracted(target)


@pytest.mark.parametrize("command", ["zstd", "clone"])
@pytest.mark.parametrize("times", [1, None])
def test_zstd_and_clone_fetch_a_corrupt_blob_again_and_push_nothing_bad(
    proxy: FaultProxy,
    registry: RegistryServer,
    other: RegistryServer,
    big: Big,
    big_repo: str,
    repo_name: str,
    command: str,
    times: int | None,
) -> None:
    """Corrupted once: completes, verified. Every time: one line, no tag."""
    dest_host = other.host if command == "clone" else registry.host
    proxy.set_faults([Corrupt(offset=50 * MiB, times=times, match=blob_match(big))])
    src = f"{proxy.host}/{big_repo}:v1"
    dest = f"{dest_host}/{repo_name}:out"
    args = (
        ["zstd", src, "--dest", dest]
        if command == "zstd"
        else ["clone", "--base", src, "--dest", dest]
    )
    proc = run(*args, timeout=TIMEOUT)
    if times == 1:
        succeeded(proc)
        verify_image(dest_host, repo_name, "out")
    else:
        one_line_error(proc, contains=f"blob {big.digest} is corrupt (")
        assert not tag_is_whole(dest_host, repo_name, "out")
    fired = sum(1 for r in proxy.requests if r.faults)
    assert fired == 1 if times == 1 else fired >= 2  # fetched once more before failing


# -- 4. a stalled registry ----------------------------------------------------------------

STALL = clean_env(R8IMFS_STALL_TIMEOUT="1")


def test_a_registry_that_stalls_twice_is_retried(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    proxy.set_faults([Delay(seconds=4, times=2, match=blob_match(big))])
    out = tmp_path / "out"
    extract_dir(f"{proxy.host}/{big_repo}:v1", out, env=STALL)
    assert file_sha(out / "big.bin") == big.sha


def test_a_registry_that_always_stalls_fails_in_one_line(
    proxy: FaultProxy, big: Big, big_repo: str, tmp_path: Path
) -> None:
    proxy.set_faults([Delay(seconds=3, match=blob_match(big))])
    out = tmp_path / "out"
    proc = run("extract", f"{proxy.host}/{big_repo}:v1", "--dir", str(out), env=STALL)
    one_line_error(proc, contains="timed out")
    assert_nothing_extracted(out)


# -- 5. a token expiring mid-transfer -----------------------------------------------------


@pytest.fixture
def token_proxy(token_registry: RegistryServer, docker_config: object) -> Iterator[FaultProxy]:
    p = FaultProxy(token_registry.host).start()
    docker_config(p.host, token_registry.username, token_registry.password)  # type: ignore[operator]
    yield p
    p.stop()


def test_a_token_expiring_mid_pull_and_mid_push_is_renewed(
    token_proxy: FaultProxy,
    token_registry: RegistryServer,
    big: Big,
    tmp_path: Path,
    repo_name: str,
) -> None:
    ref = big.push(token_proxy.host, "rel/long-token")
    # the pull: the first GET drops at 8 MiB; its ranged resume is refused once
    token_proxy.set_faults(
        [
            DropBody(after=8 * MiB, times=1, match=blob_match(big)),
            ExpireToken(times=1, every=2, methods=("GET",), match=blob_match(big)),
        ]
    )
    env = {k: v for k, v in os.environ.items() if k != "COG_TOKEN"}
    out = tmp_path / "out"
    extract_dir(ref, out, env=env)
    assert file_sha(out / "big.bin") == big.sha
    refused = [r for r in token_proxy.requests if "ExpireToken" in r.faults]
    assert [(r.status, "range" in r.headers) for r in refused] == [(401, True)]
    # the push: the streamed upload refused once
    tar = tmp_path / "new.tar"
    tar.write_bytes(big.tar)
    token_proxy.set_faults([ExpireToken(times=1, methods=("PATCH",), match=UPLOAD_PATH)])
    dest = f"{token_proxy.host}/{repo_name}:out"
    proc = run("affix", "--base", ref, "--dest", dest, "--tar", str(tar), env=env, timeout=TIMEOUT)
    succeeded(proc)
    assert any(r.method == "PATCH" and r.status == 401 for r in token_proxy.requests)
    assert tag_is_whole(token_proxy.host, repo_name, "out")
