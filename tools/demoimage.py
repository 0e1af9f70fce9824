"""A small cog-like image, built in code: for `make demo`, tests and benchmarks.

Layers, bottom first:
  0. a tiny "base OS": etc/os-release, a symlink, a directory tree;
  1. ``COPY . /src``: src/predict.py, src/cog.yaml;
  2. the weights: src/weights/*.safetensors-like files, ``created_by`` ending
     in `` # weights`` as cog's managed weights (and r8im) expect.
"""

from __future__ import annotations

import io
import os
import tarfile

PREDICT = b"""from cog import BasePredictor, Input, Path


class Predictor(BasePredictor):
    def setup(self):
        self.weights = open("/src/weights/model.bin", "rb").read()

    def predict(self, prompt: str = Input(description="what to say")) -> str:
        return f"{prompt} ({len(self.weights)} bytes of weights)"
"""

COG_YAML = b"""build:
  python_version: "3.11"
predict: "predict.py:Predictor"
"""

MTIME = 1_700_000_000


def tar_of(files: dict[str, bytes | str | None], *, mode: int = 0o644) -> bytes:
    """A tar from ``{path: bytes}``; a ``str`` value is a symlink target, None a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, body in files.items():
            info = tarfile.TarInfo(path)
            info.mtime = MTIME
            if body is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(body, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, body, 0o777
                tf.addfile(info)
            else:
                info.size, info.mode = len(body), mode
                tf.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def demo_layers(weights_size: int = 3 * 1024 * 1024) -> list[tuple[bytes, str, str | None]]:
    """``(tar, created_by, comment)`` for each layer of the demo image."""
    base = tar_of(
        {
            "etc": None,
            "etc/os-release": b'PRETTY_NAME="r8imfs demo"\n',
            "usr": None,
            "usr/bin": None,
            "bin": "usr/bin",
        }
    )
    src = tar_of({"src": None, "src/predict.py": PREDICT, "src/cog.yaml": COG_YAML})
    rng = os.urandom  # weights are incompressible, like real ones
    weights = tar_of(
        {
            "src/weights": None,
            "src/weights/model.bin": rng(weights_size),
            "src/weights/config.json": b'{"hidden_size": 64}\n',
        }
    )
    return [
        (base, "/bin/sh -c #(nop) ADD file:demo-rootfs in / ", None),
        (src, "COPY . /src # buildkit", "cog"),
        (weights, "COPY ./weights /src/weights # weights", "weights"),
    ]
