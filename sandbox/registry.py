"""Client for the OCI distribution API (Docker Registry HTTP API v2).

Transport is the standard library's ``http.client`` with a small keep-alive pool per host: it
streams bodies without copies, gives exact control of ``Range``, redirects and ``Authorization``
and adds no dependency (the registry is I/O bound; see ``bench/bench_pull.py``).

Auth follows Docker: ping ``/v2/``; on ``401`` read ``WWW-Authenticate``; ``Bearer`` → fetch a
token from the realm for the repository scopes (with basic credentials when we have them),
``Basic`` → send the credentials. Credentials come from ``sandbox.auth``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Protocol

from sandbox import auth
from sandbox._http import CHUNK, MAX_MANIFEST, NET_ERRORS, error_detail, registry_host
from sandbox._http import Host as _Host
from sandbox._http import Response as _Response
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

_NET_ERRORS = NET_ERRORS


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
    """One row of ``sandbox search``."""

    name: str
    description: str
    star_count: int
    is_official: bool
    is_automated: bool


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
        code, message = error_detail(body)
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
            code, message = error_detail(resp.read(64 << 10))
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
