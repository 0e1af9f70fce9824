"""``r8imfs index`` end to end on the real registry, read back by others and by hand.

What is checked by whom: skopeo reads the published image index, manifests
and config; umoci unpacks the image through the new index (nothing broke);
the zTOCs are fetched raw and judged by ``soci_oracle`` (a hand-written
FlatBuffers reader and its own libz binding, against gunzip, sha256 and
``tarfile``). Discovery is ``registry/referrers.py`` against the same registry:
v2 by annotation, v1 by the referrers tag-schema fallback (distribution 2.8
has no referrers API, so the API's 404 path is exercised too).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from r8imfs.engine.codecs import socireader, ztoc
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import soci
from r8imfs.oci.manifest import Manifest
from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.referrers import FoundIndex, find_soci_index
from r8imfs.registry.upload import upload_bytes
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import publish_soci_v1, push, push_index
from tests.helpers.readback import (
    cog_image,
    expected,
    inspect_config,
    inspect_raw,
    pushed,
    run_cli,
    tag_digest,
    unpack,
)
from tests.helpers.registry import RegistryServer
from tests.helpers.soci_oracle import check_gzip_ztoc, check_tar_ztoc, read_ztoc

KiB = 1024
SPAN = 64 * KiB


def _weights(size: int) -> dict[str, bytes | str | None]:
    """Half noise, half text: spans of both kinds of deflate blocks."""
    text = b"".join(b"weight %d = %f\n" % (i, i / 7) for i in range(size // 40))
    return {"src/weights": None, "src/weights/model.bin": os.urandom(size // 2) + text}


def _oci(media_type: str) -> str:
    return {
        mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar": mt.OCI_LAYER,
    }.get(media_type, media_type)


def _blob(host: str, name: str, digest: str) -> bytes:
    r = httpx.get(f"http://{host}/v2/{name}/blobs/{digest}", follow_redirects=True, timeout=60)
    r.raise_for_status()
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    return r.content


class RegistryReadAt:
    """A ``ReadAt`` of ranged GETs straight to the registry (no cache)."""

    def __init__(self, host: str, name: str, digest: str, size: int) -> None:
        self._url = f"http://{host}/v2/{name}/blobs/{digest}"
        self._size = size
        self.requests = 0
        self.bytes = 0

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        self.requests += 1
        r = httpx.get(
            self._url,
            headers={"Range": f"bytes={offset}-{offset + size - 1}"},
            follow_redirects=True,
            timeout=60,
        )
        assert r.status_code == 206
        self.bytes += len(r.content)
        return r.content


def _check_published(
    host: str, name: str, dest: str, source: dict[str, Any], compression: str = "gzip"
) -> dict[str, Any]:
    """The v2 layout at ``dest``; the SOCI index manifest."""
    top = inspect_raw(dest)
    assert top["mediaType"] == mt.OCI_INDEX
    image, index_entry = top["manifests"]
    assert image["mediaType"] == mt.OCI_MANIFEST
    assert image["platform"] == {"architecture": "amd64", "os": "linux"}
    assert index_entry["artifactType"] == soci.SOCI_INDEX_V2
    assert index_entry["platform"] == image["platform"]
    assert index_entry["annotations"] == {soci.MANIFEST_DIGEST: image["digest"]}

    manifest = inspect_raw(f"{host}/{name}@{image['digest']}")
    assert manifest["annotations"][soci.INDEX_DIGEST] == index_entry["digest"]
    assert manifest["config"]["digest"] == source["config"]["digest"]
    assert manifest["config"]["mediaType"] == mt.OCI_CONFIG
    # the same blobs, typed as OCI layers
    assert manifest["layers"] == [
        {**x, "mediaType": _oci(x["mediaType"])} for x in source["layers"]
    ]

    index = inspect_raw(f"{host}/{name}@{index_entry['digest']}")
    assert index["mediaType"] == mt.OCI_MANIFEST
    assert "subject" not in index
    assert index["config"] == {
        "mediaType": soci.SOCI_INDEX_V2,
        "digest": soci.EMPTY_JSON_DIGEST,
        "size": 2,
    }
    assert _blob(host, name, soci.EMPTY_JSON_DIGEST) == b"{}"
    assert index["annotations"][soci.BUILD_TOOL].startswith("r8imfs")
    assert len(index["layers"]) == len(source["layers"])  # every layer, in layer order
    check = check_gzip_ztoc if compression == "gzip" else check_tar_ztoc
    for zdesc, layer in zip(index["layers"], source["layers"], strict=True):
        assert zdesc["mediaType"] == "application/octet-stream"
        assert zdesc["annotations"] == {
            soci.LAYER_DIGEST: layer["digest"],
            soci.LAYER_MEDIA_TYPE: _oci(layer["mediaType"]),
            soci.SPAN_SIZE: str(SPAN),
        }
        data = _blob(host, name, zdesc["digest"])
        assert len(data) == zdesc["size"]
        check(data, _blob(host, name, layer["digest"]), SPAN)
    return index


@pytest.mark.parametrize("manifest_type", [mt.DOCKER_MANIFEST, mt.OCI_MANIFEST])
def test_index_publishes_soci_v2(
    registry: RegistryServer, repo_name: str, tmp_path: Path, manifest_type: str
) -> None:
    layers, files = cog_image(_weights(400 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, manifest_type=manifest_type, layers=layers)
    before_raw, before_config = inspect_raw(source), inspect_config(source)

    proc = run_cli("index", "--span-size", "64K", source)
    line = pushed(proc)
    dest = f"{source}-soci"
    assert line == f"{registry.host}/{repo_name}@{tag_digest(dest)}"
    assert "zTOC" in proc.stderr.decode()

    index = _check_published(registry.host, repo_name, dest, before_raw)
    weights = read_ztoc(_blob(registry.host, repo_name, index["layers"][-1]["digest"]))
    assert weights["max_span_id"] >= 4  # 400 KiB in 64 KiB spans
    assert inspect_config(dest) == before_config
    assert inspect_raw(source) == before_raw  # the source is untouched
    assert unpack(dest, tmp_path / "u") == expected(*files)


def test_uncompressed_layers(registry: RegistryServer, repo_name: str) -> None:
    layers, _ = cog_image(_weights(300 * KiB))
    source = f"{registry.host}/{repo_name}:plain"
    push(source, layers=layers, compression="none")
    before = inspect_raw(source)
    assert before["layers"][0]["mediaType"] == mt.OCI_LAYER
    pushed(run_cli("index", "--span-size", "64K", source, f"{registry.host}/{repo_name}:idx"))
    _check_published(registry.host, repo_name, f"{registry.host}/{repo_name}:idx", before, "none")


def test_other_repository_mounts_layers(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str
) -> None:
    layers, _ = cog_image(_weights(1024 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    before = inspect_raw(source)
    proxy.reset()
    line = pushed(
        run_cli(
            "index",
            "--span-size",
            "64K",
            f"{proxy.host}/{repo_name}:v1",
            f"{proxy.host}/{repo_name}-soci:x",
        )
    )
    assert line.startswith(f"{proxy.host}/{repo_name}-soci@sha256:")
    index = _check_published(
        registry.host, f"{repo_name}-soci", f"{registry.host}/{repo_name}-soci:x", before
    )
    ztoc_bytes = sum(z["size"] for z in index["layers"])
    assert proxy.uploaded < ztoc_bytes + 16 * KiB  # zTOCs and manifests, never a layer
    assert proxy.downloaded >= sum(layer["size"] for layer in before["layers"])  # read once


def test_every_platform_or_one(registry: RegistryServer, repo_name: str) -> None:
    base = f"{registry.host}/{repo_name}"
    amd = push(f"{base}:amd", layers=cog_image(_weights(100 * KiB))[0])
    arm = push(f"{base}:arm", layers=cog_image(_weights(120 * KiB))[0])
    trio.run(push_index, f"{base}:multi", {"linux/amd64": amd, "linux/arm64": arm})

    pushed(run_cli("index", f"{base}:multi"))
    top = inspect_raw(f"{base}:multi-soci")
    kinds = [(m.get("artifactType"), m["platform"]["architecture"]) for m in top["manifests"]]
    assert kinds == [
        (None, "amd64"),
        (None, "arm64"),
        (soci.SOCI_INDEX_V2, "amd64"),
        (soci.SOCI_INDEX_V2, "arm64"),
    ]
    for m in top["manifests"][:2]:
        assert soci.INDEX_DIGEST in inspect_raw(f"{base}@{m['digest']}")["annotations"]

    pushed(run_cli("index", "--platform", "linux/arm64", f"{base}:multi", f"{base}:arm-only"))
    top = inspect_raw(f"{base}:arm-only")
    kinds = [(m.get("artifactType"), m["platform"]["architecture"]) for m in top["manifests"]]
    assert kinds == [(None, "amd64"), (None, "arm64"), (soci.SOCI_INDEX_V2, "arm64")]
    assert top["manifests"][0]["digest"] == amd  # not indexed: kept as it was
    assert (
        inspect_config(f"{base}:arm-only", "arm64")["rootfs"]
        == inspect_config(f"{base}:arm", "arm64")["rootfs"]
    )


# -- reading side ---------------------------------------------------------------------


async def _find(ref: str) -> FoundIndex | None:
    parsed = parse(ref)
    async with RegistryClient() as client:
        manifest = await client.get_manifest(parsed)
        assert isinstance(manifest, Manifest)
        return await find_soci_index(client, parsed.repository, manifest)


def test_discovery_v2_v1_and_reading_spans(registry: RegistryServer, repo_name: str) -> None:
    layers, files = cog_image(_weights(600 * KiB))
    base = f"{registry.host}/{repo_name}"
    push(f"{base}:v1", layers=layers)
    assert trio.run(_find, f"{base}:v1") is None  # nothing published yet
    pushed(run_cli("index", "--span-size", "64K", f"{base}:v1"))

    top = inspect_raw(f"{base}:v1-soci")
    found = trio.run(_find, f"{base}@{top['manifests'][0]['digest']}")
    assert found is not None and (found.version, found.how) == (2, "annotation")
    assert found.index.digest == top["manifests"][1]["digest"]

    v1_digest = trio.run(publish_soci_v1, f"{base}:v1", found.index.data["layers"])
    found_v1 = trio.run(_find, f"{base}:v1")
    assert found_v1 is not None and (found_v1.version, found_v1.how) == (1, "referrers-tag")
    assert found_v1.index.digest == v1_digest

    # Read the weights through their zTOC with ranged GETs: only the spans needed.
    source = inspect_raw(f"{base}:v1")
    layer = source["layers"][-1]
    ref = found_v1.ztocs[layer["digest"]]
    assert ref.span_size == SPAN
    z = ztoc.decode(_blob(registry.host, repo_name, ref.digest))
    blob = RegistryReadAt(registry.host, repo_name, layer["digest"], layer["size"])
    tar = gzip.decompress(_blob(registry.host, repo_name, layer["digest"]))
    with socireader.SociLayer(z, blob, span_size=ref.span_size) as reader:
        weights = next(f for f in z.files if f.name.endswith("model.bin"))
        assert (
            reader.read_file(weights, 0, weights.uncompressed_size)
            == files[-1]["src/weights/model.bin"]
        )
        assert blob.requests == 1  # one ranged GET for the run of spans the file covers
        assert reader.spans_fetched >= 9
        assert blob.bytes < layer["size"]
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            assert [e.path for e in socireader.entries(z)] == [m.name for m in tf.getmembers()]


def test_reindexing_reuses_published_ztocs(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str
) -> None:
    layers, _ = cog_image(_weights(800 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    pushed(run_cli("index", "--span-size", "64K", source))
    first = inspect_raw(f"{source}-soci")
    first_index = inspect_raw(f"{registry.host}/{repo_name}@{first['manifests'][1]['digest']}")

    proxy.reset()
    proc = run_cli(
        "index",
        "--span-size",
        "64K",
        f"{proxy.host}/{repo_name}:v1-soci",
        f"{proxy.host}/{repo_name}-again:x",
    )
    pushed(proc)
    assert "reusing zTOC" in proc.stderr.decode()
    layer_digests = {x["digest"] for x in inspect_raw(source)["layers"]}
    assert not layer_digests & proxy.blob_downloads().keys()  # no layer read again
    again = inspect_raw(f"{registry.host}/{repo_name}-again:x")
    assert [m.get("artifactType") for m in again["manifests"]] == [None, soci.SOCI_INDEX_V2]
    index = inspect_raw(f"{registry.host}/{repo_name}-again@{again['manifests'][1]['digest']}")
    assert index["layers"] == first_index["layers"]  # the same zTOCs, mounted over
    for z in index["layers"]:
        assert len(_blob(registry.host, f"{repo_name}-again", z["digest"])) == z["size"]

    proc = run_cli(
        "index", f"{registry.host}/{repo_name}:v1-soci", f"{registry.host}/{repo_name}:4m"
    )
    pushed(proc)
    assert "reusing" not in proc.stderr.decode()  # another span size: built anew


async def _upload(ref: str, data: bytes) -> str:
    async with RegistryClient() as client:
        return (await upload_bytes(client, parse(ref).repository, data)).digest


def test_a_hostile_published_ztoc_is_refused_and_rebuilt(
    registry: RegistryServer, repo_name: str
) -> None:
    layers, _ = cog_image(_weights(200 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    layer = inspect_raw(source)["layers"][-1]
    bogus = b"\x08\x00\x00\x00" + bytes(range(256)) * 8  # a root offset into garbage
    digest = trio.run(_upload, source, bogus)
    zdesc = {
        "mediaType": soci.ZTOC_MEDIA_TYPE,
        "digest": digest,
        "size": len(bogus),
        "annotations": {
            soci.LAYER_DIGEST: layer["digest"],
            soci.LAYER_MEDIA_TYPE: layer["mediaType"],
            soci.SPAN_SIZE: str(SPAN),
        },
    }
    trio.run(publish_soci_v1, source, [zdesc])
    found = trio.run(_find, source)
    assert found is not None and found.version == 1  # discovered, then judged

    proc = run_cli("index", "--span-size", "64K", source)
    pushed(proc)
    err = proc.stderr.decode()
    assert "not reusing zTOC" in err and "malformed zTOC" in err
    index = _check_published(registry.host, repo_name, f"{source}-soci", inspect_raw(source))
    assert digest not in {z["digest"] for z in index["layers"]}


def test_min_layer_size_and_nothing_to_index(registry: RegistryServer, repo_name: str) -> None:
    layers, _ = cog_image(_weights(400 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    raw = inspect_raw(source)
    pushed(run_cli("index", "--span-size", "64K", "--min-layer-size", "100K", source))
    top = inspect_raw(f"{source}-soci")
    index = inspect_raw(f"{registry.host}/{repo_name}@{top['manifests'][1]['digest']}")
    big = [x["digest"] for x in raw["layers"] if x["size"] >= 100 * KiB]
    assert (
        [z["annotations"][soci.LAYER_DIGEST] for z in index["layers"]]
        == big
        == [raw["layers"][-1]["digest"]]
    )

    zstd_source = f"{registry.host}/{repo_name}:zstd"
    push(zstd_source, layers=layers, compression="zstd")
    proc = run_cli("index", zstd_source)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert err[-1].startswith("r8imfs index: error: no layer of") and "zTOC" in err[-1]
    assert tag_digest(f"{zstd_source}-soci") is None  # nothing was published


def test_layers_shows_which_layers_have_a_ztoc(registry: RegistryServer, repo_name: str) -> None:
    layers, _ = cog_image(_weights(300 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    plain = json.loads(run_cli("layers", "--json", source).stdout)
    assert [x["toc"] for x in plain["layers"]] == [None, None, None]

    pushed(run_cli("index", "--span-size", "64K", "--min-layer-size", "100K", source))
    proc = run_cli("layers", "--json", f"{source}-soci")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    top = inspect_raw(f"{source}-soci")
    index = inspect_raw(f"{registry.host}/{repo_name}@{top['manifests'][1]['digest']}")
    (ztoc_desc,) = index["layers"]  # only the weights layer is over 100K
    tocs = [x["toc"] for x in ours["layers"]]
    assert tocs[:2] == [None, None]
    assert tocs[2] == {
        "kind": "soci-ztoc",
        "format": "zTOC",
        "index": "SOCI v2",
        "foundBy": "annotation",
        "indexDigest": top["manifests"][1]["digest"],
        "digest": ztoc_desc["digest"],
        "size": ztoc_desc["size"],
        "spanSize": SPAN,
    }
    table = run_cli("layers", f"{source}-soci").stdout.decode().splitlines()
    assert "TOC" in table[2].split()
    assert "zTOC (SOCI v2)" in table[-2]  # the weights row, above the total
    assert "zTOC" not in table[3]

    trio.run(publish_soci_v1, source, index["layers"])
    v1 = json.loads(run_cli("layers", "--json", source).stdout)
    assert v1["layers"][2]["toc"]["index"] == "SOCI v1"
    assert v1["layers"][2]["toc"]["foundBy"] == "referrers-tag"


async def _dangling(source: str, tag: str) -> None:
    """The image manifest annotated with a SOCI index that is not there."""
    parsed = parse(source)
    async with RegistryClient() as client:
        manifest = await client.get_manifest(parsed)
        assert isinstance(manifest, Manifest)
        raw = soci.annotate_manifest(manifest, "sha256:" + "0" * 64)
        await client.put_manifest(parsed.repository, tag, raw, mt.OCI_MANIFEST)


def test_a_missing_soci_index_is_a_warning(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layers, files = cog_image(_weights(200 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=layers)
    trio.run(_dangling, source, "dangling")
    ref = f"{registry.host}/{repo_name}:dangling"
    proc = run_cli("layers", "--json", ref)
    assert proc.returncode == 0, proc.stderr
    assert "ignoring the image's SOCI index" in proc.stderr.decode()
    assert [x["toc"] for x in json.loads(proc.stdout)["layers"]] == [None, None, None]
    proc = run_cli("extract", ref, "--dir", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr
    assert "ignoring the image's SOCI index" in proc.stderr.decode()
    model = files[-1]["src/weights/model.bin"]
    assert (tmp_path / "w" / "model.bin").read_bytes() == model
