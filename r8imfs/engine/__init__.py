"""The layer engine: tar indexes, random access into compressed layers, the
index cache and the merged root filesystem. Synchronous and FUSE-free.

Dependency rule: every module of this package (``codecs/`` included) imports
only the standard library, its compression libraries (indexed_gzip, zlib-ng,
zstandard, pyzstd), ``r8imfs.oci``, ``r8imfs._units`` and ``r8imfs.errors``;
never trio, httpx or pyfuse3 (``test_layering.test_engine_imports_no_trio``
imports all of it in a fresh interpreter to check). The async side (the blob
cache in ``r8imfs.cache``, ``ImageFiles`` in ``r8imfs.image``) sits above it.
Everything here blocks, so the async side calls it through
``r8imfs._threads.run_sync``; readers are thread-safe, a ``BlobFile`` belongs
to one thread.

Raises ``CorruptLayer`` (a layer that does not decompress or untar),
``UnsafeLayer`` (a member path with ``..``) and ``UnsupportedMediaType`` (a
layer type that is not tar, tar+gzip or tar+zstd).

The pieces, bottom up: ``ReadAt`` (positional reads of a blob) → ``BlobFile``
(a file object over it) → ``tarindex`` (entries) and the layer formats in
``codecs/`` (``plain``, ``gzipindex``, ``zstdindex``, one ``Codec`` each in
``codecs.table``) → ``indexdb`` (``load_or_build`` → ``LayerIndex``, whose
``open_reader`` gives ``pread`` on the uncompressed tar; ``decodedcopy`` when
the layer is read from its decoded copy) → ``merged`` (``MergedTree`` /
``LayerTree``).

The package itself imports nothing: callers import the module they use
(``from r8imfs.engine.readat import BlobFile``), so that a command needing one
codec does not load every format, sqlite and the merged tree at start-up.
"""
