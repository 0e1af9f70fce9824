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
sys.path.insert(0, str(REPO / "tests"))

from registry_server import start_registry  # noqa: E402

from r8imfs.oci import mediatypes as mt  # noqa: E402
from r8imfs.oci.reference import parse  # noqa: E402
from r8imfs.registry.client import RegistryClient  # noqa: E402
from r8imfs.registry.push import push_simple_image  # noqa: E402
from tools.demoimage import demo_layers  # noqa: E402

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
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\ndemo done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
