"""Media types of the OCI image spec and Docker's image manifest v2 schema 2."""

from __future__ import annotations

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_INDEX)
#: What we send as ``Accept`` when fetching a manifest by tag or digest.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_INDEX, OCI_MANIFEST, DOCKER_MANIFEST)

GZIP_LAYERS = (
    OCI_LAYER_GZIP,
    DOCKER_LAYER_GZIP,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER_FOREIGN_GZIP,
)
ZSTD_LAYERS = (OCI_LAYER_ZSTD, "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
PLAIN_LAYERS = (OCI_LAYER, "application/vnd.docker.image.rootfs.diff.tar")


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"none"`` for a layer media type; None if unknown."""
    if media_type in GZIP_LAYERS:
        return "gzip"
    if media_type in ZSTD_LAYERS:
        return "zstd"
    if media_type in PLAIN_LAYERS:
        return "none"
    return None


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")
