"""Issue 10, the mount's side: range fetches of a 104 MiB blob under faults.

The layer is a plain tar (media type ``tar``), so its body is fetched in 4 MiB
blocks on demand (``archive/blobcache.py``), each a ranged GET through the
registry client: drops resume while they make progress, a stall is bounded
(``R8IMFS_STALL_TIMEOUT=1`` here) and retried, then EIO; a block that fails
its check against the verified block table is fetched once more, then EIO; a
token expiring between fetches is renewed. Every read is checked byte for
byte against the source (``read_checked``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.registry import RegistryServer
from tests.helpers.reliability import (
    MiB,
    RawLayer,
    clean_env,
    mounted,
    pread_within,
    push_blobs,
    read_checked,
    sha256,
)
from tools.demoimage import tar_of
from tools.faultproxy import Corrupt, Delay, DropBody, ExpireToken, FaultProxy

pytestmark = pytest.mark.fuse

SIZE = 104 * MiB
#: a failed read must come back within this (retries included)
EIO_WITHIN = 60.0


class BigPlain:
    def __init__(self) -> None:
        self.body = os.urandom(SIZE)
        self.tar = tar_of({"src/weights": None, "src/weights/big.bin": self.body})
        self.digest = sha256(self.tar)
        self.match = re.escape(f"/blobs/{self.digest}")

    def push(self, host: str, repo: str) -> str:
        ref = f"{host}/{repo}:v1"
        base = tar_of({"etc": None, "etc/hostname": b"rel\n"})
        push_blobs(
            ref,
            [
                RawLayer(base, mt.OCI_LAYER, None, "ADD / /", None),
                RawLayer(self.tar, mt.OCI_LAYER, self.digest),
            ],
        )
        return ref


@pytest.fixture(scope="module")
def big() -> BigPlain:
    return BigPlain()


@pytest.fixture(scope="module")
def big_repo(registry: RegistryServer, big: BigPlain) -> str:
    big.push(registry.host, "rel/long-mount")
    return "rel/long-mount"


def weights(root: Path) -> Path:
    return root / "src" / "weights" / "big.bin"


def test_range_fetches_resume_through_drops(
    proxy: FaultProxy, big: BigPlain, big_repo: str, tmp_path: Path
) -> None:
    with mounted(f"{proxy.host}/{big_repo}:v1", tmp_path) as m:
        proxy.set_faults([DropBody(after=3 * MiB, match=big.match)])
        assert read_checked(weights(m.rootfs), big.body) == "ok"
        assert "EIO" not in m.log_text()
    assert sum(1 for r in proxy.requests if r.faults) >= 10


STALL = clean_env(R8IMFS_STALL_TIMEOUT="1")


def test_a_stalled_registry_is_retried_then_eio_then_recovers(
    proxy: FaultProxy, big: BigPlain, big_repo: str, tmp_path: Path
) -> None:
    path_of = weights
    with mounted(f"{proxy.host}/{big_repo}:v1", tmp_path, env=STALL) as m:
        proxy.set_faults([Delay(seconds=3, times=2, match=big.match)])
        at = 40 * MiB  # a block not fetched yet
        assert pread_within(path_of(m.rootfs), at, 4096) == big.body[at : at + 4096]
        proxy.set_faults([Delay(seconds=3, match=big.match)])
        at = 80 * MiB
        assert pread_within(path_of(m.rootfs), at, 4096, EIO_WITHIN) == errno.EIO
        proxy.set_faults([])
        # a fetch that began while the registry stalled may still fail the next read
        # (it joined that fetch); one after it gets the right bytes
        got = [pread_within(path_of(m.rootfs), at, 4096) for _ in range(2)]
        assert got[-1] == big.body[at : at + 4096], got[0]


def test_a_block_corrupted_once_after_eviction_is_fetched_again(
    proxy: FaultProxy, big: BigPlain, big_repo: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with mounted(f"{proxy.host}/{big_repo}:v1", tmp_path, name="first", cache_dir=cache) as m:
        assert read_checked(weights(m.rootfs), big.body) == "ok"  # whole: block table kept
    assert list(cache.glob("blobs/sha256/*.blocks"))
    # --cache-size 1M: opening the cache evicts the blob's data, keeping its block table
    with mounted(
        f"{proxy.host}/{big_repo}:v1",
        tmp_path,
        "--cache-size",
        "1M",
        "-v",
        name="second",
        cache_dir=cache,
    ) as m:
        # times=1: the first GET whose range holds the byte (faultproxy's Corrupt)
        proxy.set_faults([Corrupt(offset=50 * MiB + 5, times=1, match=big.match)])
        at = 50 * MiB
        got = pread_within(weights(m.rootfs), at, 4096, random_access=True)
        assert got == big.body[at : at + 4096]
        assert read_checked(weights(m.rootfs), big.body) == "ok"
    corrupted = [r for r in proxy.requests if r.faults]
    assert len(corrupted) == 1 and "range" in corrupted[0].headers
    log = m.log_text()
    assert "is corrupt" in log and "fetching them again" in log, log


@pytest.fixture
def token_proxy(token_registry: RegistryServer, docker_config: object) -> Iterator[FaultProxy]:
    p = FaultProxy(token_registry.host).start()
    docker_config(p.host, token_registry.username, token_registry.password)  # type: ignore[operator]
    yield p
    p.stop()


def test_a_token_expiring_between_range_fetches_is_renewed(
    token_proxy: FaultProxy, big: BigPlain, tmp_path: Path
) -> None:
    ref = big.push(token_proxy.host, "rel/long-mount-token")
    env = {k: v for k, v in os.environ.items() if k != "COG_TOKEN"}  # with DOCKER_CONFIG
    with mounted(ref, tmp_path, env=env) as m:
        token_proxy.set_faults([ExpireToken(times=1, methods=("GET",), match=big.match)])
        at = 60 * MiB
        assert pread_within(weights(m.rootfs), at, 1 << 20) == big.body[at : at + (1 << 20)]
    refused = [r for r in token_proxy.requests if "ExpireToken" in r.faults]
    assert [r.status for r in refused] == [401]
