"""Async glue that serves an image's layers, beside ``fs/``, FUSE-free.

``image.ImageFiles`` (trees and readers for a mount), ``pipe.consume_stream``
(an async download fed to a sync consumer in a worker thread) and
``recompress`` (the gzip → seekable zstd pipeline of ``r8imfs zstd``).
"""
