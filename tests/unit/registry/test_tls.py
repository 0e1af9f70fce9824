"""The shared TLS context (``registry._tls``): made once, and as strict as httpx's own."""

from __future__ import annotations

import ssl

import httpx

from r8imfs.registry import _tls
from r8imfs.registry.client import RegistryClient


def test_one_verifying_context_for_every_client() -> None:
    _tls.start()
    ctx = _tls.context()
    assert _tls.context() is ctx
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    default = httpx.create_ssl_context()  # what each client made for itself before
    assert ctx.get_ca_certs() == default.get_ca_certs()
    assert ctx.minimum_version == default.minimum_version


async def test_clients_verify_with_it() -> None:
    async with RegistryClient() as a, RegistryClient() as b:
        for client in (a, b):
            pool = client._http._transport._pool  # type: ignore[attr-defined]
            assert pool._ssl_context is _tls.context()
