"""Manifests, indexes and image configs as immutable values.

Parsing keeps the raw bytes: a manifest's identity is the digest of exactly
those bytes (image-spec descriptor.md), so whatever we mount or re-push
is the registry's bytes, never a re-serialisation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from r8imfs.errors import PlatformNotFound, UnsupportedMediaType
from r8imfs.oci import mediatypes as mt
from r8imfs.oci.digest import sha256

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        from r8imfs.errors import UsageError

        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> Platform | None:
        if not obj:
            return None
        return cls(obj.get("os", ""), obj.get("architecture", ""), obj.get("variant") or None)

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or other.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        """A descriptor from JSON; ValueError if its digest or size cannot be right.

        The digest goes into registry URLs and cache paths, so anything but
        ``algorithm:hex`` (say ``../../x``) is refused here, where it enters.
        """
        digest, size = obj["digest"], obj["size"]
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ValueError(f"invalid digest {str(digest)[:80]!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"invalid size {str(size)[:40]!r} of {digest}")
        return cls(
            media_type=obj.get("mediaType", ""),
            digest=digest,
            size=size,
            platform=Platform.from_json(obj.get("platform")),
            annotations=obj.get("annotations") or None,
            urls=tuple(obj.get("urls") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            p: dict[str, str] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                p["variant"] = self.platform.variant
            out["platform"] = p
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2)."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    data: dict[str, Any] = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256(self.raw)


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]
    data: dict[str, Any] = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256(self.raw)

    def select(self, platform: Platform) -> Descriptor:
        # A v2 SOCI index is listed with the platform of the image it indexes
        # (soci convert lists it after the image; not everyone need): never it.
        for d in self.manifests:
            if (d.annotations or {}).get(_SOCI_FOR) is not None:
                continue
            if d.platform and platform.matches(d.platform):
                return d
        available = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise PlatformNotFound(
            f"no manifest for platform {platform} in this index",
            hint=f"available: {available}; choose one with --platform",
        )


#: ``oci.soci.MANIFEST_DIGEST`` (``soci`` imports this module)
_SOCI_FOR = "com.amazon.soci.image-manifest-digest"


def load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsupportedMediaType(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise UnsupportedMediaType(f"{what} is not a JSON object")
    return obj


def parse(raw: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse manifest bytes; the ``mediaType`` field wins over the HTTP header."""
    obj = load_json(raw, "manifest")
    media_type = obj.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    try:
        if media_type in mt.INDEXES:
            manifests = tuple(Descriptor.from_json(m) for m in obj.get("manifests", []))
            return Index(raw, media_type, manifests, obj)
        if media_type in mt.MANIFESTS:
            layers = tuple(Descriptor.from_json(layer) for layer in obj.get("layers", []))
            return Manifest(raw, media_type, Descriptor.from_json(obj["config"]), layers, obj)
    except KeyError as exc:
        raise UnsupportedMediaType(f"malformed {media_type} manifest: missing {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise UnsupportedMediaType(f"malformed {media_type} manifest: {exc}") from exc
    raise UnsupportedMediaType(
        f"unsupported manifest media type {media_type!r}",
        hint="r8imfs reads OCI and Docker v2 schema 2 manifests and indexes",
    )


def dumps(obj: dict[str, Any]) -> bytes:
    """Canonical-enough JSON for manifests and configs we write."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
