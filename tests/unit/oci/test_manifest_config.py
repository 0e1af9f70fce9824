from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from r8imfs.errors import PlatformNotFound, UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.config import ImageConfig, pair_layers, weights_candidates
from r8imfs.oci.digest import sha256
from r8imfs.oci.manifest import Index, Manifest, Platform, parse


def _desc(n: int, media_type: str = mt.OCI_LAYER_GZIP) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + f"{n:064x}", "size": 100 + n}


def _manifest(layers: int, media_type: str = mt.OCI_MANIFEST) -> Manifest:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": _desc(99, mt.OCI_CONFIG),
            "layers": [_desc(i) for i in range(layers)],
        }
    ).encode()
    m = parse(raw)
    assert isinstance(m, Manifest)
    return m


def test_manifest_keeps_raw_bytes_and_digest() -> None:
    m = _manifest(2)
    assert m.digest == sha256(m.raw)
    assert [d.size for d in m.layers] == [100, 101]


def test_media_type_from_header_when_body_lacks_it() -> None:
    raw = json.dumps({"schemaVersion": 2, "config": _desc(1), "layers": []}).encode()
    assert parse(raw, mt.DOCKER_MANIFEST + "; charset=utf-8").media_type == mt.DOCKER_MANIFEST


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        json.dumps({"mediaType": "application/vnd.example+json"}).encode(),
        json.dumps({"mediaType": mt.OCI_MANIFEST, "layers": []}).encode(),
        json.dumps(
            {
                "schemaVersion": 1,
                "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
            }
        ).encode(),
    ],
)
def test_bad_manifests(raw: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        parse(raw)


def test_index_platform_selection() -> None:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [
                {
                    **_desc(1, mt.OCI_MANIFEST),
                    "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                },
                {**_desc(2, mt.OCI_MANIFEST), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()
    idx = parse(raw)
    assert isinstance(idx, Index)
    assert idx.select(Platform("linux", "amd64")).size == 102
    assert idx.select(Platform.parse("linux/arm64")).size == 101
    with pytest.raises(PlatformNotFound, match="linux/arm64/v8"):
        idx.select(Platform.parse("windows/amd64"))


def _config(history: Sequence[object], n: int) -> ImageConfig:
    diff_ids = ["sha256:" + f"{i + 500:064x}" for i in range(n)]
    return ImageConfig.parse(
        json.dumps({"rootfs": {"diff_ids": diff_ids}, "history": history}).encode()
    )


def test_history_pairing_skips_empty_layers_and_trims_nop() -> None:
    history = [
        {"created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
        {"created_by": '/bin/sh -c #(nop)  CMD ["bash"]', "empty_layer": True},
        {"created_by": "COPY . /src # buildkit", "comment": "buildkit"},
        {"comment": "no created_by here"},
    ]
    layers = pair_layers(_manifest(4), _config(history, 4))
    assert [x.created_by for x in layers] == [
        "ADD file:abc in / ",
        "COPY . /src # buildkit",
        "",
        "",
    ]
    assert layers[2].comment == "no created_by here"
    assert layers[3].history is None and layers[3].comment == ""
    assert layers[1].diff_id == "sha256:" + f"{501:064x}"


def test_weights_rules() -> None:
    history = [
        {"created_by": "ADD rootfs"},
        {"created_by": "COPY . /src"},
        {"created_by": "COPY weights /src/weights # weights"},
        {"created_by": "appended by crane", "comment": "weights"},
    ]
    layers = pair_layers(_manifest(4), _config(history, 4))
    first, fallback = weights_candidates(layers)
    assert [x.index for x in first] == [2, 3]
    assert [x.index for x in fallback] == [1]


def test_index_selection_skips_a_soci_index_listed_first() -> None:
    """A v2 SOCI index carries its image's platform; selecting a platform never picks it."""
    amd64 = {"architecture": "amd64", "os": "linux"}
    soci_entry = {
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.amazon.soci.index.v2+json",
        "digest": "sha256:" + "1" * 64,
        "size": 10,
        "platform": amd64,
        "annotations": {"com.amazon.soci.image-manifest-digest": "sha256:" + "2" * 64},
    }
    image_entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": "sha256:" + "2" * 64,
        "size": 20,
        "platform": amd64,
    }
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [soci_entry, image_entry]}
    ).encode()
    index = parse(raw)
    assert isinstance(index, Index)
    assert index.select(Platform("linux", "amd64")).digest == image_entry["digest"]
