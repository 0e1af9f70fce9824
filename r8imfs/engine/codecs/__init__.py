"""Layer formats, one ``Codec`` each behind the table in ``table``.

``gzipindex`` (zran checkpoints), ``zstdindex`` (frame tables, the seekable
format), ``plain`` (uncompressed tars), ``decompress`` (one sequential pass:
``GzipInflater``, ``ZstdInflater``) and ``zstdwrite`` (writing seekable zstd).
A new format (zstd:chunked, eStargz, a SOCI zTOC) is a module here and one
entry in ``table.CODECS``.
"""
