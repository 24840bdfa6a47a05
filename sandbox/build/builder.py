"""The builder: a Dockerfile and a context to an image in the store, with a layer cache.

As Docker's classic builder: each instruction of the target's stages is one step from an
`ImageState` to the next; a step whose key (the state it starts from, the expanded instruction,
the build args a RUN sees, the content COPY/ADD read) is in the cache is not run again. RUN runs
in a rootless container on the stage's layers (``_run``), COPY/ADD/WORKDIR write into an overlay
of them inside the user namespace (``_copy``); both commit the upper dir as a layer. Nothing is
named in the store before the last step succeeded: layers and blobs written on the way are
content-addressed, and the image is recorded at the end.

Progress goes to a callable (the CLI prints it, as ``docker build`` does); the library prints
nothing itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.build._cache import BuildCache, cache_key
from sandbox.build._context import BuildContext, Source, exclude, hash_source
from sandbox.build._image_state import ImageState, timestamp
from sandbox.build._steps import (
    METADATA_TYPES,
    StageFlags,
    apply_metadata,
    nop_string,
    run_created_by,
)
from sandbox.build.dockerignore import Matcher, load_dockerignore
from sandbox.build.graph import resolve_target, unused_build_args
from sandbox.build.instructions import (
    AddInstruction,
    CmdInstruction,
    CopyInstruction,
    Instruction,
    RunInstruction,
    WorkdirInstruction,
)
from sandbox.build.parser import Dockerfile, Stage, parse_dockerfile, parse_instruction
from sandbox.build.state import BuildState, run_command
from sandbox.containers import Engine
from sandbox.errors import BuildError, SandboxError

if TYPE_CHECKING:
    from sandbox.build._commit import LayerResult
    from sandbox.build._copy import CopyJob

__all__ = ["BuildOptions", "BuildResult", "Builder", "RunStepFailed", "build", "prune_cache"]

Progress = Callable[[str], None]


class RunStepFailed(BuildError):
    """A RUN exited non-zero; ``docker build`` exits 1 and names the command.

    ``step`` is the progress line of the step (``Step 3/5 : RUN make``) and ``output`` what
    it wrote, kept only under ``-q`` (where nothing was shown): the CLI prints both before
    the error, as ``docker build -q`` prints the failing step's buffered output."""

    exit_code = 1

    def __init__(self, command: str, code: int, *, line: int = 0, step: str = "",
                 output: bytes = b"") -> None:
        where = f"Dockerfile:{line}: " if line else ""
        super().__init__(f"{where}The command '{command}' returned a non-zero code: {code}")
        self.command = command
        self.code = code
        self.line = line
        self.step = step
        self.output = output


@dataclass(frozen=True)
class BuildOptions:
    """What ``sandbox build`` was asked for."""

    context: str | None
    """The context directory (None: no context, a Dockerfile alone)."""
    dockerfile_text: str
    dockerfile_name: str = "Dockerfile"
    """The Dockerfile's path relative to the context (for ``.dockerignore`` rules)."""
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    platform: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = "none"
    quiet: bool = False
    source_date_epoch: int | None = None


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    manifest_digest: str
    names: tuple[str, ...]
    steps: int
    cached: int
    replay_lines: tuple[str, ...] = ()
    """What a fully cached rebuild prints before "Successfully built" (for the CLI's
    no-change rebuild record)."""
    bases: tuple[tuple[str, str], ...] = ()
    """(normalised name or "", manifest digest) of every image the build read."""
    volatile: bool = False
    """True when the build read something no record can vouch for (ADD of a URL)."""


@dataclass
class _Stage:
    """A stage while it is built."""

    stage: Stage
    state: BuildState
    flags: StageFlags


@dataclass(frozen=True)
class _Prepared:
    """What a step reads, found before its cache key (COPY/ADD sources and their hash)."""

    key: tuple[Any, ...] = ()
    sources: tuple[Source, ...] = ()


def _instruction_key(step: Instruction) -> dict[str, Any]:
    data = dataclasses.asdict(step)
    for name in ("line", "end_line", "original"):
        data.pop(name, None)
    data["keyword"] = step.keyword
    return data


def _platform_args(platform: str | None) -> dict[str, str]:
    from sandbox.oci import host_platform, parse_platform

    host = host_platform().normalized()
    target = parse_platform(platform).normalized() if platform else host
    if (target.os, target.architecture) != (host.os, host.architecture):
        raise BuildError(f"cannot build for {target} on this {host} host",
                         hint="sandbox runs RUN steps natively; omit --platform")
    out: dict[str, str] = {}
    for prefix, p in (("TARGET", target), ("BUILD", host)):
        out[f"{prefix}PLATFORM"] = str(p)
        out[f"{prefix}OS"] = p.os
        out[f"{prefix}ARCH"] = p.architecture
        out[f"{prefix}VARIANT"] = p.variant
    return out


class Builder:
    """One build; see the module docstring."""

    def __init__(self, engine: Engine, options: BuildOptions,
                 progress: Progress | None = None) -> None:
        self.engine = engine
        self.options = options
        self.progress: Progress = progress or (lambda line: None)
        self.cache = BuildCache(engine.store, disabled=options.no_cache)
        self.results: dict[int, ImageState] = {}
        self.step_no = 0
        self.current_step = ""
        self.total = 0
        self.cached = 0
        self.tmp = ""
        self.replay: list[str] = []
        self.bases: set[tuple[str, str]] = set()
        self.volatile = False
        self.pulled: set[str] = set()
        self.dockerfile: Dockerfile | None = None
        self._context: BuildContext | None = None

    # -- the build ----------------------------------------------------------------------------
    def build(self) -> BuildResult:
        opts = self.options
        df = parse_dockerfile(opts.dockerfile_text, build_args=dict(opts.build_args),
                              builtin_args=_platform_args(opts.platform))
        self.dockerfile = df
        stages = resolve_target(df, opts.target)
        self.total = sum(1 + len(s.instructions) for s in stages)
        self.engine.store.ensure()
        self._clean_leftovers()
        self.tmp = self.engine.store.mkdtemp(suffix=".build")
        try:
            for stage in stages:
                self.results[stage.index] = self._build_stage(df, stage)
            unused = unused_build_args(df)
            if unused:
                self._say(f"[Warning] One or more build-args [{' '.join(unused)}] were "
                          "not consumed")
            return self._finish(self.results[stages[-1].index])
        finally:
            self.engine.store.rm_rf(self.tmp)

    def _clean_leftovers(self) -> None:
        """What builds killed mid-step left: their step containers and temp dirs."""
        from sandbox.build._run import reap_stale_steps

        reap_stale_steps(self.engine)
        self.engine.images.clean_tmp()

    def _finish(self, state: ImageState) -> BuildResult:
        from sandbox.reference import parse_reference

        if self.options.labels:
            state = state.copy()
            state.config["Labels"] = {**(state.config.get("Labels") or {}),
                                      **self.options.labels}
        names = tuple(str(parse_reference(t)) for t in self.options.tags)
        config_bytes, manifest_bytes = state.image_blobs()
        self.engine.store.put_blob(config_bytes)
        image = self.engine.images.add(manifest_bytes, list(names))
        self.progress(f"Successfully built {image.id[7:19]}")
        for tag in self.options.tags:
            self.progress(f"Successfully tagged {tag}")
        return BuildResult(image.id, image.manifest_digest, names, self.step_no, self.cached,
                           tuple(self.replay), tuple(sorted(self.bases)), self.volatile)

    def _say(self, line: str, replay: str | None = None) -> None:
        """Print ``line``; a fully cached rebuild would print ``replay`` (default: the same)."""
        self.progress(line)
        self.replay.append(line if replay is None else replay)

    def _announce(self, text: str) -> None:
        self.step_no += 1
        self.current_step = f"Step {self.step_no}/{self.total} : {text}"
        self._say(self.current_step)

    # -- stages -------------------------------------------------------------------------------
    def _build_stage(self, df: Dockerfile, stage: Stage) -> ImageState:
        self._announce(stage.from_instruction.original)
        try:
            image = self._base(stage)
        except SandboxError as exc:
            raise _at_line(exc, stage.line) from exc
        shown = image.state_id() if stage.base_stage is not None else image.base_id
        self._say(f" ---> {shown[7:19] if shown != 'scratch' else 'scratch'}")
        cfg = image.config
        current = _Stage(stage, BuildState.for_stage(
            df, stage, env=cfg.get("Env") or [], shell=cfg.get("Shell"),
            workdir=str(cfg.get("WorkingDir") or ""), user=str(cfg.get("User") or "")),
            StageFlags())
        triggers = list(cfg.pop("OnBuild", None) or [])
        if triggers:
            self._say(f"# Executing {len(triggers)} build trigger"
                      f"{'s' if len(triggers) > 1 else ''}")
        for text in triggers:
            trigger = parse_instruction(text, escape=df.escape, line=stage.line)
            image = self._step(image, current, trigger)
        for raw in stage.instructions:
            self._announce(raw.original)
            image = self._step(image, current, raw)
        return image

    def _base(self, stage: Stage) -> ImageState:
        if stage.base_stage is not None:
            return self.results[stage.base_stage].copy()
        if stage.base.lower() == "scratch":
            from sandbox.oci import host_platform

            host = host_platform()
            return ImageState(architecture=host.architecture, os=host.os, base_id="scratch")
        if stage.platform:
            _platform_args(stage.platform)
        image = self._image(stage.base)
        return ImageState.from_image_config(image.config, list(image.layers), image.id)

    def _image(self, ref: str) -> Any:
        from sandbox.errors import ImageNotFound
        from sandbox.reference import parse_reference

        if self.options.pull and ref not in self.pulled:
            self._pull(ref)
            self.pulled.add(ref)
        try:
            image = self.engine.images.get(ref)
        except ImageNotFound as exc:
            if ref in self.pulled:
                raise
            image = self._pull_missing(ref, exc)
        try:
            name = str(parse_reference(ref))
        except SandboxError:
            name = ""
        self.bases.add((name if name in image.names else "", image.manifest_digest))
        return image

    def _pull_missing(self, ref: str, missing: SandboxError) -> Any:
        """A base that is not in the store is pulled, as ``docker build`` does."""
        from sandbox.errors import ImageNotFound

        try:
            self._pull(ref)
        except SandboxError as exc:
            raise ImageNotFound(f"{missing.message}, and pulling it failed: {exc.message}",
                                hint=f"check the name, or import or load {ref} first"
                                ) from None
        self.pulled.add(ref)
        return self.engine.images.get(ref)

    def _pull(self, ref: str) -> None:
        from sandbox.reference import parse_reference
        from sandbox.registry import RegistryClient

        parsed = parse_reference(ref)
        self.progress(f"Pulling {parsed}")
        with RegistryClient() as client:
            result = client.pull(parsed, self.engine.store, max_parallel=1)
        self.engine.images.add(result.manifest_bytes, [str(parsed)])

    # -- steps --------------------------------------------------------------------------------
    def _step(self, image: ImageState, stage: _Stage, raw: Instruction) -> ImageState:
        try:
            step = stage.state.step(raw)
            prepared = self._prepare(step, stage)
            sde = self.options.source_date_epoch
            # SOURCE_DATE_EPOCH sets the history times and clamps the layer's file times
            key = cache_key(image.state_id(), _instruction_key(step), *prepared.key,
                            *(() if sde is None else (("source_date_epoch", sde),)))
            hit = self.cache.get(key)
            self.replay.append(" ---> Using cache")
            if hit is not None:
                self.progress(" ---> Using cache")
                self.cached += 1
                if isinstance(step, CmdInstruction):
                    stage.flags.cmd_set = True
                result = hit
            else:
                result = self._execute(image, stage, step, prepared)
                self.cache.put(key, result)
        except RunStepFailed:
            raise
        except SandboxError as exc:
            if exc.message.startswith("Dockerfile:"):
                raise
            raise _at_line(exc, raw.line) from exc
        self._say(f" ---> {result.state_id()[7:19]}")
        return result

    def _prepare(self, step: Instruction, stage: _Stage) -> _Prepared:
        if isinstance(step, RunInstruction):
            self._run_network(step)
            return _Prepared(key=(stage.state.cache_env(), step.network or "",
                                  self.options.network, *self._bound_content(step)))
        if not isinstance(step, (CopyInstruction, AddInstruction)):
            return _Prepared()
        from_ = step.from_ if isinstance(step, CopyInstruction) else None
        if from_:
            return _Prepared(key=(self._from_ident(from_, stage),))
        sources = self._sources(step, stage)
        h = hashlib.sha256()
        for src in sources:
            hash_source(h, src)
        return _Prepared(key=(h.hexdigest(),), sources=tuple(sources))

    def _bound_content(self, step: RunInstruction) -> tuple[str, ...]:
        """The content a RUN sees through ``--mount=type=bind`` of the context (BuildKit keys
        the step on it, as a COPY is keyed on what it copies); none: no key part."""
        if not any(m.type == "bind" and not m.from_ for m in step.mounts):
            return ()
        h = hashlib.sha256()
        for mount in step.mounts:
            if mount.type == "bind" and not mount.from_:
                for src in self.context().resolve(mount.source.lstrip("/") or ".",
                                                  "RUN --mount"):
                    hash_source(h, src)
        return ("bind", h.hexdigest())

    def _from_ident(self, ref: str, stage: _Stage) -> str:
        """What ``--from=ref`` names, for the cache key: a stage's state or an image id."""
        assert self.dockerfile is not None
        found = self.dockerfile.find_stage(ref, before=stage.stage.index)
        if found is not None:
            return self.results[found.index].state_id()
        return str(self._image(ref).id)

    def _from_lowers(self, ref: str, stage: _Stage) -> tuple[str, ...]:
        assert self.dockerfile is not None
        found = self.dockerfile.find_stage(ref, before=stage.stage.index)
        if found is not None:
            return tuple(self._lowers(self.results[found.index]))
        return tuple(self.engine.images.layer_dirs(self._image(ref)))

    def _sources(self, step: CopyInstruction | AddInstruction, stage: _Stage) -> list[Source]:
        keyword = step.keyword
        out: list[Source] = []
        for i, doc in enumerate(step.heredocs):
            path = os.path.join(self.tmp, f"heredoc-{self.step_no}-{i}")
            with open(path, "w", encoding="utf-8") as f:
                f.write(stage.state.heredoc_content(doc))
            out.append(Source(doc.name, path, False, mode=0o644))
        for src in step.sources:
            if isinstance(step, AddInstruction) and _is_url(src):
                from sandbox.build._fetch import download

                self.volatile = True
                out.append(download(src, self.tmp, step.checksum))
                continue
            out += self.context().resolve(src, keyword)
        if step.excludes:
            out = exclude(out, step.excludes)
        if isinstance(step, CopyInstruction) and step.parents:
            raise BuildError("COPY --parents is not supported",
                             hint="copy each directory to its own destination")
        return out

    def context(self) -> BuildContext:
        if self._context is None:
            if self.options.context is None:
                empty = os.path.join(self.tmp, "no-context")
                os.makedirs(empty, exist_ok=True)
                self._context = BuildContext(empty, Matcher([]))
            else:
                matcher = load_dockerignore(self.options.context,
                                            dockerfile=self.options.dockerfile_name)
                self._context = BuildContext(self.options.context, matcher)
        return self._context

    def _lowers(self, state: ImageState) -> list[str]:
        from sandbox.images import Image

        image = Image(id=state.state_id(), manifest_digest="", names=(),
                      config={"rootfs": {"diff_ids": state.diff_ids}},
                      layers=tuple(state.layers))
        return self.engine.images.layer_dirs(image)

    # -- executing a step ---------------------------------------------------------------------
    def _execute(self, image: ImageState, stage: _Stage, step: Instruction,
                 prepared: _Prepared) -> ImageState:
        new = image.copy()
        created = timestamp(self.options.source_date_epoch)
        if isinstance(step, RunInstruction):
            layer, created_by = self._run(image, stage, step)
        elif isinstance(step, (CopyInstruction, AddInstruction)):
            layer, created_by = self._copy(image, stage, step, prepared)
        elif isinstance(step, WorkdirInstruction):
            from sandbox.build._copy import CopyJob

            new.config["WorkingDir"] = stage.state.workdir
            layer = self._commit_copy(image, CopyJob(
                self.engine.store.root, (), stage.state.workdir,
                mkdir_only=True, source_date_epoch=self.options.source_date_epoch))
            created_by = nop_string(f"WORKDIR {stage.state.workdir}")
        elif isinstance(step, METADATA_TYPES):
            layer, created_by = None, apply_metadata(new, step, stage.state, stage.flags)
        else:
            raise BuildError(f"{step.keyword} is not supported")
        if layer is not None:
            new.add_layer(layer.diff_id, layer.descriptor())
        new.add_history(created_by, created=created, empty_layer=layer is None)
        return new

    def _run(self, image: ImageState, stage: _Stage, step: RunInstruction
             ) -> tuple[LayerResult | None, str]:
        from sandbox.build._mounts import run_mounts
        from sandbox.build._run import RunJob, run_step

        state = stage.state
        command = run_command(step, state.shell)
        network = self._run_network(step)
        env = state.run_env()
        job = RunJob(argv=command.argv, env=tuple(env), workdir=state.workdir,
                     user=state.user, network=str(network), files=command.files,
                     mounts=run_mounts(self, step, stage))
        outcome = run_step(self.engine, self._lowers(image), job,
                           quiet=self.options.quiet,
                           source_date_epoch=self.options.source_date_epoch,
                           progress=self.progress)
        if outcome.code != 0:
            raise RunStepFailed(" ".join(command.argv), outcome.code, line=step.line,
                                step=self.current_step, output=outcome.output)
        return outcome.layer, run_created_by(command.argv, state.arg_env())

    def _copy(self, image: ImageState, stage: _Stage, step: CopyInstruction | AddInstruction,
              prepared: _Prepared) -> tuple[LayerResult | None, str]:
        import posixpath

        from sandbox.build._copy import CopyJob

        dest = step.dest
        as_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith(("/.", "/.."))
        dest = posixpath.normpath(posixpath.join(stage.state.workdir or "/", dest))
        if as_dir and dest != "/":
            dest += "/"
        chmod = None
        if step.chmod:
            try:
                chmod = int(step.chmod, 8)
            except ValueError:
                raise BuildError(f"invalid --chmod={step.chmod}: only octal modes are "
                                 "supported") from None
        from_ = step.from_ if isinstance(step, CopyInstruction) else None
        job = CopyJob(self.engine.store.root, (), dest,
                      sources=prepared.sources,
                      from_lowers=self._from_lowers(from_, stage) if from_ else None,
                      from_paths=tuple(step.sources) if from_ else (), chown=step.chown,
                      chmod=chmod, extract=isinstance(step, AddInstruction),
                      unpack=step.unpack if isinstance(step, AddInstruction) else None,
                      excludes=tuple(step.excludes),
                      keyword=step.keyword, source_date_epoch=self.options.source_date_epoch)
        layer = self._commit_copy(image, job)
        what = str(prepared.key[0]).removeprefix("sha256:") if prepared.key else ""
        kind = "multi" if len(prepared.sources) > 1 else (
            "dir" if prepared.sources and prepared.sources[0].is_dir else "file")
        return layer, nop_string(f"{step.keyword} {kind}:{what} in {dest} ")

    def _run_network(self, step: RunInstruction) -> str:
        """The network of a RUN: the command line's, or ``--network=none`` to take it away. A
        Dockerfile cannot grant itself more than the command line did (BuildKit asks for
        ``--allow network.host`` likewise)."""
        allowed = self.options.network
        wanted = step.network
        if wanted in (None, "", "default"):
            return allowed
        if wanted == "host" and allowed != "host":
            raise BuildError("RUN --network=host needs the host network, which this build "
                             "does not allow", hint="build with sandbox build --network host")
        return wanted

    def _commit_copy(self, image: ImageState, job: CopyJob) -> LayerResult | None:
        from sandbox.build._copy import run_copy
        from sandbox.drivers import select_driver
        from sandbox.runtime.userns import run_in_userns

        driver = select_driver(self.engine.store, self.engine.storage_driver).name
        if driver == "copy":
            raise BuildError(f"{'WORKDIR' if job.mkdir_only else job.keyword} needs the "
                             "overlay or fuse storage driver",
                             hint="enable FUSE or kernel overlayfs in user namespaces")
        job = dataclasses.replace(job, lowers=tuple(self._lowers(image)), driver=driver)
        result: LayerResult | None = run_in_userns(run_copy, job, mapping=self.engine.mapping)
        return result


def _at_line(exc: SandboxError, line: int) -> SandboxError:
    """The same error, its message prefixed with the Dockerfile line."""
    new = SandboxError.__new__(type(exc))
    SandboxError.__init__(new, f"Dockerfile:{line}: {exc.message}", hint=exc.hint)
    new.exit_code = exc.exit_code
    return new


def _is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def build(engine: Engine, options: BuildOptions, progress: Progress | None = None
          ) -> BuildResult:
    """Build ``options`` into ``engine``'s store (see `Builder`)."""
    return Builder(engine, options, progress).build()


def prune_cache(engine: Engine) -> tuple[int, int]:
    """``builder prune``: drop every cache entry, then the blobs and layers only it kept.

    Returns (entries removed, blobs removed)."""
    removed = BuildCache(engine.store).prune()
    blobs, _ = engine.images.gc()
    return removed, blobs
