"""Registry auth: credential files, basic auth (htpasswd) and bearer tokens (token server)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from registry_fixtures import USERS, DirStore, Registries, random_image, store_with

from sandbox import auth
from sandbox.auth import Credentials
from sandbox.errors import RegistryError
from sandbox.registry import RegistryClient


def _b64(user: str, pw: str) -> str:
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


def write_docker_config(path: Path, auths: dict[str, str], **extra: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {k: {"auth": v} for k, v in auths.items()}, **extra}))


# --- credential files (no registry needed) -------------------------------------------------------

def test_lookup_order_and_normalisation(auth_env: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert auth.lookup_credentials("docker.io") is None
    write_docker_config(auth_env / ".docker" / "config.json",
                        {"https://index.docker.io/v1/": _b64("hub", "h"),
                         "https://quay.io": _b64("quay", "q"),
                         "reg.example:5000": _b64("d", "d")})
    assert auth.lookup_credentials("docker.io") == Credentials("hub", "h")
    assert auth.lookup_credentials("quay.io") == Credentials("quay", "q")
    # Podman's file beats Docker's.
    write_docker_config(tmp_path / "run" / "containers" / "auth.json",
                        {"reg.example:5000": _b64("podman", "p")})
    assert auth.lookup_credentials("reg.example:5000") == Credentials("podman", "p")
    # Our own login file beats both; REGISTRY_AUTH_FILE beats everything.
    path = auth.store_credentials("reg.example:5000", Credentials("ours", "o:with:colons"))
    assert path == auth_env / ".config" / "sandbox" / "auth.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.lookup_credentials("reg.example:5000") == Credentials("ours", "o:with:colons")
    env_file = tmp_path / "explicit.json"
    write_docker_config(env_file, {"reg.example:5000": _b64("env", "e")})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert auth.lookup_credentials("reg.example:5000") == Credentials("env", "e")
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    assert auth.remove_credentials("reg.example:5000") is True
    assert auth.remove_credentials("reg.example:5000") is False
    assert auth.lookup_credentials("reg.example:5000") == Credentials("podman", "p")
    assert "o:with" not in repr(Credentials("u", "o:with"))


def test_docker_hub_login_written_under_index_key(auth_env: Path) -> None:
    path = auth.store_credentials("docker.io", Credentials("me", "pw"))
    assert list(json.loads(path.read_text())["auths"]) == ["https://index.docker.io/v1/"]
    assert auth.lookup_credentials("index.docker.io") == Credentials("me", "pw")


def test_malformed_files_are_ignored(auth_env: Path) -> None:
    cfg = auth_env / ".docker" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text("{not json")
    assert auth.lookup_credentials("x.io") is None
    cfg.write_text(json.dumps({"auths": {"x.io": {"auth": "!!notbase64"}}}))
    assert auth.lookup_credentials("x.io") is None
    cfg.write_text(json.dumps({"auths": {"x.io": {"identitytoken": "tok"}}}))
    assert auth.lookup_credentials("x.io") == Credentials("<token>", "tok")


def test_missing_credential_helper_is_skipped(auth_env: Path) -> None:
    cfg = auth_env / ".docker" / "config.json"
    write_docker_config(cfg, {}, credsStore="definitely-not-installed")
    assert auth.lookup_credentials("x.io") is None


def test_www_authenticate_parsing() -> None:
    (ch,) = auth.parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.docker.io/token",
                         "service": "registry.docker.io",
                         "scope": "repository:library/ubuntu:pull"}
    chs = auth.parse_www_authenticate('Basic realm="a \\"q\\"", Bearer realm=x')
    assert [c.scheme for c in chs] == ["basic", "bearer"]
    assert chs[0].params["realm"] == 'a "q"'


def test_insecure_and_loopback(auth_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.3.4.5", "[::1]:5000"):
        assert auth.is_loopback(host) and auth.is_insecure(host), host
    assert not auth.is_insecure("reg.example:5000")
    monkeypatch.setenv("SANDBOX_INSECURE_REGISTRIES", "reg.example:5000, other.example")
    assert auth.is_insecure("reg.example:5000")
    assert auth.is_insecure("other.example:443")
    conf = auth_env / ".config" / "containers" / "registries.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('[[registry]]\nlocation = "conf.example:5000"\ninsecure = true\n')
    assert auth.is_insecure("conf.example:5000")


# --- basic auth ----------------------------------------------------------------------------------

@pytest.mark.requires_registry
def test_basic_auth(registries: Registries, auth_env: Path, store: DirStore,
                    tmp_path: Path) -> None:
    reg = registries.basic()
    img = random_image([5000], seed=60)
    src = store_with(tmp_path / "src", img.blobs)
    ref = f"{reg.host}/private/app:1"
    with RegistryClient(retries=0) as anon, pytest.raises(
            RegistryError, match=f"unauthorized.*{reg.host}") as info:
        anon.push(ref, src, img.digest)
    assert f"sandbox login {reg.host}" in (info.value.hint or "")
    with RegistryClient(retries=0) as c:
        with pytest.raises(RegistryError, match=f"login to {reg.host} failed: incorrect"):
            c.login(reg.host, Credentials("alice", "wrong"))
        c.login(reg.host, Credentials("alice", USERS["alice"]))
    auth.store_credentials(reg.host, Credentials("alice", USERS["alice"]))
    with RegistryClient(retries=0) as c:
        c.push(ref, src, img.digest)
        assert c.pull(ref, store).manifest_digest == img.digest
    auth.store_credentials(reg.host, Credentials("alice", "stale"))
    with RegistryClient(retries=0) as c, pytest.raises(RegistryError) as info:
        c.pull(ref, store)
    assert "were refused" in (info.value.hint or "")


# --- bearer tokens -------------------------------------------------------------------------------

@pytest.mark.requires_registry
def test_bearer_token_flow(registries: Registries, auth_env: Path, store: DirStore,
                           tmp_path: Path) -> None:
    reg, server = registries.token()
    img = random_image([8000, 9000], seed=70)
    src = store_with(tmp_path / "src", img.blobs)
    alice = Credentials("alice", USERS["alice"])
    with RegistryClient(credentials=lambda host: alice, retries=0) as c:
        c.push(f"{reg.host}/public/app:1", src, img.digest)
        c.push(f"{reg.host}/private/app:1", src, img.digest)
        # Cross-repository mount needs pull on the source repository in the same token.
        rec: list[str] = []

        class P:
            def start(self, d: str, s: int | None, st: str) -> None: ...
            def update(self, d: str, n: int) -> None: ...
            def finish(self, d: str, st: str) -> None:
                rec.append(st)

        c.push(f"{reg.host}/private/copy:1", src, img.digest, progress=P(),
               mount_from=["private/app"])
        assert set(rec) == {"Mounted from private/app"}
        c.login(reg.host, alice)
    scopes = [r["scope"] for r in server.requests if r["user"] == "alice"]
    assert ["repository:private/copy:pull,push", "repository:private/app:pull"] in scopes
    with RegistryClient(retries=0) as anon:
        # Anonymous token: may pull public/ ...
        assert anon.pull(f"{reg.host}/public/app:1", store).manifest_digest == img.digest
        # ... but not private/.
        with pytest.raises(RegistryError, match="unauthorized: access to private/app") as info:
            anon.pull(f"{reg.host}/private/app:1", store)
        assert f"sandbox login {reg.host}" in (info.value.hint or "")
    assert any(r["user"] is None for r in server.requests)
    with RegistryClient(retries=0) as c, pytest.raises(RegistryError, match="login .* failed"):
        c.login(reg.host, Credentials("alice", "nope"))


def test_credential_helpers(auth_env: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text('#!/bin/sh\nread server\n'
                      'echo "{\\"ServerURL\\": \\"$server\\", \\"Username\\": \\"h-$server\\", '
                      '\\"Secret\\": \\"s3cret\\"}"\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    cfg = auth_env / ".docker" / "config.json"
    write_docker_config(cfg, {"plain.example": _b64("p", "p")},
                        credHelpers={"helped.example": "fake"})
    assert auth.lookup_credentials("helped.example") == Credentials("h-helped.example", "s3cret")
    assert auth.lookup_credentials("plain.example") == Credentials("p", "p")
    write_docker_config(cfg, {}, credsStore="fake")
    assert auth.lookup_credentials("docker.io") == Credentials(
        f"h-{auth.DOCKER_HUB_AUTH_KEY}", "s3cret")


# --- the files Podman and skopeo read (containers-auth.json(5)) -----------------------------------

def test_auth_files_follow_containers_auth_json_order(auth_env: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = auth_env / ".config"
    assert auth.auth_files() == [
        config / "sandbox" / "auth.json", tmp_path / "run" / "containers" / "auth.json",
        config / "containers" / "auth.json", auth_env / ".docker" / "config.json",
        auth_env / ".dockercfg"]
    host = "reg.example:5000"
    (auth_env / ".dockercfg").write_text(json.dumps({host: {"auth": _b64("legacy", "l")}}))
    assert auth.lookup_credentials(host) == Credentials("legacy", "l")
    write_docker_config(auth_env / ".docker" / "config.json", {host: _b64("docker", "d")})
    assert auth.lookup_credentials(host) == Credentials("docker", "d")
    # podman login writes $XDG_RUNTIME_DIR/containers/auth.json; a persistent login
    # (--authfile or an unset runtime dir) lives in $XDG_CONFIG_HOME/containers/auth.json
    write_docker_config(config / "containers" / "auth.json", {host: _b64("persistent", "p")})
    assert auth.lookup_credentials(host) == Credentials("persistent", "p")
    write_docker_config(tmp_path / "run" / "containers" / "auth.json", {host: _b64("run", "r")})
    assert auth.lookup_credentials(host) == Credentials("run", "r")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert auth_env / ".config" / "containers" / "auth.json" in auth.auth_files()


# --- certs.d (containers-certs.d(5), Docker's /etc/docker/certs.d) ------------------------------

def test_certs_dirs_rootless_then_system_then_docker(auth_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    host = "reg.example:5000"
    assert auth.certs_dirs(host) == [
        auth_env / ".config" / "containers" / "certs.d" / host,
        Path("/etc/containers/certs.d") / host, Path("/etc/docker/certs.d") / host]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SANDBOX_CERTS_D", str(tmp_path / "extra"))
    assert auth.certs_dirs(host) == [
        tmp_path / "extra" / host, tmp_path / "xdg" / "containers" / "certs.d" / host,
        auth_env / ".config" / "containers" / "certs.d" / host,
        Path("/etc/containers/certs.d") / host, Path("/etc/docker/certs.d") / host]


def _cert_pair(directory: Path, name: str) -> tuple[Path, Path]:
    from registry_fixtures import make_cert

    cert, key, _ = make_cert(directory, name)
    return cert, key


def test_ssl_context_loads_cas_and_client_pairs_from_certs_d(auth_env: Path,
                                                             tmp_path: Path) -> None:
    host = "reg.example:5000"
    certs = auth_env / ".config" / "containers" / "certs.d" / host
    ca, _ = _cert_pair(tmp_path / "made", "ca")
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(ca.read_bytes())
    baseline = len(auth.ssl_context_for("other.example").get_ca_certs())
    assert len(auth.ssl_context_for(host).get_ca_certs()) == baseline + 1
    client, key = _cert_pair(tmp_path / "made", "client")
    (certs / "client.cert").write_bytes(client.read_bytes())
    (certs / "client.key").write_bytes(key.read_bytes())
    auth.ssl_context_for(host)  # a matching pair loads
    (certs / "client.key").write_bytes(_cert_pair(tmp_path / "other", "x")[1].read_bytes())
    with pytest.raises(RegistryError, match="cannot load client certificate .*client.cert"):
        auth.ssl_context_for(host)  # a key that is not the certificate's
    (certs / "client.cert").unlink()
    with pytest.raises(RegistryError, match="missing client certificate client.cert"):
        auth.ssl_context_for(host)
    (certs / "client.key").unlink()
    (certs / "bad.crt").write_text("not a certificate")
    with pytest.raises(RegistryError, match="cannot load CA certificate .*bad.crt"):
        auth.ssl_context_for(host)


@pytest.mark.requires_registry
def test_registry_requiring_a_client_certificate(registries: Registries, auth_env: Path,
                                                 store: DirStore, tmp_path: Path) -> None:
    """A registry that demands a client certificate: refused without one, pulled with the
    CA and the client pair in the rootless certs.d of containers-certs.d(5)."""
    reg, made = registries.mtls()
    img = random_image([2_000], seed=61)
    certs = auth_env / ".config" / "containers" / "certs.d" / reg.host
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes((made / "server.crt").read_bytes())
    with RegistryClient(secure=[reg.host], retries=0) as c, pytest.raises(RegistryError) as info:
        c.pull(f"{reg.host}/m/tls:1", store)
    assert reg.host in info.value.one_line()
    for name in ("client.cert", "client.key"):
        (certs / name).write_bytes((made / name).read_bytes())
    src = store_with(tmp_path / "src", img.blobs)
    with RegistryClient(secure=[reg.host], retries=0) as c:
        c.push(f"{reg.host}/m/tls:1", src, img.digest)
        assert c.pull(f"{reg.host}/m/tls:1", store).manifest_digest == img.digest
