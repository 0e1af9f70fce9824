-- r8imfs layer index: one SQLite file per layer digest,
--   <cache_dir>/index/<algorithm>/<hex>.sqlite
--
-- Written once, in a temporary file beside the final name, then renamed into
-- place (os.replace), so a reader never sees half an index; opened read-only
-- and immutable afterwards. PRAGMA user_version holds the format version
-- (indexdb.FORMAT_VERSION); a file with another version, or one that fails to
-- load, is rebuilt. Bump FORMAT_VERSION whenever this file or the meaning of a
-- column changes.

-- Exactly one row describing the layer and how the index was made.
CREATE TABLE meta (
    digest            TEXT    NOT NULL,  -- layer blob digest, "sha256:<hex>"
    media_type        TEXT    NOT NULL,  -- layer media type from the manifest
    compression       TEXT    NOT NULL,  -- "gzip", "zstd" or "none"
    compressed_size   INTEGER NOT NULL,  -- blob size in bytes
    uncompressed_size INTEGER NOT NULL,  -- tar stream size in bytes
    entry_count       INTEGER NOT NULL,  -- rows in entries, checked on load
    format_version    INTEGER NOT NULL,  -- same as PRAGMA user_version
    created           REAL    NOT NULL   -- unix time the index was built
);

-- One row per tar member that survived deduplication (later duplicates win),
-- in tar order. Paths are normalised (no leading "./" or "/", no trailing
-- slash, "" is the root) and stored as UTF-8 bytes with surrogateescape, so
-- names that are not valid UTF-8 round-trip.
CREATE TABLE entries (
    ordinal     INTEGER PRIMARY KEY,  -- position of the member in the tar
    path        BLOB    NOT NULL,
    kind        TEXT    NOT NULL,     -- file, dir, symlink, hardlink, chardev, blockdev, fifo
    mode        INTEGER NOT NULL,     -- permission bits incl. setuid/setgid/sticky
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    mtime       REAL    NOT NULL,
    size        INTEGER NOT NULL,     -- file size (logical size for sparse files)
    linkname    BLOB    NOT NULL,     -- symlink target as stored / normalised hardlink target
    devmajor    INTEGER NOT NULL,
    devminor    INTEGER NOT NULL,
    data_offset INTEGER NOT NULL,     -- body offset in the *uncompressed* tar stream
    xattrs      TEXT,                 -- NULL, or JSON {name: base64(value)}
    sparse      TEXT                  -- NULL, or JSON [[offset, length], ...] data extents
);

-- Decoder restart points, one row per kind:
--   'gzip' : indexed_gzip (zran) export_index bytes
--   'zstd' : r8imfs frame table (zstdindex.FrameTable.to_bytes)
-- A gzip or zstd layer with no row here is read from its decoded copy
-- (<cache>/decoded/<algorithm>/<hex>.tar, see decodedcopy.py); if that copy
-- is gone the index is rebuilt.
CREATE TABLE checkpoints (
    kind TEXT PRIMARY KEY,
    data BLOB NOT NULL
);

-- The sha256 of each span's compressed bytes, one row per unit the checkpoints
-- cut (units.span_units: from the byte holding a checkpoint's first bit to the
-- byte holding the next one's, inclusive; the last to the blob's end), taken
-- by the indexing pass, which reads the whole blob and has its digest checked.
-- They let a span fetched later, alone, be checked before it is inflated.
-- Only for a layer indexed with checkpoints by r8imfs's own pass (gzip); no
-- rows otherwise. A unit whose range is not its row's makes no use of them.
CREATE TABLE span_digests (
    ordinal INTEGER PRIMARY KEY,  -- the unit's index
    cstart  INTEGER NOT NULL,     -- compressed range [cstart, cend) of the blob
    cend    INTEGER NOT NULL,
    digest  TEXT    NOT NULL      -- "sha256:<hex>"
);
