"""OCI types: parsing keeps raw bytes, platforms, chain ids, digests."""

from __future__ import annotations

import hashlib
import json

import pytest

from sandbox import oci
from sandbox.errors import DigestMismatch, InvalidReference, RegistryError
from sandbox.oci import Descriptor, Digester, ImageConfig, Index, Manifest, Platform, digest_of

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def desc(digest: str = D1, **kw: object) -> dict[str, object]:
    return {"mediaType": oci.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": digest, "size": 10, **kw}


def test_manifest_keeps_raw_bytes_and_unknown_fields() -> None:
    raw = json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_OCI_MANIFEST,
                      "config": desc(D2, mediaType=oci.MEDIA_TYPE_OCI_CONFIG),
                      "layers": [desc(urls=["http://x"], annotations={"a": "b"})],
                      "x-unknown": {"kept": True}}, indent=3).encode()
    m = Manifest.from_json(raw)
    assert m.to_json() == raw and m.digest == digest_of(raw)
    assert m.config.digest == D2 and m.layers[0].urls == ("http://x",)
    assert m.layers[0].annotations == {"a": "b"}
    rebuilt = Manifest(config=m.config, layers=m.layers)
    assert Manifest.from_json(rebuilt.to_json()).layers == m.layers
    assert oci.parse_manifest(raw) == m


def test_media_type_detection_and_refusals() -> None:
    no_mt = json.dumps({"schemaVersion": 2, "manifests": [desc()]}).encode()
    assert isinstance(oci.parse_manifest(no_mt), Index)
    docker = json.dumps({"schemaVersion": 2, "config": desc(), "layers": []}).encode()
    assert oci.parse_manifest(docker, oci.MEDIA_TYPE_DOCKER_MANIFEST).media_type == \
        oci.MEDIA_TYPE_DOCKER_MANIFEST
    with pytest.raises(RegistryError, match="schema 1") as info:
        oci.parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}')
    assert "re-push" in (info.value.hint or "")
    with pytest.raises(RegistryError, match="unsupported manifest media type"):
        oci.parse_manifest(docker, "application/vnd.oci.artifact.manifest.v1+json")
    with pytest.raises(RegistryError, match="malformed JSON"):
        oci.parse_manifest(b"[")
    with pytest.raises(RegistryError, match="not a JSON object"):
        oci.parse_manifest(b"[]")
    with pytest.raises(RegistryError, match="expected an image manifest"):
        Manifest.from_json(no_mt)
    with pytest.raises(RegistryError, match="bad size"):
        Descriptor.from_dict(desc(size=-1))
    with pytest.raises(RegistryError, match="invalid digest"):
        Descriptor.from_dict(desc("sha256:xyz"))


def test_config_and_chain_ids() -> None:
    diff_ids = [D1, D2, "sha256:" + "3" * 64]
    raw = json.dumps({"architecture": "arm", "os": "linux", "variant": "v7",
                      "rootfs": {"type": "layers", "diff_ids": diff_ids},
                      "config": {"Env": ["A=1"]}, "extra": 1}).encode()
    cfg = ImageConfig.from_json(raw)
    assert cfg.to_json() == raw
    assert cfg.platform == Platform("linux", "arm", "v7")
    assert cfg.config["Env"] == ["A=1"] and cfg.data["extra"] == 1
    c1 = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {diff_ids[2]}".encode()).hexdigest()
    assert cfg.chain_ids == oci.chain_ids(diff_ids) == [D1, c1, c2]
    assert oci.chain_ids([]) == []
    with pytest.raises(RegistryError, match="diff_ids"):
        ImageConfig.from_json(b'{"rootfs": {"diff_ids": "x"}}')


def test_digests() -> None:
    data = b"hello"
    d = digest_of(data)
    oci.verify_bytes(data, d, 5)
    with pytest.raises(DigestMismatch, match="announced 4"):
        oci.verify_bytes(data, d, 4)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        oci.verify_bytes(b"hellO", d)
    g = Digester(d, 5)
    g.update(b"hel")
    with pytest.raises(DigestMismatch, match="truncated"):
        g.verify()
    with pytest.raises(DigestMismatch, match="longer"):
        g.update(b"lo!")
    with pytest.raises(InvalidReference):
        oci.validate_digest("sha256:" + "A" * 64)
    sha512 = "sha512:" + hashlib.sha512(data).hexdigest()
    Digester(sha512).update(data)
    oci.verify_bytes(data, sha512)
    assert oci.layer_compression(oci.MEDIA_TYPE_DOCKER_LAYER_GZIP) == "gzip"
    assert oci.layer_compression(oci.MEDIA_TYPE_OCI_LAYER_ZSTD) == "zstd"
    assert oci.layer_compression(oci.MEDIA_TYPE_OCI_LAYER) == "none"
    with pytest.raises(RegistryError):
        oci.layer_compression("text/plain")


@pytest.mark.parametrize(("text", "want"), [
    ("linux/amd64", "linux/amd64"), ("amd64", "linux/amd64"), ("linux/x86_64", "linux/amd64"),
    ("linux/arm64", "linux/arm64/v8"), ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm", "linux/arm/v7"), ("linux/arm/6", "linux/arm/v6"),
    ("linux/amd64/v1", "linux/amd64"), ("linux/amd64/v3", "linux/amd64/v3"),
])
def test_parse_platform(text: str, want: str) -> None:
    assert str(oci.parse_platform(text)) == want


def test_parse_platform_invalid() -> None:
    with pytest.raises(InvalidReference, match="invalid platform"):
        oci.parse_platform("linux//")


def test_host_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    for machine, want in [("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"),
                          ("armv7l", "linux/arm/v7"), ("armv6l", "linux/arm/v6"),
                          ("i686", "linux/386"), ("s390x", "linux/s390x")]:
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        assert str(oci.host_platform()) == want


def make_index(*plats: dict[str, str]) -> Index:
    return Index(manifests=tuple(
        Descriptor(oci.MEDIA_TYPE_OCI_MANIFEST, "sha256:" + f"{i:064x}", 1,
                   platform=Platform.from_dict(p)) for i, p in enumerate(plats)))


def test_select_manifest_docker_rules() -> None:
    idx = make_index({"os": "linux", "architecture": "amd64"},
                     {"os": "linux", "architecture": "arm64"},  # no variant = v8
                     {"os": "linux", "architecture": "arm", "variant": "v6"},
                     {"os": "unknown", "architecture": "unknown"})

    def pick(p: str) -> int:
        return int(oci.select_manifest(idx, oci.parse_platform(p)).digest[7:], 16)

    assert pick("linux/amd64") == 0
    assert pick("linux/arm64/v8") == 1
    assert pick("linux/arm/v7") == 2  # v7 runs v6
    with pytest.raises(RegistryError, match=r"offered: linux/amd64, linux/arm/v6, "
                                            r"linux/arm64/v8\)"):
        pick("linux/arm/v5")
    # arm64 falls back to 32-bit arm; amd64/v3 to amd64 and then 386.
    only_arm = make_index({"os": "linux", "architecture": "arm", "variant": "v7"})
    assert oci.select_manifest(only_arm, oci.parse_platform("linux/arm64")) is \
        only_arm.manifests[0]
    both = make_index({"os": "linux", "architecture": "386"},
                      {"os": "linux", "architecture": "amd64", "variant": "v2"})
    assert oci.select_manifest(both, oci.parse_platform("linux/amd64/v3")) is both.manifests[1]
    assert oci.select_manifest(both, oci.parse_platform("linux/amd64")) is both.manifests[0]
    # Exact variant wins over the default.
    two = make_index({"os": "linux", "architecture": "arm", "variant": "v6"},
                     {"os": "linux", "architecture": "arm", "variant": "v7"})
    assert oci.select_manifest(two, oci.parse_platform("linux/arm/v7")) is two.manifests[1]
    assert oci.platforms_of(idx)[0] == Platform("linux", "amd64")
