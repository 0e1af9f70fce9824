"""The pure SOCI manifest pieces: what a SOCI index and an annotated manifest hold."""

from __future__ import annotations

import json

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import soci
from r8imfs.oci.digest import sha256
from r8imfs.oci.manifest import Descriptor, Manifest, Platform, parse

LAYER = "sha256:" + "a" * 64
CONFIG = "sha256:" + "c" * 64
ZTOC = "sha256:" + "d" * 64


def _docker_manifest() -> Manifest:
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.DOCKER_CONFIG, "digest": CONFIG, "size": 10},
            "layers": [
                {"mediaType": mt.DOCKER_LAYER_GZIP, "digest": LAYER, "size": 99, "urls": ["u"]}
            ],
        }
    ).encode()
    m = parse(raw)
    assert isinstance(m, Manifest)
    return m


def test_empty_json_digest() -> None:
    assert sha256(soci.EMPTY_JSON) == soci.EMPTY_JSON_DIGEST


def test_annotated_manifest_is_oci_with_the_same_blobs() -> None:
    m = _docker_manifest()
    out = json.loads(soci.annotate_manifest(m, ZTOC))
    assert out["mediaType"] == mt.OCI_MANIFEST
    assert out["config"] == {"mediaType": mt.OCI_CONFIG, "digest": CONFIG, "size": 10}
    assert out["layers"] == [
        {"mediaType": mt.OCI_LAYER_GZIP, "digest": LAYER, "size": 99, "urls": ["u"]}
    ]
    assert out["annotations"] == {soci.INDEX_DIGEST: ZTOC}
    again = parse(soci.annotate_manifest(m, ZTOC))
    assert isinstance(again, Manifest)
    assert soci.index_digest_annotation(again) == ZTOC
    assert soci.index_digest_annotation(m) is None


def test_soci_index_v2_and_v1() -> None:
    layer = Descriptor(mt.DOCKER_LAYER_GZIP, LAYER, 99)
    z = soci.ztoc_descriptor(ZTOC, 1234, layer, 4 << 20)
    assert z["annotations"] == {
        soci.LAYER_MEDIA_TYPE: mt.OCI_LAYER_GZIP,
        soci.LAYER_DIGEST: LAYER,
        soci.SPAN_SIZE: "4194304",
    }
    v2 = parse(soci.soci_index([z], "tool"))
    assert isinstance(v2, Manifest)
    assert soci.index_version(v2) == 2 and "subject" not in v2.data
    assert v2.config.digest == soci.EMPTY_JSON_DIGEST and v2.config.size == 2
    refs = soci.ztoc_refs(v2)
    assert refs[LAYER] == soci.ZtocRef(ZTOC, 1234, LAYER, mt.OCI_LAYER_GZIP, 4 << 20)
    subject = Descriptor(mt.OCI_MANIFEST, CONFIG, 5)
    v1 = parse(soci.soci_index([z], "tool", subject=subject))
    assert isinstance(v1, Manifest)
    assert soci.index_version(v1) == 1
    assert v1.data["subject"] == {"mediaType": mt.OCI_MANIFEST, "digest": CONFIG, "size": 5}


def test_ztoc_refs_skip_prefetch_and_unannotated() -> None:
    raw = soci.soci_index(
        [
            {
                "mediaType": "application/vnd.amazon.soci.prefetch.v1+json",
                "digest": ZTOC,
                "size": 1,
                "annotations": {soci.LAYER_DIGEST: LAYER},
            },
            {"mediaType": soci.ZTOC_MEDIA_TYPE, "digest": ZTOC, "size": 1},
        ],
        "tool",
    )
    index = parse(raw)
    assert isinstance(index, Manifest)
    assert soci.ztoc_refs(index) == {}


def test_image_index_entries() -> None:
    manifest_raw = b'{"x":1}'
    index_raw = b'{"y":2}'
    p = Platform("linux", "arm64", "v8")
    entries = [
        soci.manifest_entry(manifest_raw, p, {"k": "v"}),
        soci.soci_index_entry(index_raw, manifest_raw, p),
    ]
    out = json.loads(soci.image_index(entries))
    assert out["mediaType"] == mt.OCI_INDEX
    first, second = out["manifests"]
    assert first["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert first["annotations"] == {"k": "v"}
    assert second["artifactType"] == soci.SOCI_INDEX_V2
    assert second["annotations"] == {soci.MANIFEST_DIGEST: sha256(manifest_raw)}


def test_referrer_choice_and_fallback_tag() -> None:
    assert soci.fallback_tag("sha256:" + "b" * 64) == "sha256-" + "b" * 64
    listed = [
        {"artifactType": "x", "digest": "1"},
        {"artifactType": soci.SOCI_INDEX_V1, "digest": "2"},
    ]
    assert soci.pick_v1_referrer(listed) == listed[1]
    assert soci.pick_v1_referrer(listed[:1]) is None
