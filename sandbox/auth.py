"""Registry credentials and host trust.

Credentials are read from, in order: ``$REGISTRY_AUTH_FILE``, our own login file
(``$XDG_CONFIG_HOME/sandbox/auth.json``), then the files Podman and skopeo read, in the order of
containers-auth.json(5): ``$XDG_RUNTIME_DIR/containers/auth.json``,
``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config/containers/auth.json``), Docker's
``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``) and the legacy ``~/.dockercfg``; each
in Docker's format (``{"auths": {"HOST": {"auth": base64("user:pass")}}}``, optional
``credsStore``/``credHelpers``; ``.dockercfg`` without the ``auths`` level). ``sandbox login``
writes only our own file.

Host trust: which registries are reached over plain HTTP / unverified TLS (loopback,
``$SANDBOX_INSECURE_REGISTRIES``, ``registries.conf`` ``insecure = true``) and the TLS context
for a host with CAs and client certificates from the ``certs.d`` directories of
containers-certs.d(5) and Docker (``*.crt`` CAs, ``*.cert`` + ``*.key`` client pairs).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import RegistryError

__all__ = [
    "Credentials", "Challenge", "DOCKER_HUB_AUTH_KEY",
    "auth_files", "own_auth_file", "lookup_credentials", "store_credentials",
    "remove_credentials", "parse_www_authenticate", "is_loopback", "is_insecure",
    "certs_dirs", "ssl_context_for",
]

logger = logging.getLogger(__name__)

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Credentials:
    """A username and password (or identity token, then ``username`` is ``<token>``)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else default


def own_auth_file() -> Path:
    """The file ``sandbox login`` writes."""
    return _env_path("XDG_CONFIG_HOME", Path.home() / ".config") / "sandbox" / "auth.json"


def auth_files() -> list[Path]:
    """Every credentials file consulted, highest priority first."""
    files: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    files.append(own_auth_file())
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    files.append(Path(runtime) / "containers" / "auth.json")
    files.append(_env_path("XDG_CONFIG_HOME", Path.home() / ".config") / "containers"
                 / "auth.json")
    files.append(_env_path("DOCKER_CONFIG", Path.home() / ".docker") / "config.json")
    files.append(Path.home() / ".dockercfg")
    return list(dict.fromkeys(files))


def _normalize_key(key: str) -> str:
    """``https://host:port/v1/`` → ``host:port``; Docker Hub's spellings → ``docker.io``."""
    host = re.sub(r"^[a-z]+://", "", key.strip()).split("/", 1)[0]
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable credentials file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _decode_entry(entry: Mapping[str, Any], path: Path) -> Credentials | None:
    if entry.get("identitytoken"):
        return Credentials("<token>", str(entry["identitytoken"]))
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            logger.warning("ignoring malformed auth entry in %s", path)
            return None
        return Credentials(user, password) if sep else None
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        logger.debug("credential helper docker-credential-%s not installed", helper)
        return None
    server = DOCKER_HUB_AUTH_KEY if host == "docker.io" else host
    try:
        proc = subprocess.run([exe, "get"], input=server.encode(), capture_output=True,
                              timeout=30, check=False)
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        logger.warning("credential helper %s failed: %s", helper, exc)
        return None
    if not isinstance(data, dict) or not data.get("Secret"):
        return None
    return Credentials(str(data.get("Username") or "<token>"), str(data["Secret"]))


def _lookup_in(data: Mapping[str, Any], host: str, path: Path) -> Credentials | None:
    helpers = data.get("credHelpers") or {}
    for key, helper in helpers.items() if isinstance(helpers, dict) else ():
        if _normalize_key(key) == host:
            return _from_helper(str(helper), host)
    auths = data.get("auths") or {}
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _normalize_key(key) == host and isinstance(entry, dict):
            creds = _decode_entry(entry, path)
            if creds is not None:
                return creds
    if data.get("credsStore"):
        return _from_helper(str(data["credsStore"]), host)
    return None


def lookup_credentials(host: str) -> Credentials | None:
    """Credentials for registry ``host`` (``docker.io`` for Docker Hub), or None."""
    host = _normalize_key(host)
    for path in auth_files():
        data = _read_json(path)
        if path.name == ".dockercfg" and "auths" not in data:
            data = {"auths": data}  # the legacy format: hosts at the top level
        creds = _lookup_in(data, host, path)
        if creds is not None:
            logger.debug("credentials for %s from %s", host, path)
            return creds
    return None


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def store_credentials(host: str, creds: Credentials) -> Path:
    """Save ``creds`` for ``host`` in our own login file (mode 0600); return its path."""
    host = _normalize_key(host)
    path = own_auth_file()
    data = _read_json(path)
    auths = data.setdefault("auths", {})
    raw = f"{creds.username}:{creds.password}".encode()
    auths[DOCKER_HUB_AUTH_KEY if host == "docker.io" else host] = {
        "auth": base64.b64encode(raw).decode()}
    _write_json_atomic(path, data)
    return path


def remove_credentials(host: str) -> bool:
    """Forget ``host`` in our own login file; False if it was not there."""
    host = _normalize_key(host)
    path = own_auth_file()
    data = _read_json(path)
    auths = data.get("auths") or {}
    keys = [k for k in auths if _normalize_key(k) == host]
    for key in keys:
        del auths[key]
    if keys:
        _write_json_atomic(path, data)
    return bool(keys)


# --- WWW-Authenticate ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge."""

    scheme: str  # lowercase: "bearer" or "basic"
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse ``Bearer realm="…",service="…",scope="…"`` (several challenges allowed)."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme, rest = m.group(1).lower(), rest[m.end():]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM_RE.match(rest)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[pm.end():]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


# --- host trust ----------------------------------------------------------------------------------

def _split_host(host: str) -> str:
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port."""
    name = _split_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _registries_conf_insecure() -> set[str]:
    paths = [Path("/etc/containers/registries.conf"),
             _env_path("XDG_CONFIG_HOME", Path.home() / ".config") / "containers"
             / "registries.conf"]
    hosts: set[str] = set()
    for path in paths:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
            continue
        for reg in data.get("registry") or []:
            if isinstance(reg, dict) and reg.get("insecure") is True:
                hosts.add(str(reg.get("location") or reg.get("prefix") or ""))
        v1 = (data.get("registries") or {}).get("insecure") or {}
        hosts.update(str(h) for h in v1.get("registries") or [] if isinstance(v1, dict))
    hosts.discard("")
    return hosts


def is_insecure(host: str) -> bool:
    """May ``host`` be reached over plain HTTP / unverified TLS? Loopback always may."""
    if is_loopback(host):
        return True
    env = {h.strip() for h in os.environ.get("SANDBOX_INSECURE_REGISTRIES", "").split(",")}
    marked = (env - {""}) | _registries_conf_insecure()
    return host in marked or _split_host(host) in marked


def certs_dirs(host: str) -> list[Path]:
    """The ``certs.d/HOST[:PORT]`` directories consulted for ``host``, in order:
    ``$SANDBOX_CERTS_D``, the rootless ``$XDG_CONFIG_HOME/containers/certs.d`` and
    ``~/.config/containers/certs.d`` (containers-certs.d(5)), ``/etc/containers/certs.d``, then
    Docker's ``/etc/docker/certs.d``."""
    roots = [_env_path("XDG_CONFIG_HOME", Path.home() / ".config") / "containers" / "certs.d",
             Path.home() / ".config" / "containers" / "certs.d",
             Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")]
    extra = os.environ.get("SANDBOX_CERTS_D")
    if extra:
        roots.insert(0, Path(extra))
    return list(dict.fromkeys(root / host for root in roots))


def _iter_files(dirs: list[Path], suffix: str) -> Iterator[Path]:
    for d in dirs:
        try:
            yield from sorted(p for p in d.iterdir() if p.name.endswith(suffix))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue


def ssl_context_for(host: str, *, verify: bool = True) -> ssl.SSLContext:
    """A TLS context for ``host``: system CAs plus ``certs.d`` CAs and client certificates."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    dirs = certs_dirs(host)
    for ca in _iter_files(dirs, ".crt"):
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load CA certificate {ca} for {host}: {exc}",
                                hint="fix or remove that file") from None
    for key in _iter_files(dirs, ".key"):
        if not key.with_suffix(".cert").exists():
            raise RegistryError(f"missing client certificate {key.with_suffix('.cert').name} "
                                f"for key {key} ({host})",
                                hint="each NAME.key needs a matching NAME.cert")
    for cert in _iter_files(dirs, ".cert"):
        key = cert.with_suffix(".key")
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot load client certificate {cert} (key {key}) for {host}: "
                                f"{exc}", hint="each NAME.cert needs a matching NAME.key") from None
    return ctx
