"""Mounting through a SOCI index: ready without layer bodies, spans checked, bad zTOCs left.

The index is published by ``r8imfs index`` on the real registry (v2), or by
hand with ``oci/soci.py`` behind the referrers tag fallback (v1, as
distribution 2.8 has no referrers API). Bytes moved are counted by a
loopback proxy in front of the registry (``counting_proxy``); the trees
read through the kernel are compared with what was pushed (``readback``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.upload import upload_bytes
from tests.helpers.counting_proxy import CountingProxy, start_counting_proxy
from tests.helpers.fuse import MountFactory
from tests.helpers.images import publish_soci_v1, push
from tests.helpers.readback import OS_FILES, SRC_FILES, expected, inspect_raw, pushed, run_cli
from tests.helpers.readback import tree as tree_of
from tests.helpers.registry import RegistryServer, start_registry
from tools.demoimage import tar_of

KiB = 1024
MiB = 1024 * KiB
SPAN = "64K"
#: more than a decoded block (4 MiB) each side of the corrupted byte
MODEL_NOISE = 12 * MiB


def _files() -> tuple[dict[str, bytes | str | None], dict[str, bytes | str | None]]:
    """A base of 300 small files (~3 MiB of noise: spans of ~64 KiB compressed)
    and a weights layer, half noise and half text."""
    base: dict[str, bytes | str | None] = dict(OS_FILES)
    base["usr/lib"] = None
    for d in range(10):
        base[f"usr/lib/d{d}"] = None
    for n in range(300):
        base[f"usr/lib/d{n % 10}/f{n}.py"] = os.urandom(10 * KiB + n)
    text = b"".join(b"weight %d = %f\n" % (i, i / 7) for i in range(20_000))
    weights: dict[str, bytes | str | None] = {
        "src/weights": None,
        "src/weights/config.json": b'{"hidden": 64}\n',
        "src/weights/model.bin": os.urandom(MODEL_NOISE) + text,
    }
    return base, weights


def _push(ref: str) -> list[dict[str, bytes | str | None]]:
    base, weights = _files()
    layers = [
        (tar_of(base), "/bin/sh -c #(nop) ADD file:os in / ", None),
        (tar_of(SRC_FILES), "COPY . /src # buildkit", "cog"),
        (tar_of(weights), "COPY ./weights /src/weights # weights", "weights"),
    ]
    push(ref, layers=layers)
    return [base, SRC_FILES, weights]


def _ztocs(host: str, repo: str, tag: str) -> list[dict[str, Any]]:
    """The zTOC descriptors of the v2 SOCI index ``r8imfs index`` published at ``tag``."""
    top = inspect_raw(f"{host}/{repo}:{tag}")
    index = inspect_raw(f"{host}/{repo}@{top['manifests'][1]['digest']}")
    return list(index["layers"])


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[CountingProxy]:
    p = start_counting_proxy(registry.host)
    yield p
    p.stop()


def _layer_bytes(proxy: CountingProxy, layers: list[dict[str, Any]]) -> dict[str, int]:
    downloads = proxy.blob_downloads()
    return {x["digest"]: downloads.get(x["digest"], 0) for x in layers}


def test_v2_mount_is_ready_without_layer_bodies(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str, mounted: MountFactory
) -> None:
    files = _push(f"{registry.host}/{repo_name}:v1")
    pushed(run_cli("index", "--span-size", SPAN, f"{registry.host}/{repo_name}:v1"))
    layers = inspect_raw(f"{registry.host}/{repo_name}:v1")["layers"]

    proxy.reset()
    with mounted(f"{proxy.host}/{repo_name}:v1-soci", "-v") as m:
        assert set(_layer_bytes(proxy, layers).values()) == {0}  # served from zTOCs alone
        log = m.mount_stderr + m.log_text()
        assert log.count("served from its soci-ztoc (SOCI v2 index") == 3, log

        # two small files of the base: a span each, in blocks sized to the spans
        a = (m.rootfs / "usr/lib/d3/f103.py").read_bytes()
        b = (m.rootfs / "usr/lib/d7/f257.py").read_bytes()
        assert (a, b) == (files[0]["usr/lib/d3/f103.py"], files[0]["usr/lib/d7/f257.py"])
        moved = _layer_bytes(proxy, layers)
        assert 0 < moved[layers[0]["digest"]] <= 1 * MiB < layers[0]["size"]
        assert moved[layers[2]["digest"]] == 0

        assert tree_of(m.rootfs) == expected(*files)  # and everything else, exact


def test_v1_index_through_the_referrers_tag(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str, mounted: MountFactory
) -> None:
    files = _push(f"{registry.host}/{repo_name}:v1")
    pushed(run_cli("index", "--span-size", SPAN, f"{registry.host}/{repo_name}:v1"))
    ztocs = _ztocs(registry.host, repo_name, "v1-soci")
    trio.run(publish_soci_v1, f"{registry.host}/{repo_name}:v1", ztocs)
    layers = inspect_raw(f"{registry.host}/{repo_name}:v1")["layers"]

    proxy.reset()
    with mounted(f"{proxy.host}/{repo_name}:v1", "-v") as m:  # the original manifest: v1
        assert set(_layer_bytes(proxy, layers).values()) == {0}
        assert (m.mount_stderr + m.log_text()).count("(SOCI v1 index") == 3
        assert tree_of(m.rootfs) == expected(*files)

    proxy.reset()
    with mounted(f"{proxy.host}/{repo_name}:v1", "-v", "--no-soci", name="plain") as m:
        assert "soci" not in (m.mount_stderr + m.log_text()).lower()
        assert _layer_bytes(proxy, layers)[layers[0]["digest"]] == layers[0]["size"]


async def _upload(ref: str, data: bytes) -> str:
    async with RegistryClient() as client:
        return (await upload_bytes(client, parse(ref).repository, data)).digest


def test_hostile_ztocs_fall_back_to_local_indexing(
    registry: RegistryServer, repo_name: str, mounted: MountFactory
) -> None:
    source = f"{registry.host}/{repo_name}:v1"
    files = _push(source)
    pushed(run_cli("index", "--span-size", SPAN, source))
    good = _ztocs(registry.host, repo_name, "v1-soci")
    bogus = b"\x08\x00\x00\x00" + bytes(range(256)) * 8  # a root offset into garbage
    bogus_digest = trio.run(_upload, source, bogus)
    hostile = [
        # the weights layer's zTOC announced for the base: sizes do not match
        {**good[2], "annotations": good[0]["annotations"]},
        good[1],
        {**good[2], "digest": bogus_digest, "size": len(bogus)},  # malformed
    ]
    trio.run(publish_soci_v1, source, hostile)

    with mounted(source, "-v") as m:
        assert tree_of(m.rootfs) == expected(*files)
        log = m.mount_stderr + m.log_text()
    assert "served from its soci-ztoc" in log  # the src layer's zTOC is fine
    unusable = [line for line in log.splitlines() if "is not usable" in line]
    assert len(unusable) == 2, log
    assert any("is for a blob of" in line for line in unusable)
    assert any("malformed zTOC" in line for line in unusable)
    assert all(line.endswith("indexing the layer here") for line in unusable)


def _blob_path(server: RegistryServer, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return server.workdir / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def test_a_corrupted_span_is_eio_on_first_touch(mounted: MountFactory, tmp_path: Path) -> None:
    server = start_registry(tmp_path / "registry", "open")
    try:
        ref = f"{server.host}/fuse/soci:v1"
        files = _push(ref)
        pushed(run_cli("index", "--span-size", SPAN, ref))
        weights = inspect_raw(ref)["layers"][2]
        blob = _blob_path(server, weights["digest"])
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside model.bin's noise, far from config.json
        blob.write_bytes(bytes(data))

        with mounted(f"{ref}-soci") as m:
            config = (m.rootfs / "src/weights/config.json").read_bytes()
            assert config == files[2]["src/weights/config.json"]
            for _ in range(2):  # two opens, each a 4 KiB read around the bad byte
                with (m.rootfs / "src/weights/model.bin").open("rb") as f:
                    f.seek(len(data) // 2 - 2048)
                    with pytest.raises(OSError, match="Input/output error") as caught:
                        f.read(4096)
                    assert caught.value.errno == errno.EIO
            # other layers read right
            small = m.rootfs / "usr/lib/d3/f103.py"
            assert small.read_bytes() == files[0]["usr/lib/d3/f103.py"]
            assert (m.rootfs / "src/predict.py").read_bytes() == SRC_FILES["src/predict.py"]
            log = m.log_text()
        # the first touch fails on the span's digest, before the blob cache has the
        # whole blob (a later read may fail on the whole blob's digest instead)
        bad = [line for line in log.splitlines() if "EIO reading" in line]
        assert "EIO reading src/weights/model.bin: layer 2" in bad[0], log
        assert "its zTOC says" in bad[0], log
        assert all("src/weights/model.bin" in line for line in bad), log
    finally:
        server.stop()
