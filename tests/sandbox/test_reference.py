"""Image references: Docker's normalisation and refusals."""

from __future__ import annotations

import pytest

from sandbox.errors import InvalidReference
from sandbox.reference import Reference, is_image_id_prefix, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "full", "familiar"), [
    ("ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
    ("library/ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest"),
    ("docker.io/ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest"),
    ("index.docker.io/user/app:1", "docker.io/user/app:1", "user/app:1"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest"),
    ("host.example:443/ns/repo:tag", "host.example:443/ns/repo:tag",
     "host.example:443/ns/repo:tag"),
    ("ghcr.io/o/r/sub.img_x__y-z", "ghcr.io/o/r/sub.img_x__y-z:latest",
     "ghcr.io/o/r/sub.img_x__y-z:latest"),
    (f"ubuntu@{D}", f"docker.io/library/ubuntu@{D}", f"ubuntu@{D}"),
    (f"ubuntu:22.04@{D}", f"docker.io/library/ubuntu:22.04@{D}", f"ubuntu:22.04@{D}"),
    (f"127.0.0.1:5000/a/b:c@{D}", f"127.0.0.1:5000/a/b:c@{D}", f"127.0.0.1:5000/a/b:c@{D}"),
    ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000/x:y"),
    ("Registry.Example/x", "Registry.Example/x:latest", "Registry.Example/x:latest"),
])
def test_normalisation(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert parse_reference(str(ref)) == ref


def test_fields_and_helpers() -> None:
    ref = parse_reference("localhost:5000/ns/app:v1")
    assert ref == Reference("localhost:5000", "ns/app", "v1", None)
    assert ref.name == "localhost:5000/ns/app"
    assert ref.reference == "v1"
    assert str(ref.with_tag("v2")) == "localhost:5000/ns/app:v2"
    pinned = ref.with_digest(D)
    assert pinned.reference == D and pinned.tag == "v1"
    assert str(pinned.with_tag("x")) == "localhost:5000/ns/app:x"
    assert parse_reference("ubuntu", default_tag=False).tag is None
    assert parse_reference("ubuntu").familiar_name == "ubuntu"
    with pytest.raises(InvalidReference):
        ref.with_tag("-bad")
    with pytest.raises(dataclass_error()):
        ref.tag = "x"  # type: ignore[misc]


def dataclass_error() -> type[Exception]:
    from sandbox._record import FrozenInstanceError

    return FrozenInstanceError


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("UPPER", "must be lowercase"),
    ("user/UPPER:tag", "must be lowercase"),
    ("a" * 64, "64-byte hexadecimal"),
    ("ubuntu:", "bad tag"),
    ("ubuntu:-x", "bad tag"),
    ("ubuntu:" + "t" * 129, "bad tag"),
    ("ubuntu@sha256:abc", "invalid digest"),
    ("ubuntu@sha256:" + "A" * 64, "invalid sha256 digest"),
    ("ubuntu@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("a//b", "invalid reference format"),
    ("a/b_", "invalid reference format"),
    ("-a", "invalid reference format"),
    ("a..b", "invalid reference format"),
    ("host:port/x", "bad registry host"),
    ("x/" + "a" * 300, "more than 255"),
    ("a b", "invalid reference format"),
])
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message) as info:
        parse_reference(text)
    assert "\n" not in info.value.one_line()


def test_image_id_prefix() -> None:
    assert is_image_id_prefix("abcdef")
    assert is_image_id_prefix("sha256:" + "0" * 64)
    assert not is_image_id_prefix("abc")
    assert not is_image_id_prefix("ubuntu")
    assert not is_image_id_prefix("0" * 65)


# -- the hand-written grammar checks against distribution/reference's regular expressions --------

_ORACLE = {
    "path_component": r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*",
    "domain": r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
              r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
              r"|\[(?:[a-fA-F0-9:]+)\])(?::[0-9]+)?",
    "tag": r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    "digest": r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}",
}


def _random_strings(alphabet: str, n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


@pytest.mark.parametrize(("kind", "alphabet", "check"), [
    ("path_component", "ab9._-A:/", "_is_path_component"),
    ("domain", "aZ9.-:[]f", "_is_domain"),
    ("tag", "aZ9_.-é:", "_is_tag"),
])
def test_grammar_checks_agree_with_the_regular_expressions(kind: str, alphabet: str,
                                                           check: str) -> None:
    import re

    from sandbox import reference

    oracle = re.compile(_ORACLE[kind])
    func = getattr(reference, check)
    samples = _random_strings(alphabet, 20000, seed=len(kind)) + [
        "a", "a.b", "a__b", "a___b", "a--b", "a-", "-a", "a..b", "._", "localhost:5000",
        "[::1]:5000", "[::1]", "[]", "host:", ":5000", "a" * 129, "é"]
    for s in samples:
        assert func(s) == bool(oracle.fullmatch(s)), (kind, s)


def test_digest_check_agrees_with_the_regular_expression() -> None:
    import re

    from sandbox.reference import _is_digest_syntax

    oracle = re.compile(_ORACLE["digest"])
    hexes = ["0" * 32, "a" * 64, "G" * 40, "0" * 31, "Ab" * 20]
    for algo in _random_strings("sA9-_+.", 5000, seed=7) + ["sha256", "sha256+b64u", "x.y"]:
        for h in hexes:
            d = f"{algo}:{h}"
            assert _is_digest_syntax(d) == bool(oracle.fullmatch(d)), d
