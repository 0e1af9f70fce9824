"""SOCI indexes as manifests: building them and finding them, pure.

Facts from awslabs/soci-snapshotter (``soci/soci_index.go``, ``soci/soci_convert.go``,
``fs/fs.go``, ``docs/soci-index-manifest-v2.md``):

* A SOCI index is an OCI image manifest whose ``config`` is the empty JSON
  ``{}`` with mediaType ``application/vnd.amazon.soci.index.v{1,2}+json`` (the
  index's type lives there; the JSON has no top-level ``artifactType``). Its
  ``layers`` are the zTOCs, ``application/octet-stream``, in the image's layer
  order, each annotated with the layer digest, media type and span size.
* **v2** (what ``soci convert`` writes, and what the snapshotter reads by
  default): no ``subject``. Each indexed image manifest gets the annotation
  ``com.amazon.soci.index-digest``, which changes its digest, and the SOCI
  index goes into an OCI image index beside it, as a descriptor with
  ``artifactType`` v2, the platform and ``com.amazon.soci.image-manifest-digest``.
  soci convert also turns a Docker manifest into an OCI one (media types of
  the manifest and its config descriptor), leaving Docker layer types in an
  OCI manifest, which umoci and other strict readers refuse; we give the
  layers their OCI types too (same bytes), and the zTOC annotations say so.
* **v1**: ``subject`` names the image manifest; found through the referrers
  API (or its tag-schema fallback), never by annotation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from r8imfs.oci import mediatypes as mt
from r8imfs.oci.digest import sha256
from r8imfs.oci.manifest import Descriptor, Manifest, Platform, dumps
from r8imfs.oci.mutate import convert_layer_type

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"

LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
SPAN_SIZE = "com.amazon.soci.span-size"
BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
DISABLE_XATTRS = "com.amazon.soci.disable-xattrs"
MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"
INDEX_DIGEST = "com.amazon.soci.index-digest"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
#: Largest zTOC fetched or parsed (a 20 GB layer's checkpoints are ~160 MiB).
MAX_ZTOC = 1 << 30
#: What ``soci create`` skips by default; r8imfs indexes every layer unless told.
SOCI_MIN_LAYER_SIZE = 10 << 20


def ztoc_descriptor(digest: str, size: int, layer: Descriptor, span_size: int) -> dict[str, Any]:
    """The SOCI index's entry for one layer's zTOC."""
    return {
        "mediaType": ZTOC_MEDIA_TYPE,
        "digest": digest,
        "size": size,
        "annotations": {
            LAYER_MEDIA_TYPE: oci_layer_type(layer.media_type),
            LAYER_DIGEST: layer.digest,
            SPAN_SIZE: str(span_size),
        },
    }


def soci_index(
    ztocs: list[dict[str, Any]],
    build_tool: str,
    *,
    subject: Descriptor | None = None,
) -> bytes:
    """A SOCI index manifest's bytes: v1 with ``subject``, else v2."""
    config_type = SOCI_INDEX_V1 if subject is not None else SOCI_INDEX_V2
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": EMPTY_JSON_DIGEST, "size": 2},
        "layers": ztocs,
    }
    if subject is not None:
        obj["subject"] = {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        }
    obj["annotations"] = {BUILD_TOOL: build_tool}
    return dumps(obj)


def oci_layer_type(media_type: str) -> str:
    """A layer's media type in an OCI manifest (Docker gzip/tar types mapped, same bytes)."""
    return convert_layer_type(media_type, mt.OCI_MANIFEST)


def annotate_manifest(manifest: Manifest, index_digest: str) -> bytes:
    """The image manifest as soci convert rewrites it: OCI, pointing at its index.

    Only the manifest changes; config and layers are the same blobs (layer
    descriptors keep every field but get OCI media types).
    """
    obj = json.loads(manifest.raw)
    obj["mediaType"] = mt.OCI_MANIFEST
    config = dict(obj["config"])
    if config.get("mediaType") == mt.DOCKER_CONFIG:
        config["mediaType"] = mt.OCI_CONFIG
    obj["config"] = config
    obj["layers"] = [
        {**layer, "mediaType": oci_layer_type(str(layer.get("mediaType", "")))}
        for layer in obj.get("layers") or []
    ]
    obj["annotations"] = {**(obj.get("annotations") or {}), INDEX_DIGEST: index_digest}
    return dumps(obj)


def _platform_json(p: Platform | None) -> dict[str, str] | None:
    if p is None:
        return None
    out = {"architecture": p.architecture, "os": p.os}
    if p.variant:
        out["variant"] = p.variant
    return out


def manifest_entry(
    raw: bytes, platform: Platform | None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """An image index entry for an (annotated, so OCI) image manifest."""
    entry: dict[str, Any] = {"mediaType": mt.OCI_MANIFEST, "digest": sha256(raw), "size": len(raw)}
    if (p := _platform_json(platform)) is not None:
        entry["platform"] = p
    if annotations:
        entry["annotations"] = dict(annotations)
    return entry


def soci_index_entry(
    index_raw: bytes, manifest_raw: bytes, platform: Platform | None
) -> dict[str, Any]:
    """The image index entry of a v2 SOCI index, tied to the manifest it indexes."""
    entry: dict[str, Any] = {
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": SOCI_INDEX_V2,
        "digest": sha256(index_raw),
        "size": len(index_raw),
        "annotations": {MANIFEST_DIGEST: sha256(manifest_raw)},
    }
    if (p := _platform_json(platform)) is not None:
        entry["platform"] = p
    return entry


def image_index(
    manifests: list[dict[str, Any]], annotations: dict[str, str] | None = None
) -> bytes:
    """The OCI image index that publishes v2 SOCI indexes beside their images
    (soci convert appends the SOCI index entries after the images)."""
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    if annotations:
        obj["annotations"] = dict(annotations)
    return dumps(obj)


# -- reading --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZtocRef:
    """A zTOC listed by a SOCI index, for one image layer."""

    digest: str
    size: int
    layer_digest: str
    layer_media_type: str | None
    span_size: int | None


def index_version(index: Manifest) -> int | None:
    """1 or 2 for a SOCI index manifest, None for anything else."""
    return {SOCI_INDEX_V1: 1, SOCI_INDEX_V2: 2}.get(index.config.media_type)


def ztoc_refs(index: Manifest) -> dict[str, ZtocRef]:
    """The zTOCs of a SOCI index by image-layer digest (prefetch blobs skipped)."""
    out: dict[str, ZtocRef] = {}
    for d in index.layers:
        ann = d.annotations or {}
        layer = ann.get(LAYER_DIGEST)
        if d.media_type != ZTOC_MEDIA_TYPE or not isinstance(layer, str):
            continue
        span = ann.get(SPAN_SIZE)
        out.setdefault(
            layer,
            ZtocRef(
                d.digest,
                d.size,
                layer,
                ann.get(LAYER_MEDIA_TYPE),
                int(span) if isinstance(span, str) and span.isdigit() else None,
            ),
        )
    return out


def index_digest_annotation(manifest: Manifest) -> str | None:
    """The v2 pointer from an image manifest to its SOCI index, if any."""
    ann = manifest.data.get("annotations")
    value = ann.get(INDEX_DIGEST) if isinstance(ann, dict) else None
    return value if isinstance(value, str) else None


def pick_v1_referrer(referrers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A v1 SOCI index among referrer descriptors (the snapshotter's choice is
    undefined too; we take the first listed)."""
    for d in referrers:
        if d.get("artifactType") == SOCI_INDEX_V1:
            return d
    return None


def fallback_tag(digest: str) -> str:
    """The referrers tag-schema fallback tag of a manifest: ``sha256-<hex>``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"
