"""``safetensors.safe_open`` on a mounted model file: what it reads, and what that moves.

A safetensors file (a small tensor first, a big random one, a small one at
the very end) in a layer that allows random access (uncompressed, and the
same image recompressed to seekable zstd by ``r8imfs zstd``) is mounted
through the counting proxy, and the blob bytes that cross the wire are
counted phase by phase: the mount itself (indexing reads each tar header),
listing keys and metadata with ``safe_open``, reading one small tensor in
the middle and then the big one at the end.

What the design gives (``R8IMFS_SAFETENSORS_MIB`` scales the file; the
figures below do not depend on its size, except the zstd one that compares
the first phases with half the file, which needs the default size):

* plain layer: indexing hops from header to header with small exact reads
  where the walk is sparse (``engine.codecs.plain.HeaderWalk``: a few KiB per
  long hop, not a 4 MiB block and its readahead); file reads fetch the
  layer's 256 KiB units (``units.PLAIN_CHUNK``) that a read covers, and the
  kernel's mmap read-around (``fs.daemon.READ_AHEAD_KB``, 512 KiB) covers
  at most three. So a fresh mount plus listing a file's keys moves less than
  1 MiB (issue 15), whatever the file's size.
* seekable zstd: the blob cache fetches aligned 4 MiB blocks and file
  reads decode 4 MiB frames, so anything costs whole blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from r8imfs.cache.blobcache import DEFAULT_BLOCK_SIZE, DEFAULT_READAHEAD
from r8imfs.engine.codecs.plain import HOP_READ
from r8imfs.engine.codecs.units import PLAIN_CHUNK
from r8imfs.fs.daemon import READ_AHEAD_KB
from r8imfs.oci import mediatypes as mt
from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.fuse import CMD_TIMEOUT, Member, Mount, MountFactory, make_tar, r8imfs
from tests.helpers.images import push
from tests.helpers.registry import RegistryServer

MiB = 1024 * 1024
BLOCK = DEFAULT_BLOCK_SIZE  # the blob cache fetches aligned blocks of this size
READAHEAD = DEFAULT_READAHEAD  # and this many more when reads look sequential
#: plain layer: the units a read of the kernel's mmap read-around size spans, at most
AROUND = (READ_AHEAD_KB * 1024 + PLAIN_CHUNK - 1) // PLAIN_CHUNK + 1
SIZE_MIB = int(os.environ.get("R8IMFS_SAFETENSORS_MIB", "256"))
WEIGHTS = "src/weights/model.safetensors"
METADATA = {"format": "pt", "note": "counted"}


@pytest.fixture(scope="module")
def model() -> bytes:
    half = SIZE_MIB * MiB // 2
    big = np.frombuffer(os.urandom(2 * half), dtype=np.float16).reshape(2, -1, 1024)
    # The writer orders tensors by dtype, then name: "b1.mid" lands between the halves.
    return save(
        {
            "a.first": np.arange(256, dtype=np.float16),
            "b0.big": big[0],
            "b1.mid": np.arange(2048, dtype=np.float16),
            "b2.big": big[1],
        },
        metadata=METADATA,
    )


@pytest.fixture(scope="module")
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def images(registry: RegistryServer, model: bytes) -> dict[str, str]:
    """Repository paths (no host): "plain" pushed uncompressed, "zstd" made seekable."""
    base = make_tar([Member("etc", "d"), Member("etc/hostname", data=b"model\n")])
    weights = make_tar(
        [Member("src", "d"), Member("src/weights", "d"), Member(WEIGHTS, data=model)]
    )
    plain = "fuse/safetensors-plain:v1"
    push(
        f"{registry.host}/{plain}",
        layers=[(base, "base", None), (weights, "COPY weights", "weights")],
        manifest_type=mt.OCI_MANIFEST,
        compression="none",
    )
    seekable = "fuse/safetensors-zstd:v1"
    proc = r8imfs(
        "-q", "zstd", f"{registry.host}/{plain}", f"{registry.host}/{seekable}", timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return {"plain": plain, "zstd": seekable}


def _moved(proxy: CountingProxy) -> int:
    """Blob body bytes since the last reset (manifests and tokens excluded)."""
    return sum(proxy.blob_downloads().values())


#: Runs in a child process. The counting proxy serves from threads of the test
#: process; safe_open faulting on the mmap in this process would hold the GIL
#: while the fault waits on the mount, which waits on the proxy: the read
#: times out, fails with EIO, and mmap turns that into SIGBUS for pytest.
READER = """
import json, sys
from safetensors import safe_open
path, step = sys.argv[1], sys.argv[2]
with safe_open(path, framework="numpy") as f:
    if step == "keys":
        print(json.dumps({"keys": sorted(f.keys()), "metadata": f.metadata()}, sort_keys=True))
    else:
        sys.stdout.buffer.write(f.get_tensor(step).tobytes())
"""


def _read(path: Path, step: str) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-c", READER, str(path), step],
        capture_output=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"safe_open {step} failed ({proc.returncode}): {proc.stderr!r}"
    return proc.stdout


def _measure(m: Mount, proxy: CountingProxy, model: bytes, tmp_path: Path) -> dict[str, int]:
    path = m.rootfs / WEIGHTS
    reference = tmp_path / "reference.safetensors"
    reference.write_bytes(model)
    figures = {}
    proxy.reset()
    got = _read(path, "keys")
    figures["keys"] = _moved(proxy)
    assert got == _read(reference, "keys"), m.log_text()
    assert json.loads(got)["metadata"] == METADATA
    proxy.reset()
    got = _read(path, "b1.mid")
    figures["middle tensor"] = _moved(proxy)
    assert got == _read(reference, "b1.mid")
    proxy.reset()
    got = _read(path, "b2.big")
    figures["big tensor"] = _moved(proxy)
    assert got == _read(reference, "b2.big")
    return figures


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_safe_open_through_the_mount_moves_blocks_not_the_file(
    kind: str,
    images: dict[str, str],
    proxy: CountingProxy,
    model: bytes,
    mounted: MountFactory,
    tmp_path: Path,
) -> None:
    proxy.reset()
    with mounted(f"{proxy.host}/{images[kind]}") as m:
        mount_bytes = _moved(proxy)
        figures = _measure(m, proxy, model, tmp_path)
    figures["mount"] = mount_bytes
    print(f"\n{kind} layer, {len(model) / MiB:.0f} MiB file: blob bytes moved {figures}")
    half = len(model) // 2
    if kind == "plain":
        # The config, the base layer (10 KiB, one read) and the weights layer's
        # two hops: its first headers, then the end of the archive past the body.
        assert mount_bytes <= 4 * HOP_READ, figures
        # safe_open faults on the file's first page: the kernel reads around it
        # (READ_AHEAD_KB), which lands on at most AROUND units, 768 KiB.
        assert 0 < figures["keys"] <= AROUND * PLAIN_CHUNK, figures
        # A 4 KiB tensor in the middle: the same read-around, the same units.
        assert 0 < figures["middle tensor"] <= AROUND * PLAIN_CHUNK, figures
        # Half the file as one tensor (it follows the middle one): that half,
        # less what the middle read fetched into it, plus at most a unit at
        # each end; nothing else of the file.
        slack = AROUND * PLAIN_CHUNK
        assert half - slack <= figures["big tensor"] <= half + 2 * PLAIN_CHUNK, figures
        return
    # The mount reads each layer's tar headers: a block per file (the weights'
    # header block is among them), plus the layer's last block.
    assert mount_bytes <= 4 * BLOCK, figures
    # safe_open's first read of the file continues where the index pass's read
    # of its tar header ended: sequential to the blob cache, so the block after
    # and READAHEAD more come along. 5 blocks, 20 MiB, whatever the file's size.
    assert figures["keys"] <= (2 + READAHEAD) * BLOCK, figures
    # A 4 KiB tensor in the middle: the kernel's mmap read-around asks for up to
    # READ_AHEAD_KB around the fault, which may span two decoded 4 MiB blocks of
    # the file; reading the second looks sequential, so ImageFiles decodes the
    # next one ahead and the blob cache fetches READAHEAD blocks ahead: three
    # decoded blocks span at most four blob blocks, 8 blocks (32 MiB) at worst.
    assert 0 < figures["middle tensor"] <= (4 + READAHEAD) * BLOCK, figures
    assert mount_bytes + figures["keys"] + figures["middle tensor"] < half
    # Half the file as one tensor (it follows the middle one): that half, less
    # the blocks the middle read already fetched into it (8 at most), plus at
    # most a few blocks of slack; nothing else of the file.
    assert half - 8 * BLOCK <= figures["big tensor"] <= half + (4 + READAHEAD) * BLOCK, figures


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_listing_keys_from_a_fresh_mount_moves_under_one_mib(
    kind: str, images: dict[str, str], proxy: CountingProxy, model: bytes, mounted: MountFactory
) -> None:
    """Issue 15's target: a fresh mount (empty cache) plus listing keys, < 1 MiB in all.

    zstd: ``r8imfs zstd`` cuts the header into a chunk of its own and the rest of
    the file's first MiB into 256 KiB chunks, so the kernel's 512 KiB read-around
    of safe_open's first touch costs about that."""
    proxy.reset()
    with mounted(f"{proxy.host}/{images[kind]}") as m:
        assert json.loads(_read(m.rootfs / WEIGHTS, "keys"))["metadata"] == METADATA
        moved = _moved(proxy)
    assert moved < MiB
