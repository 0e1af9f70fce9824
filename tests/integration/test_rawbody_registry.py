"""``registry._rawbody``: big blob bodies read past h11, against the real registry."""

from __future__ import annotations

import http.server
import os
import ssl
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from r8imfs.oci.digest import sha256
from r8imfs.oci.reference import parse
from r8imfs.registry import _rawbody, upload
from r8imfs.registry._rawbody import body_chunks
from r8imfs.registry.client import RegistryClient
from tests.helpers.registry import RegistryServer
from tools.faultproxy import DropBody, FaultProxy

MiB = 1024 * 1024
DIRECT_MIN = 4 * MiB  # the tests' threshold: their bodies stay small
DATA = os.urandom(2 * DIRECT_MIN + 12345)


async def _push(registry: RegistryServer, repo_name: str) -> str:
    async def body() -> AsyncIterator[bytes]:
        yield DATA

    repo = parse(f"{registry.host}/{repo_name}").repository
    async with RegistryClient() as client:
        done = await upload.upload_stream(client, repo, body(), expected=sha256(DATA))
    return f"http://{registry.host}/v2/{repo_name}/blobs/{done.digest}"


async def _get(http: httpx.AsyncClient, url: str, start: int, end: int | None) -> bytes:
    headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
    response = await http.send(http.build_request("GET", url, headers=headers), stream=True)
    try:
        got = b"".join([c async for c in body_chunks(response, 30, DIRECT_MIN)])
        network = response.extensions["network_stream"]
        if len(got) >= DIRECT_MIN + MiB:  # past a first chunk of at most 1 MiB: read past h11
            # so the connection is closed, never reused
            with pytest.raises(httpcore.ReadError):
                await network.read(1)
    finally:
        await response.aclose()
    return got


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (0, len(DATA)), (777, DIRECT_MIN * 2 + 5), (10, 1000), (5, DIRECT_MIN // 2)],
)
async def test_bodies_big_and_small_arrive_whole(
    registry: RegistryServer, repo_name: str, start: int, end: int | None
) -> None:
    url = await _push(registry, repo_name)
    async with httpx.AsyncClient() as http:
        for _ in range(2):  # a second request after each: a closed connection is not reused
            assert await _get(http, url, start, end) == DATA[start:end]


@pytest.mark.parametrize("after", [100, DIRECT_MIN + MiB + 1])
async def test_a_dropped_body_resumes_to_the_exact_bytes(
    registry: RegistryServer, repo_name: str, after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped in the first chunk (through h11) or in the direct reads."""
    monkeypatch.setattr(_rawbody, "DIRECT_MIN_PLAIN", DIRECT_MIN)  # plain HTTP here
    await _push(registry, repo_name)
    with FaultProxy(registry.host) as proxy:
        proxy.set_faults([DropBody(after=after, times=1)])
        repo = parse(f"{proxy.host}/{repo_name}").repository
        async with RegistryClient() as client, client.open_blob(repo, sha256(DATA)) as stream:
            got = b"".join([c async for c in stream.chunks()])
    assert stream.resumes == 1
    assert got == DATA


async def test_over_plain_http_a_body_of_a_few_mib_is_read_past_h11(
    registry: RegistryServer, repo_name: str
) -> None:
    """Without a threshold given, plain HTTP uses ``DIRECT_MIN_PLAIN`` (a new
    connection costs no handshake there): the connection is closed after."""
    url = await _push(registry, repo_name)
    assert len(DATA) > _rawbody.DIRECT_MIN_PLAIN + MiB
    async with httpx.AsyncClient() as http:
        response = await http.send(http.build_request("GET", url), stream=True)
        try:
            got = b"".join([c async for c in body_chunks(response, 30)])
            with pytest.raises(httpcore.ReadError):  # (ReadTimeout if left open)
                await response.extensions["network_stream"].read(1, 5)
        finally:
            await response.aclose()
    assert got == DATA


class _Blob(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA)

    def log_message(self, *args: object) -> None:
        pass


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_a_big_body_over_tls_is_read_past_h11_too(tmp_path: Path) -> None:
    """r8.im and the CDNs behind it are HTTPS: the stream read is then the TLS one."""
    cert, key = _self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/blob"
    try:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as client:
            for _ in range(2):
                response = await client.send(client.build_request("GET", url), stream=True)
                try:
                    chunks = [c async for c in body_chunks(response, 30, DIRECT_MIN)]
                    with pytest.raises(httpcore.ReadError):  # read past h11: closed after
                        await response.extensions["network_stream"].read(1)
                finally:
                    await response.aclose()
                assert b"".join(chunks) == DATA
                # the records the TLS object holds are drained per read, not one
                # 16 KiB record per read (_rawbody._drain)
                assert max(len(c) for c in chunks[1:]) > 16 * 1024
            # without a threshold given, TLS keeps h11 below DIRECT_MIN: the
            # connection stays open for the next request (a read finds no data)
            assert len(DATA) < _rawbody.DIRECT_MIN
            response = await client.send(client.build_request("GET", url), stream=True)
            try:
                assert b"".join([c async for c in body_chunks(response, 30)]) == DATA
                with pytest.raises(httpcore.ReadTimeout):
                    await response.extensions["network_stream"].read(1, 0.2)
            finally:
                await response.aclose()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_a_body_read_into_a_buffer_lands_in_place(
    registry: RegistryServer, repo_name: str
) -> None:
    """Over plain HTTP, direct reads go from the socket into the buffer given:
    the chunks past the first are views of it, already where they belong."""
    url = await _push(registry, repo_name)
    buf = bytearray(len(DATA))
    view = memoryview(buf)
    async with httpx.AsyncClient() as http:
        response = await http.send(http.build_request("GET", url), stream=True)
        try:
            got = in_place = 0
            async for chunk in body_chunks(response, 30, into=view):
                if isinstance(chunk, memoryview) and chunk.obj is buf:
                    in_place += len(chunk)
                else:
                    view[got : got + len(chunk)] = chunk
                got += len(chunk)
        finally:
            await response.aclose()
    assert got == len(DATA) and bytes(buf) == DATA
    assert in_place >= len(DATA) - MiB  # all but what came with the headers


@pytest.mark.parametrize("after", [100, 3 * MiB + 7])
async def test_a_dropped_body_filled_in_place_resumes_to_the_exact_bytes(
    registry: RegistryServer, repo_name: str, after: int
) -> None:
    """``BlobStream.fill``: dropped in the first chunk or in the direct reads, the
    buffer still ends up holding exactly the blob."""
    await _push(registry, repo_name)
    buf = bytearray(len(DATA))
    counted: list[int] = []
    with FaultProxy(registry.host) as proxy:
        proxy.set_faults([DropBody(after=after, times=1)])
        repo = parse(f"{proxy.host}/{repo_name}").repository
        async with RegistryClient() as client, client.open_blob(repo, sha256(DATA)) as stream:
            got = await stream.fill(buf, counted.append)
    assert stream.resumes == 1
    assert got == sum(counted) == len(DATA)
    assert bytes(buf) == DATA
