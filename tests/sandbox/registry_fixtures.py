"""Registry test helpers: a dir-based blob store, image builders, the Distribution registry
(anonymous, htpasswd, token, TLS), a token server, a connection-cutting proxy and a fake registry.

Imported by ``tests/sandbox/conftest.py``; every server binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import os
import select
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import zstandard

from sandbox import oci
from sandbox.oci import Digester, digest_of

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HAVE_REGISTRY = os.access(REGISTRY_BIN, os.X_OK)
USERS = {"alice": "wonderland", "bob": "builder"}


# --- blob store for tests ------------------------------------------------------------------------

class DirStore:
    """A BlobSink and BlobSource on a directory; records what it ingested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ingested: list[str] = []
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        return self.root / digest.replace(":", "_")

    def has_blob(self, digest: str) -> bool:
        return self.path(digest).exists()

    def ingest_blob(self, digest: str, chunks: Iterable[bytes], *,
                    size: int | None = None) -> None:
        check = Digester(digest, size)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    check.update(chunk)
                    f.write(chunk)
            check.verify()
            os.replace(tmp, self.path(digest))
        except BaseException:
            os.unlink(tmp)
            raise
        with self._lock:
            self.ingested.append(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def blob_size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def add(self, data: bytes) -> str:
        digest = digest_of(data)
        self.path(digest).write_bytes(data)
        return digest

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()


# --- image builders ------------------------------------------------------------------------------

@dataclass
class Image:
    manifest: bytes
    media_type: str
    config: bytes
    layers: list[bytes]
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


def make_image(layer_files: list[dict[str, bytes]], *, compressions: Iterable[str] = ("gzip",),
               arch: str = "amd64", variant: str = "", docker: bool = False) -> Image:
    """An image with one layer per dict of files; compressions cycle over the layers."""
    comps = list(compressions)
    layers, descs, diff_ids = [], [], []
    for i, files in enumerate(layer_files):
        tar = make_tar(files)
        comp = comps[i % len(comps)]
        blob = compress(tar, comp)
        if docker:
            mt = oci.MEDIA_TYPE_DOCKER_LAYER_GZIP if comp == "gzip" else \
                "application/vnd.docker.image.rootfs.diff.tar"
        else:
            mt = {"gzip": oci.MEDIA_TYPE_OCI_LAYER_GZIP, "zstd": oci.MEDIA_TYPE_OCI_LAYER_ZSTD,
                  "none": oci.MEDIA_TYPE_OCI_LAYER}[comp]
        layers.append(blob)
        diff_ids.append(digest_of(tar))
        descs.append({"mediaType": mt, "digest": digest_of(blob), "size": len(blob)})
    cfg: dict[str, Any] = {"architecture": arch, "os": "linux",
                           "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                           "rootfs": {"type": "layers", "diff_ids": diff_ids},
                           "history": [{"created_by": f"layer {i}"} for i in range(len(layers))]}
    if variant:
        cfg["variant"] = variant
    config = json.dumps(cfg).encode()
    mt = oci.MEDIA_TYPE_DOCKER_MANIFEST if docker else oci.MEDIA_TYPE_OCI_MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": oci.MEDIA_TYPE_DOCKER_CONFIG if docker
                   else oci.MEDIA_TYPE_OCI_CONFIG,
                   "digest": digest_of(config), "size": len(config)},
        "layers": descs}, indent=2).encode()
    blobs = {digest_of(b): b for b in [config, *layers, manifest]}
    return Image(manifest, mt, config, layers, blobs)


def random_image(sizes: Iterable[int], seed: int = 0, **kw: Any) -> Image:
    """Layers of incompressible random data of the given sizes."""
    rnd = __import__("random").Random(seed)
    return make_image([{f"data{seed}-{i}.bin": rnd.randbytes(n)} for i, n in enumerate(sizes)],
                      **kw)


def make_index(images: list[tuple[Image, dict[str, str]]], *, docker: bool = False
               ) -> tuple[bytes, dict[str, bytes]]:
    mt = oci.MEDIA_TYPE_DOCKER_MANIFEST_LIST if docker else oci.MEDIA_TYPE_OCI_INDEX
    manifests = [{"mediaType": img.media_type, "digest": img.digest, "size": len(img.manifest),
                  "platform": plat} for img, plat in images]
    raw = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}).encode()
    blobs = {digest_of(raw): raw}
    for img, _ in images:
        blobs.update(img.blobs)
    return raw, blobs


def store_with(root: Path, blobs: dict[str, bytes]) -> DirStore:
    store = DirStore(root)
    for data in blobs.values():
        store.add(data)
    return store


def write_oci_layout(path: Path, blobs: dict[str, bytes], manifest: bytes, media_type: str,
                     tag: str = "latest") -> None:
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for digest, data in blobs.items():
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": media_type, "digest": digest_of(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (path / "index.json").write_text(json.dumps(index))


# --- processes and servers -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log else ""
            raise RuntimeError(f"registry exited with {proc.returncode}: {text[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RegistryProc:
    host: str
    port: int
    root: Path
    proc: subprocess.Popen[bytes]
    ca: Path | None = None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(root: Path, auth: str = "", tls: tuple[Path, Path] | None = None,
                   client_ca: Path | None = None) -> RegistryProc:
    """``client_ca``: with ``tls``, require client certificates signed by it."""
    if not HAVE_REGISTRY:
        pytest.skip("docker-registry binary not installed (Debian package docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tls_conf = f"\n  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}" if tls else ""
    if tls and client_ca:
        tls_conf += f"\n    clientcas:\n      - {client_ca}"
    config = f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: test-secret{tls_conf}
{auth}
"""
    (root / "config.yml").write_text(config)
    log = root / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, log=log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return RegistryProc(f"127.0.0.1:{port}", port, root, proc)


def write_htpasswd(path: Path) -> None:
    bcrypt = pytest.importorskip("bcrypt", reason="test dependency bcrypt not installed")
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
             for u, p in USERS.items()]
    path.write_text("\n".join(lines) + "\n")


def make_cert(directory: Path, name: str, *, ip: str = "127.0.0.1") -> tuple[Path, Path, Any]:
    """A self-signed cert (usable as its own CA) for ``ip``; returns (cert, key, private key)."""
    import ipaddress

    pytest.importorskip("cryptography", reason="test dependency cryptography not installed")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (key, cert)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ServerThread:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1"
                 ) -> None:
        self.server = http.server.ThreadingHTTPServer((host, 0), handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class TokenServer:
    """Docker's token flow: anonymous may pull ``public/*``; USERS may do anything."""

    SERVICE = "test-registry"
    ISSUER = "test-issuer"

    def __init__(self, key_cert: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self.key, cert = key_cert
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.handle(self)

        self.thread = ServerThread(Handler)
        self.realm = f"http://127.0.0.1:{self.thread.port}/token"

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(req.path).query)
        user = None
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            if USERS.get(name) != pw:
                req.send_response(401)
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
            user = name
        self.requests.append({"user": user, "scope": query.get("scope", [])})
        access = []
        for scope in query.get("scope", []):
            typ, name, actions = scope.split(":")
            allowed = actions.split(",") if user else (
                ["pull"] if name.startswith("public/") else [])
            access.append({"type": typ, "name": name,
                           "actions": [a for a in actions.split(",") if a in allowed]})
        now = int(time.time())
        token = self.sign({"iss": self.ISSUER, "sub": user or "", "aud": self.SERVICE,
                           "exp": now + 300, "nbf": now - 10, "iat": now,
                           "jti": os.urandom(8).hex(), "access": access})
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def stop(self) -> None:
        self.thread.stop()


class CuttingProxy:
    """A TCP proxy to ``target_port`` that cuts the first ``cuts`` connections that send more
    than ``after`` bytes downstream (mid-blob when ``after`` is past the manifests). Deciding
    at the crossing, not at accept, keeps it independent of how the client pools its
    connections (probes and keep-alive vary under load)."""

    def __init__(self, target_port: int, *, after: int, cuts: int) -> None:
        self.target_port = target_port
        self.after = after
        self.cuts = cuts
        self.cut_count = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.1)
            if not ready:
                continue
            client, _ = self._sock.accept()
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_count < self.cuts:
                self.cut_count += 1
                return True
            return False

    def _pump(self, client: socket.socket) -> None:
        try:
            self._relay(client)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the client gave up on a connection we were relaying: that is its right

    def _relay(self, client: socket.socket) -> None:
        sent = 0
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            socks = [client, upstream]
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is upstream:
                        if sent + len(data) > self.after and sent <= self.after \
                                and self._take_cut():
                            client.sendall(data[: max(0, self.after - sent)])
                            client.shutdown(socket.SHUT_RDWR)
                            return
                        sent += len(data)
                        client.sendall(data)
                    else:
                        upstream.sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._accept_thread.join(5)
        for t in self._threads:
            t.join(5)
        self._sock.close()


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class FakeRegistry:
    """An http.server registry whose routes tests set: ``routes[(METHOD, path)] = fn``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                outer.seen.append((self.command, self.path, dict(self.headers)))
                route = outer.routes.get((self.command, path))
                if route is None and self.command == "GET" and path == "/v2/":
                    send(self, 200, b"{}")
                elif route is None:
                    send(self, 404, json.dumps({"errors": [{
                        "code": "NOT_FOUND", "message": "no route"}]}).encode())
                else:
                    route(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _dispatch

        self.thread = ServerThread(Handler, host)
        self.port = self.thread.port
        self.host = f"{host}:{self.port}"

    def stop(self) -> None:
        self.thread.stop()


def send(req: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
         headers: dict[str, str] | None = None, *, length: int | None = None) -> None:
    req.send_response(status)
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.send_header("Content-Length", str(len(body) if length is None else length))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def serve_bytes(data: bytes, media_type: str = "application/octet-stream",
                headers: dict[str, str] | None = None) -> Route:
    """A route serving ``data`` with Range support."""
    def route(req: http.server.BaseHTTPRequestHandler) -> None:
        rng = req.headers.get("Range")
        hdrs = {"Content-Type": media_type, **(headers or {})}
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            hdrs["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            send(req, 206, data[start:], hdrs)
        else:
            send(req, 200, data, hdrs)
    return route


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Registries:
    """Lazily started session registries."""

    base: Path
    started: dict[str, Any] = field(default_factory=dict)

    def anon(self) -> RegistryProc:
        if "anon" not in self.started:
            self.started["anon"] = start_registry(self.base / "anon")
        return self.started["anon"]  # type: ignore[no-any-return]

    def basic(self) -> RegistryProc:
        if "basic" not in self.started:
            d = self.base / "basic"
            d.mkdir(parents=True)
            write_htpasswd(d / "htpasswd")
            self.started["basic"] = start_registry(d, "auth:\n  htpasswd:\n    realm: test\n"
                                                      f"    path: {d / 'htpasswd'}")
        return self.started["basic"]  # type: ignore[no-any-return]

    def token(self) -> tuple[RegistryProc, TokenServer]:
        if "token" not in self.started:
            d = self.base / "token"
            cert, _key, key_cert = make_cert(d / "certs", "token")
            server = TokenServer(key_cert)
            self.started["token-server"] = server
            self.started["token"] = start_registry(d, f"""auth:
  token:
    realm: {server.realm}
    service: {TokenServer.SERVICE}
    issuer: {TokenServer.ISSUER}
    rootcertbundle: {cert}""")
        return self.started["token"], self.started["token-server"]

    def tls(self) -> RegistryProc:
        if "tls" not in self.started:
            d = self.base / "tls"
            cert, key, _ = make_cert(d / "certs", "server")
            reg = start_registry(d, tls=(cert, key))
            reg.ca = cert
            self.started["tls"] = reg
        return self.started["tls"]  # type: ignore[no-any-return]

    def mtls(self) -> tuple[RegistryProc, Path]:
        """TLS that requires a client certificate; returns it and the dir holding
        ``server.crt`` (the CA), ``client.cert`` and ``client.key``."""
        if "mtls" not in self.started:
            d = self.base / "mtls"
            cert, key, _ = make_cert(d / "certs", "server")
            client_cert, client_key, _ = make_cert(d / "certs", "client")
            client_cert.rename(d / "certs" / "client.cert")
            reg = start_registry(d, tls=(cert, key), client_ca=d / "certs" / "client.cert")
            reg.ca = cert
            self.started["mtls"] = reg
        return self.started["mtls"], self.base / "mtls" / "certs"  # type: ignore[return-value]

    def stop(self) -> None:
        for item in self.started.values():
            item.stop()


def iter_chunks(data: bytes, n: int) -> Iterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i:i + n]
