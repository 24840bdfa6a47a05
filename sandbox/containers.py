"""Containers: from an image and options to a spec on disk, and a foreground run.

A container is a directory ``containers/<id>/`` holding ``config.json`` (the spec and what
created it), ``state.json`` (lifecycle), ``upper/`` and ``work/`` (the writable layer), the
files bound over ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``, and with the fuse
and copy drivers the mount point ``rootfs/`` (kernel overlayfs mounts at the store's ``mnt/``,
in the container's own mount namespace). Beside it, ``<id>.owned`` while its state names a live
owner (``_cstate.write_state``), or while a foreground run is starting it (naming the run and its
PID 1: ``_cstate.mark_starting``), and ``<id>.exit`` for a while after an ``--rm`` one is gone.
"""

from __future__ import annotations

import binascii
import os
import stat
import time

from sandbox import _json as json
from sandbox._cstate import owned_marker
from sandbox._record import asdict, field, record, replace
from sandbox.errors import ContainerNotFound, SandboxError, SpecError
from sandbox.images import Image, ImageStore
from sandbox.runtime.idmap import IdMapping, detect_mapping
from sandbox.spec import ContainerSpec, Mount, RootfsSpec, validate_spec
from sandbox.store import Store, read_bytes, unlink_missing_ok, write_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Container
    from typing import Any


__all__ = ["RunOptions", "Engine", "generate_name", "parse_volume",
           "write_container_files"]

_ADJECTIVES = ("admiring", "agitated", "amazing", "bold", "brave", "busy", "clever", "cool",
               "dazzling", "eager", "elastic", "epic", "festive", "focused", "gifted", "happy",
               "hopeful", "jolly", "keen", "kind", "lucid", "modest", "nifty", "optimistic",
               "peaceful", "quirky", "relaxed", "serene", "sharp", "stoic", "tender", "vibrant",
               "wizardly", "youthful", "zealous")
_NAMES = ("albattani", "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler",
          "fermat", "feynman", "galileo", "gauss", "hopper", "hypatia", "kepler", "knuth",
          "lamport", "lovelace", "maxwell", "meitner", "newton", "noether", "pascal", "ritchie",
          "shannon", "thompson", "torvalds", "turing", "wozniak", "yonath")
_PSEUDO_FS = ("proc", "sys", "dev")
_HOST_TMPFS = ("tmp",)


def generate_name(taken: Container[str] | Callable[[str], bool]) -> str:
    """Docker-style ``adjective_scientist``, unique among ``taken`` (a set, or a test)."""
    def pick(words: tuple[str, ...]) -> str:  # os.urandom: no need to import random
        return words[int.from_bytes(os.urandom(4), "little") % len(words)]

    is_taken = taken if callable(taken) else taken.__contains__
    for attempt in range(100):
        name = f"{pick(_ADJECTIVES)}_{pick(_NAMES)}"
        if attempt > 10:
            name += str(int.from_bytes(os.urandom(1), "little") % 100)
        if not is_taken(name):
            return name
    return f"sandbox_{os.urandom(4).hex()}"


def parse_volume(text: str) -> Mount:
    """``-v host:ctr[:ro|:rw]`` (host must be absolute, or a volume name)."""
    parts = text.split(":")
    if len(parts) == 1:
        return Mount(target=parts[0], type="volume", source="")
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise SpecError(f"invalid volume specification {text!r}",
                        hint="use -v /host/path:/container/path[:ro]")
    readonly = False
    if len(parts) == 3:
        opts = parts[2].split(",")
        for opt in opts:
            if opt not in ("ro", "rw", "z", "Z", "rbind", "bind", "rprivate", "private"):
                raise SpecError(f"invalid mode {opt!r} in volume {text!r}", hint="use ro or rw")
        readonly = "ro" in opts
    source, target = parts[0], parts[1]
    if source.startswith("/") or source.startswith("."):
        source = os.path.abspath(source)
        if not os.path.exists(source):
            raise SpecError(f"bind source path does not exist: {source}")
        return Mount(target=target, type="bind", source=source, readonly=readonly)
    return Mount(target=target, type="volume", source=source, readonly=readonly)


@record
class RunOptions:
    """What ``sandbox run``/``create`` (and the pytest plugin) ask for."""

    name: str = ""
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str | None = None
    hostname: str = ""
    network: str = "none"
    readonly_rootfs: bool = False
    interactive: bool = False
    tty: bool = False
    mounts: tuple[Mount, ...] = ()
    remove: bool = False
    entrypoint: tuple[str, ...] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    storage_driver: str | None = None
    volatile: bool = False  # a throwaway layer (implied by ``remove``): see RootfsSpec.volatile
    scratch: bool = False  # the writable layer in memory (kernel overlay): RootfsSpec.scratch


def _merge_env(base: list[str], extra: tuple[str, ...]) -> tuple[str, ...]:
    merged: dict[str, str] = {}
    for item in [*base, *extra]:
        k, _, v = item.partition("=")
        merged[k] = v
    return tuple(f"{k}={v}" for k, v in merged.items())


def _host_submounts() -> set[str]:
    """Top-level host dirs that have mounts below them (kernel overlay cannot take those)."""
    out: set[str] = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mountpoint = line.split(" ")[4]
                top = mountpoint.strip("/").split("/")[0]
                if top and mountpoint != "/":
                    out.add(top)
    except OSError:
        pass
    return out


class Engine:
    """The engine as the front ends use it: images, containers, runs."""

    def __init__(self, store: Store | None = None, *, mapping: IdMapping | None = None,
                 storage_driver: str | None = None) -> None:
        self.store = store or Store()
        self._mapping = mapping
        self.storage_driver = storage_driver
        self.images = ImageStore(self.store)

    @property
    def mapping(self) -> IdMapping:
        if self._mapping is None:
            self._mapping = detect_mapping()
        return self._mapping

    # -- container records --------------------------------------------------------------------
    # -- names: ``container-names/NAME`` → container id, symlinks --------------------------------
    # One readlink resolves a name, and the symlink is created atomically under the names lock:
    # two ``run --name x`` at once cannot both get x, and nothing reads every container's
    # config to find one. The link holds the id in base64 (``_name_link``).
    def _names_dir(self) -> str:
        return self.store.path("container-names")

    def _ensure_name_index(self) -> str:
        """The index, built from the containers' configs the first time (the caller holds
        the names lock)."""
        index = self._names_dir()
        if not os.path.isdir(index):
            tmp = f"{index}.{os.getpid()}.tmp"
            os.makedirs(tmp, 0o700, exist_ok=True)
            for name, cid in self.container_names().items():
                if name and not os.path.lexists(os.path.join(tmp, name)):
                    os.symlink(_name_link(cid), os.path.join(tmp, name))
            os.rename(tmp, index)
        return index

    def name_owner(self, name: str) -> str | None:
        """The id of the container called ``name``, if one exists."""
        if not name or "/" in name or name.startswith("."):
            return None
        if not os.path.isdir(self._names_dir()):
            with self.store.lock("names"):
                self._ensure_name_index()
        try:
            cid = _link_cid(os.readlink(os.path.join(self._names_dir(), name)))
        except (OSError, ValueError):
            return None
        return cid if len(cid) == 64 and os.path.isdir(self.store.container_dir(cid)) else None

    def _claim_name(self, name: str, cid: str) -> None:
        """Point ``name`` at ``cid`` (the caller holds the names lock and checked it is free;
        a link to a container that is gone is replaced)."""
        link = os.path.join(self._ensure_name_index(), name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(_name_link(cid), link)

    def release_name(self, cid: str, name: str | None = None) -> None:
        """Drop the name of container ``cid`` (when it is removed)."""
        index = self._names_dir()
        if name is None:
            try:
                name = str(self.load_config(cid).get("name") or "")
            except (OSError, ValueError):
                name = ""
        candidates = [name] if name else (os.listdir(index) if os.path.isdir(index) else [])
        for n in candidates:
            link = os.path.join(index, n)
            try:
                if _link_cid(os.readlink(link)) == cid:
                    os.unlink(link)
            except (OSError, ValueError):
                continue

    def container_names(self) -> dict[str, str]:
        """Every container's name, read from the configs (what the index is built from)."""
        names: dict[str, str] = {}
        for cid in self.store.iter_containers():
            try:
                cfg = self.store.read_json(os.path.join(self.store.container_dir(cid),
                                                        "config.json"))
            except (OSError, ValueError):
                continue
            names[cfg.get("name", "")] = cid
        return names

    def resolve_container(self, ref: str) -> str:
        """A container id by full id, name, or unique id prefix."""
        owner = self.name_owner(ref)
        if owner is not None:
            return owner
        matches = [cid for cid in self.store.iter_containers() if cid.startswith(ref)] \
            if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SandboxError(f"multiple containers match {ref!r}", hint="give more of the id")
        raise ContainerNotFound(f"no such container: {ref}")

    def load_config(self, cid: str) -> dict[str, Any]:
        cfg: dict[str, Any] = self.store.read_json(
            os.path.join(self.store.container_dir(cid), "config.json"))
        return cfg

    # -- spec ---------------------------------------------------------------------------------
    def _argv(self, image: Image, cmd: list[str], opts: RunOptions) -> tuple[str, ...]:
        cfg = image.run_config
        entry = list(opts.entrypoint) if opts.entrypoint is not None else list(
            cfg.get("Entrypoint") or [])
        if cmd:
            args = cmd
        elif opts.entrypoint is not None:
            args = []
        else:
            args = list(cfg.get("Cmd") or [])
        return tuple(entry + args)

    def _rootfs(self, image: Image, cdir: str, driver: str, scratch: bool) -> RootfsSpec:
        upper, work = os.path.join(cdir, "upper"), os.path.join(cdir, "work")
        if driver == "overlay":
            # kernel overlayfs is mounted in the container's own mount namespace, so one empty
            # directory of the store serves every container as the mount point (a directory
            # per container cost a mkdir and an rmdir, the rmdir a block freed)
            mnt = self.store.path("mnt")
        else:  # a FUSE server's mount point, or the copy's
            mnt = os.path.join(cdir, "rootfs")
            os.mkdir(mnt, 0o755)
        for d in (upper, work):
            os.mkdir(d, 0o755)
        if image.builtin:
            # a layer in memory gets its skeleton in memory (runtime.init._mount_scratch)
            return self._host_rootfs(upper, work, mnt, skeleton=not scratch)
        lowers = tuple(self.images.layer_dirs(image))
        if not lowers:
            empty = os.path.join(cdir, "empty")
            os.mkdir(empty, 0o755)
            lowers = (empty,)
        if driver == "copy":
            from sandbox.runtime.userns import run_in_userns

            run_in_userns(_flatten, list(lowers), upper)
        elif _init_layer_fits(lowers):
            lowers = (self.store.init_layer(), *lowers)
        return RootfsSpec(driver=driver, lowers=lowers, upper=upper, work=work, mountpoint=mnt)

    @staticmethod
    def _host_rootfs(upper: str, work: str, mnt: str, skeleton: bool = True) -> RootfsSpec:
        """The host image: one overlay per top-level directory of the host's / (kernel overlayfs
        cannot take / whole: its mounts below are locked in a user namespace). The skeleton
        of the writable layer (the top-level directories and links, a work directory per
        overlay) is made in ``upper`` and ``work`` unless ``skeleton`` is False."""
        submounts = _host_submounts()
        lowers: list[str] = []
        binds: list[str] = []
        tmpfs: list[str] = []
        with os.scandir("/") as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if entry.is_symlink():
                if skeleton:
                    os.symlink(os.readlink(entry.path), os.path.join(upper, name))
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            if skeleton:
                os.mkdir(os.path.join(upper, name), 0o755)
            if name in _PSEUDO_FS:
                continue
            if name in _HOST_TMPFS:
                tmpfs.append("/" + name)
            elif name in submounts:
                binds.append("/" + name)
            else:
                if skeleton:
                    os.mkdir(os.path.join(work, name), 0o755)
                lowers.append("/" + name)
        return RootfsSpec(driver="overlay", lowers=tuple(lowers), upper=upper, work=work,
                          mountpoint=mnt, host=True, binds=tuple(binds), tmpfs=tuple(tmpfs))

    def create(self, image_ref: str, cmd: list[str], opts: RunOptions,
               image: Image | None = None) -> ContainerSpec:
        """Make the container's directory and spec (``docker create``); ``image``: what
        ``image_ref`` names, where the caller has looked it up already."""
        from sandbox.drivers import select_driver

        self.store.ensure()
        if image is None:
            image = self.images.get(image_ref)
        if opts.name:
            _check_name(opts.name)
        choice = select_driver(self.store, opts.storage_driver or self.storage_driver)
        driver = choice.name
        if image.builtin and driver != "overlay":
            # the host image stacks the host's own directories, mounts included: only kernel
            # overlayfs does that (a FUSE server would serve the store's own mounts to itself)
            if choice.probes.get("overlay") != "ok":
                raise SandboxError(
                    "the built-in host image needs kernel overlayfs in a user namespace "
                    f"(Linux 5.11+); here: {choice.probes.get('overlay')}",
                    hint="use an image (sandbox import, pull or build) with the fuse driver")
            driver = "overlay"
        cid = os.urandom(32).hex()
        cdir = self.store.container_dir(cid)
        with self.store.lock("names"):  # the name and the directory, claimed together
            self._ensure_name_index()
            if opts.name:
                owner = self.name_owner(opts.name)
                if owner is not None:
                    raise SandboxError(f'the container name "/{opts.name}" is already in use '
                                       f'by container "{owner}"',
                                       hint="remove or rename that container")
            name = opts.name or generate_name(lambda n: self.name_owner(n) is not None)
            os.mkdir(cdir, 0o700)
            self._claim_name(name, cid)
        cfg = image.run_config
        user = opts.user if opts.user is not None else str(cfg.get("User") or "")
        scratch = opts.scratch and driver == "overlay"  # a tmpfs layer needs kernel overlayfs
        try:
            rootfs = self._rootfs(image, cdir, driver, scratch)
            mapping = self.mapping
            spec = ContainerSpec(
                id=cid, name=name, image=image_ref, image_id=image.id, rootfs=rootfs,
                argv=self._argv(image, cmd, opts),
                env=_merge_env(list(cfg.get("Env") or []), opts.env),
                workdir=opts.workdir or str(cfg.get("WorkingDir") or "/"),
                user=user, hostname=opts.hostname or cid[:12], network=opts.network,
                readonly_rootfs=opts.readonly_rootfs, interactive=opts.interactive,
                tty=opts.tty, mounts=self._volumes(opts.mounts),
                uid_map=mapping.uid_map, gid_map=mapping.gid_map, map_mode=mapping.mode,
                container_dir=cdir, store_root=self.store.root, remove=opts.remove,
                labels=dict(opts.labels))
            if opts.remove or opts.volatile:
                rootfs = replace(rootfs, volatile=True)
            if scratch:
                rootfs = replace(rootfs, scratch=True)
            spec = replace(spec, rootfs=rootfs)
            validate_spec(spec)
            write_container_files(spec)
        except BaseException:
            self.remove_dir(cid, name=name)
            raise
        return spec

    def _volumes(self, mounts: tuple[Mount, ...]) -> tuple[Mount, ...]:
        out = []
        for m in mounts:
            if m.type == "volume":
                vname = m.source or os.urandom(32).hex()
                vdir = self.store.volume_dir(vname)
                os.makedirs(os.path.join(vdir, "_data"), exist_ok=True)
                m = replace(m, type="bind", source=os.path.join(vdir, "_data"))
            out.append(m)
        return tuple(out)

    # -- running ------------------------------------------------------------------------------
    def run(self, spec: ContainerSpec) -> int:
        """A foreground run: returns the Docker-style exit status."""
        from sandbox.runtime.process import run

        self._write_state(spec, "running")
        try:
            code = run(spec, self.mapping)
        except BaseException:
            if spec.remove:
                self.remove_dir(spec.id, name=spec.name)
            else:
                self._write_state(spec, "exited", exit_code=125)
            raise
        if not spec.remove:
            self._write_state(spec, "exited", exit_code=code)
        else:
            self.remove_dir(spec.id, name=spec.name)  # its name even when C removed the dir
        return code

    def _write_state(self, spec: ContainerSpec, status: str, *, exit_code: int = 0) -> None:
        if spec.remove and status == "running":
            return  # nobody will look: save the write
        path = os.path.join(spec.container_dir, "state.json")
        if not os.path.isdir(spec.container_dir):
            return
        state = {"status": status, "exit_code": exit_code, "time": time.time()}
        self.store.write_json(path, state)

    def remove_dir(self, cid: str, name: str | None = None) -> None:
        """Delete a container's directory (inside the user namespace: its files may belong to
        the subordinate range), and its name."""
        cdir = self.store.container_dir(cid)
        self.release_name(cid, name)
        if os.path.exists(cdir):
            try:
                self.store.rm_rf(cdir)
            except OSError:
                from sandbox.runtime.userns import run_in_userns

                run_in_userns(_rm_container, self.store.root, cdir, mapping=self.mapping)
        unlink_missing_ok(owned_marker(cdir))


def _name_link(cid: str) -> str:
    """What a name's link in ``container-names`` holds: the id's 32 bytes in URL-safe base64,
    43 characters. ext4 keeps a link target under 60 bytes in the inode; the id's 64 hex
    characters took a block of their own, allocated when the link was made and freed (with a
    discard, where the store's filesystem is mounted with one) when it was removed: 0.1-0.3 ms
    of every ``run --rm``."""
    return binascii.b2a_base64(bytes.fromhex(cid), newline=False).decode().translate(
        _TO_URLSAFE).rstrip("=")


def _link_cid(target: str) -> str:
    """The container id in a name's link (``_name_link``; 64 hex characters, as links made
    before it held, are taken as they are). ``ValueError`` if it is neither."""
    if len(target) == 64:
        return target
    if len(target) != 43:
        raise ValueError(f"not a container id: {target!r}")
    try:
        raw = binascii.a2b_base64(target.translate(_FROM_URLSAFE) + "=", strict_mode=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"not a container id: {target!r}")
    return raw.hex()


_TO_URLSAFE = str.maketrans("+/", "-_")
_FROM_URLSAFE = str.maketrans("-_", "+/")


def write_container_files(spec: ContainerSpec) -> None:
    """What lies beside a container: ``hosts``, ``hostname``, ``resolv.conf`` (bound over the
    container's own) and ``config.json`` (the spec and what created it)."""
    cdir = spec.container_dir
    hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"127.0.1.1\t{spec.hostname}\n")
    resolv = ""
    if spec.network != "none":
        from sandbox.runtime.network import resolv_conf

        try:
            resolv = resolv_conf(spec.network,
                                 read_bytes("/etc/resolv.conf").decode(errors="replace"))
        except OSError:
            resolv = resolv_conf(spec.network, "")
    for fname, content in (("hosts", hosts), ("hostname", spec.hostname + "\n"),
                           ("resolv.conf", resolv)):
        write_bytes(os.path.join(cdir, fname), content.encode())
    record = {"id": spec.id, "name": spec.name, "created": time.time(), "spec": asdict(spec),
              "rootfs": {"lowers": list(spec.rootfs.lowers)}}
    write_bytes(os.path.join(cdir, "config.json"), json.dumps(record).encode())


def _init_layer_fits(lowers: tuple[str, ...]) -> bool:
    """Whether ``Store.init_layer`` may lie over these layers (top-most first): where the
    image has one of its directories as something else (``/etc`` a link, say), the init layer
    would hide it, and the runtime makes its mount points in the writable layer instead."""
    from sandbox.store import INIT_LAYER_DIRS

    for name in INIT_LAYER_DIRS:
        for lower in lowers:
            try:
                st = os.lstat(os.path.join(lower, name))
            except FileNotFoundError:
                continue
            except OSError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                return False  # a link, a file, or a whiteout (a 0/0 character device)
            break
    return True


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise SpecError(f'invalid container name "{name}"',
                        hint="only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def _rm_container(root: str, cdir: str) -> None:
    Store(root).rm_rf(cdir)


def _flatten(lowers: list[str], dest: str) -> None:
    from sandbox import layers

    layers.flatten_layers(lowers, dest)
