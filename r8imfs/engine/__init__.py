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
"""

from __future__ import annotations

from r8imfs.engine.codecs.gzipindex import DEFAULT_SPACING as DEFAULT_SPACING
from r8imfs.engine.codecs.gzipindex import GzipIndex as GzipIndex
from r8imfs.engine.codecs.gzipindex import GzipLayerReader as GzipLayerReader
from r8imfs.engine.codecs.gzipindex import build_gzip_index as build_gzip_index
from r8imfs.engine.codecs.plain import PlainLayerReader as PlainLayerReader
from r8imfs.engine.codecs.plain import build_plain_index as build_plain_index
from r8imfs.engine.codecs.zstdindex import FrameTable as FrameTable
from r8imfs.engine.codecs.zstdindex import ZstdIndex as ZstdIndex
from r8imfs.engine.codecs.zstdindex import ZstdLayerReader as ZstdLayerReader
from r8imfs.engine.codecs.zstdindex import build_zstd_index as build_zstd_index
from r8imfs.engine.codecs.zstdindex import read_seek_table as read_seek_table
from r8imfs.engine.codecs.zstdwrite import SeekableResult as SeekableResult
from r8imfs.engine.codecs.zstdwrite import write_seekable as write_seekable
from r8imfs.engine.entry import Entry as Entry
from r8imfs.engine.entry import Kind as Kind
from r8imfs.engine.entry import normalise_path as normalise_path
from r8imfs.engine.indexdb import FORMAT_VERSION as FORMAT_VERSION
from r8imfs.engine.indexdb import LayerIndex as LayerIndex
from r8imfs.engine.indexdb import build_index as build_index
from r8imfs.engine.indexdb import index_path as index_path
from r8imfs.engine.indexdb import load_or_build as load_or_build
from r8imfs.engine.merged import LayerTree as LayerTree
from r8imfs.engine.merged import MergedTree as MergedTree
from r8imfs.engine.merged import Node as Node
from r8imfs.engine.readat import BlobFile as BlobFile
from r8imfs.engine.readat import BytesReadAt as BytesReadAt
from r8imfs.engine.readat import CountingReadAt as CountingReadAt
from r8imfs.engine.readat import FileReadAt as FileReadAt
from r8imfs.engine.readat import LayerReader as LayerReader
from r8imfs.engine.readat import ReadAt as ReadAt
from r8imfs.engine.readat import ScanProgress as ScanProgress
from r8imfs.engine.readat import read_entry as read_entry
from r8imfs.engine.tarindex import ForwardFile as ForwardFile
from r8imfs.engine.tarindex import index_seekable as index_seekable
from r8imfs.engine.tarindex import index_stream as index_stream
