"""Image references: ``[host[:port]/]repository[:tag][@sha256:…]``.

Grammar after distribution's ``reference`` package: the first path component is
a registry host only if it contains ``.`` or ``:`` or is ``localhost``;
otherwise the whole string is a repository on the default registry (``-r``,
``r8.im`` unless told). ``docker.io`` (and ``index.docker.io``) is served by
``registry-1.docker.io`` and puts single-component names under ``library/``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from r8imfs.errors import InvalidReference
from r8imfs.oci import digest as _digest

DEFAULT_REGISTRY = "r8.im"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$"
)


@dataclass(frozen=True, slots=True)
class Repository:
    """A repository on a registry. ``registry`` is ``host[:port]`` as typed."""

    registry: str
    name: str

    @property
    def api_host(self) -> str:
        """The host that serves the API: docker.io's lives elsewhere."""
        return DOCKER_HUB_API if self.registry in (DOCKER_HUB, "index.docker.io") else self.registry

    def __str__(self) -> str:
        return f"{self.registry}/{self.name}"


@dataclass(frozen=True, slots=True)
class Reference:
    repository: Repository
    tag: str | None = None
    digest: str | None = None

    @property
    def registry(self) -> str:
        return self.repository.registry

    @property
    def name(self) -> str:
        return self.repository.name

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.repository, tag, None)

    def __str__(self) -> str:
        s = str(self.repository)
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def _split_host(ref: str, default_registry: str) -> tuple[str, str]:
    head, sep, rest = ref.partition("/")
    if sep and ("." in head or ":" in head or head == "localhost" or head.startswith("[")):
        if not _HOST.match(head):
            raise InvalidReference(f"invalid registry host {head!r} in {ref!r}")
        return head, rest
    return default_registry, ref


def parse(ref: str, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Parse a reference; errors name the part that is wrong."""
    if not ref or ref.strip() != ref:
        raise InvalidReference(f"invalid image reference {ref!r}: empty or has spaces")
    rest, at, dig = ref.partition("@")
    digest = _digest.validate(dig) if at else None
    host, path = _split_host(rest, default_registry)
    tag = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid tag {tag!r} in {ref!r}")
    if not path:
        raise InvalidReference(f"invalid image reference {ref!r}: no repository name")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidReference(
                f"invalid repository name component {component!r} in {ref!r}",
                hint="lowercase letters, digits and . _ - separators",
            )
    if host in (DOCKER_HUB, "index.docker.io") and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return Reference(Repository(host, path), tag, digest)


def parse_repository(ref: str, default_registry: str = DEFAULT_REGISTRY) -> Reference:
    """Parse a destination, where a missing tag means "no tag" rather than latest."""
    parsed = parse(ref, default_registry)
    explicit_tag = ":" in ref.rsplit("/", 1)[-1].split("@", 1)[0]
    if not explicit_tag and parsed.digest is None:
        return Reference(parsed.repository, None, None)
    return parsed


def is_loopback(registry: str) -> bool:
    """Docker talks plain HTTP to these without being told (``--insecure`` for others)."""
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
