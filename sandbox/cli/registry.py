"""``sandbox pull``, ``push``, ``login``, ``logout``, ``search``: Docker's output shapes."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from sandbox.cli._args import Parser, parse
from sandbox.errors import UsageError

if TYPE_CHECKING:
    from sandbox.images import ImageStore
    from sandbox.oci import Platform

__all__ = ["main"]


def _images() -> ImageStore:
    from sandbox.images import ImageStore
    from sandbox.store import Store

    return ImageStore(Store())


def _pull_one(images: ImageStore, text: str, platform: Platform | None, quiet: bool) -> None:
    from sandbox._progress import make_progress
    from sandbox.reference import parse_reference

    ref = parse_reference(text)
    out = sys.stdout
    if not quiet:
        if parse_reference(text, default_tag=False).tag is None and not ref.digest:
            out.write("Using default tag: latest\n")
        out.write(f"{ref.tag or (ref.digest or '')[7:19]}: Pulling from {ref.familiar_name}\n")
        out.flush()
    image, changed = images.pull(text, platform=platform,
                                 progress=make_progress(out, quiet=quiet))
    if quiet:
        out.write(f"{ref}\n")
        return
    digest = next((r.partition("@")[2] for r in image.repo_digests
                   if r.partition("@")[0] == ref.name), image.manifest_digest)
    out.write(f"Digest: {digest}\n")
    what = "Downloaded newer image" if changed else "Image is up to date"
    out.write(f"Status: {what} for {ref.familiar}\n{ref}\n")


def cmd_pull(argv: list[str]) -> int:
    p = Parser("pull", "Download an image from a registry",
               usage="sandbox pull [OPTIONS] NAME[:TAG|@DIGEST]")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress verbose output")
    p.add_argument("-a", "--all-tags", action="store_true",
                   help="Download all tagged images in the repository")
    p.add_argument("--platform", default="", help="Set platform (os/arch[/variant])")
    p.add_argument("name")
    args = parse(p, argv)
    from sandbox.oci import parse_platform
    from sandbox.reference import parse_reference

    platform = parse_platform(args.platform) if args.platform else None
    images = _images()
    if args.all_tags:
        repo = parse_reference(args.name, default_tag=False)
        if repo.tag or repo.digest:
            raise UsageError("tag can't be used with --all-tags/-a")
        from sandbox.registry import RegistryClient

        with RegistryClient() as client:
            tags = client.list_tags(repo)
        texts = [str(repo.with_tag(t)) for t in tags]
    else:
        texts = [args.name]
    for text in texts:
        _pull_one(images, text, platform, args.quiet)
    return 0


def cmd_push(argv: list[str]) -> int:
    p = Parser("push", "Upload an image to a registry", usage="sandbox push [OPTIONS] NAME[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="Suppress verbose output")
    p.add_argument("name")
    args = parse(p, argv)
    from sandbox._progress import make_progress
    from sandbox.reference import parse_reference

    ref = parse_reference(args.name)
    images = _images()
    image = images.get(args.name)
    out = sys.stdout
    if not args.quiet:
        out.write(f"The push refers to repository [{ref.name}]\n")
        out.flush()
    digest = images.push(args.name, progress=make_progress(out, quiet=args.quiet))
    size = images.store.blob_size(image.manifest_digest)
    out.write(f"{ref.tag}: digest: {digest} size: {size}\n" if not args.quiet else f"{ref}\n")
    return 0


def _server_domain(server: str | None) -> str:
    if not server:
        return "docker.io"
    server = server.removeprefix("https://").removeprefix("http://").split("/")[0]
    return "docker.io" if server in ("index.docker.io", "registry-1.docker.io") else server


def cmd_login(argv: list[str]) -> int:
    p = Parser("login", "Log in to a registry", usage="sandbox login [OPTIONS] [SERVER]")
    p.add_argument("-u", "--username", default="", help="Username")
    p.add_argument("-p", "--password", default=None, help="Password")
    p.add_argument("--password-stdin", action="store_true", help="Take the password from stdin")
    p.add_argument("server", nargs="?")
    args = parse(p, argv)
    from sandbox import auth
    from sandbox.registry import RegistryClient

    domain = _server_domain(args.server)
    password = args.password
    if args.password_stdin:
        if password is not None:
            raise UsageError("--password and --password-stdin are mutually exclusive")
        if not args.username:
            raise UsageError("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. "
                         "Use --password-stdin.\n")
    username = args.username
    if not username or password is None:
        if not sys.stdin.isatty():
            raise UsageError("cannot perform an interactive login from a non TTY device",
                             hint="use -u USER --password-stdin")
        import getpass

        username = username or input("Username: ").strip()
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("username and password are required")
    creds = auth.Credentials(username, password)
    with RegistryClient() as client:
        client.login(domain, creds)
    path = auth.store_credentials(domain, creds)
    sys.stderr.write(f"credentials saved in {path}\n")
    sys.stdout.write("Login Succeeded\n")
    return 0


def cmd_logout(argv: list[str]) -> int:
    p = Parser("logout", "Log out from a registry", usage="sandbox logout [SERVER]")
    p.add_argument("server", nargs="?")
    args = parse(p, argv)
    from sandbox import auth

    domain = _server_domain(args.server)
    if auth.remove_credentials(domain):
        sys.stdout.write(f"Removing login credentials for {domain}\n")
    else:
        sys.stdout.write(f"Not logged in to {domain}\n")
    return 0


def cmd_search(argv: list[str]) -> int:
    p = Parser("search", "Search Docker Hub for images", usage="sandbox search [OPTIONS] TERM")
    p.add_argument("--limit", type=int, default=25, help="Max number of search results")
    p.add_argument("--no-trunc", action="store_true", help="Don't truncate output")
    p.add_argument("--format", default="", help="Pretty-print search using a Go template")
    p.add_argument("-f", "--filter", action="append", default=[],
                   help="Filter output (is-official=true, stars=N)")
    p.add_argument("term")
    args = parse(p, argv)
    from sandbox.cli.images import fill_template, table
    from sandbox.reference import search_index
    from sandbox.registry import RegistryClient

    registry, term = search_index(args.term)
    with RegistryClient() as client:
        results = client.search(term, registry=registry, limit=args.limit)
    for flt in args.filter:
        key, _, value = flt.partition("=")
        if key == "is-official":
            results = [r for r in results if r.is_official == (value == "true")]
        elif key == "stars":
            if not (value or "0").isdigit():
                raise UsageError(f"invalid filter 'stars={value}'", hint="stars=N, a number")
            results = [r for r in results if r.star_count >= int(value or 0)]
        else:
            raise UsageError(f"invalid filter '{key}'")
    rows = []
    for r in results:
        desc = r.description if args.no_trunc or len(r.description) <= 45 \
            else r.description[:44] + "…"
        rows.append({"Name": r.name, "Description": desc, "StarCount": str(r.star_count),
                     "IsOfficial": "[OK]" if r.is_official else "",
                     "IsAutomated": "[OK]" if r.is_automated else ""})
    if args.format:
        sys.stdout.write("".join(fill_template(args.format, row) + "\n" for row in rows))
        return 0
    sys.stdout.write(table(["NAME", "DESCRIPTION", "STARS", "OFFICIAL"],
                           [[r["Name"], r["Description"], r["StarCount"], r["IsOfficial"]]
                            for r in rows]))
    return 0


def main(command: str, argv: list[str]) -> int:
    handlers = {"pull": cmd_pull, "push": cmd_push, "login": cmd_login, "logout": cmd_logout,
                "search": cmd_search}
    return handlers[command](argv)
