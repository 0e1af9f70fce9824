"""The on-disk blob cache: lazy, verified random access to registry blobs.

``blobcache.BlobCache`` (the directory, its bound, one reader per digest) and
``reader.BlobReader`` (one blob's fetches); see ``blobcache`` for the theory
of operation. Async (trio); the engine reads through ``SyncBlobFile``.
"""
