"""OCI and Docker image types: media types, descriptors, manifests, indexes, configs, platforms.

Parsed objects keep the exact bytes they came from (``raw``): a manifest's digest is the digest of
those bytes, so re-serialising must never be used to compute or push a digest.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import DigestMismatch, InvalidReference, RegistryError

__all__ = [
    "MEDIA_TYPE_OCI_MANIFEST", "MEDIA_TYPE_OCI_INDEX", "MEDIA_TYPE_OCI_CONFIG",
    "MEDIA_TYPE_OCI_LAYER", "MEDIA_TYPE_OCI_LAYER_GZIP", "MEDIA_TYPE_OCI_LAYER_ZSTD",
    "MEDIA_TYPE_DOCKER_MANIFEST", "MEDIA_TYPE_DOCKER_MANIFEST_LIST", "MEDIA_TYPE_DOCKER_CONFIG",
    "MEDIA_TYPE_DOCKER_LAYER_GZIP", "MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP",
    "MEDIA_TYPES_SCHEMA1", "MANIFEST_MEDIA_TYPES", "INDEX_MEDIA_TYPES", "LAYER_MEDIA_TYPES",
    "CONFIG_MEDIA_TYPES",
    "ACCEPT_MANIFESTS",
    "Descriptor", "Manifest", "Index", "ImageConfig", "Platform",
    "digest_of", "validate_digest", "verify_bytes", "Digester", "parse_manifest",
    "layer_compression",
    "host_platform", "parse_platform", "select_manifest", "platforms_of", "chain_ids",
]

MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MEDIA_TYPES_SCHEMA1 = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})
LAYER_MEDIA_TYPES = frozenset({
    MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
})
#: The Accept header for manifest requests, most wanted first.
ACCEPT_MANIFESTS = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
                    MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_SCHEMA1_HINT = ("Docker image manifest schema 1 is deprecated and not supported; "
                 "re-push the image with a current Docker, Podman or skopeo")


# --- digests -------------------------------------------------------------------------------------

def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256/sha512 digest; raise ``InvalidReference``."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidReference(f"invalid digest {digest!r}",
                               hint="expected sha256:<64 lowercase hex> or sha512:<128 hex>")
    return digest


class Digester:
    """Incrementally hash a stream and check it against an expected digest and size."""

    def __init__(self, expected: str, size: int | None = None) -> None:
        algo = validate_digest(expected).partition(":")[0]
        self.expected = expected
        self.size = size
        self.count = 0
        self._hash = hashlib.new(algo)

    def update(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.size is not None and self.count > self.size:
            raise DigestMismatch(f"blob {self.expected} is longer than its announced "
                                 f"{self.size} bytes", hint="the registry or file is corrupt")
        self._hash.update(chunk)

    @property
    def digest(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def verify(self) -> None:
        """Raise ``DigestMismatch`` unless the bytes seen match the size and digest."""
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(f"blob {self.expected} is truncated: got {self.count} of "
                                 f"{self.size} bytes", hint="retry the transfer")
        got = self.digest
        if got != self.expected:
            raise DigestMismatch(f"digest mismatch: expected {self.expected}, got {got}",
                                 hint="the content is corrupt or was tampered with; retry")


def verify_bytes(data: bytes, digest: str, size: int | None = None) -> None:
    """Check ``data`` against ``digest`` (and ``size``), raising ``DigestMismatch``."""
    if size is not None and len(data) != size:
        raise DigestMismatch(f"blob {digest} is {len(data)} bytes, announced {size}",
                             hint="the content is corrupt or truncated; retry")
    d = Digester(digest)
    d.update(data)
    d.verify()


# --- platforms -----------------------------------------------------------------------------------

_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64", "armhf": "arm", "armel": "arm",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "386": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64le": "mips64le",
}


@dataclass(frozen=True)
class Platform:
    """An OCI platform with GOARCH naming; compare after ``normalized()``."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def normalized(self) -> Platform:
        """containerd's ``Normalize``: alias arches, default variants (arm→v7, arm64→v8)."""
        arch = _ARCH_ALIASES.get(self.architecture.lower(), self.architecture.lower())
        variant = self.variant.lower()
        if self.architecture.lower() in ("armhf",):
            variant = variant or "v7"
        elif self.architecture.lower() == "armel":
            variant = variant or "v6"
        if arch == "arm64":
            variant = "v8" if variant in ("", "8", "v8", "v8.0") else variant
        elif arch == "arm":
            variant = {"": "v7", "7": "v7", "6": "v6", "5": "v5", "8": "v8"}.get(variant, variant)
        elif arch == "amd64":
            variant = "" if variant in ("", "v1") else variant
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls(os=str(d.get("os", "")), architecture=str(d.get("architecture", "")),
                   variant=str(d.get("variant", "") or ""),
                   os_version=str(d.get("os.version", "") or ""),
                   os_features=tuple(d.get("os.features") or ()))


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]`` or ``arch`` (Docker's ``--platform``), normalised."""
    parts = text.strip().split("/")
    if len(parts) == 1 and parts[0]:
        return Platform(architecture=parts[0]).normalized()
    if 2 <= len(parts) <= 3 and all(parts):
        variant = parts[2] if len(parts) == 3 else ""
        return Platform(os=parts[0], architecture=parts[1], variant=variant).normalized()
    raise InvalidReference(f"invalid platform {text!r}", hint="use os/arch[/variant], "
                           "e.g. linux/amd64 or linux/arm/v7")


def host_platform() -> Platform:
    """The platform of this machine, GOARCH-named and normalised."""
    machine = _platform.machine().lower()
    if machine.startswith("armv"):
        version = machine[4:5]
        return Platform(architecture="arm", variant=f"v{version}").normalized()
    return Platform(architecture=machine).normalized()


def _platform_vector(p: Platform) -> list[Platform]:
    """containerd's ``platformVector``: what ``p`` can run, best first."""
    vector = [p]
    if p.architecture == "amd64":
        level = p.variant[1:] if p.variant.startswith("v") else ""
        if level.isdigit():
            vector += [Platform(p.os, "amd64", f"v{n}" if n > 1 else "")
                       for n in range(int(level) - 1, 0, -1)]
        vector.append(Platform(p.os, "386"))
    elif p.architecture == "arm":
        level = p.variant[1:]
        if level.isdigit():
            vector += [Platform(p.os, "arm", f"v{n}") for n in range(int(level) - 1, 4, -1)]
    elif p.architecture == "arm64":
        vector += _platform_vector(Platform(p.os, "arm", "v8"))[1:]
    return vector


def select_manifest(index: Index, platform: Platform | None = None) -> Descriptor:
    """The descriptor in ``index`` for ``platform`` (default: the host), Docker's preference order.

    Entries for os ``unknown`` (attestations) are ignored. Raises ``ImageNotFound``-style
    ``RegistryError`` naming the platforms on offer when nothing matches.
    """
    want = (platform or host_platform()).normalized()
    candidates = [(d, d.platform.normalized()) for d in index.manifests if d.platform is not None]
    for rank in _platform_vector(want):
        for desc, have in candidates:
            if (have.os, have.architecture, have.variant) == (rank.os, rank.architecture,
                                                              rank.variant):
                return desc
    if len(index.manifests) == 1 and index.manifests[0].platform is None:
        return index.manifests[0]
    offered = ", ".join(sorted({str(p) for _, p in candidates if p.os != "unknown"})) or "none"
    raise RegistryError(f"no image for platform {want} in the index (offered: {offered})",
                        hint="pass --platform with one of the offered platforms")


# --- descriptors, manifests, indexes, configs ----------------------------------------------------

def _require(d: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = d.get(key)
    if not isinstance(value, kind):
        raise RegistryError(f"malformed {what}: field {key!r} missing or not {kind.__name__}")
    return value


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Descriptor:
        if not isinstance(d, Mapping):
            raise RegistryError("malformed descriptor: not a JSON object")
        digest = _require(d, "digest", str, "descriptor")
        try:
            validate_digest(digest)
        except InvalidReference as exc:
            raise RegistryError(f"malformed descriptor: {exc.message}") from None
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(f"malformed descriptor {digest}: bad size {size!r}")
        plat = d.get("platform")
        return cls(media_type=str(d.get("mediaType", "")), digest=digest, size=size,
                   urls=tuple(d.get("urls") or ()), annotations=dict(d.get("annotations") or {}),
                   platform=Platform.from_dict(plat) if isinstance(plat, Mapping) else None,
                   artifact_type=d.get("artifactType"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"malformed JSON in {what}: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"malformed {what}: top level is not a JSON object")
    return data


def _dump_json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _detect_media_type(data: Mapping[str, Any], declared: str | None) -> str:
    media_type = data.get("mediaType") or declared or ""
    if data.get("schemaVersion") == 1 or media_type in MEDIA_TYPES_SCHEMA1:
        raise RegistryError("image manifest is schema 1", hint=_SCHEMA1_HINT)
    if not media_type or media_type in ("application/json", "text/plain"):
        media_type = MEDIA_TYPE_OCI_INDEX if "manifests" in data else MEDIA_TYPE_OCI_MANIFEST
    if media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
        raise RegistryError(f"unsupported manifest media type {media_type!r}",
                            hint="only OCI and Docker v2 schema 2 images can be used")
    return media_type


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2 schema 2). ``raw`` is the exact bytes."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_OCI_MANIFEST
    annotations: Mapping[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    raw: bytes = b""

    @property
    def digest(self) -> str:
        return digest_of(self.to_json())

    @classmethod
    def from_json(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        data = _load_json(raw, "manifest")
        mt = _detect_media_type(data, media_type)
        if mt not in MANIFEST_MEDIA_TYPES:
            raise RegistryError(f"expected an image manifest, got {mt}")
        layers = data.get("layers") or []
        if not isinstance(layers, list):
            raise RegistryError("malformed manifest: 'layers' is not a list")
        subject = data.get("subject")
        return cls(config=Descriptor.from_dict(_require(data, "config", dict, "manifest")),
                   layers=tuple(Descriptor.from_dict(x) for x in layers), media_type=mt,
                   annotations=dict(data.get("annotations") or {}),
                   subject=Descriptor.from_dict(subject) if isinstance(subject, dict) else None,
                   artifact_type=data.get("artifactType"), raw=bytes(raw))

    def to_json(self) -> bytes:
        """The original bytes when parsed, else a compact serialisation."""
        if self.raw:
            return self.raw
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "config": self.config.to_dict(),
                               "layers": [x.to_dict() for x in self.layers]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return _dump_json(out)


@dataclass(frozen=True)
class Index:
    """An image index / Docker manifest list. ``raw`` is the exact bytes."""

    manifests: tuple[Descriptor, ...]
    media_type: str = MEDIA_TYPE_OCI_INDEX
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: bytes = b""

    @property
    def digest(self) -> str:
        return digest_of(self.to_json())

    @classmethod
    def from_json(cls, raw: bytes, media_type: str | None = None) -> Index:
        data = _load_json(raw, "index")
        mt = _detect_media_type(data, media_type)
        if mt not in INDEX_MEDIA_TYPES:
            raise RegistryError(f"expected an image index, got {mt}")
        manifests = data.get("manifests")
        if not isinstance(manifests, list):
            raise RegistryError("malformed index: 'manifests' is not a list")
        return cls(manifests=tuple(Descriptor.from_dict(x) for x in manifests), media_type=mt,
                   annotations=dict(data.get("annotations") or {}), raw=bytes(raw))

    def to_json(self) -> bytes:
        if self.raw:
            return self.raw
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                               "manifests": [x.to_dict() for x in self.manifests]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return _dump_json(out)


def parse_manifest(raw: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse either kind, deciding by media type (declared, in the body, or by shape)."""
    mt = _detect_media_type(_load_json(raw, "manifest"), media_type)
    if mt in INDEX_MEDIA_TYPES:
        return Index.from_json(raw, mt)
    return Manifest.from_json(raw, mt)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config the engine reads; ``data`` keeps every field."""

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    variant: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    created: str | None = None
    author: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes = b""

    @property
    def platform(self) -> Platform:
        return Platform(os=self.os, architecture=self.architecture, variant=self.variant)

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @classmethod
    def from_json(cls, raw: bytes) -> ImageConfig:
        data = _load_json(raw, "image config")
        rootfs = data.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") or [] if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(x, str) for x in diff_ids):
            raise RegistryError("malformed image config: rootfs.diff_ids is not a list of digests")
        return cls(architecture=str(data.get("architecture", "")), os=str(data.get("os", "")),
                   diff_ids=tuple(diff_ids), variant=str(data.get("variant", "") or ""),
                   config=dict(data.get("config") or {}),
                   history=tuple(data.get("history") or ()), created=data.get("created"),
                   author=data.get("author"), data=data, raw=bytes(raw))

    def to_json(self) -> bytes:
        if self.raw:
            return self.raw
        out = dict(self.data)
        out.update({"architecture": self.architecture, "os": self.os,
                    "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)}})
        if self.variant:
            out["variant"] = self.variant
        if self.config:
            out["config"] = dict(self.config)
        if self.history:
            out["history"] = [dict(h) for h in self.history]
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        return _dump_json(out)


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain ids: ``C0 = D0``, ``Cn = sha256(Cn-1 + " " + Dn)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else digest_of(f"{out[-1]} {diff_id}".encode()))
    return out


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type; ``RegistryError`` if not a layer."""
    if media_type not in LAYER_MEDIA_TYPES:
        raise RegistryError(f"unsupported layer media type {media_type!r}")
    if media_type.endswith("zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    return "none"


def platforms_of(index: Index) -> Sequence[Platform]:
    """The platforms an index offers (attestation entries excluded)."""
    return [d.platform for d in index.manifests
            if d.platform is not None and d.platform.os != "unknown"]
