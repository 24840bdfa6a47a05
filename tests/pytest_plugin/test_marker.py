"""The marker, the options and ini keys, their precedence and errors; the hookspecs."""

from __future__ import annotations

import pytest

SHOW_REQUEST = '''
import pytest
from pytest_plugin.plugin import item_request

def report(request):
    req = item_request(request.node)
    print(f"REQ image={req.image} keep={req.keep} network={req.network} "
          f"driver={req.storage_driver} env={list(req.env)} timeout={req.timeout} "
          f"layer={req.layer}")
'''


@pytest.fixture
def inner(pytester: pytest.Pytester, store_root):
    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("-p", "no:cacheprovider",
                                            f"--sandbox-root={store_root}", *args)
    return run


def test_marker_is_documented(inner) -> None:
    result = inner("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.container(image=None, *, isolate=False, network=None, volumes=(), "
        "env=None, workdir=None, user=None, ports=(), keep=None, timeout=None, command=None)*"])


def test_options_are_documented(inner) -> None:
    result = inner("--help")
    result.stdout.fnmatch_lines(["*rootless containers*", "*--sandbox-image=IMAGE*",
                                 "*--sandbox-root=DIR*", "*--sandbox-keep=*",
                                 "*--sandbox-storage-driver=*", "*--sandbox-layer=*",
                                 "*--sandbox-network=*"])
    result.stdout.fnmatch_lines(["*sandbox_image (string)*"])


@pytest.mark.parametrize(("marker", "expected"), [
    ("container(imge='host')", "unknown argument 'imge' (did you mean 'image'?)"),
    ("container(network='bridge')", "network mode 'bridge' is not supported; use 'none' or "
     "'host' or 'slirp4netns' or 'pasta'"),
    ("container(keep='sometimes')", "keep 'sometimes' is invalid; use one of none, failed, all"),
    ("container(timeout=-1)", "timeout must be a positive number of seconds, not -1"),
    ("container(isolate='yes')", "isolate must be True or False, not 'yes'"),
    ("container(isolate=True, ports=['80'])", "ports= needs the container fixture"),
    ("container(ports=['http'])", "port 'http' is invalid"),
    ("container(volumes=['relative'])", "volume 'relative' is invalid"),
    ("container(env='A=1')", "env must be a dict or a list of 'NAME=value'"),
    ("container(workdir='rel/dir')", "workdir 'rel/dir' must be an absolute path"),
    ("container(image=[])", "image must be a reference or a non-empty list of them"),
    ("container('host', 'extra')", "too many positional arguments"),
])
def test_bad_marker_names_the_test(pytester: pytest.Pytester, inner, marker: str,
                                   expected: str) -> None:
    pytester.makepyfile(test_bad=f'''
        import pytest

        @pytest.mark.{marker}
        def test_victim():
            pass
    ''')
    result = inner()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        f"*test_bad.py::test_victim: @pytest.mark.container: *{expected}*"])


def test_image_list_parametrizes_with_ids(pytester: pytest.Pytester, inner) -> None:
    pytester.makepyfile(test_ids='''
        import pytest

        @pytest.mark.container(image=["host", "docker.io/library/alpine:3.19"])
        def test_each(container_request_image):
            pass

        @pytest.fixture
        def container_request_image(request):
            from pytest_plugin.plugin import item_request
            return item_request(request.node).image
    ''')
    result = inner("--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_ids.py::test_each[[]host[]]",
                                 "test_ids.py::test_each[[]docker.io_library_alpine:3.19[]]"])


@pytest.mark.parametrize(("ini", "args", "marker", "expected"), [
    ("", [], "", "image=host keep=none network=none driver=None * layer=memory"),
    ("sandbox_image = ini-image\nsandbox_keep = all\nsandbox_network = host\n"
     "sandbox_layer = disk", [], "", "image=ini-image keep=all network=host * layer=disk"),
    ("sandbox_layer = disk", ["--sandbox-layer=memory"], "", "image=host * layer=memory"),
    ("sandbox_image = ini-image\nsandbox_keep = all",
     ["--sandbox-image=cli-image", "--sandbox-keep=failed", "--sandbox-storage-driver=copy"], "",
     "image=cli-image keep=failed network=none driver=copy"),
    ("sandbox_image = ini-image", ["--sandbox-image=cli-image", "--sandbox-network=host"],
     "(image='marker-image', keep='all', network='none', env={'A': 1}, timeout=5)",
     "image=marker-image keep=all network=none driver=None env=[[]'A=1'[]] timeout=5.0"),
])
def test_precedence_marker_cli_ini_default(pytester: pytest.Pytester, inner, ini: str,
                                           args: list[str], marker: str, expected: str) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_prec=SHOW_REQUEST + f'''
@pytest.mark.container{marker}
def test_show(request):
    report(request)
''')
    result = inner("-s", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*REQ {expected}*"])


@pytest.mark.parametrize(("ini", "message"), [
    ("sandbox_keep = sometimes",
     "sandbox_keep (ini): invalid value 'sometimes'; use one of none, failed, all"),
    ("sandbox_layer = ram", "sandbox_layer (ini): invalid value 'ram'; use one of memory, disk"),
])
def test_bad_ini_value_says_where(pytester: pytest.Pytester, inner, ini: str,
                                  message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    result = inner()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_bad_network_option_says_where(pytester: pytest.Pytester, inner) -> None:
    result = inner("--sandbox-network=bridge")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sandbox-network: network mode 'bridge' is not supported; "
                                 "use 'none' or 'host' or 'slirp4netns' or 'pasta'*"])
    pytester.makeini("[pytest]\nsandbox_network = slirp4netns:mtu=1\n")
    result = inner()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sandbox_network (ini): invalid slirp4netns option 'mtu=1'*"])


def test_default_image_hook(pytester: pytest.Pytester, inner) -> None:
    pytester.makeconftest('''
        def pytest_sandbox_default_image(config):
            return "from-hook:1"
    ''')
    pytester.makepyfile(test_hook=SHOW_REQUEST + '''
@pytest.mark.container
def test_show(request):
    report(request)

@pytest.mark.container(image="explicit")
def test_marker_wins(request):
    report(request)
''')
    result = inner("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*REQ image=from-hook:1 *", "*REQ image=explicit *"])
    # the command line beats the hook's default
    inner("-s", "--sandbox-image=cli").stdout.fnmatch_lines(["*REQ image=cli *"])


def test_spec_hook_changes_the_request(pytester: pytest.Pytester, inner) -> None:
    pytester.makeconftest('''
        import dataclasses

        def pytest_sandbox_container_spec(item, spec):
            if "tuned" in item.name:
                return dataclasses.replace(spec, env=spec.env + ("TUNED=1",), network="host")
    ''')
    pytester.makepyfile(test_spec=SHOW_REQUEST + '''
@pytest.mark.container
def test_tuned(request):
    report(request)

@pytest.mark.container
def test_plain(request):
    report(request)
''')
    result = inner("-s")
    result.stdout.fnmatch_lines(["*REQ image=host keep=none network=host *env=[[]'TUNED=1'[]]*",
                                 "*REQ image=host keep=none network=none *env=[[][]]*"])


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off='''
        import pytest

        @pytest.mark.container(isolate=True)
        def test_x():
            pass
    ''')
    # a subprocess: the in-process mark registry remembers this process's markers
    result = pytester.runpytest_subprocess("-p", "no:sandbox", "-p", "no:cacheprovider",
                                           "--strict-markers")
    result.stdout.fnmatch_lines(["*'container' not found in `markers` configuration option*"])
    result = pytester.runpytest_inprocess("-p", "no:sandbox", "--sandbox-keep=all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_hookspecs_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
        def pytest_sandbox_container_finished(item, container, report):
            pass
        def pytest_sandbox_not_a_hook(config):
            pass
    ''')
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*unknown hook 'pytest_sandbox_not_a_hook'*"])
