"""``r8imfs clone`` end to end: mounts within a registry, a copy across registries."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from tests.helpers.counting_proxy import CountingProxy
from tests.helpers.images import push, push_index
from tests.helpers.readback import (
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

KiB = 1024


def test_clone_mounts_layers_and_labels(
    registry: RegistryServer, proxy: CountingProxy, repo_name: str, tmp_path: Path
) -> None:
    layers, files = cog_image(weights_files())
    push(f"{registry.host}/{repo_name}/a:v1", manifest_type=mt.DOCKER_MANIFEST, layers=layers)
    before = inspect_raw(f"{registry.host}/{repo_name}/a:v1")
    proxy.reset()

    line = pushed(
        run_cli(
            "clone",
            "--base",
            f"{proxy.host}/{repo_name}/a:v1",
            "--dest",
            f"{proxy.host}/{repo_name}/b:v1",
        )
    )

    out = f"{registry.host}/{repo_name}/b:v1"
    assert line == f"{proxy.host}/{repo_name}/b@{tag_digest(out)}"
    raw = inspect_raw(out)
    assert raw["mediaType"] == mt.DOCKER_MANIFEST
    assert raw["layers"] == before["layers"]
    assert inspect_config(out)["config"]["Labels"] == {"cloned": "true"}
    assert not set(proxy.blob_downloads()) & {x["digest"] for x in before["layers"]}
    assert proxy.uploaded < 16 * KiB
    assert unpack(out, tmp_path) == expected(*files)


def test_clone_all_platforms(registry: RegistryServer, repo_name: str) -> None:
    layers, _ = cog_image(None)
    base = f"{registry.host}/{repo_name}:multi"
    amd = push(f"{base}-amd64", layers=layers)
    arm = push(f"{base}-arm64", layers=layers, config=mutate.new_config(architecture="arm64"))
    trio.run(lambda: push_index(base, {"linux/amd64": amd, "linux/arm64": arm}))

    pushed(run_cli("clone", "--all-platforms", "--base", base, "--dest", f"{base}-copy"))

    index = inspect_raw(f"{base}-copy")
    assert index["mediaType"] == mt.OCI_INDEX
    for arch in ("amd64", "arm64"):
        config = inspect_config(f"{base}-copy", arch)
        assert (config["architecture"], config["config"]["Labels"]) == (arch, {"cloned": "true"})


def test_clone_across_registries_copies(
    registry: RegistryServer,
    basic_registry: RegistryServer,
    docker_config: Callable[..., Path],
    repo_name: str,
) -> None:
    docker_config(basic_registry)
    push(f"{registry.host}/{repo_name}:v1", layers=cog_image(weights_files())[0])
    proc = run_cli(
        "clone",
        "--base",
        f"{registry.host}/{repo_name}:v1",
        "--dest",
        f"{basic_registry.host}/{repo_name}:v1",
    )
    pushed(proc)
    assert "3 copied" in proc.stderr.decode()
    creds = f"{basic_registry.username}:{basic_registry.password}"
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            creds,
            f"docker://{basic_registry.host}/{repo_name}:v1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    copied = json.loads(out.stdout)["layers"]
    assert copied == inspect_raw(f"{registry.host}/{repo_name}:v1")["layers"]


def test_clone_mounts_across_repositories_with_tokens(
    token_registry: RegistryServer, docker_config: Callable[..., Path], repo_name: str
) -> None:
    """A mount needs pull on the source and push on the destination in one token."""
    docker_config(token_registry)
    creds = f"{token_registry.username}:{token_registry.password}"
    source = f"{token_registry.host}/{repo_name}/a:v1"
    push(source, layers=cog_image(None)[0])
    proc = run_cli("clone", "--base", source, "--dest", f"{token_registry.host}/{repo_name}/b:v1")
    pushed(proc)
    assert "2 mounted" in proc.stderr.decode()
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--config",
            "--tls-verify=false",
            "--creds",
            creds,
            f"docker://{token_registry.host}/{repo_name}/b:v1",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout)["config"]["Labels"] == {"cloned": "true"}
