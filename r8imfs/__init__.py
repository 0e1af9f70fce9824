"""r8imfs: look inside and change container images straight on the registry.

Packages by floor, top to bottom; a module imports its own package and lower
floors only (tests/unit/test_layering.py walks the imports to keep it so):

    cli/       argument parsing and printing; one module per command
    ops/ fs/   what commands do (async functions) | the pyfuse3 adapter, the only
               importer of pyfuse3; neither imports the other
    image/     async glue serving an image's layers: ImageFiles, the stream pipe
    cache/     the on-disk blob cache over HTTP Range
    engine/ registry/
               the synchronous, FUSE-free, trio-free layer engine (tar index, codecs,
               index database, merged view) | the one async registry client (httpx)
    oci/       pure model: references, digests, media types, manifests, history
    _threads _units
               the one trio <-> thread bridge | byte sizes for people
    errors     the one error tree
"""

__version__ = "0.1.0"
