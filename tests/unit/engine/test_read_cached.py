"""The non-blocking read path: bytes a gzip handle decoded ahead, served without a thread."""

from __future__ import annotations

import gzip

from r8imfs.engine.codecs.gzipindex import GzipLayerReader, build_gzip_index
from r8imfs.engine.entry import Entry, Kind
from r8imfs.engine.readat import BytesReadAt, CountingReadAt, cached_entry, read_entry
from tests.helpers.tars import MiB, big_tar

SPACING = 512 * 1024


def test_cached_answers_only_what_a_handle_holds() -> None:
    tar = big_tar(3 * MiB, seed=5)
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    counting = CountingReadAt(BytesReadAt(gz))
    with GzipLayerReader(counting, built.index_bytes) as reader:
        assert reader.cached(1000, 4096) is None  # nothing decoded yet
        assert reader.pread(0, 128 * 1024) == tar[: 128 * 1024]
        calls = counting.calls
        hits = [reader.cached(off, 4096) for off in range(0, 128 * 1024, 4096)]
        assert hits == [tar[off : off + 4096] for off in range(0, 128 * 1024, 4096)]
        assert counting.calls == calls  # served from the buffer: no blob reads
        assert reader.cached(len(tar) - 10, 4096) is None
        assert reader.cached(len(tar), 10) == b""


def test_cached_entry_matches_read_entry() -> None:
    tar = big_tar(2 * MiB, seed=6)
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    built = build_gzip_index(BytesReadAt(gz), spacing=SPACING)
    entry = next(e for e in built.entries if e.kind is Kind.FILE and e.size > 10_000)
    with GzipLayerReader(BytesReadAt(gz), built.index_bytes) as reader:
        whole = read_entry(reader, entry, 0, entry.size)
        for off, size in ((0, 100), (entry.size - 50, 100), (entry.size + 5, 10), (17, 4000)):
            got = cached_entry(reader, entry, off, size)
            assert got is None or got == whole[off : off + size], (off, size)
        assert cached_entry(reader, entry, 0, 100) == whole[:100]
    sparse = Entry("s", Kind.FILE, size=10, sparse=((0, 10),))
    assert cached_entry(reader, sparse, 0, 10) is None
