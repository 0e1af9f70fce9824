"""Where credentials come from, in order.

1. ``-t/--token`` or ``COG_TOKEN``: a Replicate cog token. As the original
   r8im did, it is exchanged for a username at ``POST /cog/v1/verify-token``
   on the registry host, then used as the password of Basic auth (that
   exchange needs the network, so ``auth.py`` performs it lazily).
2. Docker-style config files: ``$DOCKER_CONFIG/config.json`` (or
   ``~/.docker/config.json``), ``$REGISTRY_AUTH_FILE``, and containers'
   ``auth.json`` (``$XDG_RUNTIME_DIR/containers/auth.json``,
   ``~/.config/containers/auth.json``): ``auths`` entries (``auth`` base64
   or ``username``/``password``, ``identitytoken``), then ``credHelpers``
   and ``credsStore`` through ``docker-credential-<name> get``.
3. Anonymous.

Secrets live only in ``Credential`` objects, whose ``repr`` hides them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r8imfs.errors import AuthError


@dataclass(frozen=True, slots=True)
class Credential:
    username: str = ""
    password: str = field(default="", repr=False)
    #: OAuth2 refresh token (docker's ``identitytoken``): used at the token endpoint
    identity_token: str = field(default="", repr=False)
    #: a cog token to exchange for a username at /cog/v1/verify-token
    cog_token: str = field(default="", repr=False)
    source: str = ""

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.identity_token, self.cog_token) if s)


def config_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    home = Path(env.get("HOME", str(Path.home())))
    paths: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    paths.append(home / ".docker" / "config.json")
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(home / ".config" / "containers" / "auth.json")
    return paths


def _host_keys(registry: str) -> list[str]:
    """Spellings of a registry that config files use as keys."""
    keys = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    return keys


def _from_auth_entry(entry: Mapping[str, Any], source: str) -> Credential | None:
    username, password = entry.get("username", ""), entry.get("password", "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(entry["auth"]).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthError(f"unreadable 'auth' entry in {source}") from exc
        username, _, password = decoded.partition(":")
    identity = entry.get("identitytoken", "")
    if not (username or password or identity):
        return None
    return Credential(username, password, identity_token=identity, source=source)


def run_helper(name: str, registry: str) -> Credential | None:
    """``docker-credential-<name> get`` with the server URL on stdin."""
    exe = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [exe, "get"], input=registry.encode(), capture_output=True, timeout=30, check=False
        )
    except FileNotFoundError as exc:
        raise AuthError(f"credential helper {exe} is configured but not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AuthError(f"credential helper {exe} did not answer within 30 s") from exc
    if proc.returncode != 0:
        return None  # "credentials not found" is the usual meaning
    try:
        obj = json.loads(proc.stdout)
    except ValueError as exc:
        raise AuthError(f"credential helper {exe} printed something that is not JSON") from exc
    user, secret = obj.get("Username", ""), obj.get("Secret", "")
    if user == "<token>":
        return Credential("", "", identity_token=secret, source=exe)
    return Credential(user, secret, source=exe)


def lookup_config(obj: Mapping[str, Any], registry: str, source: str) -> Credential | None:
    keys = _host_keys(registry)
    helpers = obj.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return run_helper(helpers[key], registry)
    auths = obj.get("auths") or {}
    for key in keys:
        if key in auths:
            found = _from_auth_entry(auths[key], source)
            if found:
                return found
    if obj.get("credsStore"):
        return run_helper(obj["credsStore"], registry)
    return None


def _load(path: Path) -> Mapping[str, Any] | None:
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise AuthError(f"{path} is not valid JSON", hint="fix or remove it") from exc
    return obj if isinstance(obj, dict) else None


def find(
    registry: str,
    *,
    cog_token: str | None = None,
    paths: Iterable[Path] | None = None,
) -> Credential | None:
    """The credential for a registry host, or None for anonymous access."""
    if cog_token:
        return Credential(cog_token=cog_token, source="cog token")
    for path in config_paths() if paths is None else paths:
        obj = _load(path)
        if obj:
            found = lookup_config(obj, registry, str(path))
            if found:
                return found
    return None
