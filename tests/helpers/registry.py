"""Real registries on loopback, for the integration tests and tools/demo.py.

Nothing here is a mock. ``start_registry`` runs Debian's ``docker-registry``
(distribution 2.8) with a config of our own on a free 127.0.0.1 port, storing
under a directory the caller owns; the packaged systemd service and
/etc/docker/registry are never used. Around it sit small stdlib HTTP servers
for what a hosted registry has and distribution lacks:

- ``TokenServer`` (token_server.py): the Docker token service that
  ``auth: token`` points at, minting ES256 JWTs whose ``x5c`` header carries
  a self-signed certificate the registry trusts as its ``rootcertbundle``.
- ``start_cog_verify_front``: r8.im's ``POST /cog/v1/verify-token`` in front
  of a basic-auth registry whose password is the cog token.
- ``start_redirect_front``: blob GETs answer 307 to another origin, the way
  S3- or CDN-backed registries do; that origin records every request.

Both fronts are ``tools.faultproxy.FaultProxy`` (the one reverse proxy of the
tests and benchmarks): the cog front answers its route through the proxy's
``local`` hook, the redirect front is the ``RedirectBlobs`` fault. Each
``start_*`` returns an object with ``stop()``; whoever starts a server stops
it. The token service's HTTP plumbing is loopback.py. From a script
(tools/demo.py), with the repository root on ``sys.path``::

    from tests.helpers.registry import start_registry
    registry = start_registry(workdir, "token")
    try:
        ...  # registry.host, registry.username, registry.password
    finally:
        registry.stop()
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from tests.helpers.loopback import RecordedRequest, first_param, reply_json
from tests.helpers.token_server import TOKEN_ISSUER, TOKEN_SERVICE, TokenServer
from tools.faultproxy import FaultProxy, RedirectBlobs, request_body

__all__ = [
    "BASIC_REALM",
    "TOKEN_ISSUER",
    "TOKEN_SERVICE",
    "CogFront",
    "Mode",
    "RecordedRequest",
    "RedirectFront",
    "RegistryServer",
    "RegistryStartError",
    "TokenServer",
    "start_cog_verify_front",
    "start_redirect_front",
    "start_registry",
]

Mode = Literal["open", "basic", "token"]

REGISTRY_BINARY = "/usr/bin/docker-registry"
BASIC_REALM = "r8imfs-test"
DEFAULT_USERNAME = "r8imfs-tester"


class RegistryStartError(RuntimeError):
    """The registry did not answer ``GET /v2/`` in time; carries its log."""


@dataclass(frozen=True, slots=True)
class RegistryServer:
    """A running docker-registry. ``username``/``password`` are None when open."""

    host: str  # "127.0.0.1:PORT", what goes in an image reference
    url: str  # "http://127.0.0.1:PORT"
    mode: Mode
    username: str | None
    password: str | None
    workdir: Path
    log_path: Path
    token_server: TokenServer | None
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password), the shape httpx's ``auth=`` takes."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    def stop(self) -> None:
        _stop_process(self.process)
        if self.token_server is not None:
            self.token_server.stop()


@dataclass(frozen=True, slots=True)
class CogFront:
    """r8.im stand-in: ``token`` verifies as ``username``; the rest is proxied."""

    host: str
    url: str
    registry: RegistryServer
    username: str
    token: str
    verify_requests: list[RecordedRequest]
    _proxy: FaultProxy = field(repr=False)

    def stop(self) -> None:
        """Stop the front; the registry behind it belongs to its starter."""
        self._proxy.stop()


@dataclass(frozen=True, slots=True)
class RedirectFront:
    """Blob GETs answer 307 to ``blob_url``, whose requests ``blob_requests`` lists."""

    host: str
    url: str
    registry: RegistryServer
    _proxy: FaultProxy = field(repr=False)

    @property
    def blob_host(self) -> str:
        return self._proxy.cdn_host

    @property
    def blob_url(self) -> str:
        return f"http://{self._proxy.cdn_host}"

    @property
    def blob_requests(self) -> list[RecordedRequest]:
        """What reached the blob origin so far (logged once each reply is written)."""
        return [
            RecordedRequest(r.method, r.path, r.headers, "authorization" in r.headers)
            for r in self._proxy.cdn_requests
        ]

    def wait_blob_requests(self, count: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """``blob_requests`` once it holds ``count``: a client may finish before the log."""
        deadline = time.monotonic() + timeout
        while len(seen := self.blob_requests) < count and time.monotonic() < deadline:
            self._proxy.wait_for(len(self._proxy.requests) + 1, deadline - time.monotonic())
        return seen

    def stop(self) -> None:
        self._proxy.stop()


# --- the registry process ---------------------------------------------------


def start_registry(
    workdir: Path,
    mode: Mode = "open",
    *,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    timeout: float = 20.0,
) -> RegistryServer:
    """Run docker-registry under ``workdir`` and wait until ``/v2/`` answers."""
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise RegistryStartError(f"{REGISTRY_BINARY} missing; run `make setup`")
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "open":
        creds: tuple[str | None, str | None] = (None, None)
    else:
        creds = (username, password or "r8_" + secrets.token_urlsafe(24))
    token_server = None
    if mode == "token":
        token_server = TokenServer(workdir, username=username, password=str(creds[1]))
    try:
        auth = _auth_config(workdir, mode, creds, token_server)
        return _launch(workdir, mode, creds, auth, token_server, timeout)
    except BaseException:
        if token_server is not None:
            token_server.stop()
        raise


def _launch(
    workdir: Path,
    mode: Mode,
    creds: tuple[str | None, str | None],
    auth: dict[str, object],
    token_server: TokenServer | None,
    timeout: float,
) -> RegistryServer:
    # The port is found by binding port 0 and released before the registry
    # binds it: another process may take it meanwhile, so retry on that.
    for attempt in range(3):
        host = f"127.0.0.1:{_free_port()}"
        config = workdir / "config.yml"
        config.write_text(json.dumps(_config(workdir, host, auth), indent=2))
        log_path = workdir / "registry.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
            )
        try:
            _wait_ready(process, host, log_path, timeout)
        except RegistryStartError as exc:
            _stop_process(process)
            if attempt < 2 and "address already in use" in str(exc):
                continue
            raise
        return RegistryServer(
            host=host,
            url=f"http://{host}",
            mode=mode,
            username=creds[0],
            password=creds[1],
            workdir=workdir,
            log_path=log_path,
            token_server=token_server,
            process=process,
        )
    raise AssertionError("unreachable")


def _config(workdir: Path, host: str, auth: dict[str, object]) -> dict[str, object]:
    # JSON is YAML, so no YAML writer is needed.
    config: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": secrets.token_hex(16)},
        "health": {"storagedriver": {"enabled": False}},
    }
    if auth:
        config["auth"] = auth
    return config


def _auth_config(
    workdir: Path,
    mode: Mode,
    creds: tuple[str | None, str | None],
    token_server: TokenServer | None,
) -> dict[str, object]:
    if mode == "open":
        return {}
    if mode == "basic":
        path = workdir / "htpasswd"
        path.write_text(_htpasswd_line(str(creds[0]), str(creds[1])))
        return {"htpasswd": {"realm": BASIC_REALM, "path": str(path)}}
    if mode == "token" and token_server is not None:
        return {
            "token": {
                "realm": token_server.realm,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(token_server.cert_path),
            }
        }
    raise ValueError(f"unknown registry mode {mode!r}")


def _htpasswd_line(username: str, password: str) -> str:
    # distribution accepts bcrypt entries only, hence -B.
    tool = shutil.which("htpasswd")
    if tool is None:
        raise RegistryStartError("htpasswd missing (apache2-utils); run `make setup`")
    out = subprocess.run(
        [tool, "-Bbn", username, password], check=True, capture_output=True, text=True
    )
    return out.stdout.strip() + "\n"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_ready(
    process: subprocess.Popen[bytes], host: str, log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RegistryStartError(
                f"docker-registry exited with {process.returncode}:\n{_tail(log_path)}"
            )
        if _answers_v2(host):
            return
        time.sleep(0.05)
    raise RegistryStartError(f"docker-registry not ready after {timeout}s:\n{_tail(log_path)}")


def _answers_v2(host: str) -> bool:
    conn = http.client.HTTPConnection(host, timeout=2)
    try:
        conn.request("GET", "/v2/")
        with conn.getresponse() as resp:
            resp.read()
            return resp.status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


def _tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(errors="replace")[-limit:]


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- fronts: r8.im's verify-token, and redirected blobs ---------------------


def start_cog_verify_front(registry: RegistryServer) -> CogFront:
    """r8.im's token check before a basic registry; its password is the token."""
    if registry.mode != "basic" or registry.username is None or registry.password is None:
        raise ValueError("the cog front needs a basic-auth registry")
    username, token = registry.username, registry.password
    verify_requests: list[RecordedRequest] = []

    def verify(h: BaseHTTPRequestHandler) -> bool:
        if urlsplit(h.path).path != "/cog/v1/verify-token":
            return False  # the proxy forwards it to the registry
        form = parse_qs(b"".join(request_body(h)).decode())
        ok = h.command == "POST" and first_param(form, "token") == token
        headers = {name.lower(): value for name, value in h.headers.items()}
        verify_requests.append(
            RecordedRequest(h.command, h.path, headers, True, username if ok else None)
        )
        body = {"username": username} if ok else {"detail": "Invalid token."}
        reply_json(h, 200 if ok else 401, body)
        return True

    front = FaultProxy(registry.host)
    front.local = verify
    front.start()
    url = f"http://{front.host}"
    return CogFront(front.host, url, registry, username, token, verify_requests, front)


def start_redirect_front(registry: RegistryServer) -> RedirectFront:
    """Proxy ``registry``, sending blob GETs it would serve to another origin.

    The blob origin is 127.0.0.2 when that address binds (Linux), else another
    port; either way a different origin, so clients must drop Authorization.
    Like S3 with a presigned URL, it answers 400 when one arrives anyway. Only
    the registry's 2xx answers to GETs become 307s, so its errors pass through.
    """
    front = FaultProxy(registry.host).start()
    front.set_faults([RedirectBlobs()])
    return RedirectFront(front.host, f"http://{front.host}", registry, front)
