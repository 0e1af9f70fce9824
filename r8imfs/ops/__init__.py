"""What commands do, as async functions independent of argparse and printing.

Below ``cli/`` (which parses arguments and prints) and above ``registry/``
and ``archive/``: each operation takes a client, references and an options
value, reports through callbacks (``notify`` for one-line notes, a
``Progress`` board for per-layer bars), and returns what it produced.

The writing operations (affix, remix, zstd, clone) push blobs first and
manifests last, child manifests by digest before the index under the tag,
so a failure at any step leaves no half image under the tag.
"""
