"""What commands do, as async functions independent of argparse and printing.

Below ``cli/`` (which parses arguments and prints), beside ``fs/`` (neither
imports the other), above ``image/``, ``engine/`` and ``registry/``: each
operation takes a client, references and an options value, reports through
callbacks (``notify`` for one-line notes, ``Transfers`` for per-layer bars,
which the CLI renders), and returns what it produced. ``mount`` hands the
indexed image to a ``serve`` callback (the CLI passes ``fs.daemon.serve``).

The writing operations (affix, remix, zstd, clone) push blobs first and
manifests last, child manifests by digest before the index under the tag,
so a failure at any step leaves no half image under the tag.
"""
