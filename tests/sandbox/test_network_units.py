"""--network values, the container's resolv.conf per mode, and a missing helper's message."""

from __future__ import annotations

import pytest

from sandbox import errors
from sandbox.runtime import network


@pytest.mark.parametrize("value", [
    "none", "host", "slirp4netns", "slirp4netns:allow_host_loopback=true",
    "slirp4netns:mtu=1500,allow_host_loopback=false", "pasta", "pasta:--map-gw",
    "pasta:-T,8080,--ipv4-only"])
def test_accepted_network_values(value: str) -> None:
    network.check_network(value)


@pytest.mark.parametrize(("value", "message"), [
    ("bridge", "network mode 'bridge' is not supported"),
    ("host:x", "network mode 'host' takes no options"),
    ("none:", "network mode 'none' takes no options"),
    ("slirp4netns:port_handler=rootlesskit", "unknown slirp4netns option 'port_handler"),
    ("slirp4netns:allow_host_loopback=yes", "use true or false"),
    ("slirp4netns:mtu=9", "the MTU is a number from 68 to 65521"),
    ("slirp4netns:allow_host_loopback", "unknown slirp4netns option"),
])
def test_rejected_network_values_name_the_problem(value: str, message: str) -> None:
    with pytest.raises(errors.SpecError, match=message):
        network.check_network(value)


def test_network_mode_strips_the_options() -> None:
    assert network.network_mode("pasta:--map-gw,-4") == "pasta"
    assert network.network_mode("none") == "none"


HOST_RESOLV = "# managed\nsearch corp.example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n" \
              "nameserver ::1\noptions edns0\n"


def test_resolv_conf_per_mode() -> None:
    assert network.resolv_conf("none", HOST_RESOLV) == ""
    assert network.resolv_conf("host", HOST_RESOLV) == HOST_RESOLV
    assert network.resolv_conf("slirp4netns:mtu=1500", HOST_RESOLV) == "nameserver 10.0.2.3\n"


def test_pasta_resolv_conf_reaches_a_loopback_resolver_through_the_mapped_address() -> None:
    # 127.0.0.53 and ::1 would be the container's own loopback: pasta maps 169.254.1.1 to them
    assert network.resolv_conf("pasta", HOST_RESOLV) == (
        "# managed\nsearch corp.example\nnameserver 169.254.1.1\nnameserver 192.0.2.53\n"
        "options edns0\n")
    assert network.resolv_conf("pasta", "") == ""


def test_a_missing_helper_is_named_with_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandbox.runtime.idmap.which", lambda name: "")
    with pytest.raises(errors.SandboxError) as info:
        network.start_network("pasta", 1)
    assert info.value.message == "--network pasta needs pasta, which is not installed"
    assert info.value.hint == "install it (Debian/Ubuntu: apt install passt)"
    with pytest.raises(errors.SandboxError) as info:
        network.start_network("slirp4netns", 1)
    assert info.value.hint == "install it (Debian/Ubuntu: apt install slirp4netns)"
    assert network.start_network("none", 1) is None
