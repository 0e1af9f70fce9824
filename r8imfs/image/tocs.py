"""Finding the TOCs others published for an image's layers (SOCI zTOCs today).

``find_tocs`` looks for the image's SOCI index the snapshotter's way
(``registry.referrers.find_soci_index``: v2 through the manifest annotation,
then v1 through the referrers API or its tag fallback) and fetches the zTOC
of every layer it lists, each checked against its digest and size. Nothing
here is fatal: a registry error, a missing zTOC or one of the wrong size is
one log line, and that layer (or the image) is indexed locally, as if there
were no index. Whether a zTOC matches its layer is the engine's to judge
(``engine.codecs.layerformat``), when the layer is opened.

The zTOCs are fetched on every mount rather than kept in the index cache:
each is small (about 0.8% of its layer, mostly 32 KiB checkpoint windows),
fetched by digest so it needs no revalidation, and decoding it takes
milliseconds; caching it would mean keying the index cache by (layer, zTOC)
and storing the windows twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import trio

from r8imfs.engine.codecs.layerformat import SOCI_ZTOC, Toc
from r8imfs.engine.codecs.toc import toc_kind
from r8imfs.errors import BadToc, R8imfsError
from r8imfs.oci.digest import short
from r8imfs.oci.manifest import Manifest
from r8imfs.oci.reference import Repository
from r8imfs.registry.client import RegistryClient
from r8imfs.registry.referrers import FoundIndex, fetch_ztoc, find_soci_index

log = logging.getLogger("r8imfs.image")
#: zTOCs fetched at once
PARALLEL = 4


async def soci_index(
    client: RegistryClient, repo: Repository, manifest: Manifest
) -> FoundIndex | None:
    """The image's SOCI index, or None (not found, or not usable: logged)."""
    try:
        found = await find_soci_index(client, repo, manifest)
    except R8imfsError as exc:
        log.warning("ignoring the image's SOCI index: %s; indexing its layers here", exc)
        return None
    if found is not None:
        log.info(
            "SOCI v%d index %s (found by %s): zTOCs for %d of %d layers",
            found.version,
            short(found.index.digest),
            found.how,
            len(found.ztocs.keys() & {d.digest for d in manifest.layers}),
            len(manifest.layers),
        )
    return found


async def find_tocs(client: RegistryClient, repo: Repository, manifest: Manifest) -> dict[str, Toc]:
    """The TOC of each layer that has one, by layer digest (bytes digest-checked)."""
    found = await soci_index(client, repo, manifest)
    if found is None:
        return {}
    source = f"SOCI v{found.version} index {short(found.index.digest)}"
    refs = found.ztocs
    wanted = [refs[d.digest] for d in manifest.layers if d.digest in refs]
    tocs: dict[str, Toc] = {}
    limiter = trio.CapacityLimiter(PARALLEL)

    async def one(layer: str) -> None:
        ref = refs[layer]
        async with limiter:
            try:
                data = await fetch_ztoc(client, repo, ref)
            except R8imfsError as exc:
                log.warning("layer %s: no zTOC (%s); indexing it here", short(layer), exc)
                return
        tocs[layer] = Toc(SOCI_ZTOC, data, ref.digest, source, ref.span_size)

    async with trio.open_nursery() as nursery:
        for ref in wanted:
            nursery.start_soon(one, ref.layer_digest)
    return tocs


def listed_tocs(manifest: Manifest, found: FoundIndex | None) -> dict[str, dict[str, object]]:
    """What ``r8imfs layers`` shows: the TOC each layer has, by layer digest.

    What the SOCI index lists (the zTOCs themselves are not fetched), else
    the TOC a layer's own annotations announce (zstd:chunked, eStargz; not
    read here either: the mount checks it against its digest).
    """
    announced = {d.digest: _announced(d.annotations) for d in manifest.layers}
    tocs = {k: v for k, v in announced.items() if v is not None}
    if found is None:
        return tocs
    refs = found.ztocs
    return tocs | {
        d.digest: {
            "kind": SOCI_ZTOC,
            "format": "zTOC",
            "index": f"SOCI v{found.version}",
            "foundBy": found.how,
            "indexDigest": found.index.digest,
            "digest": refs[d.digest].digest,
            "size": refs[d.digest].size,
            "spanSize": refs[d.digest].span_size,
        }
        for d in manifest.layers
        if d.digest in refs
    }


def _announced(annotations: Mapping[str, str] | None) -> dict[str, object] | None:
    """A layer's own TOC, as its descriptor's annotations announce it."""
    try:
        kind = toc_kind(annotations)
    except BadToc:
        return {"kind": "conflicting", "format": "TOC", "index": "refused: two kinds"}
    if kind is None:
        return None
    return {"kind": kind, "format": kind, "index": "layer annotations"}
