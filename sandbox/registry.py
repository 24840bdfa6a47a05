"""Client for the OCI distribution API (Docker Registry HTTP API v2).

Transport is the standard library's ``http.client`` with a small keep-alive pool per host: it
streams bodies without copies, gives exact control of ``Range``, redirects and ``Authorization``
and adds no dependency (the registry is I/O bound; see ``bench/bench_pull.py``).

Auth follows Docker: ping ``/v2/``; on ``401`` read ``WWW-Authenticate``; ``Bearer`` → fetch a
token from the realm for the repository scopes (with basic credentials when we have them),
``Basic`` → send the credentials. Credentials come from ``sandbox.auth``.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Protocol

from sandbox import auth
from sandbox._progress import NullProgress, Progress
from sandbox.errors import ImageNotFound, RegistryError
from sandbox.oci import (
    ACCEPT_MANIFESTS,
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    digest_of,
    parse_manifest,
    select_manifest,
    validate_digest,
    verify_bytes,
)
from sandbox.reference import DEFAULT_DOMAIN, Reference, parse_reference

__all__ = ["BlobSink", "BlobSource", "PullResult", "SearchResult", "RegistryClient",
           "registry_host"]

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NET_ERRORS = (ConnectionError, TimeoutError, http.client.HTTPException, socket.gaierror)


class BlobSink(Protocol):
    """Where pulled blobs go (the content store implements this)."""

    def has_blob(self, digest: str) -> bool: ...

    def ingest_blob(self, digest: str, chunks: Iterable[bytes], *,
                    size: int | None = None) -> None:
        """Stream chunks to a temp file, verify size+digest while streaming, rename atomically;
        raise DigestMismatch. Safe to call concurrently for the same digest."""


class BlobSource(Protocol):
    """Where pushed blobs come from."""

    def open_blob(self, digest: str) -> BinaryIO: ...

    def blob_size(self, digest: str) -> int: ...


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` fetched. ``index_*`` are set when the reference named an index."""

    reference: Reference
    manifest_digest: str
    manifest_bytes: bytes
    manifest_media_type: str
    config_digest: str
    config_bytes: bytes
    layers: tuple[Descriptor, ...]
    index_digest: str | None = None
    index_bytes: bytes | None = None
    index_media_type: str | None = None


@dataclass(frozen=True)
class SearchResult:
    name: str
    description: str
    star_count: int
    is_official: bool
    is_automated: bool


def registry_host(domain: str) -> str:
    """The API endpoint host for a reference domain (Docker Hub is special)."""
    return "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain


def _error_detail(body: bytes) -> tuple[str, str]:
    """(code, message) of the first error in a distribution error body."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", body[:200].decode(errors="replace").strip()


def _check_image_media_types(ref: Reference, manifest: Manifest) -> None:
    """Refuse artifacts (Helm charts, signatures...) before downloading anything."""
    if manifest.config.media_type not in CONFIG_MEDIA_TYPES:
        raise RegistryError(f"{ref.familiar} is not a container image (config media type "
                            f"{manifest.config.media_type!r})",
                            hint="only OCI and Docker images can be pulled")
    for layer in manifest.layers:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise RegistryError(f"{ref.familiar}: unsupported layer media type "
                                f"{layer.media_type!r} ({layer.digest})",
                                hint="only tar, tar+gzip and tar+zstd layers can be pulled")


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
            raise self.client.unauthorized(self, scopes, _error_detail(body)[1] or
                                           f"token server said HTTP {resp.status}", creds=creds)
        if resp.status != 200:
            raise RegistryError(f"token server {realm} for {self.domain} answered HTTP "
                                f"{resp.status}: {_error_detail(body)[1]}")
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


class RegistryClient:
    """Talks to any number of registries; thread-safe; close it (or use ``with``)."""

    def __init__(self, *, credentials: Callable[[str], auth.Credentials | None] | None = None,
                 insecure: Iterable[str] = (), secure: Iterable[str] = (), retries: int = 4,
                 backoff: float = 0.5, timeout: float = 60.0,
                 user_agent: str = "rootless-sandbox/0.1", chunk_size: int = 0) -> None:
        """``insecure``/``secure``: hosts to treat as insecure / to always verify (overriding the
        loopback default). ``chunk_size`` > 0: push bigger blobs in PATCH chunks of that size."""
        self.credentials = credentials or auth.lookup_credentials
        self.insecure = frozenset(insecure)
        self.secure = frozenset(secure)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.user_agent = user_agent
        self.chunk_size = chunk_size
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
            self._hosts.clear()
        for host in hosts:
            host.close()

    def _host(self, domain: str) -> _Host:
        with self._lock:
            h = self._hosts.get(domain)
            if h is None:
                h = self._hosts[domain] = _Host(self, domain)
            return h

    # --- error helpers (used by _Host too) ---

    def backoff_sleep(self, attempt: int, retry_after: str) -> None:
        delay = self.backoff * (2 ** attempt) * (0.5 + random.random() / 2)
        if retry_after.strip().isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 30.0))

    @staticmethod
    def tls_error(netloc: str, reason: str) -> RegistryError:
        return RegistryError(
            f"TLS failure talking to registry {netloc}: {reason}",
            hint=f"add its CA certificate as /etc/containers/certs.d/{netloc}/ca.crt, or if you "
                 f"trust the network mark it insecure (SANDBOX_INSECURE_REGISTRIES={netloc})")

    @staticmethod
    def unauthorized(host: _Host, scopes: Sequence[str], detail: str, *,
                     creds: auth.Credentials | None = None) -> RegistryError:
        what = ", ".join(s.split(":")[1] for s in scopes if s.count(":") >= 2) or host.domain
        if (creds or host.creds) is None:
            hint = (f"run `sandbox login {host.domain}` if the repository is private, "
                    "or check the name")
        else:
            hint = (f"the saved credentials for {host.domain} were refused or lack access; "
                    f"run `sandbox login {host.domain}` again")
        return RegistryError(f"unauthorized: access to {what} on {host.domain} denied "
                             f"({detail})", hint=hint)

    def _fail(self, host: _Host, resp: _Response, what: str, scopes: Sequence[str]) -> None:
        body = resp.read(64 << 10) if resp.raw.length != 0 else b""
        code, message = _error_detail(body)
        if resp.status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
            raise self.unauthorized(host, scopes, message or code or f"HTTP {resp.status}")
        raise RegistryError(f"{what}: registry {host.domain} answered HTTP {resp.status}"
                            + (f" {code}" if code else "") + (f": {message}" if message else ""))

    # --- manifests ---

    def get_manifest(self, ref: Reference | str,
                     accept: Sequence[str] = ACCEPT_MANIFESTS) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of ``ref``'s manifest or index, verified if pinned."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        host = self._host(ref.domain)
        scopes = [f"repository:{ref.path}:pull"]
        resp = host.request("GET", f"/v2/{ref.path}/manifests/{ref.reference}", scopes=scopes,
                            headers={"Accept": ", ".join(accept)})
        if resp.status == 404:
            code, message = _error_detail(resp.read(64 << 10))
            raise ImageNotFound(f"manifest for {ref.familiar} not found: "
                                f"{(message or code or 'manifest unknown').lower()}",
                                hint="check the image name and tag")
        if resp.status != 200:
            self._fail(host, resp, f"manifest for {ref.familiar}", scopes)
        data = resp.read()
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = digest_of(data)
        if ref.digest:
            verify_bytes(data, ref.digest)
            digest = ref.digest
        else:
            header = resp.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != digest:
                raise RegistryError(f"manifest for {ref.familiar}: registry announced digest "
                                    f"{header} but the content hashes to {digest}")
        parsed = parse_manifest(data, media_type or None)  # refuses schema 1, bad JSON
        return data, parsed.media_type, digest

    def resolve(self, ref: Reference | str, platform: Platform | None = None
                ) -> tuple[bytes, str, str, tuple[bytes, str, str] | None]:
        """``ref``'s image manifest for ``platform``: (bytes, media type, digest, index or None).

        The last item is the (bytes, media type, digest) of the index it came from, if any.
        """
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        data, media_type, digest = self.get_manifest(ref)
        top: tuple[bytes, str, str] | None = None
        for _ in range(4):
            if media_type not in INDEX_MEDIA_TYPES:
                return data, media_type, digest, top
            top = top or (data, media_type, digest)
            desc = select_manifest(Index.from_json(data, media_type), platform)
            data, media_type, digest = self.get_manifest(ref.with_digest(desc.digest))
        raise RegistryError(f"{ref.familiar}: image indexes nested too deeply")

    # --- blobs ---

    def _blob_chunks(self, ref: Reference, digest: str, size: int | None,
                     progress: Progress) -> Generator[bytes, None, None]:
        host = self._host(ref.domain)
        scopes = [f"repository:{ref.path}:pull"]
        offset = 0
        breaks = 0
        last_break = -1
        while True:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = host.request("GET", f"/v2/{ref.path}/blobs/{digest}", scopes=scopes,
                                headers=headers)
            try:
                if resp.status == 404:
                    resp.read(64 << 10)
                    raise RegistryError(f"blob {digest} not found in {ref.familiar_name} on "
                                        f"{ref.domain}", hint="the image is incomplete on the "
                                                              "registry; re-push it")
                if resp.status not in (200, 206) or (resp.status == 206 and not offset):
                    self._fail(host, resp, f"blob {digest} of {ref.familiar_name}", scopes)
                skip = offset if resp.status == 200 else 0
                if resp.status == 206 and not resp.headers.get(
                        "Content-Range", "").startswith(f"bytes {offset}-"):
                    raise RegistryError(f"blob {digest}: registry answered a bad Content-Range "
                                        f"{resp.headers.get('Content-Range')!r}")
                broken = False
                while True:
                    try:
                        chunk = resp.raw.read(CHUNK)
                    except (*_NET_ERRORS, OSError) as exc:
                        logger.info("blob %s broke at byte %d: %r", digest, offset, exc)
                        chunk, broken = b"", True
                    if not chunk:
                        break
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    offset += len(chunk)
                    yield chunk
                    progress.update(digest, offset)
                if not broken and not resp.raw.length and not skip:
                    return  # the response ended normally; the sink checks size and digest
            finally:
                resp.close()
            breaks = breaks + 1 if offset == last_break else 1  # count breaks without progress
            last_break = offset
            if breaks > self.retries:
                raise RegistryError(f"blob {digest} of {ref.familiar_name}: stream truncated at "
                                    f"byte {offset} after {breaks} attempts",
                                    hint="the connection keeps breaking; retry later")
            logger.info("resuming blob %s from byte %d", digest, offset)
            self.backoff_sleep(breaks - 1, "")

    def fetch_blob(self, ref: Reference | str, digest: str, sink: BlobSink,
                   size: int | None = None, progress: Progress | None = None) -> None:
        """Stream blob ``digest`` of ``ref``'s repository into ``sink`` (resuming on breaks)."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        validate_digest(digest)
        progress = progress or NullProgress()
        progress.start(digest, size, "Downloading")
        chunks = self._blob_chunks(ref, digest, size, progress)
        try:
            sink.ingest_blob(digest, chunks, size=size)
        finally:
            chunks.close()
        progress.finish(digest, "Pull complete")

    def fetch_blob_bytes(self, ref: Reference | str, digest: str, size: int | None = None,
                         limit: int = 64 << 20) -> bytes:
        """A small blob (a config) in memory, verified."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        buf = bytearray()
        chunks = self._blob_chunks(ref, validate_digest(digest), size, NullProgress())
        try:
            for chunk in chunks:
                buf += chunk
                if len(buf) > limit:
                    raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        finally:
            chunks.close()
        verify_bytes(bytes(buf), digest, size)
        return bytes(buf)

    def pull(self, ref: Reference | str, sink: BlobSink, *, platform: Platform | None = None,
             progress: Progress | None = None, max_parallel: int = 3) -> PullResult:
        """Fetch ``ref`` for ``platform`` into ``sink``: config and layers (skipping present
        blobs, ``max_parallel`` at a time). Manifests are returned, not ingested."""
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        progress = progress or NullProgress()
        data, media_type, digest, top = self.resolve(ref, platform)
        manifest = Manifest.from_json(data, media_type)
        _check_image_media_types(ref, manifest)
        config = self.fetch_blob_bytes(ref, manifest.config.digest, manifest.config.size)
        if platform is not None:
            have = ImageConfig.from_json(config).platform.normalized()
            if (have.os, have.architecture) != (platform.normalized().os,
                                                platform.normalized().architecture):
                logger.warning("%s is for %s, not the requested %s", ref.familiar, have,
                               platform.normalized())
        if not sink.has_blob(manifest.config.digest):
            sink.ingest_blob(manifest.config.digest, [config], size=len(config))
        todo: list[Descriptor] = []
        for layer in manifest.layers:
            if layer.urls and "foreign" in layer.media_type:
                logger.warning("layer %s is a foreign layer; fetching from the registry",
                               layer.digest)
            if sink.has_blob(layer.digest):
                progress.finish(layer.digest, "Already exists")
            elif layer.digest not in {x.digest for x in todo}:
                todo.append(layer)
        self._run_parallel([partial(self.fetch_blob, ref, d.digest, sink, d.size, progress)
                            for d in todo], max_parallel)
        return PullResult(reference=ref, manifest_digest=digest, manifest_bytes=data,
                          manifest_media_type=media_type, config_digest=manifest.config.digest,
                          config_bytes=config, layers=manifest.layers,
                          index_digest=top[2] if top else None,
                          index_bytes=top[0] if top else None,
                          index_media_type=top[1] if top else None)

    @staticmethod
    def _run_parallel(tasks: Sequence[Callable[[], object]], max_parallel: int) -> None:
        if len(tasks) <= 1 or max_parallel <= 1:
            for task in tasks:
                task()
            return
        with ThreadPoolExecutor(max_workers=max_parallel,
                                thread_name_prefix="sandbox-pull") as pool:
            futures = [pool.submit(task) for task in tasks]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in futures:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            for fut in pending:
                fut.result()

    # --- push ---

    def _push_blob(self, ref: Reference, digest: str, source: BlobSource, progress: Progress,
                   mount_from: Sequence[str]) -> None:
        host = self._host(ref.domain)
        scopes = [f"repository:{ref.path}:pull,push"] + [
            f"repository:{m}:pull" for m in mount_from if m != ref.path]
        head = host.request("HEAD", f"/v2/{ref.path}/blobs/{digest}", scopes=scopes)
        head.read()
        if head.status == 200:
            progress.finish(digest, "Layer already exists")
            return
        size = source.blob_size(digest)
        location = None
        for origin in mount_from:
            if origin == ref.path:
                continue
            q = urllib.parse.urlencode({"mount": digest, "from": origin})
            resp = host.request("POST", f"/v2/{ref.path}/blobs/uploads/?{q}", scopes=scopes,
                                headers={"Content-Length": "0"})
            resp.read()
            if resp.status == 201:
                progress.finish(digest, f"Mounted from {origin}")
                return
            if resp.status == 202:
                location = resp.headers.get("Location")
                break
        progress.start(digest, size, "Pushing")
        if location is None:
            resp = host.request("POST", f"/v2/{ref.path}/blobs/uploads/", scopes=scopes,
                                headers={"Content-Length": "0"})
            if resp.status != 202:
                self._fail(host, resp, f"starting upload of {digest}", scopes)
            resp.read()
            location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {ref.domain} started an upload without a Location")
        if self.chunk_size and size > self.chunk_size:
            location = self._upload_chunks(host, ref, location, digest, source, size, progress,
                                           scopes)
            body: bytes | Callable[[], BinaryIO] = b""
        else:
            body = lambda: source.open_blob(digest)  # noqa: E731
        sep = "&" if "?" in location else "?"
        resp = host.request("PUT", location + sep + urllib.parse.urlencode({"digest": digest}),
                            scopes=scopes, body=body,
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Length": str(0 if body == b"" else size)})
        if resp.status != 201:
            self._fail(host, resp, f"uploading blob {digest} to {ref.familiar_name}", scopes)
        resp.read()
        progress.update(digest, size)
        progress.finish(digest, "Pushed")

    def _upload_chunks(self, host: _Host, ref: Reference, location: str, digest: str,
                       source: BlobSource, size: int, progress: Progress,
                       scopes: Sequence[str]) -> str:
        with source.open_blob(digest) as f:
            start = 0
            while start < size:
                data = f.read(self.chunk_size)
                if not data:
                    raise RegistryError(f"blob {digest} in the local store is shorter than "
                                        f"{size} bytes")
                end = start + len(data) - 1
                resp = host.request("PATCH", location, scopes=scopes, body=data, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{end}", "Content-Length": str(len(data))})
                if resp.status != 202:
                    self._fail(host, resp, f"uploading chunk {start}-{end} of {digest}", scopes)
                resp.read()
                location = resp.headers.get("Location") or location
                start = end + 1
                progress.update(digest, start)
        return location

    def push(self, ref: Reference | str, source: BlobSource, manifest_digest: str, *,
             media_type: str | None = None, progress: Progress | None = None,
             mount_from: Sequence[str] = (), max_parallel: int = 3) -> str:
        """Push the image whose manifest (or index) is blob ``manifest_digest`` of ``source``
        to ``ref`` (tag, or digest if the ref has one). Returns the pushed manifest digest.

        ``mount_from``: repositories on the same registry to try cross-repository mounts from.
        """
        ref = parse_reference(ref) if isinstance(ref, str) else ref
        progress = progress or NullProgress()
        with source.open_blob(manifest_digest) as f:
            raw = f.read(MAX_MANIFEST + 1)
        verify_bytes(raw, manifest_digest)
        parsed = parse_manifest(raw, media_type)
        if isinstance(parsed, Index):
            for child in parsed.manifests:
                self.push(ref.with_digest(child.digest), source, child.digest,
                          media_type=child.media_type or None, progress=progress,
                          mount_from=mount_from, max_parallel=max_parallel)
        else:
            blobs = [parsed.config, *parsed.layers]
            unique = list({d.digest: d for d in blobs}.values())
            self._run_parallel([partial(self._push_blob, ref, d.digest, source, progress,
                                        mount_from) for d in unique], max_parallel)
        return self.put_manifest(ref, raw, parsed.media_type)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """PUT ``data`` as ``ref``'s manifest; returns its digest."""
        host = self._host(ref.domain)
        scopes = [f"repository:{ref.path}:pull,push"]
        digest = digest_of(data)
        target = ref.digest or ref.tag or "latest"
        resp = host.request("PUT", f"/v2/{ref.path}/manifests/{target}", scopes=scopes,
                            body=data, headers={"Content-Type": media_type,
                                                "Content-Length": str(len(data))})
        if resp.status not in (200, 201, 202):
            self._fail(host, resp, f"pushing manifest {ref.familiar}", scopes)
        resp.read()
        announced = resp.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise RegistryError(f"registry stored manifest {ref.familiar} as {announced}, "
                                f"expected {digest}")
        return digest

    # --- tags, search, login ---

    def list_tags(self, ref: Reference | str, *, page_size: int | None = None) -> list[str]:
        """Every tag of ``ref``'s repository (following ``Link`` pagination)."""
        ref = parse_reference(ref, default_tag=False) if isinstance(ref, str) else ref
        host = self._host(ref.domain)
        scopes = [f"repository:{ref.path}:pull"]
        path: str | None = f"/v2/{ref.path}/tags/list" + (f"?n={page_size}" if page_size else "")
        tags: list[str] = []
        while path:
            resp = host.request("GET", path, scopes=scopes)
            if resp.status == 404:
                resp.read(64 << 10)
                raise ImageNotFound(f"repository {ref.familiar_name} not found on {ref.domain}")
            if resp.status != 200:
                self._fail(host, resp, f"listing tags of {ref.familiar_name}", scopes)
            link = resp.headers.get("Link", "")
            try:
                tags += json.loads(resp.read()).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"malformed JSON listing tags of {ref.familiar_name}") from None
            path = link[link.find("<") + 1:link.find(">")] if 'rel="next"' in link else None
        return tags

    def search(self, term: str, *, registry: str = DEFAULT_DOMAIN,
               limit: int = 25) -> list[SearchResult]:
        """Docker Hub-style ``/v1/search``; ``RegistryError`` where the registry has none."""
        domain = "index.docker.io" if registry == DEFAULT_DOMAIN else registry
        host = self._host(domain)
        q = urllib.parse.urlencode({"q": term, "n": str(limit)})
        resp = host.request("GET", f"/v1/search?{q}", scopes=[])
        if resp.status in (404, 405):
            resp.read(64 << 10)
            raise RegistryError(f"registry {registry} does not offer search",
                                hint="search works on Docker Hub; browse other registries' "
                                     "web pages or use `sandbox pull` with a known name")
        if resp.status != 200:
            self._fail(host, resp, f"searching {registry}", [])
        try:
            results = json.loads(resp.read()).get("results") or []
            return [SearchResult(name=str(r.get("name", "")),
                                 description=str(r.get("description") or ""),
                                 star_count=int(r.get("star_count") or 0),
                                 is_official=bool(r.get("is_official")),
                                 is_automated=bool(r.get("is_automated"))) for r in results]
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"malformed JSON in search results from {registry}") from None

    def login(self, domain: str, creds: auth.Credentials) -> None:
        """Check ``creds`` against ``domain``; raise ``RegistryError`` if refused."""
        host = _Host(self, domain)
        host.creds = creds
        try:
            base = host.base()
            ch = host._challenge
            if ch is None:
                return  # the registry needs no login
            if ch.scheme == "bearer":
                host._fetch_token(ch, [], creds)
                return
            resp = host.send("GET", base + "/v2/", {"Authorization": creds.basic_header(),
                                                     "User-Agent": self.user_agent})
            resp.read()
            if resp.status in (401, 403):
                raise self.unauthorized(host, [], "credentials refused")
            if resp.status != 200:
                raise RegistryError(f"login to {domain} failed: HTTP {resp.status}")
        except RegistryError as exc:
            if exc.message.startswith("unauthorized"):
                raise RegistryError(f"login to {domain} failed: incorrect username or "
                                    "password", hint="check the username and password") from None
            raise
        finally:
            host.close()
