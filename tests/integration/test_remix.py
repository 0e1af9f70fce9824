"""``r8imfs remix`` end to end: weights layers moved by mounts only."""

from __future__ import annotations

from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import push
from tests.helpers.readback import (
    OS_FILES,
    SRC_FILES,
    cog_image,
    expected,
    inspect_config,
    inspect_raw,
    pushed,
    run_cli,
    tag_digest,
    unpack,
    weights_files,
)
from tests.helpers.registry import RegistryServer
from tools.demoimage import tar_of

KiB = 1024


@pytest.mark.parametrize("replace", [True, False])
def test_remix_mounts_weights_onto_base(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str, tmp_path: Path, replace: bool
) -> None:
    old, new = weights_files("old.bin"), weights_files("new.bin", 100 * KiB)
    base_layers, _ = cog_image(old)
    weights_layers, _ = cog_image(new)
    base = f"{registry.host}/{repo_name}/base:v1"
    weights = f"{registry.host}/{repo_name}/weights:v1"
    push(base, manifest_type=mt.DOCKER_MANIFEST, layers=base_layers)
    push(weights, manifest_type=mt.OCI_MANIFEST, layers=weights_layers)
    base_raw = inspect_raw(f"{registry.host}/{repo_name}/base:v1")
    weights_raw = inspect_raw(f"{registry.host}/{repo_name}/weights:v1")
    proxy.reset()

    flags = ["--replace-weights"] if replace else []
    pushed(
        run_cli(
            "remix",
            "--base",
            f"{proxy.host}/{repo_name}/base:v1",
            "--weights",
            f"{proxy.host}/{repo_name}/weights:v1",
            "--dest",
            f"{proxy.host}/{repo_name}/out:v1",
            *flags,
        )
    )

    assert proxy.blob_downloads().keys() <= {
        base_raw["config"]["digest"],
        weights_raw["config"]["digest"],
    }
    assert proxy.uploaded + proxy.downloaded <= 100 * KiB
    out = f"{registry.host}/{repo_name}/out:v1"
    raw = inspect_raw(out)
    assert raw["mediaType"] == mt.DOCKER_MANIFEST  # the base's flavour, weights layer converted
    kept = base_raw["layers"][:2] if replace else base_raw["layers"]
    assert [x["digest"] for x in raw["layers"]] == [
        x["digest"] for x in [*kept, weights_raw["layers"][-1]]
    ]
    assert {x["mediaType"] for x in raw["layers"]} == {mt.DOCKER_LAYER_GZIP}
    config = inspect_config(out)
    weights_config = inspect_config(f"{registry.host}/{repo_name}/weights:v1")
    assert config["history"][-1] == weights_config["history"][-1]
    assert config["rootfs"]["diff_ids"][-1] == weights_config["rootfs"]["diff_ids"][-1]
    assert len(config["rootfs"]["diff_ids"]) == len(raw["layers"])
    layers = [OS_FILES, SRC_FILES, new] if replace else [OS_FILES, SRC_FILES, old, new]
    assert unpack(out, tmp_path) == expected(*layers)


def test_copy_src_fallback(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    base_layers, base_files = cog_image(None)
    push(f"{registry.host}/{repo_name}/base:v1", layers=base_layers)
    src_with_weights = {**SRC_FILES, **weights_files()}
    push(
        f"{registry.host}/{repo_name}/old:v1",
        layers=[(tar_of(src_with_weights), "COPY . /src", None)],
    )
    proc = run_cli(
        "remix",
        "--base",
        f"{registry.host}/{repo_name}/base:v1",
        "--weights",
        f"{registry.host}/{repo_name}/old:v1",
        "--dest",
        f"{registry.host}/{repo_name}/out:v1",
    )
    pushed(proc)
    assert "COPY . /src" in proc.stderr.decode()
    tree = unpack(f"{registry.host}/{repo_name}/out:v1", tmp_path)
    assert tree == expected(*base_files, src_with_weights)


def test_no_weights_pushes_nothing(registry: RegistryServer, repo_name: str) -> None:
    push(f"{registry.host}/{repo_name}/base:v1", layers=cog_image(None)[0])
    push(f"{registry.host}/{repo_name}/plain:v1", layers=[(tar_of(OS_FILES), "ADD os /", None)])
    proc = run_cli(
        "remix",
        "--base",
        f"{registry.host}/{repo_name}/base:v1",
        "--weights",
        f"{registry.host}/{repo_name}/plain:v1",
        "--dest",
        f"{registry.host}/{repo_name}/out:v1",
    )
    assert proc.returncode == 1
    assert "no weights layer" in proc.stderr.decode()
    assert tag_digest(f"{registry.host}/{repo_name}/out:v1") is None
