"""The shared TLS context (``registry._tls``): made once, and as strict as httpx's own."""

from __future__ import annotations

import ssl
import subprocess
import sys

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


def test_a_command_that_ends_while_the_context_loads_exits_cleanly() -> None:
    """The context is made on a thread the interpreter waits for: as a daemon
    thread, still inside OpenSSL when a quick command (``umount``: a subprocess,
    then exit) finalized the interpreter, it crashed it (SIGSEGV in 2 of 8 runs
    of this script, every time in CI's umount-after-kill tests)."""
    script = (
        "import subprocess, trio\n"
        "from r8imfs import _threads\n"
        "from r8imfs.registry import _tls\n"
        "_tls.start()\n"
        "async def main():\n"
        "    await _threads.run_io(subprocess.run, ['true'])\n"
        "trio.run(main)\n"
    )
    for _ in range(12):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
