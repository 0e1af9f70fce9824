"""``r8imfs affix`` end to end: read back by skopeo and umoci, bytes counted by a proxy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import push, push_index
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


def _new_weights(tmp_path: Path) -> tuple[Path, dict[str, bytes | str | None]]:
    files = weights_files("new.bin", 200 * KiB)
    path = tmp_path / "weights.tar"
    path.write_bytes(tar_of(files))
    return path, files


@pytest.mark.parametrize("manifest_type", [mt.DOCKER_MANIFEST, mt.OCI_MANIFEST])
def test_affix_appends_one_layer_and_moves_no_base_bytes(
    registry: RegistryServer,
    proxy: CountingProxy,
    repo_name: str,
    tmp_path: Path,
    manifest_type: str,
) -> None:
    layers, files = cog_image(weights_files())
    push(f"{registry.host}/{repo_name}/base:v1", manifest_type=manifest_type, layers=layers)
    before = inspect_raw(f"{registry.host}/{repo_name}/base:v1")
    tar, new_files = _new_weights(tmp_path)
    proxy.reset()

    line = pushed(
        run_cli(
            "affix",
            "--base",
            f"{proxy.host}/{repo_name}/base:v1",
            "--dest",
            f"{proxy.host}/{repo_name}/out:v2",
            "--tar",
            str(tar),
        )
    )

    out = f"{registry.host}/{repo_name}/out:v2"
    raw = inspect_raw(out)
    assert line == f"{proxy.host}/{repo_name}/out@{tag_digest(out)}"
    assert raw["mediaType"] == manifest_type
    assert raw["layers"][:-1] == before["layers"]
    new_layer = raw["layers"][-1]
    assert new_layer["mediaType"] == mutate.layer_type_for(manifest_type, "gzip")
    # base layers were mounted: none downloaded, only the new layer uploaded
    base_digests = {x["digest"] for x in before["layers"]}
    assert not base_digests & set(proxy.blob_downloads())
    assert proxy.downloaded <= 64 * KiB
    assert proxy.uploaded <= 1.01 * new_layer["size"] + 64 * KiB
    config = inspect_config(out)
    diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    assert config["rootfs"]["diff_ids"][-1] == diff_id
    assert config["history"][-1]["created_by"].endswith(" # weights")
    assert config["history"][-1]["comment"] == "weights"
    assert unpack(out, tmp_path) == expected(*files, new_files)


def test_created_by_and_comment_override(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layers, _ = cog_image(None)
    push(f"{registry.host}/{repo_name}:v1", layers=layers)
    tar, _ = _new_weights(tmp_path)
    pushed(
        run_cli(
            "-q",
            "affix",
            "--base",
            f"{registry.host}/{repo_name}:v1",
            "--dest",
            f"{registry.host}/{repo_name}:v2",
            "--tar",
            str(tar),
            "--created-by",
            "COPY lora /src/weights # weights",
            "--comment",
            "lora",
        )
    )
    history = inspect_config(f"{registry.host}/{repo_name}:v2")["history"][-1]
    assert history["created_by"] == "COPY lora /src/weights # weights"
    assert history["comment"] == "lora"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"src/predict.py": b"broken\n"}, "src/predict.py"),
        ({"src/weights/../../etc/passwd": b"x"}, "'..'"),
        ({"src/weights/link": "../../../../etc", "src/weights/link/passwd": b"x"}, "climbs out"),
    ],
)
def test_refused_tar_pushes_nothing(
    registry: RegistryServer,
    proxy: CountingProxy,
    repo_name: str,
    tmp_path: Path,
    files: dict[str, bytes | str | None],
    message: str,
) -> None:
    layers, _ = cog_image(None)
    push(f"{registry.host}/{repo_name}/base:v1", layers=layers)
    tar = tmp_path / "bad.tar"
    tar.write_bytes(tar_of(files))
    proxy.reset()

    proc = run_cli(
        "affix",
        "--base",
        f"{proxy.host}/{repo_name}/base:v1",
        "--dest",
        f"{proxy.host}/{repo_name}/out:v2",
        "--tar",
        str(tar),
    )

    assert proc.returncode == 1
    assert message in proc.stderr.decode()
    assert proxy.writes() == []
    assert tag_digest(f"{registry.host}/{repo_name}/out:v2") is None


def test_not_a_tar_is_refused(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    push(f"{registry.host}/{repo_name}:v1", layers=cog_image(None)[0])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    proc = run_cli(
        "affix",
        "--base",
        f"{registry.host}/{repo_name}:v1",
        "--dest",
        f"{registry.host}/{repo_name}:v2",
        "--tar",
        str(junk),
    )
    assert proc.returncode == 1
    assert "not a readable tar" in proc.stderr.decode()
    assert tag_digest(f"{registry.host}/{repo_name}:v2") is None


def test_allow_overwrite_replaces_files(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    layers, files = cog_image(None)
    push(f"{registry.host}/{repo_name}:v1", layers=layers)
    patch: dict[str, bytes | str | None] = {"src/predict.py": b"print('patched')\n"}
    tar = tmp_path / "patch.tar"
    tar.write_bytes(tar_of(patch))
    pushed(
        run_cli(
            "affix",
            "--base",
            f"{registry.host}/{repo_name}:v1",
            "--dest",
            f"{registry.host}/{repo_name}:v2",
            "--tar",
            str(tar),
            "--allow-overwrite",
        )
    )
    assert unpack(f"{registry.host}/{repo_name}:v2", tmp_path) == expected(*files, patch)


def test_original_positional_form_writes_a_new_tag(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    source = f"{registry.host}/{repo_name}:v1"
    digest = push(source, layers=cog_image(None)[0])
    tar, _ = _new_weights(tmp_path)

    proc = run_cli("add-layer", source, str(tar))
    line = pushed(proc)

    assert f"{registry.host}/{repo_name}:v1-affixed" in proc.stderr.decode()
    assert line == f"{registry.host}/{repo_name}@{tag_digest(source + '-affixed')}"
    assert tag_digest(source) == digest  # the source tag is untouched

    by_digest = run_cli("add-layer", f"{registry.host}/{repo_name}@{digest}", str(tar))
    pushed(by_digest)
    assert "latest-affixed" in by_digest.stderr.decode()
    assert tag_digest(f"{registry.host}/{repo_name}:latest-affixed") is not None


def test_tar_from_stdin(registry: RegistryServer, repo_name: str, tmp_path: Path) -> None:
    layers, files = cog_image(None)
    push(f"{registry.host}/{repo_name}:v1", layers=layers)
    new_files = weights_files("piped.bin", 10 * KiB)
    data = tar_of(new_files)
    pushed(
        run_cli(
            "affix",
            "--base",
            f"{registry.host}/{repo_name}:v1",
            "--dest",
            f"{registry.host}/{repo_name}:v2",
            "--tar",
            "-",
            stdin=data,
        )
    )
    out = f"{registry.host}/{repo_name}:v2"
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    assert inspect_config(out)["rootfs"]["diff_ids"][-1] == diff_id
    assert unpack(out, tmp_path) == expected(*files, new_files)


def _push_two_platforms(ref: str) -> None:
    layers, _ = cog_image(None)
    amd = push(f"{ref}-amd64", layers=layers)
    arm = push(f"{ref}-arm64", layers=layers, config=mutate.new_config(architecture="arm64"))
    import trio

    trio.run(lambda: push_index(ref, {"linux/amd64": amd, "linux/arm64": arm}))


def test_all_platforms_rewrites_the_index(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    base = f"{registry.host}/{repo_name}:multi"
    _push_two_platforms(base)
    tar, new_files = _new_weights(tmp_path)

    pushed(
        run_cli(
            "affix",
            "--base",
            base,
            "--dest",
            f"{registry.host}/{repo_name}:out",
            "--tar",
            str(tar),
            "--all-platforms",
        )
    )

    out = f"{registry.host}/{repo_name}:out"
    index = inspect_raw(out)
    assert index["mediaType"] == mt.OCI_INDEX
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):
        assert inspect_config(out, arch)["architecture"] == arch
        tree = unpack(out, tmp_path / arch, arch)
        assert tree == expected(OS_FILES, SRC_FILES, new_files)


def test_platform_picks_one_image_of_an_index(
    registry: RegistryServer, repo_name: str, tmp_path: Path
) -> None:
    base = f"{registry.host}/{repo_name}:multi"
    _push_two_platforms(base)
    tar, _ = _new_weights(tmp_path)
    proc = run_cli(
        "affix",
        "--platform",
        "linux/arm64",
        "--base",
        base,
        "--dest",
        f"{registry.host}/{repo_name}:arm",
        "--tar",
        str(tar),
    )
    pushed(proc)
    assert "--all-platforms" in proc.stderr.decode()
    out = f"{registry.host}/{repo_name}:arm"
    assert inspect_raw(out)["mediaType"] == mt.OCI_MANIFEST
    assert inspect_config(out)["architecture"] == "arm64"
