"""``r8imfs mount IMAGE MOUNTPOINT``: the image as a lazy read-only filesystem.

Like sshfs, the command returns only once the filesystem is mounted and
serving, then leaves a daemon behind: ``before_trio`` forks
(``fs.process.fork_daemon``) before any trio or thread exists, ``run`` mounts
(``ops.mount``, served by ``fs.daemon``) and the child detaches once serving.
This module parses the options and prints; the process handling is in
``fs.process``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r8imfs import _threads
from r8imfs._units import human_size, parse_size
from r8imfs.cache.blobcache import DEFAULT_MAX_BYTES, default_cache_dir
from r8imfs.cli import _common
from r8imfs.engine.upper import Origin, UpperDir, default_location
from r8imfs.fs import daemon, mountstate, process
from r8imfs.oci.digest import sha256
from r8imfs.registry import _tls
from r8imfs.registry.client import Image

if TYPE_CHECKING:
    from r8imfs.image.image import ImageFiles


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount",
        help="mount an image as a directory; file bodies are fetched lazily",
        description="Mounts IMAGE at MOUNTPOINT (read-only unless --writable):\n"
        "  manifest.json, config.json   the registry's exact bytes\n"
        "  rootfs/                      the merged root filesystem (whiteouts applied)\n"
        "  layers/NN-<digest>/          each layer as stored\n"
        "Only metadata is read up front (gzip layers are indexed once and the index is\n"
        "cached); file bodies are fetched with HTTP range reads when read. Indexing a\n"
        "gzip layer (or a zstd layer without a seek table) decodes all of it: what it\n"
        "decodes is kept in the cache as the layer's decoded copy (for layers up to\n"
        "half of --cache-size), so copying files out afterwards reads local bytes\n"
        "instead of decoding the layer again.",
        epilog="examples:\n"
        "  r8imfs mount r8.im/user/model /mnt/model\n"
        "  cp -r /mnt/model/rootfs/src/weights ./weights\n"
        "  r8imfs umount /mnt/model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="image reference")
    p.add_argument("mountpoint", help="an empty directory")
    p.add_argument("--foreground", action="store_true", help="stay in front; Ctrl-C unmounts")
    p.add_argument("--cache-dir", help="cache directory (default: $XDG_CACHE_HOME/r8imfs)")
    p.add_argument(
        "--cache-size",
        default=None,
        help=f"bound on the cache (default: {human_size(DEFAULT_MAX_BYTES)})",
    )
    p.add_argument(
        "--no-decoded-copies",
        dest="decoded_copies",
        action="store_false",
        help="index gzip and zstd layers with checkpoints only: less disk, but every "
        "read of a file decodes it again",
    )
    p.add_argument(
        "--no-soci",
        dest="soci",
        action="store_false",
        help="ignore the image's SOCI index (zTOCs) and index every layer here",
    )
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.add_argument(
        "--keep-cache",
        action="store_true",
        help="keep every page read in the kernel's page cache (default: a file of 32 MiB or "
        "more read once, start to end, is dropped behind its reader, so a copy does not "
        "leave the model cached twice; a file read again is kept)",
    )
    p.add_argument(
        "--writable",
        action="store_true",
        help="make rootfs/ writable; changes go to an upper directory until `r8imfs commit` "
        "or `r8imfs umount --discard`",
    )
    p.add_argument(
        "--upper",
        metavar="DIR",
        help="keep the changes of a writable mount in DIR (implies --writable; "
        "default: <cache-dir>/upper/<key>); reopening DIR resumes them",
    )
    p.add_argument("--log", help="daemon log file (default: <cache-dir>/logs/mount-<pid>.log)")
    p.set_defaults(run=run, before_trio=before_trio)
    return p


def before_trio(args: argparse.Namespace) -> int | None:
    """Fork unless --foreground; the parent's exit code, or None in the child."""
    daemon.check_mountpoint(args.mountpoint)
    # before any thread exists, in the process that will serve; heap (not mmap)
    # for the GET buffers (16-32 MiB: table.Codec.get_size), reused rather than
    # faulted in anew
    process.bound_malloc(keep_free=128 * 1024 * 1024, mmap_threshold=64 * 1024 * 1024)
    # The TLS context (its CA bundle loads with the GIL released) is made while
    # serving's modules import, and is whole before the fork: the child must not
    # inherit a thread's locks without the thread (registry._tls).
    _tls.start()
    # What serving imports, imported here, before the fork, and frozen like the
    # parser's imports (cli.main): the daemon's collections then never walk them.
    import r8imfs.fs.handlers
    import r8imfs.ops.mount  # noqa: F401

    gc.freeze()
    _tls.context()
    if args.foreground:
        return None
    forked = process.fork_daemon()
    if forked.ready_fd is not None:
        args.ready_fd = forked.ready_fd
        return None
    if forked.killed_by is not None:
        print(
            f"r8imfs mount: error: the mount process died of {forked.killed_by} before mounting",
            file=sys.stderr,
        )
    if forked.exit_code == 0:
        # Mounted: nothing is left to do here but tear down an interpreter that
        # imported everything serving needs (~10-20 ms), for nothing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return forked.exit_code


class _IndexProgress:
    """One line per layer being indexed, redrawn on a terminal."""

    def __init__(self, args: argparse.Namespace, layers: int) -> None:
        self.args = args
        self.layers = layers
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, layer: int, done: int, total: int) -> None:
        now = time.monotonic()
        if getattr(self.args, "quiet", False) or (now - self.last < 0.5 and done < total):
            return
        self.last = now
        pct = 100 * done // max(total, 1)
        line = f"indexing layer {layer + 1}/{self.layers}: {pct}% of {human_size(total)}"
        print(
            ("\r" + line + "\x1b[K") if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def end(self) -> None:
        """Leave the redrawn line on screen."""
        if self.tty and self.last:
            print(file=sys.stderr)


def _detach(args: argparse.Namespace, cache_dir: Path) -> None:
    """Say ready to the waiting parent; send our output to the log from now on."""
    fd = getattr(args, "ready_fd", None)
    if fd is None:
        if not args.quiet:
            print(f"mounted at {args.mountpoint}; Ctrl-C to unmount", file=sys.stderr)
        return
    log = Path(args.log) if args.log else cache_dir / "logs" / f"mount-{os.getpid()}.log"
    process.detach(fd, log)


async def run(args: argparse.Namespace) -> None:
    from r8imfs.ops.mount import MountOptions, mount

    ref = _common.ref(args, args.image)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    options = MountOptions(
        platform=_common.platform(args),
        cache_dir=cache_dir,
        max_bytes=parse_size(args.cache_size) if args.cache_size else DEFAULT_MAX_BYTES,
        decoded_copies=args.decoded_copies,
        soci=args.soci,
    )
    shown: list[_IndexProgress] = []
    resolved: list[Image] = []

    def on_resolved(image: Image) -> _IndexProgress:
        resolved.append(image)
        shown.append(_IndexProgress(args, len(image.manifest.layers)))
        return shown[0]

    async def serve(files: ImageFiles) -> None:
        for progress in shown:
            progress.end()
        image = resolved[0]
        upper = await _threads.run_io(
            _upper, args, ref, image.manifest.raw, image.config.raw, cache_dir
        )
        try:
            await daemon.serve(
                files,
                args.mountpoint,
                allow_other=args.allow_other,
                ready=lambda: _ready(args, cache_dir, upper, str(ref)),
                upper=upper,
                keep_cache=args.keep_cache,
            )
        finally:
            if upper is not None:
                mountstate.remove(daemon.resolved(args.mountpoint))

    async with _common.client(args) as client:
        await mount(client, ref, options, serve, on_resolved)


def _upper(
    args: argparse.Namespace, ref: Any, manifest: bytes, config: bytes, cache_dir: Path
) -> UpperDir | None:
    """The writable mount's upper directory, locked by this process; None if read-only."""
    if not (args.writable or args.upper):
        return None
    digest = sha256(manifest)
    mountpoint = daemon.resolved(args.mountpoint)
    path = Path(args.upper).absolute() if args.upper else None
    path = path or default_location(cache_dir, mountpoint, digest)
    origin = Origin(str(ref), str(ref.repository), digest)
    upper = UpperDir.prepare(path, origin, manifest, config)
    upper.lock()
    if upper.has_changes():
        _common.note(args, f"resuming the changes kept in {path}")
    return upper


def _ready(args: argparse.Namespace, cache_dir: Path, upper: UpperDir | None, image: str) -> None:
    if upper is not None:
        state = mountstate.MountState(upper.root, image, owned=not args.upper)
        mountstate.write(daemon.resolved(args.mountpoint), state)
        _common.note(args, f"writable: changes are kept in {upper.root}")
    _detach(args, cache_dir)
