"""A registry that dies mid-read: EIO, never wrong bytes, never a hang.

A private registry (the session one must outlive this test) serves an
image with a 48 MiB file in an uncompressed layer; a plain layer is indexed
from its headers alone, so with a fresh cache almost all of the file is
still on the registry when it stops. Reading on must fail with EIO once the
client's retries give up, every byte returned before that must be right,
and the mount must still unmount cleanly.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from r8imfs.oci import mediatypes as mt
from tests.helpers.fuse import Member, MountFactory, daemons_for, is_mounted, make_tar
from tests.helpers.images import push
from tests.helpers.registry import start_registry

MiB = 1024 * 1024
SIZE = 48 * MiB
HEAD = 3 * MiB
#: generous: the client retries with backoff before a read gives up
EIO_WITHIN = 45.0


def test_registry_dying_mid_read_gives_eio(mounted: MountFactory, tmp_path: Path) -> None:
    server = start_registry(tmp_path / "registry", "open")
    try:
        body = os.urandom(SIZE)
        ref = f"{server.host}/fuse/dying:v1"
        layer = make_tar([Member("weights", "d"), Member("weights/big.bin", data=body)])
        push(
            ref,
            layers=[(layer, "COPY weights", None)],
            manifest_type=mt.OCI_MANIFEST,
            compression="none",
        )
        with mounted(ref) as m:
            f = os.open(m.rootfs / "weights/big.bin", os.O_RDONLY)
            try:
                assert os.pread(f, HEAD, 0) == body[:HEAD]
                server.stop()
                outcome = _read_rest(f, body)
            finally:
                os.close(f)
            assert outcome == errno.EIO
            assert m.log_text().count("EIO reading weights/big.bin") == 1  # once per file
            # the daemon keeps serving what it can
            assert (m.path / "manifest.json").read_bytes().startswith(b"{")
            with open(m.rootfs / "weights/big.bin", "rb") as again:
                assert again.read(MiB) == body[:MiB]
            pid = m.pid()
            assert m.umount().returncode == 0
            assert not is_mounted(m.path)
            assert daemons_for(m.path) == []
            assert pid is not None
    finally:
        server.stop()


def _read_rest(fd: int, body: bytes) -> int | str:
    """Read on from HEAD in a thread; the errno it ends with (checked bytes up to there)."""
    result: list[int | str] = []

    def run() -> None:
        pos = HEAD
        try:
            while pos < SIZE:
                chunk = os.pread(fd, MiB, pos)
                if not chunk:
                    result.append("short file")
                    return
                if chunk != body[pos : pos + len(chunk)]:
                    result.append(f"wrong bytes at {pos}")
                    return
                pos += len(chunk)
            result.append("read everything: the registry was not needed?")
        except OSError as exc:
            result.append(exc.errno or "no errno")

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(EIO_WITHIN)
    if reader.is_alive():
        pytest.fail(f"a read still hangs {EIO_WITHIN}s after the registry died")
    return result[0]
