"""Registry authentication as an ``httpx.Auth`` flow.

One ``RegistryAuth`` per registry host. It learns the host's challenge from
the first 401 (or a ping), then authorises later requests up front:

* **Bearer** (distribution's token spec): a token per scope set, fetched
  from the challenge's realm with ``GET ?service=&scope=…`` (Basic
  credentials when we have them) or, with a refresh token, ``POST``
  ``grant_type=refresh_token``; cached until shortly before ``expires_in``.
  Concurrent requests needing the same scopes share one fetch.
* **Basic**: ``username:password``; a cog token is first exchanged for a
  username at ``POST /cog/v1/verify-token`` (what r8im did).

The flow is only ever attached to requests for the registry's own origin;
redirect targets get no ``Authorization`` (see client.py). The realm of a
Bearer challenge is the registry's own token service, so Basic credentials
go there by design, as every Docker client does.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import trio

from r8imfs.errors import AuthError
from r8imfs.registry.challenge import Challenge, parse_www_authenticate, pick, scopes_for_request
from r8imfs.registry.credentials import Credential

TokenFetcher = Callable[[httpx.Request], Awaitable[httpx.Response]]
#: refresh a token this long before the registry says it expires
EXPIRY_MARGIN = 30.0


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class RegistryAuth(httpx.Auth):
    def __init__(
        self,
        host: str,
        base_url: str,
        credential: Credential | None,
        send: TokenFetcher,
    ) -> None:
        self.host = host
        self.base_url = base_url
        self._credential = credential
        self._send = send
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._locks: dict[tuple[str, ...], trio.Lock] = {}
        self._cog_username: str | None = None

    # -- the flow ---------------------------------------------------------
    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        scopes = scopes_for_request(request.method, request.url.path, dict(request.url.params))
        if self._challenge is not None:
            header = await self._authorization(scopes, stale=None)
            if header:
                request.headers["Authorization"] = header
        response = yield request
        if response.status_code != 401 or not response.headers.get("www-authenticate"):
            return
        challenge = pick(parse_www_authenticate(response.headers["www-authenticate"]))
        extra = _challenge_scopes(challenge)
        self._challenge = challenge
        header = await self._authorization(
            scopes or extra, stale=request.headers.get("Authorization")
        )
        if header is None or header == request.headers.get("Authorization"):
            return  # nothing better to offer: the caller maps the 401
        request.headers["Authorization"] = header
        yield request

    async def prime(self, challenge_header: str | None) -> None:
        """Record a challenge seen on a ping of ``/v2/``."""
        if challenge_header:
            self._challenge = pick(parse_www_authenticate(challenge_header))

    # -- helpers ----------------------------------------------------------
    async def _authorization(self, scopes: tuple[str, ...], stale: str | None) -> str | None:
        assert self._challenge is not None
        if self._challenge.scheme == "basic":
            user, password = await self._basic_pair()
            if not (user or password):
                return None
            raw = f"{user}:{password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        token = await self._token(scopes, stale)
        return f"Bearer {token}" if token else None

    async def _basic_pair(self) -> tuple[str, str]:
        cred = self._credential
        if cred is None:
            return "", ""
        if cred.cog_token:
            if self._cog_username is None:
                self._cog_username = await self._verify_cog_token(cred.cog_token)
            return self._cog_username, cred.cog_token
        return cred.username, cred.password

    async def _verify_cog_token(self, token: str) -> str:
        request = httpx.Request(
            "POST", f"{self.base_url}/cog/v1/verify-token", data={"token": token}
        )
        response = await self._send(request)
        if response.status_code != 200:
            raise AuthError(
                f"{self.host} rejected the cog token (HTTP {response.status_code})",
                hint="check -t/--token or COG_TOKEN (get one at https://replicate.com/auth/token)",
                status=response.status_code,
            )
        try:
            username = response.json()["username"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"{self.host}/cog/v1/verify-token answered without a username") from exc
        return str(username)

    async def _token(self, scopes: tuple[str, ...], stale: str | None) -> str | None:
        """A token for these scopes; ``stale`` is one the registry just refused."""
        lock = self._locks.setdefault(scopes, trio.Lock())
        async with lock:
            cached = self._tokens.get(scopes)
            fresh = cached is not None and cached.expires > time.monotonic()
            if cached and fresh and f"Bearer {cached.value}" != stale:
                return cached.value
            token = await self._fetch_token(scopes)
            self._tokens[scopes] = token
            return token.value

    async def _fetch_token(self, scopes: tuple[str, ...]) -> _Token:
        assert self._challenge is not None
        params = self._challenge.params
        realm = params["realm"]
        service = params.get("service", "")
        scope_list = list(scopes) or _challenge_scopes(self._challenge)
        cred = self._credential
        if cred is not None and cred.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": cred.identity_token,
                "service": service,
                "client_id": "r8imfs",
                "scope": " ".join(scope_list),
            }
            request = httpx.Request("POST", realm, data=form)
        else:
            query: list[tuple[str, str | int | float | bool | None]] = (
                [("service", service)] if service else []
            )
            query += [("scope", s) for s in scope_list]
            headers = {}
            user, password = await self._basic_pair()
            if user or password:
                raw = f"{user}:{password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            request = httpx.Request("GET", realm, params=query, headers=headers)
        response = await self._send(request)
        return _parse_token_response(response, self.host)


def _challenge_scopes(challenge: Challenge) -> tuple[str, ...]:
    scope = challenge.params.get("scope", "")
    return tuple(scope.split()) if scope else ()


def _parse_token_response(response: httpx.Response, host: str) -> _Token:
    if response.status_code in (401, 403):
        raise AuthError(
            f"the token service of {host} refused our credentials (HTTP {response.status_code})",
            hint="log in with `docker login`, or pass -t/--token / COG_TOKEN",
            status=response.status_code,
        )
    if response.status_code != 200:
        raise AuthError(
            f"the token service of {host} answered HTTP {response.status_code}",
            status=response.status_code,
        )
    try:
        obj = response.json()
        value = obj.get("token") or obj.get("access_token")
        expires_in = float(obj.get("expires_in") or 60)
    except (ValueError, AttributeError, TypeError) as exc:
        raise AuthError(f"the token service of {host} sent malformed JSON") from exc
    if not value or not isinstance(value, str):
        raise AuthError(f"the token service of {host} sent no token")
    return _Token(value, time.monotonic() + max(expires_in - EXPIRY_MARGIN, 5.0))
