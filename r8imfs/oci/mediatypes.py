"""Media types of the OCI image spec and Docker's image manifest v2 schema 2."""

from __future__ import annotations

import enum

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


class Compression(enum.StrEnum):
    """How a layer's tar is compressed, as its media type says.

    The values are what the index cache stores (``schema.sql``); a member
    equals its string, so ``Compression("gzip")`` and ``== "gzip"`` both work.
    ``r8imfs.engine.codecs.table`` keys its codecs by these.
    """

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


#: The one media type -> compression mapping.
LAYER_COMPRESSION: dict[str, Compression] = {
    **dict.fromkeys(GZIP_LAYERS, Compression.GZIP),
    **dict.fromkeys(ZSTD_LAYERS, Compression.ZSTD),
    **dict.fromkeys(PLAIN_LAYERS, Compression.NONE),
}

#: The media type a new layer gets, by compression and manifest flavour
#: (Docker's schema 2 has no zstd layer type: such a manifest must be OCI).
_NEW_LAYER_TYPE: dict[tuple[Compression, bool], str] = {
    (Compression.GZIP, False): OCI_LAYER_GZIP,
    (Compression.GZIP, True): DOCKER_LAYER_GZIP,
    (Compression.ZSTD, False): OCI_LAYER_ZSTD,
    (Compression.ZSTD, True): OCI_LAYER_ZSTD,
    (Compression.NONE, False): OCI_LAYER,
    (Compression.NONE, True): PLAIN_LAYERS[1],
}


def layer_compression(media_type: str) -> Compression | None:
    """The compression of a layer media type; None if it is not a layer type we know."""
    return LAYER_COMPRESSION.get(media_type)


def new_layer_type(compression: Compression | str, *, docker: bool) -> str:
    """The media type for a layer of ``compression`` in an OCI or Docker manifest."""
    return _NEW_LAYER_TYPE[Compression(compression), docker]


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")
