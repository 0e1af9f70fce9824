"""A Docker token service on loopback, for distribution's ``auth: token``.

Implements the token spec (distribution docs, spec/auth/token.md) and its
OAuth2 variant (spec/auth/oauth.md) for one user. Tokens are JWTs signed
ES256 by hand with ``cryptography``; the header's ``x5c`` carries a
self-signed certificate that the registry trusts as its ``rootcertbundle``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.helpers.loopback import (
    Handler,
    LoopbackServer,
    RecordedRequest,
    first_param,
    lower_headers,
    reply_json,
)
from tools.faultproxy import request_body

TOKEN_SERVICE = "r8imfs-test-registry"
TOKEN_ISSUER = "r8imfs-test-issuer"


class TokenServer:
    """Docker token service on loopback, for one user.

    ``GET /token`` takes HTTP Basic credentials; ``POST /token`` takes the
    OAuth2 password and refresh_token grants. Anonymous requests get a valid
    token granting nothing, so a registry then answers 401 insufficient_scope.
    The valid user gets every action asked for. ``offline_token=true`` (GET)
    or ``access_type=offline`` (POST) adds a ``refresh_token``.
    ``expires_in`` (seconds) is what clients are told and what ``exp`` says;
    distribution accepts tokens up to 60 s past ``exp`` (its clock-skew
    leeway), so a test wanting a rejected token sets it below -60.
    """

    def __init__(self, workdir: Path, *, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.expires_in = 300
        self.requests: list[RecordedRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self._signer = _Signer()
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(self._signer.cert_pem())
        self._server = LoopbackServer("127.0.0.1", self._handle)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def realm(self) -> str:
        return f"{self._server.url}/token"

    def stop(self) -> None:
        self._server.stop()

    def issue(self, username: str | None, scopes: Iterable[str], service: str = "") -> str:
        """A signed JWT granting ``username`` the scopes (nothing if anonymous)."""
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": username or "",
            "aud": service or TOKEN_SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": [_access(s) for s in scopes] if username else [],
        }
        return self._signer.jwt(claims)

    def _handle(self, h: Handler) -> None:
        if urlsplit(h.path).path != "/token":
            reply_json(h, 404, {"errors": [{"code": "NOT_FOUND"}]})
        elif h.command == "GET":
            self._handle_get(h)
        elif h.command == "POST":
            self._handle_post(h)
        else:
            reply_json(h, 405, {"errors": [{"code": "UNSUPPORTED"}]})

    def _handle_get(self, h: Handler) -> None:
        query = parse_qs(urlsplit(h.path).query)
        header = h.headers.get("Authorization", "")
        username = self._check_basic(header)
        scopes = tuple(query.get("scope", []))
        service = first_param(query, "service")
        self._record(h, bool(header), username, scopes, service, None)
        if header and username is None:
            reply_json(h, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})
            return
        offline = first_param(query, "offline_token") == "true" and username is not None
        self._reply_token(h, username, scopes, service, offline, None)

    def _handle_post(self, h: Handler) -> None:
        form = parse_qs(b"".join(request_body(h)).decode())
        grant = first_param(form, "grant_type")
        scopes = tuple(s for value in form.get("scope", []) for s in value.split())
        service = first_param(form, "service")
        refresh = first_param(form, "refresh_token")
        username = None
        if grant == "password":
            given = (first_param(form, "username"), first_param(form, "password"))
            username = self.username if given == (self.username, self.password) else None
        elif grant == "refresh_token" and refresh:
            username = self._refresh_tokens.get(refresh)
        self._record(h, True, username, scopes, service, grant)
        if grant not in ("password", "refresh_token"):
            reply_json(h, 400, {"error": "unsupported_grant_type"})
        elif username is None:
            reply_json(h, 401, {"error": "invalid_grant"})
        else:
            offline = first_param(form, "access_type") == "offline" or grant == "refresh_token"
            self._reply_token(h, username, scopes, service, offline, refresh)

    def _check_basic(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return user if (user, password) == (self.username, self.password) else None

    def _reply_token(
        self,
        h: Handler,
        username: str | None,
        scopes: tuple[str, ...],
        service: str | None,
        offline: bool,
        refresh: str | None,
    ) -> None:
        token = self.issue(username, scopes, service or "")
        body: dict[str, object] = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if offline and username is not None:
            refresh = refresh or "refresh-" + secrets.token_urlsafe(16)
            self._refresh_tokens[refresh] = username
            body["refresh_token"] = refresh
        reply_json(h, 200, body)

    def _record(
        self,
        h: Handler,
        auth_present: bool,
        username: str | None,
        scopes: tuple[str, ...],
        service: str | None,
        grant: str | None,
    ) -> None:
        self.requests.append(
            RecordedRequest(
                method=h.command,
                path=h.path,
                headers=lower_headers(h),
                auth_present=auth_present,
                username=username,
                scopes=scopes,
                service=service,
                grant_type=grant,
            )
        )


def _access(scope: str) -> dict[str, object]:
    # "repository:library/alpine:pull,push"; names never contain ':'.
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


class _Signer:
    """An EC P-256 key and its self-signed certificate, minting ES256 JWTs.

    distribution 2.8 verifies the ``x5c`` chain (here the certificate alone)
    against ``rootcertbundle`` and then the signature with the leaf's key; JWS
    wants ES256 signatures as raw r||s, not the DER that ``sign`` returns.
    """

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        now = datetime.now(UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def jwt(self, claims: Mapping[str, object]) -> str:
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}"
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: object) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())
