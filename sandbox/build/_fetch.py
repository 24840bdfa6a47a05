"""ADD of a URL: download to the build's temp dir, verify ``--checksum``, give a `Source`."""

from __future__ import annotations

import hashlib
import os
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime

from sandbox.build._context import Source
from sandbox.errors import BuildError

__all__ = ["download"]


def download(url: str, tmp: str, checksum: str | None, *, timeout: float = 60) -> Source:
    """Fetch ``url``; the file keeps the URL's last path segment as its name, mode 0600 and
    the ``Last-Modified`` time (as Docker's ADD)."""
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise BuildError(f"ADD failed: cannot determine a file name from {url}",
                         hint="end the URL with a file name or give a destination file")
    fd, path = _mkstemp(tmp)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            modified = resp.headers.get("Last-Modified")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BuildError(f"ADD failed: cannot download {url}: {reason}") from None
    actual = "sha256:" + h.hexdigest()
    if checksum is not None and checksum != actual:
        raise BuildError(f"ADD failed: checksum of {url} is {actual}, expected {checksum}",
                         hint="the file changed, or --checksum is wrong")
    mtime = None
    if modified:
        try:
            mtime = parsedate_to_datetime(modified).timestamp()
        except (TypeError, ValueError):
            mtime = None
    return Source(name, path, False, mode=0o600, mtime=mtime, remote=True)


def _mkstemp(tmp: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=tmp, suffix=".download")
