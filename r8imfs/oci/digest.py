"""Content digests (``algorithm:hex``), as in the OCI image spec's descriptor.md."""

from __future__ import annotations

import hashlib
import re

from r8imfs.errors import DigestMismatch, InvalidReference

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def validate(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]


class Hasher:
    """Incremental digest of a stream, for uploads and verification."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self._h.hexdigest()}"


def verify(data: bytes, expected: str, what: str = "content") -> None:
    algorithm = expected.split(":", 1)[0]
    h = Hasher(algorithm if algorithm in ("sha256", "sha512") else "sha256")
    h.update(data)
    if h.digest != expected:
        raise DigestMismatch(f"{what} hashes to {h.digest}, expected {expected}")
