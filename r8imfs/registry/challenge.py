"""``WWW-Authenticate`` parsing and token scopes: pure functions, no I/O.

RFC 7235 challenges: ``Scheme k=v, k="quoted, with \\" escapes", ...``; a
header may carry several challenges. Registries use ``Basic realm=...`` or
``Bearer realm=...,service=...,scope=...`` (distribution's token spec).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from r8imfs.errors import AuthError

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(
    rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*(,|$)", re.DOTALL
)
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower-cased: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def _parse_params(text: str, pos: int) -> tuple[dict[str, str], int]:
    params: dict[str, str] = {}
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if not m:
            break
        quoted = m.group(2)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else m.group(3)
        params[m.group(1).lower()] = value
        pos = m.end()
    return params, pos


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in a header value; raises AuthError if none parse."""
    challenges: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = _SCHEME.match(text, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        params, new_pos = _parse_params(text, m.end())
        challenges.append(Challenge(scheme, params))
        if new_pos == m.end() and m.end() < len(text) and not params:
            # a scheme with a token68 or garbage after it: skip to the next comma
            nxt = text.find(",", new_pos)
            new_pos = len(text) if nxt < 0 else nxt + 1
        pos = new_pos
    good = [c for c in challenges if c.scheme in ("basic", "bearer")]
    if not good:
        raise AuthError(
            f"registry sent an authentication challenge we cannot use: {header[:120]!r}"
        )
    for c in good:
        if c.scheme == "bearer" and not c.realm:
            raise AuthError(f"registry's Bearer challenge has no realm: {header[:120]!r}")
    return good


def pick(challenges: list[Challenge]) -> Challenge:
    """Prefer Bearer (it scopes access) over Basic."""
    for c in challenges:
        if c.scheme == "bearer":
            return c
    return challenges[0]


def repository_scope(name: str, actions: str) -> str:
    return f"repository:{name}:{actions}"


_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags|referrers)(?:/|$)")


def scopes_for_request(method: str, path: str, params: dict[str, str]) -> tuple[str, ...]:
    """The token scopes a registry request needs, the primary one first.

    Some registries read only the first scope (crane's bearer transport notes
    it), so the repository being written comes first, then any ``from`` of a
    cross-repository mount.
    """
    m = _PATH.match(path)
    if not m:
        return ()
    name = m.group("name")
    write = method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    scopes = [repository_scope(name, "pull,push" if write else "pull")]
    source = params.get("from")
    if source and source != name:
        scopes.append(repository_scope(source, "pull"))
    return tuple(scopes)
