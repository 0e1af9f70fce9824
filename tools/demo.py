"""`make demo`: a local registry on loopback, a cog-like image, and r8imfs on it.

Everything runs against the embedded default: Debian's docker-registry on a
free 127.0.0.1 port with its data under .cache/demo/ (removed afterwards).
Each step prints the command it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from r8imfs.oci import mediatypes as mt  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from r8imfs.registry.push import push_simple_image  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tools.demoimage import demo_layers, tar_of  # noqa: E402

R8IMFS = [sys.executable, "-m", "r8imfs"]


def step(title: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    print(f"\n== {title}\n$ r8imfs {shlex.join(args)}", flush=True)
    return subprocess.run([*R8IMFS, *args], check=check)


async def push_demo(host: str) -> str:
    async with RegistryClient() as client:
        ref = parse(f"{host}/demo/cog-model:v1")
        digest = await push_simple_image(
            client, ref, demo_layers(), manifest_type=mt.OCI_MANIFEST, compression="gzip"
        )
    return f"{ref}@{digest}"


def last_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode().strip().splitlines()[-1]


def affix_and_recompress(host: str, image: str, work: Path) -> None:
    """affix new weights onto the demo image, then recompress the result with zstd."""
    weights = work / "new-weights.tar"
    weights.write_bytes(
        tar_of({"src/weights": None, "src/weights/lora.bin": b"\x00\x01" * 256 * 1024})
    )
    print(f"\n(a new weights tar: {weights.name}, files under src/weights/ only)")
    dest = f"{host}/demo/cog-model:v2"
    affixed = capture(
        "add a layer without pulling the base",
        "affix",
        "--base",
        image,
        "--dest",
        dest,
        "--tar",
        str(weights),
    )
    step("the new image: the base's layers, then the new weights", "layers", affixed)
    bad = work / "bad.tar"
    bad.write_bytes(tar_of({"src/predict.py": b"oops\n"}))
    step(
        "a tar that would replace predict.py is refused, nothing pushed",
        "affix",
        "--base",
        image,
        "--dest",
        f"{host}/demo/cog-model:bad",
        "--tar",
        str(bad),
        check=False,
    )
    zstd = capture("recompress every layer as seekable zstd (tag v2-zstd)", "zstd", dest)
    step("same diff_ids, OCI media types, tar+zstd layers", "layers", zstd)


def extract_and_mount(image: str, work: Path) -> None:
    """Weights out two ways: extract (a tar), and a lazy mount plus plain cp."""
    step(
        "pull the weights out as a tar (only the weights layer is read)",
        "extract",
        image,
        "-o",
        str(work / "weights.tar"),
    )
    mnt = work / "mnt"
    mnt.mkdir()
    step(
        "mount the image: metadata now, file bodies on demand",
        "mount",
        image,
        str(mnt),
        "--cache-dir",
        str(work / "cache"),
    )
    try:
        shell(f"ls {mnt} {mnt}/layers")
        shell(f"ls -l {mnt}/rootfs/src {mnt}/rootfs/src/weights")
        shell(f"head -4 {mnt}/rootfs/src/predict.py")
        shell(f"cp -r {mnt}/rootfs/src/weights {work}/weights-copy && ls -l {work}/weights-copy")
    finally:
        step("unmount and wait for the daemon to exit", "umount", str(mnt))


def shell(command: str) -> None:
    print(f"$ {command}", flush=True)
    subprocess.run(command, shell=True, check=True)


def capture(title: str, *args: str) -> str:
    print(f"\n== {title}\n$ r8imfs {shlex.join(args)}", flush=True)
    proc = subprocess.run([*R8IMFS, *args], check=True, stdout=subprocess.PIPE)
    sys.stdout.write(proc.stdout.decode())
    return last_line(proc)


def main() -> int:
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=cache))
    registry = start_registry(work / "registry", "open")
    try:
        print(f"local registry (Debian's docker-registry) on {registry.host}")
        image = trio.run(push_demo, registry.host)
        print(f"pushed a cog-like demo image: {image}")
        step("what is in the image: one row per layer", "layers", image)
        step("the same as JSON", "layers", "--json", image)
        extract_and_mount(image, work)
        affix_and_recompress(registry.host, image, work)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\ndemo done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
