"""``@pytest.mark.container(...)`` evaluated into a frozen request (pytest ``skipping.py`` style).

Precedence of every setting: the marker, then the command line, then the ini file, then the
default (for the image: the ``pytest_sandbox_default_image`` hook, then ``host``). Errors name
the test and where the bad value came from (pytest-timeout ``_validate_*``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["ContainerRequest", "MARKER_DOC", "KEEP_CHOICES", "LAYER_CHOICES", "Settings",
           "marker_signature", "parse_marker", "images_of", "request_for", "MarkerError"]

LAYER_CHOICES = ("memory", "disk")
KEEP_CHOICES = ("none", "failed", "all")
NETWORK_CHOICES = ("none", "host", "slirp4netns", "pasta")  # the user-mode two take options
DEFAULT_IMAGE = "host"


def marker_signature(image: str | Sequence[str] | None = None, *, isolate: bool = False,
                     network: str | None = None,
                     volumes: Sequence[str] | Mapping[str, str] = (),
                     env: Mapping[str, str] | Sequence[str] | None = None,
                     workdir: str | None = None, user: str | None = None,
                     ports: Sequence[str | int] = (), keep: str | None = None,
                     timeout: float | None = None,
                     command: Sequence[str] | None = None) -> None:
    """The marker's full signature: its single source of truth (checked with ``bind``)."""


MARKER_DOC = (
    "container(image=None, *, isolate=False, network=None, volumes=(), env=None, workdir=None, "
    "user=None, ports=(), keep=None, timeout=None, command=None): run this test with a fresh "
    "rootless container. image: a reference (default --sandbox-image, else 'host': the host's "
    "root read-only under a throwaway layer) or a list of them to parametrize over; "
    "isolate=True: run the test body itself inside the container; network: 'none' "
    "(loopback only), 'host', or 'slirp4netns'/'pasta' (outbound, options as Podman's "
    "'pasta:--map-gw'); volumes: ['/host:/ctr[:ro]'] or {host: ctr}; env: {NAME: value} "
    "or ['NAME=value']; workdir, user: for commands; ports: ['8080', '127.0.0.1:0:80/tcp'] to "
    "publish; keep: none|failed|all (overrides --sandbox-keep); timeout: seconds for the "
    "isolated test body and the default for container.run(); command: the container's main "
    "command (default: keep it idle)."
)


class MarkerError(Exception):
    """A marker, option or ini value is invalid; the message names the test and the source."""


@dataclass(frozen=True)
class Settings:
    """The command line and ini values, read once at configure time."""

    image: str | None = None
    image_where: str = ""
    keep: str = "none"
    network: str = "none"
    storage_driver: str | None = None
    root: str | None = None
    layer: str = "memory"


@dataclass(frozen=True)
class ContainerRequest:
    """What one test asked for, after precedence: a frozen, validated value."""

    image: str = DEFAULT_IMAGE
    isolate: bool = False
    network: str = "none"
    volumes: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    ports: tuple[str, ...] = ()
    keep: str = "none"
    timeout: float | None = None
    command: tuple[str, ...] | None = None
    storage_driver: str | None = None
    layer: str = "memory"  # memory | disk: the writable layer of a container not kept
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def _closest(name: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def parse_marker(mark: pytest.Mark, test: str) -> dict[str, Any]:
    """Bind the marker's arguments to its signature; ``test`` names the test in errors."""
    sig = inspect.signature(marker_signature)
    try:
        bound = sig.bind(*mark.args, **mark.kwargs)
    except TypeError as exc:
        unknown = [k for k in mark.kwargs if k not in sig.parameters]
        hint = _closest(unknown[0], list(sig.parameters)) if unknown else ""
        what = f"unknown argument {unknown[0]!r}{hint}" if unknown else str(exc)
        raise MarkerError(f"{test}: @pytest.mark.container: {what}; signature: "
                          f"container{sig}".replace(" -> None", "")) from None
    args = dict(bound.arguments)
    _check_types(args, test)
    return args


def _where(test: str) -> str:
    return f"{test}: @pytest.mark.container"


def network_problem(network: object) -> str:
    """What is wrong with a network mode for test containers, or ''."""
    if not isinstance(network, str):
        return f"network must be a string, not {network!r}"
    from sandbox.errors import SpecError
    from sandbox.runtime.network import check_network

    try:
        check_network(network)
    except SpecError as exc:
        return f"{exc.message}; use {' or '.join(map(repr, NETWORK_CHOICES))}"
    return ""


def _check_types(args: dict[str, Any], test: str) -> None:
    w = _where(test)
    image = args.get("image")
    if image is not None and not isinstance(image, str):
        if not (isinstance(image, (list, tuple)) and image
                and all(isinstance(i, str) and i for i in image)):
            raise MarkerError(f"{w}: image must be a reference or a non-empty list of them, "
                              f"not {image!r}")
    if isinstance(image, str) and not image:
        raise MarkerError(f"{w}: image must not be empty")
    if "isolate" in args and not isinstance(args["isolate"], bool):
        raise MarkerError(f"{w}: isolate must be True or False, not {args['isolate']!r}")
    if args.get("network") is not None:
        problem = network_problem(args["network"])
        if problem:
            raise MarkerError(f"{w}: {problem}")
    if args.get("keep") is not None and args["keep"] not in KEEP_CHOICES:
        raise MarkerError(f"{w}: keep {args['keep']!r} is invalid; use one of "
                          f"{', '.join(KEEP_CHOICES)}")
    timeout = args.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise MarkerError(f"{w}: timeout must be a positive number of seconds, not {timeout!r}")
    for key in ("workdir", "user"):
        value = args.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise MarkerError(f"{w}: {key} must be a non-empty string, not {value!r}")
    if args.get("workdir") and not args["workdir"].startswith("/"):
        raise MarkerError(f"{w}: workdir {args['workdir']!r} must be an absolute path")
    command = args.get("command")
    if command is not None and (isinstance(command, str) or not command
                                or not all(isinstance(c, str) for c in command)):
        raise MarkerError(f"{w}: command must be a non-empty list of strings, not {command!r}")
    _env(args.get("env"), w)
    _volumes(args.get("volumes", ()), w)
    _ports(args.get("ports", ()), w)
    if args.get("isolate"):
        if args.get("ports"):
            raise MarkerError(f"{w}: ports= needs the container fixture, not isolate=True "
                              "(an isolated test body can listen on loopback directly)")
        if args.get("user"):
            raise MarkerError(f"{w}: user= is not supported with isolate=True (the test body "
                              "runs as the container's root, which is you)")
        if args.get("command"):
            raise MarkerError(f"{w}: command= does not apply to isolate=True")


def _env(env: Any, w: str) -> tuple[str, ...]:
    if env is None:
        return ()
    if isinstance(env, Mapping):
        items = []
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or not isinstance(v, (str, int, float)):
                raise MarkerError(f"{w}: env entry {k!r}: {v!r} is invalid; use "
                                  "{'NAME': 'value'}")
            items.append(f"{k}={v}")
        return tuple(items)
    if isinstance(env, str) or not all(isinstance(i, str) and i.partition("=")[0] for i in env):
        raise MarkerError(f"{w}: env must be a dict or a list of 'NAME=value', not {env!r}")
    return tuple(env)


def _volumes(volumes: Any, w: str) -> tuple[str, ...]:
    if isinstance(volumes, Mapping):
        items = [f"{k}:{v}" for k, v in volumes.items()]
    elif isinstance(volumes, str):
        raise MarkerError(f"{w}: volumes must be a list of '/host:/ctr[:ro]', not a string")
    else:
        items = list(volumes)
    for item in items:
        parts = item.split(":") if isinstance(item, str) else []
        if not (2 <= len(parts) <= 3) or not parts[1].startswith("/") or (
                len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise MarkerError(f"{w}: volume {item!r} is invalid; use '/host/path:/ctr/path' "
                              "with an optional ':ro' or ':rw'")
    return tuple(items)


def _ports(ports: Any, w: str) -> tuple[str, ...]:
    if isinstance(ports, (str, int)):
        ports = [ports]
    out = []
    for p in ports:
        text = str(p)
        body, _, proto = text.partition("/")
        pieces = body.split(":")
        ok = (proto in ("", "tcp", "udp") and 1 <= len(pieces) <= 3 and pieces[-1].isdigit()
              and all(x.isdigit() for x in pieces[-2:-1] if x) and 0 < int(pieces[-1]) < 65536)
        if not ok or isinstance(p, bool):
            raise MarkerError(f"{w}: port {p!r} is invalid; use 'containerPort', "
                              "'hostPort:containerPort' or 'ip:hostPort:containerPort' with an "
                              "optional '/tcp' or '/udp'")
        out.append(text)
    return tuple(out)


def images_of(args: dict[str, Any]) -> list[str] | None:
    """The list to parametrize over when the marker gives several images, else None."""
    image = args.get("image")
    if isinstance(image, (list, tuple)):
        return list(image)
    return None


def request_for(args: dict[str, Any], settings: Settings, default_image: str,
                image: str | None = None) -> ContainerRequest:
    """Apply precedence: marker > command line > ini > default."""
    chosen = image or (args["image"] if isinstance(args.get("image"), str) else None)
    return ContainerRequest(
        image=chosen or settings.image or default_image,
        isolate=bool(args.get("isolate", False)),
        network=args.get("network") or settings.network,
        volumes=_volumes(args.get("volumes", ()), ""),
        env=_env(args.get("env"), ""),
        workdir=args.get("workdir"),
        user=args.get("user"),
        ports=_ports(args.get("ports", ()), ""),
        keep=args.get("keep") or settings.keep,
        timeout=float(args["timeout"]) if args.get("timeout") is not None else None,
        command=tuple(args["command"]) if args.get("command") else None,
        storage_driver=settings.storage_driver,
        layer=settings.layer,
    )


def settings_from_config(config: pytest.Config) -> Settings:
    """Read the options and ini keys, with where-aware errors (``--x`` vs ``x (ini)``)."""
    def pick(opt: str, ini: str) -> tuple[Any, str]:
        value = config.getoption(opt)
        if value is not None:
            return value, f"--{opt.replace('_', '-')}"
        value = config.getini(ini)
        if value:
            return value, f"{ini} (ini)"
        return None, ""

    image, image_where = pick("sandbox_image", "sandbox_image")
    keep, keep_where = pick("sandbox_keep", "sandbox_keep")
    if keep is not None and keep not in KEEP_CHOICES:
        raise pytest.UsageError(f"{keep_where}: invalid value {keep!r}; use one of "
                                f"{', '.join(KEEP_CHOICES)}")
    network, net_where = pick("sandbox_network", "sandbox_network")
    if network is not None and network_problem(network):
        raise pytest.UsageError(f"{net_where}: {network_problem(network)}")
    driver, driver_where = pick("sandbox_storage_driver", "sandbox_storage_driver")
    if driver is not None and driver not in ("overlay", "fuse", "copy"):
        raise pytest.UsageError(f"{driver_where}: storage driver {driver!r} is unknown; use "
                                "overlay, fuse or copy")
    layer, layer_where = pick("sandbox_layer", "sandbox_layer")
    if layer is not None and layer not in LAYER_CHOICES:
        raise pytest.UsageError(f"{layer_where}: invalid value {layer!r}; use one of "
                                f"{', '.join(LAYER_CHOICES)}")
    root, _ = pick("sandbox_root", "sandbox_root")
    return Settings(image=image or None, image_where=image_where, keep=keep or "none",
                    network=network or "none", storage_driver=driver or None,
                    root=str(root) if root else None, layer=layer or "memory")
