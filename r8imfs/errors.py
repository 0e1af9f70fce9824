"""The one error tree of r8imfs.

Every failure a user can act on is an ``R8imfsError``; the CLI turns each into
one line on stderr and an exit code (``exit_code``), with a traceback only
under ``-v``. Lower-level exceptions (httpx, tarfile, zlib, sqlite3) are
translated at the boundary that sees them and raised ``from`` the original.

    R8imfsError                      exit 1
    ├── UsageError                   exit 2   bad flags or arguments
    │   └── InvalidReference                  an image reference that does not parse
    ├── NotBuilt                     exit 3   a command of the suite not written yet (none today)
    ├── RegistryError                         a registry answered something we cannot use
    │   ├── AuthError                exit 4   401/403, or a token service refused us
    │   ├── ManifestUnknown                   no such tag or manifest digest
    │   ├── BlobUnknown                       no such blob in the repository
    │   ├── UploadUnknown                     an upload session the registry lost
    │   ├── PlatformNotFound                  an index lacks the --platform asked for
    │   ├── UnsupportedMediaType              a manifest or layer type we do not handle
    │   └── TransportError                    connection failures that outlived retries
    ├── DigestMismatch                        bytes that do not hash to their digest
    ├── RangeUnsupported                      a blob store that cannot serve byte ranges
    ├── CorruptLayer                          a layer that does not decompress or untar
    │   └── BadToc                            a layer TOC (zstd:chunked, eStargz) we refuse
    ├── UnsafeLayer                           a tar that would write outside its target
    ├── NoWeightsFound                        ``extract`` found nothing under src/weights/
    ├── MountError                            the kernel refused a mount or an unmount
    ├── PathNotFound                          no such path in an image's root filesystem
    └── BadModelHeader                        a safetensors or GGUF header that does not parse

Raisers: ``oci`` raises InvalidReference, UnsupportedMediaType, PlatformNotFound,
DigestMismatch; ``registry`` raises the RegistryError family (RangeUnsupported
included) and DigestMismatch; ``engine`` raises CorruptLayer, UnsafeLayer,
UnsupportedMediaType (a layer type with no codec) and DigestMismatch (a decoded
copy); ``cache`` raises DigestMismatch and RegistryError; ``image`` CorruptLayer
and DigestMismatch; ``fs`` MountError and UsageError; ``models`` raises
BadModelHeader; ``ops`` adds NoWeightsFound (and ``ops.browse`` PathNotFound);
``_units`` and ``cli`` raise UsageError.

``NotBuilt`` (exit 3) is for a command the CLI lists but this version does not
implement (``cli._common.not_built``). Every command of this version is built,
so nothing raises it today; the exit code stays reserved for the next command
that is announced before it is written.
"""

from __future__ import annotations


class R8imfsError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(R8imfsError):
    exit_code = 2


class InvalidReference(UsageError):
    """An image reference that does not parse; the message names the bad part."""


class NotBuilt(R8imfsError):
    """A command listed in ``--help`` that this version does not implement yet."""

    exit_code = 3


class RegistryError(R8imfsError):
    """The registry answered with something we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        #: the registry's ``Retry-After`` when it answered a retryable status
        self.retry_after = retry_after


class AuthError(RegistryError):
    exit_code = 4


class ManifestUnknown(RegistryError):
    pass


class BlobUnknown(RegistryError):
    pass


class UploadUnknown(RegistryError):
    """The registry lost an upload session (404 on its URL): start a new one."""


class PlatformNotFound(RegistryError):
    pass


class UnsupportedMediaType(RegistryError):
    pass


class TransportError(RegistryError):
    """The network failed and kept failing after retries."""


class DigestMismatch(R8imfsError):
    pass


class RangeUnsupported(R8imfsError):
    pass


class CorruptLayer(R8imfsError):
    pass


class BadToc(CorruptLayer):
    """A table of contents that fails its digest or describes impossible or
    unsafe data; the layer can still be read as a plain compressed stream."""


class UnsafeLayer(R8imfsError):
    pass


class NoWeightsFound(R8imfsError):
    pass


class MountError(R8imfsError):
    """The kernel refused the mount, or the mountpoint is unusable (``fs.daemon``)."""


class PathNotFound(R8imfsError):
    """``ls``, ``cat``, ``cp`` or ``tensors`` was given a path the image does not have."""


class BadModelHeader(R8imfsError):
    """A model file whose header is malformed; the message names the file."""
