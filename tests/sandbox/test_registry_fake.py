"""The registry client against a loopback http.server fake: redirects, retries, bad input."""

from __future__ import annotations

import io
import json
import socket
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from registry_fixtures import DirStore, FakeRegistry, make_image, send, serve_bytes

from sandbox import oci
from sandbox._progress import LineProgress, NullProgress, TtyProgress, make_progress
from sandbox.errors import DigestMismatch, ImageNotFound, RegistryError
from sandbox.oci import digest_of
from sandbox.registry import RegistryClient


def serve_image(fake: FakeRegistry, repo: str, img_manifest: bytes, media_type: str,
                blobs: dict[str, bytes], tag: str = "latest") -> None:
    for digest, data in blobs.items():
        fake.routes[("GET", f"/v2/{repo}/blobs/{digest}")] = serve_bytes(data)
    route = serve_bytes(img_manifest, media_type,
                        {"Docker-Content-Digest": digest_of(img_manifest)})
    fake.routes[("GET", f"/v2/{repo}/manifests/{tag}")] = route
    fake.routes[("GET", f"/v2/{repo}/manifests/{digest_of(img_manifest)}")] = route


def test_redirect_to_other_host_drops_authorization(fake: FakeRegistry, client: RegistryClient,
                                                    store: DirStore) -> None:
    img = make_image([{"f": b"x" * 5000}])
    serve_image(fake, "r/app", img.manifest, img.media_type, {digest_of(img.config): img.config})
    storage = FakeRegistry(host="localhost")
    try:
        layer = img.layers[0]
        storage.routes[("GET", "/storage/layer")] = serve_bytes(layer)

        def redirect(req: BaseHTTPRequestHandler) -> None:
            send(req, 307, b"", {"Location": f"http://localhost:{storage.port}/storage/layer"})
        fake.routes[("GET", f"/v2/r/app/blobs/{digest_of(layer)}")] = redirect

        def need_basic(req: BaseHTTPRequestHandler) -> None:
            if req.headers.get("Authorization"):
                send(req, 200, b"{}")
            else:
                send(req, 401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
        fake.routes[("GET", "/v2/")] = need_basic
        from sandbox.auth import Credentials

        with RegistryClient(credentials=lambda h: Credentials("u", "p"), backoff=0.01) as c:
            res = c.pull(f"{fake.host}/r/app", store)
        assert store.read(res.layers[0].digest) == layer
        blob_req = [h for m, p, h in fake.seen if "/blobs/" in p]
        assert all("Authorization" in h for h in blob_req)
        assert storage.seen and all("Authorization" not in h for _, _, h in storage.seen)
    finally:
        storage.stop()


def test_retries_on_429_and_503(fake: FakeRegistry, client: RegistryClient,
                                store: DirStore) -> None:
    img = make_image([{"f": b"y"}])
    serve_image(fake, "r/app", img.manifest, img.media_type, img.blobs)
    real = fake.routes[("GET", "/v2/r/app/manifests/latest")]
    failures = iter([429, 503])

    def flaky(req: BaseHTTPRequestHandler) -> None:
        status = next(failures, None)
        if status:
            send(req, status, b"busy", {"Retry-After": "0"})
        else:
            real(req)
    fake.routes[("GET", "/v2/r/app/manifests/latest")] = flaky
    assert client.pull(f"{fake.host}/r/app", store).manifest_digest == img.digest
    always = fake.routes[("GET", "/v2/r/app/manifests/latest")] = (
        lambda req: send(req, 500, b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}'))
    assert always
    with pytest.raises(RegistryError, match="HTTP 500 UNKNOWN: boom"):
        client.pull(f"{fake.host}/r/app", store)


def test_bad_manifests(fake: FakeRegistry, client: RegistryClient, store: DirStore) -> None:
    cases = {
        "schema1": (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}',
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                    "schema 1"),
        "badjson": (b"{not json", oci.MEDIA_TYPE_OCI_MANIFEST, "malformed JSON"),
        "helm": (b'{"schemaVersion": 2, "config": {}}',
                 "application/vnd.cncf.helm.chart.v1+json", "unsupported manifest media type"),
        "nolayers": (b'{"schemaVersion": 2, "mediaType": "%s", "layers": "x", "config": '
                     b'{"mediaType": "a", "digest": "sha256:%s", "size": 1}}'
                     % (oci.MEDIA_TYPE_OCI_MANIFEST.encode(), b"0" * 64),
                     oci.MEDIA_TYPE_OCI_MANIFEST, "'layers' is not a list"),
    }
    helm_cfg = {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                "digest": "sha256:" + "0" * 64, "size": 1}
    cases["chart"] = (json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_OCI_MANIFEST,
                                  "config": helm_cfg, "layers": []}).encode(),
                      oci.MEDIA_TYPE_OCI_MANIFEST, "not a container image")
    cases["weird-layer"] = (json.dumps({
        "schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_OCI_MANIFEST,
        "config": {**helm_cfg, "mediaType": oci.MEDIA_TYPE_OCI_CONFIG},
        "layers": [{**helm_cfg, "mediaType": "application/x-tar+lz4"}]}).encode(),
        oci.MEDIA_TYPE_OCI_MANIFEST, "unsupported layer media type 'application/x-tar\\+lz4'")
    for name, (body, mt, _) in cases.items():
        fake.routes[("GET", f"/v2/r/{name}/manifests/latest")] = serve_bytes(body, mt)
    for name, (_, _, message) in cases.items():
        with pytest.raises(RegistryError, match=message) as info:
            client.pull(f"{fake.host}/r/{name}", store)
        assert "\n" not in info.value.one_line()
    with pytest.raises(ImageNotFound, match=f"manifest for {fake.host}/r/none:latest not found"):
        client.pull(f"{fake.host}/r/none", store)


def test_digest_mismatches(fake: FakeRegistry, client: RegistryClient, store: DirStore) -> None:
    img = make_image([{"f": b"z" * 100}])
    serve_image(fake, "r/app", img.manifest, img.media_type, img.blobs)
    evil = img.manifest.replace(b"  ", b"   ")
    fake.routes[("GET", f"/v2/r/app/manifests/{img.digest}")] = serve_bytes(evil, img.media_type)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        client.pull(f"{fake.host}/r/app@{img.digest}", store)
    fake.routes[("GET", "/v2/r/app/manifests/lying")] = serve_bytes(
        img.manifest, img.media_type, {"Docker-Content-Digest": "sha256:" + "1" * 64})
    with pytest.raises(RegistryError, match="announced digest"):
        client.pull(f"{fake.host}/r/app:lying", store)
    layer = img.layers[0]
    fake.routes[("GET", f"/v2/r/app/blobs/{digest_of(layer)}")] = serve_bytes(
        layer[:-1] + bytes([layer[-1] ^ 1]))
    with pytest.raises(DigestMismatch):
        client.pull(f"{fake.host}/r/app", store)
    assert not store.has_blob(digest_of(layer))
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".tmp")] == []


def test_truncated_stream_without_range_support(fake: FakeRegistry, client: RegistryClient,
                                                store: DirStore) -> None:
    img = make_image([{"f": bytes(range(256)) * 400}], compressions=("none",))
    serve_image(fake, "r/app", img.manifest, img.media_type, img.blobs)
    layer = img.layers[0]
    calls = []

    def cut(req: BaseHTTPRequestHandler) -> None:
        calls.append(req.headers.get("Range"))
        send(req, 200, layer[:1000], length=len(layer))  # promises more than it sends
        req.close_connection = True
    fake.routes[("GET", f"/v2/r/app/blobs/{digest_of(layer)}")] = cut
    with pytest.raises(RegistryError, match="stream truncated at byte 1000 after 3 attempts"):
        client.pull(f"{fake.host}/r/app", store)
    assert calls[0] is None and calls[1] == "bytes=1000-"

    # A server that ignores Range (answers 200) still resumes: the client skips what it has.
    state = {"n": 0}

    def cut_once(req: BaseHTTPRequestHandler) -> None:
        state["n"] += 1
        if state["n"] == 1:
            send(req, 200, layer[:5000], length=len(layer))
            req.close_connection = True
        else:
            send(req, 200, layer)
    fake.routes[("GET", f"/v2/r/app/blobs/{digest_of(layer)}")] = cut_once
    res = client.pull(f"{fake.host}/r/app", store)
    assert store.read(res.layers[0].digest) == layer


def test_tag_pagination_and_search(fake: FakeRegistry, client: RegistryClient) -> None:
    def page(req: BaseHTTPRequestHandler) -> None:
        if "last=b" in req.path:
            send(req, 200, json.dumps({"tags": ["c"]}).encode())
        else:
            send(req, 200, json.dumps({"tags": ["a", "b"]}).encode(),
                 {"Link": '</v2/r/app/tags/list?n=2&last=b>; rel="next"'})
    fake.routes[("GET", "/v2/r/app/tags/list")] = page
    assert client.list_tags(f"{fake.host}/r/app") == ["a", "b", "c"]
    fake.routes[("GET", "/v1/search")] = lambda req: send(req, 200, json.dumps({"results": [
        {"name": "ubuntu", "description": "Ubuntu", "star_count": 10, "is_official": True}]
    }).encode())
    (hit,) = client.search("ubu", registry=fake.host)
    assert (hit.name, hit.star_count, hit.is_official, hit.is_automated) == (
        "ubuntu", 10, True, False)
    assert "q=ubu" in fake.seen[-1][1]


def test_denied_push_says_so(fake: FakeRegistry, client: RegistryClient, tmp_path: Path) -> None:
    img = make_image([{"f": b"q"}])
    src = DirStore(tmp_path / "src")
    for data in img.blobs.values():
        src.add(data)
    fake.routes[("HEAD", f"/v2/r/app/blobs/{digest_of(img.config)}")] = (
        lambda req: send(req, 404, b""))
    fake.routes[("POST", "/v2/r/app/blobs/uploads/")] = lambda req: send(req, 403, json.dumps(
        {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
    ).encode())
    with RegistryClient(retries=0, backoff=0.01) as c, pytest.raises(
            RegistryError, match="unauthorized: access to r/app .* denied"):
        c.push(f"{fake.host}/r/app", src, img.digest, max_parallel=1)


def test_stale_keepalive_connection_is_retried(fake: FakeRegistry, client: RegistryClient,
                                               store: DirStore) -> None:
    img = make_image([{"f": b"k"}])
    serve_image(fake, "r/app", img.manifest, img.media_type, img.blobs)
    assert client.pull(f"{fake.host}/r/app", store).manifest_digest == img.digest
    # Server side closes idle connections: the pooled one is dead, the client reconnects.
    host = client._host(fake.host)
    for conns in host._idle.values():
        for conn in conns:
            assert conn.sock is not None
            conn.sock.shutdown(socket.SHUT_RDWR)
    store2 = DirStore(store.root.parent / "store2")
    with RegistryClient(retries=0) as c:
        c._host(fake.host)._idle = host._idle
        host._idle = {}
        assert c.pull(f"{fake.host}/r/app", store2).manifest_digest == img.digest


def test_progress_renderers() -> None:
    out = io.StringIO()
    p = LineProgress(out)
    p.start("sha256:" + "a" * 64, 2_500_000, "Downloading")
    p.update("sha256:" + "a" * 64, 100)
    p.finish("sha256:" + "a" * 64, "Pull complete")
    assert out.getvalue() == "aaaaaaaaaaaa: Downloading (2.5MB)\naaaaaaaaaaaa: Pull complete\n"
    tty = io.StringIO()
    t = TtyProgress(tty, min_interval=0)
    t.start("sha256:" + "b" * 64, 1000, "Downloading")
    t.start("sha256:" + "c" * 64, None, "Downloading")
    t.update("sha256:" + "b" * 64, 500)
    line = t.render_line("sha256:" + "b" * 64, 500, "Downloading")
    assert line == "bbbbbbbbbbbb: Downloading [" + "=" * 25 + ">" + " " * 24 + "] 500B/1kB"
    t.finish("sha256:" + "b" * 64, "Pull complete")
    text = tty.getvalue()
    assert "\x1b[2A" in text and text.endswith("cccccccccccc: Downloading\n")
    assert isinstance(make_progress(io.StringIO()), LineProgress)
    assert isinstance(make_progress(io.StringIO(), quiet=True), NullProgress)


def test_layers_download_in_parallel(fake: FakeRegistry, client: RegistryClient,
                                     store: DirStore) -> None:
    """Each layer's GET waits until every other layer's GET has arrived: only a client that
    downloads them at the same time gets past it (sequential ones fail after the timeout)."""
    import threading

    img = make_image([{"a": b"1" * 4000}, {"b": b"2" * 4000}, {"c": b"3" * 4000}])
    serve_image(fake, "r/par", img.manifest, img.media_type, img.blobs)
    layers = [digest_of(blob) for blob in img.layers]
    barrier = threading.Barrier(len(layers), timeout=10)
    met: list[str] = []
    for digest in layers:
        inner = fake.routes[("GET", f"/v2/r/par/blobs/{digest}")]

        def gate(req: BaseHTTPRequestHandler, inner: object = inner, digest: str = digest) -> None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                send(req, 500, b'{"errors":[{"code":"UNKNOWN","message":"not parallel"}]}')
                return
            met.append(digest)
            inner(req)  # type: ignore[operator]
        fake.routes[("GET", f"/v2/r/par/blobs/{digest}")] = gate
    with RegistryClient(retries=0, backoff=0.01, timeout=20) as c:
        res = c.pull(f"{fake.host}/r/par", store, max_parallel=3)
    assert sorted(met) == sorted(layers)
    assert [store.read(d.digest) for d in res.layers] == img.layers
