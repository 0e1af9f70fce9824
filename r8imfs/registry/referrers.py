"""Find the SOCI index of an image manifest on a registry, the snapshotter's way.

Order (soci-snapshotter ``fs/fs.go`` ``findSociIndexDesc``):

1. **v2**: the manifest's ``com.amazon.soci.index-digest`` annotation names
   the SOCI index; it is fetched by digest (so its bytes are verified).
2. **v1**: the referrers API (distribution-spec v1.1 "Listing Referrers",
   ``GET /v2/<name>/referrers/<digest>?artifactType=…v1+json``); a registry
   without it (404, as distribution 2.8) falls back to the tag schema: the
   image index tagged ``sha256-<hex>``. The index found must name the manifest
   as its ``subject``: v1 is only weakly tied to the image, so we check.

Nothing found is ``None``; a registry error on the way is raised (the caller
decides whether to fall back to local indexing).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from r8imfs.errors import ManifestUnknown, RegistryError
from r8imfs.oci import mediatypes as mt
from r8imfs.oci import soci
from r8imfs.oci.manifest import Index, Manifest
from r8imfs.oci.reference import Reference, Repository
from r8imfs.registry.client import MAX_MANIFEST, RegistryClient

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: Statuses that mean "no referrers API here", not an error.
_NO_API = (400, 404, 405, 501)


@dataclass(frozen=True, slots=True)
class FoundIndex:
    """A SOCI index for an image manifest: its version, how it was found, its zTOCs."""

    version: int
    how: str  # "annotation", "referrers-api" or "referrers-tag"
    index: Manifest

    @property
    def ztocs(self) -> dict[str, soci.ZtocRef]:
        return soci.ztoc_refs(self.index)


async def find_soci_index(
    client: RegistryClient, repo: Repository, manifest: Manifest, *, v1: bool = True
) -> FoundIndex | None:
    """The SOCI index for ``manifest`` in ``repo``: v2 first, then (with ``v1``) v1."""
    digest = soci.index_digest_annotation(manifest)
    if digest is not None:
        index = await _fetch_index(client, repo, digest)
        if soci.index_version(index) != 2:
            raise RegistryError(f"{digest} named by {soci.INDEX_DIGEST} is not a SOCI v2 index")
        return FoundIndex(2, "annotation", index)
    if not v1:
        return None
    return await find_v1_index(client, repo, manifest.digest)


async def find_v1_index(
    client: RegistryClient, repo: Repository, manifest_digest: str
) -> FoundIndex | None:
    """A v1 SOCI index whose subject is ``manifest_digest``, or None."""
    listed = await referrers_api(client, repo, manifest_digest, soci.SOCI_INDEX_V1)
    how = "referrers-api"
    if listed is None:
        listed = await referrers_tag(client, repo, manifest_digest)
        how = "referrers-tag"
    chosen = soci.pick_v1_referrer(listed or [])
    if chosen is None:
        return None
    index = await _fetch_index(client, repo, str(chosen.get("digest")))
    subject = index.data.get("subject")
    if soci.index_version(index) != 1 or not isinstance(subject, dict):
        raise RegistryError(f"referrer {chosen.get('digest')} is not a SOCI v1 index")
    if subject.get("digest") != manifest_digest:
        raise RegistryError(
            f"SOCI index {chosen.get('digest')} is listed for {manifest_digest} "
            f"but its subject is {subject.get('digest')}"
        )
    return FoundIndex(1, how, index)


async def referrers_api(
    client: RegistryClient, repo: Repository, digest: str, artifact_type: str | None = None
) -> list[dict[str, Any]] | None:
    """Referrer descriptors from the referrers API; None when the registry has no such API."""
    response = await client.request(
        "GET",
        repo,
        f"/v2/{repo.name}/referrers/{digest}",
        what=f"referrers of {digest}",
        headers={"Accept": mt.OCI_INDEX},
        params={"artifactType": artifact_type} if artifact_type else None,
        extra_ok=_NO_API,
    )
    if response.status_code != 200:
        return None
    if len(response.content) > MAX_MANIFEST:
        raise RegistryError(f"referrers list of {digest} is larger than {MAX_MANIFEST} bytes")
    try:
        obj = json.loads(response.content)
    except ValueError:
        return None  # not the API (a catch-all front answering 200 with HTML)
    listed = obj.get("manifests") if isinstance(obj, dict) else None
    return [d for d in listed if isinstance(d, dict)] if isinstance(listed, list) else None


async def referrers_tag(
    client: RegistryClient, repo: Repository, digest: str
) -> list[dict[str, Any]]:
    """Referrer descriptors from the tag-schema fallback index (none if no such tag)."""
    ref = Reference(repo, soci.fallback_tag(digest), None)
    try:
        found = await client.get_manifest(ref)
    except ManifestUnknown:
        return []
    if not isinstance(found, Index):
        return []
    listed = found.data.get("manifests") or []
    return [d for d in listed if isinstance(d, dict)]


async def _fetch_index(client: RegistryClient, repo: Repository, digest: str) -> Manifest:
    if not _DIGEST.fullmatch(digest):  # it goes into a URL: only algorithm:hex
        raise RegistryError(f"SOCI index digest {digest[:80]!r} is not sha256:<hex>")
    found = await client.get_manifest(Reference(repo, None, digest), accept=(mt.OCI_MANIFEST,))
    if not isinstance(found, Manifest):
        raise RegistryError(f"SOCI index {digest} is not an image manifest")
    return found


async def fetch_ztoc(client: RegistryClient, repo: Repository, ref: soci.ZtocRef) -> bytes:
    """A zTOC's bytes, checked against its digest and size (the SOCI index's word)."""
    if not _DIGEST.fullmatch(ref.digest):
        raise RegistryError(f"zTOC digest {ref.digest[:80]!r} is not sha256:<hex>")
    if not 0 < ref.size <= soci.MAX_ZTOC:
        raise RegistryError(f"zTOC {ref.digest} claims {ref.size} bytes")
    data = await client.get_blob(repo, ref.digest, ref.size)
    if len(data) != ref.size:
        raise RegistryError(f"zTOC {ref.digest} is {len(data)} bytes, its index says {ref.size}")
    return data
