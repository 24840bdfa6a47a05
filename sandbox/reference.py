"""Image references with Docker's normalisation (distribution/reference ``ParseNormalizedNamed``).

``ubuntu`` → ``docker.io/library/ubuntu:latest``; ``localhost:5000/x`` keeps its domain;
``repo:tag@sha256:…`` keeps both tag and digest. Invalid input raises ``InvalidReference``.
"""

from __future__ import annotations

from sandbox._record import record, replace
from sandbox.errors import InvalidReference

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "Reference",
    "parse_reference",
    "is_image_id_prefix",
    "search_index",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# The grammar of distribution/reference's regexp.go, checked by hand rather than with ``re``:
# importing and compiling regular expressions is a noticeable share of ``sandbox run``'s
# start-up, and these are small regular languages (tests/sandbox/test_reference.py checks
# each against the original regular expressions).
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM_ANY = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WORD = _ALNUM_ANY | {"_"}
_HEX = frozenset("0123456789abcdefABCDEF")
_LOWER_HEX = frozenset("0123456789abcdef")


def _is_path_component(c: str) -> bool:
    """``[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*``"""
    if not c or c[0] not in _LOWER_ALNUM or c[-1] not in _LOWER_ALNUM:
        return False
    sep = ""
    for ch in c:
        if ch in _LOWER_ALNUM:
            if sep and sep not in (".", "_", "__") and sep.strip("-"):
                return False
            sep = ""
        elif ch in "._-":
            sep += ch
        else:
            return False
    return True


def _is_path(path: str) -> bool:
    return all(_is_path_component(c) for c in path.split("/"))


def _is_domain_component(c: str) -> bool:
    """``[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]``"""
    return (bool(c) and c[0] in _ALNUM_ANY and c[-1] in _ALNUM_ANY
            and all(ch in _ALNUM_ANY or ch == "-" for ch in c))


def _is_domain(domain: str) -> bool:
    """``(?:domain-name|\\[ipv6\\])(?::[0-9]+)?``"""
    host, port = domain, ""
    if domain.startswith("["):
        end = domain.find("]")
        if end < 0:
            return False
        host, rest = domain[:end + 1], domain[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:] or "x"
        inner = host[1:-1]
        ok = bool(inner) and all(ch in _HEX or ch == ":" for ch in inner)
    else:
        if ":" in domain:
            host, _, port = domain.rpartition(":")
            port = port or "x"
        ok = all(_is_domain_component(c) for c in host.split("."))
    return ok and (not port or port.isascii() and port.isdigit())


def _is_tag(tag: str) -> bool:
    """``[\\w][\\w.-]{0,127}`` (ASCII word characters, as Go's)"""
    return (0 < len(tag) <= 128 and tag[0] in _WORD
            and all(ch in _WORD or ch in ".-" for ch in tag))


def _is_digest_syntax(digest: str) -> bool:
    """``[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}``"""
    algo, colon, hexpart = digest.partition(":")
    if not colon or len(hexpart) < 32 or not all(ch in _HEX for ch in hexpart):
        return False
    part = ""
    for ch in algo + "+":
        if ch in "-_+.":
            if not part or not part[0].isascii() or not part[0].isalpha():
                return False
            part = ""
        elif ch in _ALNUM_ANY:
            part += ch
        else:
            return False
    return True


def _is_lower_hex(text: str, low: int, high: int) -> bool:
    return low <= len(text) <= high and all(ch in _LOWER_HEX for ch in text)


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
        if not _is_tag(tag):
            raise InvalidReference(f"invalid tag format: {tag!r}",
                                   hint="a tag is up to 128 of [A-Za-z0-9_.-], not starting "
                                        "with '.' or '-'")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """This repository pinned to ``digest`` (the tag is kept, as Docker does)."""
        _check_digest(digest)
        return replace(self, digest=digest)


def _check_digest(digest: str) -> None:
    if not _is_digest_syntax(digest):
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


def search_index(term: str) -> tuple[str, str]:
    """``search``'s term as (registry, query): a first component that names a host (with a
    '.' or ':', or ``localhost``) is the registry, checked as a reference's host is."""
    first, sep, rest = term.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"):
        return DEFAULT_DOMAIN, term
    if not _is_domain(first):
        raise InvalidReference(f"invalid registry host {first!r} in search term {term!r}")
    return first, rest


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text``; add ``:latest`` when it has neither tag nor digest.

    Raises ``InvalidReference`` with a one-line message on anything Docker would refuse.
    """
    s = text.strip()
    if not s:
        raise InvalidReference("invalid reference format: empty image name")
    if _is_lower_hex(s, 64, 64):
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
        if not _is_tag(tag):
            raise InvalidReference(f"invalid reference format: bad tag {tag!r} in {text!r}",
                                   hint="a tag is up to 128 of [A-Za-z0-9_.-]")
    domain, path = _split_domain(name)
    if not _is_domain(domain):
        raise InvalidReference(f"invalid reference format: bad registry host {domain!r} "
                               f"in {text!r}")
    if path.lower() != path:
        raise InvalidReference(f"invalid reference format: repository name must be lowercase: "
                               f"{text!r}")
    if not _is_path(path):
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
    return _is_lower_hex(text[7:] if text.startswith("sha256:") else text, 6, 64)
