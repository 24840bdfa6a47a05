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
