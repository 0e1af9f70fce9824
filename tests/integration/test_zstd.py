"""``r8imfs zstd`` end to end: zstd CLI decodes each layer to its diff_id, umoci unpacks
it, an independent reader checks its zstd:chunked layout, and its TOC reads back."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import trio

from r8imfs.engine.codecs.toc import load_toc
from r8imfs.engine.codecs.tocread import TocReader
from r8imfs.engine.codecs.zstdindex import read_seek_table
from r8imfs.engine.readat import BytesReadAt, FileReadAt, read_entry
from r8imfs.engine.tarindex import index_seekable
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.push import push_manifest, push_tar_layer
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import push, push_index
from tests.helpers.readback import (
    cog_image,
    copy_to_layout,
    expected,
    inspect_config,
    inspect_raw,
    layout_blob,
    pushed,
    run_cli,
    tag_digest,
    unpack,
    weights_files,
    zstd_decode,
)
from tests.helpers.registry import RegistryServer
from tests.helpers.zstdchunked_spec import check_blob

KiB = 1024


def _check_zstd_layers(ref: str, work: Path, diff_ids: list[str]) -> list[int]:
    """Every layer is seekable zstd decoding to its diff_id; the frame count of each."""
    layout = copy_to_layout(ref, work / "zlayout")
    raw = inspect_raw(ref)
    frames = []
    for layer, diff_id in zip(raw["layers"], diff_ids, strict=True):
        assert layer["mediaType"] == mt.OCI_LAYER_ZSTD
        blob = layout_blob(layout, layer["digest"])
        decoded = zstd_decode(blob)
        assert "sha256:" + hashlib.sha256(decoded).hexdigest() == diff_id
        table = read_seek_table(BytesReadAt(blob.read_bytes()))
        assert table is not None
        assert table.seekable
        assert table.uncompressed_size == len(decoded)
        frames.append(len(table.ustarts))
        # zstd:chunked too: checked by the independent reader, then read through the TOC
        annotations = layer.get("annotations", {})
        check_blob(blob.read_bytes(), annotations, diff_id)
        toc = load_toc(FileReadAt(blob), annotations)
        assert toc is not None and toc.kind == "zstd:chunked"
        plain = index_seekable(io.BytesIO(decoded), len(decoded))
        assert [(e.path, e.kind, e.size) for e in toc.entries] == [
            (e.path, e.kind, e.size) for e in plain
        ]
        with TocReader(FileReadAt(blob), toc) as reader:
            for e, p in zip(toc.entries, plain, strict=True):
                body = decoded[p.data_offset : p.data_offset + p.size]
                assert read_entry(reader, e, 0, e.size) == body
    return frames


@pytest.mark.parametrize("manifest_type", [mt.DOCKER_MANIFEST, mt.OCI_MANIFEST])
def test_zstd_recompresses_every_layer(
    registry: RegistryServer, repo_name: str, tmp_path: Path, manifest_type: str
) -> None:
    layers, files = cog_image(weights_files(size=200 * KiB))
    source = f"{registry.host}/{repo_name}:v1"
    push(source, manifest_type=manifest_type, layers=layers)
    before = inspect_config(source)

    line = pushed(run_cli("zstd", "--frame-size", "64K", source, f"{registry.host}/{repo_name}:z"))

    out = f"{registry.host}/{repo_name}:z"
    assert line == f"{registry.host}/{repo_name}@{tag_digest(out)}"
    raw = inspect_raw(out)
    assert raw["mediaType"] == mt.OCI_MANIFEST
    assert raw["config"]["mediaType"] == mt.OCI_CONFIG
    config = inspect_config(out)
    assert config["rootfs"]["diff_ids"] == before["rootfs"]["diff_ids"]
    assert config["history"] == before["history"]
    frames = _check_zstd_layers(out, tmp_path, config["rootfs"]["diff_ids"])
    assert frames[-1] >= 4  # 200 KiB of weights in 64 KiB frames
    assert unpack(out, tmp_path / "u", regzip=True) == expected(*files)
    # `layers` names each layer's TOC, from its annotations alone
    shown = json.loads(run_cli("layers", "--json", out).stdout)["layers"]
    assert [x["toc"]["kind"] for x in shown] == ["zstd:chunked"] * len(shown)
    assert "zstd:chunked (layer annotations)" in run_cli("layers", out).stdout.decode()


def test_default_destination_and_digest_only_source(
    registry: RegistryServer, repo_name: str
) -> None:
    source = f"{registry.host}/{repo_name}:v1"
    digest = push(source, layers=cog_image(None)[0])
    proc = run_cli("recompress", source)  # the original's form
    line = pushed(proc)
    assert f"{registry.host}/{repo_name}:v1-zstd" in proc.stderr.decode()
    assert line.endswith(str(tag_digest(f"{source}-zstd")))
    assert tag_digest(source) == digest

    pushed(run_cli("zstd", f"{registry.host}/{repo_name}@{digest}"))
    assert tag_digest(f"{registry.host}/{repo_name}:latest-zstd") is not None


def test_zstd_layers_are_mounted_not_reencoded(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str
) -> None:
    source = f"{registry.host}/{repo_name}:v1"
    push(source, layers=cog_image(weights_files())[0], compression="zstd")
    before = inspect_raw(source)
    proxy.reset()
    pushed(run_cli("zstd", f"{proxy.host}/{repo_name}:v1", f"{proxy.host}/{repo_name}-copy:z"))
    after = inspect_raw(f"{registry.host}/{repo_name}-copy:z")
    assert [x["digest"] for x in after["layers"]] == [x["digest"] for x in before["layers"]]
    assert proxy.blob_downloads().keys() <= {before["config"]["digest"]}
    assert proxy.uploaded < 16 * KiB


async def _push_with_wrong_diff_id(ref: str) -> None:
    layers, _ = cog_image(None)
    parsed = parse(ref)
    async with RegistryClient() as client:
        built = [
            await push_tar_layer(client, parsed.repository, tar, "gzip", mt.OCI_MANIFEST)
            for tar, _, _ in layers
        ]
        news = [
            mutate.NewLayer(b.descriptor, b.diff_id, by, comment)
            for b, (_, by, comment) in zip(built, layers, strict=True)
        ]
        news[-1] = mutate.NewLayer(news[-1].descriptor, "sha256:" + "0" * 64, "COPY . /src", None)
        config = mutate.append_layers(mutate.new_config(), news)
        await push_manifest(client, parsed, mt.OCI_MANIFEST, config, [b.descriptor for b in built])


def test_wrong_diff_id_fails_and_pushes_no_manifest(
    registry: RegistryServer, repo_name: str
) -> None:
    source = f"{registry.host}/{repo_name}:v1"
    trio.run(_push_with_wrong_diff_id, source)
    proc = run_cli("zstd", source, f"{registry.host}/{repo_name}:z")
    assert proc.returncode == 1
    assert "diff_id" in proc.stderr.decode()
    assert tag_digest(f"{registry.host}/{repo_name}:z") is None


def test_all_platforms_index(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    layers, files = cog_image(weights_files())
    base = f"{registry.host}/{repo_name}:multi"
    amd = push(f"{base}-amd64", manifest_type=mt.DOCKER_MANIFEST, layers=layers)
    arm = push(
        f"{base}-arm64",
        manifest_type=mt.DOCKER_MANIFEST,
        layers=layers,
        config=mutate.new_config(architecture="arm64"),
    )
    trio.run(lambda: push_index(base, {"linux/amd64": amd, "linux/arm64": arm}, mt.DOCKER_INDEX))

    proc = run_cli("zstd", "--all-platforms", base, f"{registry.host}/{repo_name}:z")
    pushed(proc)

    out = f"{registry.host}/{repo_name}:z"
    index = inspect_raw(out)
    assert index["mediaType"] == mt.OCI_INDEX
    assert {m["mediaType"] for m in index["manifests"]} == {mt.OCI_MANIFEST}
    # the two platforms share their layers: each is recompressed once
    assert proc.stderr.decode().count("zstd (") == len(layers)
    for arch in ("amd64", "arm64"):
        config = inspect_config(out, arch)
        assert config["architecture"] == arch
        assert unpack(out, tmp_path / arch, arch, regzip=True) == expected(*files)
