"""HTTP for the registry client: one endpoint's keep-alive connection pool, scheme probing,
retries with backoff, redirects and auth (``_Host``), and pooled responses (``_Response``).

Split out of ``registry.py``; ``_Host`` calls back into its ``RegistryClient`` for settings
(timeouts, retries, user agent) and for the error messages (TLS, unauthorized).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, BinaryIO

from sandbox import auth
from sandbox.errors import RegistryError
from sandbox.reference import DEFAULT_DOMAIN

if TYPE_CHECKING:
    from sandbox.registry import RegistryClient

__all__ = ["CHUNK", "MAX_MANIFEST", "NET_ERRORS", "registry_host", "error_detail", "Response",
           "Host"]

logger = logging.getLogger("sandbox.registry")

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
NET_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException, socket.gaierror)
_NET_ERRORS = NET_ERRORS


def registry_host(domain: str) -> str:
    """The API endpoint host for a reference domain (Docker Hub is special)."""
    return "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain


def error_detail(body: bytes) -> tuple[str, str]:
    """(code, message) of the first error in a distribution error body."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", body[:200].decode(errors="replace").strip()


class _Response:
    """A response holding its pooled connection until read or closed."""

    def __init__(self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 release: Callable[[http.client.HTTPConnection], None], url: str) -> None:
        self.raw = raw
        self.status = raw.status
        self.headers = raw.headers
        self.url = url
        self._conn: http.client.HTTPConnection | None = conn
        self._release = release

    def read(self, limit: int = MAX_MANIFEST) -> bytes:
        try:
            data = self.raw.read(limit + 1)
        finally:
            self.close()
        if len(data) > limit:
            raise RegistryError(f"response from {self.url} is larger than {limit} bytes")
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.raw.length == 0 and not self.raw.isclosed():
            self.raw.read()
        if self.raw.isclosed() and not self.raw.will_close:
            self._release(conn)
        else:
            self.raw.close()
            conn.close()


class _Host:
    """One registry endpoint: scheme, TLS, connection pool, credentials and tokens."""

    def __init__(self, client: RegistryClient, domain: str) -> None:
        self.client = client
        self.domain = domain
        self.netloc = registry_host(domain)
        self.insecure = (auth.is_insecure(domain) or domain in client.insecure) \
            and domain not in client.secure
        self.creds = client.credentials(domain)
        self.scheme: str | None = None
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._ctx: dict[tuple[str, bool], ssl.SSLContext] = {}
        self._challenge: auth.Challenge | None = None
        self._tokens: dict[frozenset[str], str] = {}

    # --- connections ---

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        timeout = self.client.timeout
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=timeout, blocksize=CHUNK)
        verify = not (netloc == self.netloc and self.insecure)
        with self._lock:
            ctx = self._ctx.get((netloc, verify))
            if ctx is None:
                ctx = self._ctx[(netloc, verify)] = auth.ssl_context_for(netloc, verify=verify)
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=ctx, blocksize=CHUNK)

    def _checkout(self, scheme: str, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get((scheme, netloc))
            if idle:
                return idle.pop(), True
        return self._connect(scheme, netloc), False

    def _checkin(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()

    def _send_once(self, method: str, url: str, headers: dict[str, str],
                   body: bytes | Callable[[], BinaryIO] | None) -> _Response:
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        for fresh_try in (False, True):
            conn, reused = self._checkout(*key)
            stream = body() if callable(body) else None
            try:
                payload = stream if stream is not None else body
                assert not callable(payload)
                conn.request(method, target, body=payload, headers=headers)
                raw = conn.getresponse()
            except (ConnectionError, http.client.RemoteDisconnected,
                    http.client.BadStatusLine) as exc:
                conn.close()
                if reused and not fresh_try:
                    logger.debug("stale keep-alive connection to %s: %s", parts.netloc, exc)
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            finally:
                if stream is not None:
                    stream.close()
            return _Response(raw, conn, partial(self._checkin, key), url)
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, method: str, url: str, headers: dict[str, str],
             body: bytes | Callable[[], BinaryIO] | None = None, *,
             retries: int | None = None) -> _Response:
        """One request with retries on network errors and retryable statuses (no auth)."""
        netloc = urllib.parse.urlsplit(url).netloc
        retries = self.client.retries if retries is None else retries
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                resp = self._send_once(method, url, headers, body)
            except ssl.SSLCertVerificationError as exc:
                raise self.client.tls_error(netloc, exc.verify_message or str(exc)) from None
            except ssl.SSLError as exc:
                raise self.client.tls_error(netloc, str(exc)) from None
            except ConnectionRefusedError:  # as Docker: no retry, nothing listens there
                raise RegistryError(f"cannot connect to registry {netloc}: connection refused",
                                    hint="check that the registry is running and the address "
                                         "is right") from None
            except _NET_ERRORS as exc:
                if last or method not in ("GET", "HEAD"):  # a body may have been half-applied
                    raise RegistryError(f"network error talking to {netloc}: {exc!r}",
                                        hint="check the network and retry") from None
                logger.info("%s %s failed (%r), retrying", method, url, exc)
            else:
                if resp.status not in _RETRY_STATUS or last:
                    return resp
                delay = resp.headers.get("Retry-After", "")
                resp.close()
                logger.info("%s %s: HTTP %d, retrying", method, url, resp.status)
                self.client.backoff_sleep(attempt, delay)
                continue
            self.client.backoff_sleep(attempt, "")
        raise AssertionError("unreachable")  # pragma: no cover

    # --- scheme and auth ---

    def base(self) -> str:
        if self.scheme is None:
            self._ping()
        return f"{self.scheme}://{self.netloc}"

    def _ping(self) -> None:
        schemes = ["https", "http"] if self.insecure else ["https"]
        for scheme in schemes:
            url = f"{scheme}://{self.netloc}/v2/"
            try:
                probe = 0 if scheme == "https" and self.insecure else None
                resp = self.send("GET", url, {"User-Agent": self.client.user_agent},
                                 retries=probe)
            except RegistryError as exc:
                if scheme == "https" and self.insecure and "refused" not in exc.message:
                    logger.debug("HTTPS to %s failed (%s); trying HTTP", self.netloc, exc)
                    continue
                raise
            resp.read()
            if resp.status == 401:
                self._learn(resp, [])
            elif resp.status != 200:
                logger.debug("ping %s: HTTP %d", url, resp.status)
            self.scheme = scheme
            return

    def _learn(self, resp: _Response, scopes: Sequence[str]) -> None:
        challenges = auth.parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        known = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not known:
            raise self.client.unauthorized(self, scopes, "no supported authentication scheme")
        self._challenge = next((c for c in known if c.scheme == "bearer"), known[0])

    def auth_header(self, scopes: Sequence[str], *, refresh: bool = False) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            if self.creds is None:
                raise self.client.unauthorized(self, scopes, "authentication required")
            return self.creds.basic_header()
        key = frozenset(scopes)
        with self._lock:
            token = None if refresh else self._tokens.get(key)
        if token is None:
            token = self._fetch_token(ch, scopes)
            with self._lock:
                self._tokens[key] = token
        return f"Bearer {token}"

    def _fetch_token(self, ch: auth.Challenge, scopes: Sequence[str],
                     creds: auth.Credentials | None = None) -> str:
        realm = ch.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.domain} sent a bearer challenge without realm")
        query: list[tuple[str, str]] = []
        if ch.params.get("service"):
            query.append(("service", ch.params["service"]))
        query += [("scope", s) for s in scopes]
        sep = "&" if "?" in realm else "?"
        url = realm + (sep + urllib.parse.urlencode(query) if query else "")
        headers = {"User-Agent": self.client.user_agent}
        creds = creds or self.creds
        if creds is not None:
            headers["Authorization"] = creds.basic_header()
        resp = self.send("GET", url, headers)
        body = resp.read()
        if resp.status in (401, 403):
            raise self.client.unauthorized(self, scopes, error_detail(body)[1] or
                                           f"token server said HTTP {resp.status}", creds=creds)
        if resp.status != 200:
            raise RegistryError(f"token server {realm} for {self.domain} answered HTTP "
                                f"{resp.status}: {error_detail(body)[1]}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server {realm} for {self.domain} sent no token")
        return token

    def request(self, method: str, path: str, *, scopes: Sequence[str],
                headers: dict[str, str] | None = None,
                body: bytes | Callable[[], BinaryIO] | None = None,
                follow: bool = True) -> _Response:
        """An API request with auth and redirects; ``path`` may be an absolute URL."""
        url = urllib.parse.urljoin(self.base() + "/", path)
        hdrs = {"User-Agent": self.client.user_agent, **(headers or {})}
        authed_retry = False
        for _ in range(10):
            same_host = urllib.parse.urlsplit(url).netloc == self.netloc
            hdrs.pop("Authorization", None)
            if same_host:
                header = self.auth_header(scopes, refresh=authed_retry)
                if header:
                    hdrs["Authorization"] = header
            resp = self.send(method, url, hdrs, body)
            if resp.status == 401 and same_host and not authed_retry:
                resp.read()
                self._learn(resp, scopes)
                authed_retry = True
                continue
            if follow and resp.status in _REDIRECTS and resp.headers.get("Location"):
                resp.read()
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                if resp.status == 303:
                    method, body = "GET", None
                logger.debug("redirected to %s", url)
                continue
            return resp
        raise RegistryError(f"too many redirects for {method} {path} on {self.domain}")


Response = _Response
Host = _Host
