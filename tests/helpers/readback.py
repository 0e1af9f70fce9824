"""Reading written images back with other tools: skopeo, umoci, the zstd CLI.

Helpers of the affix/remix/zstd/clone tests. What r8imfs pushed is judged by
independent implementations: skopeo fetches it into an OCI layout, umoci
unpacks the root filesystem, ``zstd -dc`` decodes zstd layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from r8imfs.oci.reference import parse
from r8imfs.registry.client import RegistryClient

Tree = dict[str, bytes | str | None]  # file body, "-> target" for a symlink, None for a dir


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "COG_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "r8imfs", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def pushed(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The ``REPOSITORY@sha256:...`` line a successful command printed last."""
    assert proc.returncode == 0, proc.stderr.decode()
    last = proc.stdout.decode().strip().splitlines()[-1]
    assert "@sha256:" in last, last
    return last


def skopeo(*args: str) -> Any:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def inspect_raw(ref: str) -> Any:
    return skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")


def inspect_config(ref: str, arch: str | None = None) -> Any:
    extra = ["--override-arch", arch] if arch else []
    return skopeo(*extra, "inspect", "--config", "--tls-verify=false", f"docker://{ref}")


def copy_to_layout(
    ref: str, layout: Path, arch: str | None = None, *, regzip: bool = False
) -> Path:
    """skopeo's copy of ``ref``; ``regzip``: layers re-encoded as gzip by skopeo's own codecs."""
    extra = ["--override-arch", arch] if arch else []
    convert = ["--dest-compress", "--dest-compress-format", "gzip"] if regzip else []
    subprocess.run(
        [
            "skopeo",
            *extra,
            "copy",
            "-q",
            *convert,
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:img",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return layout


def unpack(ref: str, work: Path, arch: str | None = None, *, regzip: bool = False) -> Tree:
    """The image's root filesystem as umoci unpacks it.

    This umoci (0.4.7) reads no zstd layers: with ``regzip`` skopeo decodes
    them (its own zstd implementation) and hands umoci gzip.
    """
    work.mkdir(parents=True, exist_ok=True)
    layout = copy_to_layout(ref, work / "layout", arch, regzip=regzip)
    bundle = work / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:img", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tree(bundle / "rootfs")


def tree(root: Path) -> Tree:
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = None
            else:
                out[rel] = path.read_bytes()
    return out


def expected(*layers: dict[str, bytes | str | None]) -> Tree:
    """Layers as given to ``tar_of``, applied in order (no whiteouts), as a Tree."""
    out: Tree = {}
    for files in layers:
        for path, body in files.items():
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                out.setdefault("/".join(parts[:i]), None)
            out["/".join(parts)] = f"-> {body}" if isinstance(body, str) else body
    return out


def layout_blob(layout: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algo / hexdigest


def zstd_decode(path: Path) -> bytes:
    return subprocess.run(
        ["zstd", "-dc", str(path)], check=True, capture_output=True, timeout=120
    ).stdout


def tag_digest(ref: str) -> str | None:
    """The digest a tag points at, or None when there is no such tag."""

    async def head() -> str | None:
        async with RegistryClient() as client:
            return await client.head_manifest(parse(ref))

    return trio.run(head)


# -- small cog-like images whose files the tests know -----------------------------

OS_FILES: dict[str, bytes | str | None] = {
    "etc": None,
    "etc/os-release": b'PRETTY_NAME="r8imfs test"\n',
    "usr": None,
    "usr/bin": None,
    "bin": "usr/bin",
}
SRC_FILES: dict[str, bytes | str | None] = {
    "src": None,
    "src/predict.py": b"print('predict')\n",
    "src/cog.yaml": b"predict: predict.py:Predictor\n",
}


def weights_files(name: str = "model.bin", size: int = 48 * 1024) -> dict[str, bytes | str | None]:
    return {"src/weights": None, f"src/weights/{name}": os.urandom(size)}


def cog_image(
    weights: dict[str, bytes | str | None] | None, *, mark_weights: bool = True
) -> tuple[list[tuple[bytes, str, str | None]], list[dict[str, bytes | str | None]]]:
    """``(layers for push, files per layer)`` of a base OS, COPY . /src and weights."""
    from tools.demoimage import tar_of

    files = [OS_FILES, SRC_FILES] + ([weights] if weights else [])
    steps: list[tuple[str, str | None]] = [
        ("/bin/sh -c #(nop) ADD file:os in / ", None),
        ("COPY . /src # buildkit", "cog"),
    ]
    if weights:
        steps.append(
            ("COPY ./weights /src/weights # weights", "weights")
            if mark_weights
            else ("RUN fetch-weights", None)
        )
    layers = [(tar_of(f), by, comment) for f, (by, comment) in zip(files, steps, strict=True)]
    return layers, files
