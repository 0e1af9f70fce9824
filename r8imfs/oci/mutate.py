"""Image mutation as pure transforms on config and manifest JSON.

Nothing here talks to a registry: commands fetch, call these, then push.
Each function returns new objects and leaves its inputs alone.
"""

from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import dataclass
from typing import Any

from r8imfs.oci import mediatypes as mt
from r8imfs.oci.digest import sha256
from r8imfs.oci.manifest import Descriptor, dumps


@dataclass(frozen=True, slots=True)
class NewLayer:
    descriptor: Descriptor
    diff_id: str
    created_by: str
    comment: str | None = None


def now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append_layers(config: dict[str, Any], layers: list[NewLayer]) -> dict[str, Any]:
    """Config with ``rootfs.diff_ids`` and ``history`` extended."""
    out = copy.deepcopy(config)
    rootfs = out.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    rootfs.setdefault("diff_ids", [])
    history = out.setdefault("history", [])
    for layer in layers:
        rootfs["diff_ids"].append(layer.diff_id)
        entry: dict[str, Any] = {"created": now(), "created_by": layer.created_by}
        if layer.comment:
            entry["comment"] = layer.comment
        history.append(entry)
    out["created"] = now()
    return out


def append_history(
    config: dict[str, Any], layers: list[tuple[str, dict[str, Any] | None]]
) -> dict[str, Any]:
    """Config with layers ``(diff_id, history entry)`` taken from another image.

    Their history entries are kept as they were (``created``, ``created_by``,
    ``comment``), so the weights layer still reads as weights; a missing
    entry gets a bare one, since history pairs positionally with layers.
    """
    out = copy.deepcopy(config)
    rootfs = out.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("diff_ids", [])
    history = out.setdefault("history", [])
    for diff_id, entry in layers:
        rootfs["diff_ids"].append(diff_id)
        kept = {k: v for k, v in (entry or {"created": now()}).items() if k != "empty_layer"}
        history.append(kept)
    out["created"] = now()
    return out


def drop_layers(config: dict[str, Any], indices: set[int]) -> dict[str, Any]:
    """Config without the layers at ``indices``: their diff_ids and history entries.

    History pairs with layers by counting the entries without ``empty_layer``
    (image-spec config.md); empty-layer entries are kept.
    """
    out = copy.deepcopy(config)
    rootfs = out.get("rootfs") or {}
    diff_ids = list(rootfs.get("diff_ids") or [])
    rootfs["diff_ids"] = [d for i, d in enumerate(diff_ids) if i not in indices]
    kept: list[dict[str, Any]] = []
    layer = 0
    for entry in out.get("history") or []:
        if entry.get("empty_layer"):
            kept.append(entry)
            continue
        if layer not in indices:
            kept.append(entry)
        layer += 1
    if "history" in out:
        out["history"] = kept
    return out


def set_label(config: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(config)
    cfg = out.setdefault("config", {})
    labels = cfg.get("Labels") or {}
    labels[key] = value
    cfg["Labels"] = labels
    return out


def layer_type_for(manifest_type: str, compression: str) -> str:
    """The layer media type that fits a manifest flavour (zstd needs OCI)."""
    return mt.new_layer_type(compression, docker=mt.is_docker(manifest_type))


def convert_layer_type(media_type: str, manifest_type: str) -> str:
    """A layer's media type in the flavour of ``manifest_type`` (same bytes).

    zstd has no Docker type: callers must make such manifests OCI first.
    Types we do not know are returned unchanged.
    """
    compression = mt.layer_compression(media_type)
    if compression is None:
        return media_type
    if media_type in (mt.OCI_LAYER_NONDIST_GZIP, mt.DOCKER_LAYER_FOREIGN_GZIP):
        docker = mt.is_docker(manifest_type)
        return mt.DOCKER_LAYER_FOREIGN_GZIP if docker else mt.OCI_LAYER_NONDIST_GZIP
    if media_type in mt.ZSTD_LAYERS:
        return media_type
    return layer_type_for(manifest_type, compression)


def build_manifest(
    media_type: str,
    config: Descriptor,
    layers: list[Descriptor],
    annotations: dict[str, str] | None = None,
) -> bytes:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    if annotations:
        obj["annotations"] = annotations
    return dumps(obj)


def config_descriptor(manifest_type: str, raw: bytes) -> Descriptor:
    kind = mt.DOCKER_CONFIG if mt.is_docker(manifest_type) else mt.OCI_CONFIG
    return Descriptor(kind, sha256(raw), len(raw))


def to_oci(manifest_type: str) -> str:
    return mt.OCI_MANIFEST if manifest_type in mt.MANIFESTS else mt.OCI_INDEX


def build_index(
    media_type: str, manifests: list[Descriptor], annotations: dict[str, str] | None = None
) -> bytes:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [d.to_json() for d in manifests],
    }
    if annotations:
        obj["annotations"] = annotations
    return dumps(obj)


def new_config(os: str = "linux", architecture: str = "amd64") -> dict[str, Any]:
    return {
        "architecture": architecture,
        "os": os,
        "created": now(),
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
