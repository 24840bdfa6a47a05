""".dockerignore rules, with the cases of moby/patternmatcher's tests ported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.build import (
    IgnoreFileError,
    Matcher,
    clean_path,
    iter_context,
    load_dockerignore,
    read_ignore_patterns,
)

EXACT, INEXACT, FAIL = "exact", "inexact", "fail"

# (pattern, path, result): EXACT when the pattern matches the path itself, INEXACT when it only
# matches one of the path's parent directories, FAIL when neither (moby TestMatches).
MATCHES = [
    ("**", "file", EXACT), ("**", "file/", EXACT), ("**/", "file", EXACT),
    ("**/", "file/", EXACT), ("**", "/", EXACT), ("**/", "/", EXACT),
    ("**", "dir/file", EXACT), ("**/", "dir/file", EXACT), ("**", "dir/file/", EXACT),
    ("**/", "dir/file/", EXACT), ("**/**", "dir/file", EXACT), ("**/**", "dir/file/", EXACT),
    ("dir/**", "dir/file", EXACT), ("dir/**", "dir/file/", EXACT),
    ("dir/**", "dir/dir2/file", EXACT), ("dir/**", "dir/dir2/file/", EXACT),
    ("**/dir", "dir", EXACT), ("**/dir", "dir/file", INEXACT),
    ("**/dir2/*", "dir/dir2/file", EXACT), ("**/dir2/*", "dir/dir2/file/", INEXACT),
    ("**/dir2/**", "dir/dir2/dir3/file", EXACT), ("**/dir2/**", "dir/dir2/dir3/file/", EXACT),
    ("**file", "file", EXACT), ("**file", "dir/file", EXACT), ("**/file", "dir/file", EXACT),
    ("**file", "dir/dir/file", EXACT), ("**/file", "dir/dir/file", EXACT),
    ("**/file*", "dir/dir/file", EXACT), ("**/file*", "dir/dir/file.txt", EXACT),
    ("**/file*txt", "dir/dir/file.txt", EXACT), ("**/file*.txt", "dir/dir/file.txt", EXACT),
    ("**/file*.txt*", "dir/dir/file.txt", EXACT), ("**/**/*.txt", "dir/dir/file.txt", EXACT),
    ("**/**/*.txt2", "dir/dir/file.txt", FAIL), ("**/*.txt", "file.txt", EXACT),
    ("**/**/*.txt", "file.txt", EXACT), ("a**/*.txt", "a/file.txt", EXACT),
    ("a**/*.txt", "a/dir/file.txt", EXACT), ("a**/*.txt", "a/dir/dir/file.txt", EXACT),
    ("a/*.txt", "a/dir/file.txt", FAIL), ("a/*.txt", "a/file.txt", EXACT),
    ("a/*.txt**", "a/file.txt", EXACT), ("a[b-d]e", "ae", FAIL), ("a[b-d]e", "ace", EXACT),
    ("a[b-d]e", "aae", FAIL), ("a[^b-d]e", "aze", EXACT), (".*", ".foo", EXACT),
    (".*", "foo", FAIL), ("abc.def", "abcdef", FAIL), ("abc.def", "abc.def", EXACT),
    ("abc.def", "abcZdef", FAIL), ("abc?def", "abcZdef", EXACT), ("abc?def", "abcdef", FAIL),
    ("**/foo/bar", "foo/bar", EXACT), ("**/foo/bar", "dir/foo/bar", EXACT),
    ("**/foo/bar", "dir/dir2/foo/bar", EXACT), ("abc/**", "abc", FAIL),
    ("abc/**", "abc/def", EXACT), ("abc/**", "abc/def/ghi", EXACT), ("**/.foo", ".foo", EXACT),
    ("**/.foo", "bar.foo", FAIL), ("a(b)c/def", "a(b)c/def", EXACT),
    ("a(b)c/def", "a(b)c/xyz", FAIL), ("a.|)$(}+{bc", "a.|)$(}+{bc", EXACT),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", EXACT),
    ("a\\\\", "a\\", EXACT), ("a\\*b", "a*b", EXACT),
]


@pytest.mark.parametrize(("pattern", "path", "result"), MATCHES)
def test_pattern_matches_exactly(pattern: str, path: str, result: str) -> None:
    (compiled,) = Matcher([pattern]).patterns
    assert compiled.match(path) is (result == EXACT)


@pytest.mark.parametrize(("pattern", "path", "result"),
                         [case for case in MATCHES if case[1] != "/"])
def test_pattern_matches_path_or_parent(pattern: str, path: str, result: str) -> None:
    assert Matcher([pattern]).matches(path) is (result != FAIL)


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["*.go"], ".", False),
    ([], "any/path/there", False),
    (["*", "!*.md", "docs/*"], "README.md", False),
    (["*/*.txt"], "a/b.txt", True),
    (["*/*.txt"], "b.txt", False),
    (["*/*.txt"], "a/b/c.txt", False),
    (["abc"], "x/abc", False),
])
def test_multiple_patterns_last_match_wins(patterns: list[str], path: str,
                                           excluded: bool) -> None:
    assert Matcher(patterns).matches(path) is excluded


# Go's filepath.Match cases, as moby's TestMatch runs them through Matches().
@pytest.mark.parametrize(("pattern", "path", "excluded"), [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True), ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True), ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False),
    ("[\\]a]", "]", True), ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True),
    ("[x\\-]", "z", False), ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False),
    ("*x", "xxx", True),
])
def test_go_filepath_match_cases(pattern: str, path: str, excluded: bool) -> None:
    assert Matcher([pattern]).matches(path) is excluded


@pytest.mark.parametrize("pattern", [
    "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!",
])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(IgnoreFileError):
        Matcher([pattern])


def test_patterns_are_trimmed_cleaned_and_blank_ones_dropped() -> None:
    matcher = Matcher(["docs", "  !docs/README.md  ", "", "./a/./b/../c/"])
    assert [p.text for p in matcher.patterns] == ["docs", "docs/README.md", "a/c"]
    assert matcher.has_exclusions
    assert matcher.matches("a/c/x") and not matcher.matches("a/b")


def test_read_ignore_patterns() -> None:
    text = ("\ufefftest1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
            "! /inverted/abs/path\n!\n! \n  # not a comment: indented\n")
    assert read_ignore_patterns(text) == [
        "test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!",
        "# not a comment: indented"]


def test_clean_path() -> None:
    assert [clean_path(p) for p in ["", ".", "a//b/", "./a/../../b", "/../a", "a/./b/.."]] == [
        ".", ".", "a/b", "../b", "/a", "a"]


def _tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_context_walk(tmp_path: Path) -> None:
    _tree(tmp_path, ["Dockerfile", "a.txt", "README.md", "docs/guide.md", "docs/img/x.png",
                     "node_modules/pkg/index.js", "src/main.py", "src/test/data.bin",
                     ".git/config", "build/out/keep.txt", "build/out/drop.o"])
    (tmp_path / ".dockerignore").write_text(
        "# comment\n*.md\n!README*.md\nnode_modules\n/.git\nsrc/**/data.bin\n"
        "Dockerfile\n.dockerignore\nbuild\n!build/out/keep.txt\n")
    os.symlink("/etc", tmp_path / "link")
    # "*.md" matches only at the top (docs/guide.md stays), as in Docker
    matcher = load_dockerignore(tmp_path)
    assert list(iter_context(tmp_path, matcher)) == [
        ".dockerignore", "Dockerfile", "README.md", "a.txt", "build", "build/out",
        "build/out/keep.txt", "docs", "docs/guide.md", "docs/img", "docs/img/x.png", "link", "src",
        "src/main.py", "src/test"]


def test_excluded_directory_without_exceptions_is_not_walked(tmp_path: Path) -> None:
    _tree(tmp_path, ["keep", "skip/a", "skip/b/c"])
    assert list(iter_context(tmp_path, Matcher(["skip"]))) == ["keep"]


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    _tree(tmp_path, ["app/Dockerfile", "a", "b"])
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "app" / "Dockerfile.dockerignore").write_text("b\n*\n")
    matcher = load_dockerignore(tmp_path, dockerfile="app/Dockerfile")
    assert not matcher.matches("app/Dockerfile")
    assert matcher.matches("b") and matcher.matches("a")
    assert list(iter_context(tmp_path, load_dockerignore(tmp_path))) == [
        ".dockerignore", "app", "app/Dockerfile", "app/Dockerfile.dockerignore", "b"]


def test_no_ignore_file_sends_everything(tmp_path: Path) -> None:
    _tree(tmp_path, ["x/y", "z"])
    assert list(iter_context(tmp_path, load_dockerignore(tmp_path))) == ["x", "x/y", "z"]
