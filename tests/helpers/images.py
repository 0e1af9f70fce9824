"""Small helpers for integration tests: push images with r8imfs's own client, run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import trio

from r8imfs.oci import mediatypes as mt
from r8imfs.oci import mutate
from r8imfs.oci.manifest import Descriptor
from r8imfs.oci.reference import parse
from r8imfs.registry.client import ClientOptions, RegistryClient
from r8imfs.registry.push import push_simple_image
from tools.demoimage import demo_layers


async def push_demo(
    ref: str,
    *,
    manifest_type: str = mt.OCI_MANIFEST,
    compression: str = "gzip",
    layers: list[tuple[bytes, str, str | None]] | None = None,
    token: str | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    async with RegistryClient(ClientOptions(cog_token=token)) as client:
        return await push_simple_image(
            client,
            parse(ref),
            layers if layers is not None else demo_layers(64 * 1024),
            manifest_type=manifest_type,
            compression=compression,
            config=config,
        )


async def push_index(ref: str, platforms: dict[str, str], media_type: str = mt.OCI_INDEX) -> str:
    """An index over already-pushed manifests ``{"os/arch": digest}``."""
    parsed = parse(ref)
    async with RegistryClient() as client:
        descs = []
        for plat, digest in platforms.items():
            child = await client.get_manifest(parsed.with_digest(digest))
            os_, arch = plat.split("/")[:2]
            descs.append(
                Descriptor.from_json(
                    {
                        "mediaType": child.media_type,
                        "digest": digest,
                        "size": len(child.raw),
                        "platform": {"os": os_, "architecture": arch},
                    }
                )
            )
        raw = mutate.build_index(media_type, descs)
        return await client.put_manifest(parsed.repository, parsed.tag or "latest", raw, media_type)


def push(ref: str, **kw: Any) -> str:
    return trio.run(lambda: push_demo(ref, **kw))


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("COG_TOKEN", None) if env is None or "COG_TOKEN" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "r8imfs", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        check=False,
    )


def skopeo_json(*args: str) -> Any:
    out = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return json.loads(out)


async def publish_soci_v1(source: str, ztocs: list[dict[str, Any]]) -> str:
    """A v1 SOCI index for ``source`` (``subject`` set), listed by the referrers
    tag-schema fallback (``sha256-<hex>``), as a v1 producer on a registry
    without the referrers API (distribution 2.8) leaves it; its digest."""
    from r8imfs.oci import soci
    from r8imfs.oci.digest import sha256
    from r8imfs.oci.manifest import Manifest, dumps
    from r8imfs.registry.upload import upload_bytes

    parsed = parse(source)
    async with RegistryClient() as client:
        manifest = await client.get_manifest(parsed)
        assert isinstance(manifest, Manifest)
        subject = Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))
        raw = soci.soci_index(ztocs, "test", subject=subject)
        repo = parsed.repository
        await upload_bytes(client, repo, soci.EMPTY_JSON)
        digest = await client.put_manifest(repo, sha256(raw), raw, mt.OCI_MANIFEST)
        listing = dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": mt.OCI_MANIFEST,
                        "artifactType": soci.SOCI_INDEX_V1,
                        "digest": digest,
                        "size": len(raw),
                    }
                ],
            }
        )
        await client.put_manifest(repo, soci.fallback_tag(manifest.digest), listing, mt.OCI_INDEX)
        return digest
