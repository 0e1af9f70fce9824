"""r8imfs: look inside and change container images straight on the registry.

Packages, importing downward only (a unit test walks the imports to keep it so):

    cli/      argument parsing and printing; one module per command
    fs/       the pyfuse3 adapter, nothing else imports pyfuse3
    archive/  tar index, gzip/zstd random access, blob cache, merged view
    registry/ the one async registry client (httpx), auth, uploads, retries
    oci/      pure model: references, digests, media types, manifests, history
    errors    the one error tree
"""

__version__ = "0.1.0"
