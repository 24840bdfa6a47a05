"""Image references with Docker's normalisation (distribution/reference ``ParseNormalizedNamed``).

``ubuntu`` → ``docker.io/library/ubuntu:latest``; ``localhost:5000/x`` keeps its domain;
``repo:tag@sha256:…`` keeps both tag and digest. Invalid input raises ``InvalidReference``.
"""

from __future__ import annotations

import re

from sandbox._record import record, replace
from sandbox.errors import InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "parse_reference",
    "is_image_id_prefix",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_PATH = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH}$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_ANCHORED_ID_RE = re.compile(r"^[a-f0-9]{64}$")
_ID_PREFIX_RE = re.compile(r"^(?:sha256:)?[a-f0-9]{6,64}$")
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}


@record
class Reference:
    """A normalised image reference. ``tag`` and ``digest`` may both be set."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path``, the repository's full name."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository name as Docker prints it (``ubuntu``, ``user/app``, ``host:5000/x``)."""
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            if path.startswith(OFFICIAL_REPO_PREFIX) and path.count("/") == 1:
                path = path[len(OFFICIAL_REPO_PREFIX):]
            return path
        return self.name

    @property
    def familiar(self) -> str:
        """The short Docker-style form: ``ubuntu:22.04``, ``localhost:5000/x@sha256:…``."""
        return self.familiar_name + self._suffix()

    def _suffix(self) -> str:
        suffix = f":{self.tag}" if self.tag else ""
        if self.digest:
            suffix += f"@{self.digest}"
        return suffix

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in a registry URL: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """This repository with ``tag`` and no digest."""
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"invalid tag format: {tag!r}",
                                   hint="a tag is up to 128 of [A-Za-z0-9_.-], not starting "
                                        "with '.' or '-'")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """This repository pinned to ``digest`` (the tag is kept, as Docker does)."""
        _check_digest(digest)
        return replace(self, digest=digest)


def _check_digest(digest: str) -> None:
    if not _DIGEST_RE.match(digest):
        raise InvalidReference(f"invalid digest format: {digest!r}",
                               hint="expected ALGORITHM:HEX, e.g. sha256:<64 hex digits>")
    algo, _, hexpart = digest.partition(":")
    want = _DIGEST_LENGTHS.get(algo)
    if want is None:
        raise InvalidReference(f"unsupported digest algorithm: {algo!r}",
                               hint="use sha256 or sha512")
    if len(hexpart) != want or hexpart != hexpart.lower():
        raise InvalidReference(f"invalid {algo} digest: {digest!r}",
                               hint=f"expected {want} lowercase hex digits")


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: the first component is a domain only if it looks like one."""
    first, sep, rest = name.partition("/")
    if not sep or (
        "." not in first and ":" not in first and first != "localhost"
        and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text``; add ``:latest`` when it has neither tag nor digest.

    Raises ``InvalidReference`` with a one-line message on anything Docker would refuse.
    """
    s = text.strip()
    if not s:
        raise InvalidReference("invalid reference format: empty image name")
    if _ANCHORED_ID_RE.match(s):
        raise InvalidReference(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings",
            hint="to name an image by id use its id directly, not as a repository")
    name, at, digest = s.partition("@")
    if at:
        _check_digest(digest)
    # A tag is the part after the last ':' that has no '/' after it.
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {text!r}",
                                   hint="a tag is up to 128 of [A-Za-z0-9_.-]")
    domain, path = _split_domain(name)
    if not _DOMAIN_RE.match(domain):
        raise InvalidReference(f"invalid reference format: bad registry host {domain!r} "
                               f"in {text!r}")
    if path.lower() != path:
        raise InvalidReference(f"invalid reference format: repository name must be lowercase: "
                               f"{text!r}")
    if not _PATH_RE.match(path):
        raise InvalidReference(f"invalid reference format: {text!r}",
                               hint="a repository is lowercase [a-z0-9] components separated "
                                    "by '/', '.', '_', '__' or '-'")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} "
                               f"characters: {text[:40]!r}...")
    if tag is None and not at and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest if at else None)


def is_image_id_prefix(text: str) -> bool:
    """True if ``text`` looks like an image id or a prefix of one (6-64 hex, optional ``sha256:``).

    Docker tries a reference first, then an id prefix; the caller decides the order.
    """
    return bool(_ID_PREFIX_RE.match(text))
