"""What every area needs: the image, the registry, the repeat count, shared peer runs."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench.common import Run, note, run
from tools.bench.image import BenchImage


@dataclass
class Bench:
    work: Path
    image: BenchImage
    repeat: int
    env: dict[str, str]  # for r8imfs children: a private XDG cache
    _peer: list[tuple[Run, Run]] = field(default_factory=list)
    _curl: list[Run] = field(default_factory=list)

    def scratch(self, name: str) -> Path:
        """A fresh, empty directory under the work dir."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def peer_skopeo_tar(self) -> list[tuple[Run, Run]]:
        """``skopeo copy docker://… dir:…`` then ``tar -xzf`` of the weights layer, N times."""
        while len(self._peer) < self.repeat:
            self._peer.append(self._skopeo_tar_once())
        return self._peer

    def _skopeo_tar_once(self) -> tuple[Run, Run]:
        note("peer: skopeo copy + tar x")
        layout, out = self.scratch("peer-dir"), self.scratch("peer-out")
        copy = run(
            [
                "skopeo",
                "copy",
                "-q",
                "--src-tls-verify=false",
                f"docker://{self.image.ref}",
                f"dir:{layout}",
            ]
        )
        blob = layout / self.image.weights.digest.split(":", 1)[1]
        untar = run(["tar", "-xzf", str(blob), "-C", str(out)])
        size = (out / "src/weights/model.bin").stat().st_size
        if size != self.image.model_bytes:
            raise RuntimeError(f"peer tar x gave a {size}-byte model.bin")
        shutil.rmtree(layout)
        shutil.rmtree(out)
        return copy, untar

    def peer_curl(self) -> list[Run]:
        """``curl -o /dev/null`` of the weights blob, N times."""
        while len(self._curl) < self.repeat:
            note("peer: curl of the weights blob")
            self._curl.append(
                run(["curl", "-sSf", "-o", "/dev/null", self.image.blob_url(self.image.weights)])
            )
        return self._curl


def child_env(work: Path) -> dict[str, str]:
    """The environment for r8imfs children: caches and pid files inside ``work``."""
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(work / "xdg-cache")
    env["DOCKER_CONFIG"] = str(work / "docker-config")
    env.pop("COG_TOKEN", None)
    return env
