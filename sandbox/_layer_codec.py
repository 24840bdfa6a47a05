"""Streaming (de)compression of layer blobs and the readers/writers ``layers`` builds on.

Nothing here reads a whole layer into memory: decompressors are chained streams, and the tar
reader (``_tarstream.TarStream`` over ``ForwardReader``) only ever moves forward, so a layer can
come straight from a socket or a pipe.

gzip uses python-isal (``isal.igzip``) when it is installed: it measured several times faster than
zlib for both directions (see ``bench/bench_unpack.py``); zlib is the fallback.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib
import io
import logging
import lzma
import os
import zlib
from typing import Any, BinaryIO, Literal

import zstandard

from sandbox.errors import SandboxError, SpecialFileError

_igzip: Any
_isal_zlib: Any
try:  # python-isal: optional, measured faster (bench/bench_unpack.py)
    _igzip = importlib.import_module("isal.igzip")
    _isal_zlib = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = _isal_zlib = None

__all__ = [
    "Compression",
    "open_decompressed",
    "sniff_compression",
    "ForwardReader",
    "DigestingWriter",
    "GZIP_BACKEND",
]

logger = logging.getLogger(__name__)

Compression = Literal["gzip", "zstd", None]
GZIP_BACKEND: Literal["isal", "zlib"] = "isal" if _igzip is not None else "zlib"
_CHUNK = 1 << 20
_MAX_HEADER_READ = 16 << 20  # no tar header block (PAX, GNU long name) is legitimately this big
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
}


class _Prefixed(io.RawIOBase):
    """A raw stream that yields ``head`` and then the rest of ``src`` (after sniffing)."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._src = src
        self._readinto = getattr(src, "readinto", None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        if self._readinto is not None:
            try:
                return int(self._readinto(view) or 0)
            except (NotImplementedError, io.UnsupportedOperation):
                self._readinto = None
        data = self._src.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_head(fileobj: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    need = size
    while need:
        data = fileobj.read(need)
        if not data:
            break
        parts.append(data)
        need -= len(data)
    return b"".join(parts)


def sniff_compression(head: bytes) -> str | None:
    """'gzip', 'zstd', 'xz', 'bzip2' or None (plain tar) from a blob's first bytes."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_decompressed(fileobj: BinaryIO) -> BinaryIO:
    """A streaming reader of ``fileobj``'s uncompressed bytes, whatever its compression.

    Sniffs the magic (gzip, zstd, xz, bzip2 or plain tar). Reading it never loads the whole blob.
    """
    head = _read_head(fileobj, 6)
    raw = io.BufferedReader(_Prefixed(head, fileobj), buffer_size=_CHUNK)
    kind = sniff_compression(head)
    if kind == "gzip":
        if _igzip is not None:
            return _igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-any-return]
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        dctx = zstandard.ZstdDecompressor()
        return dctx.stream_reader(raw, read_size=_CHUNK, read_across_frames=True,
                                  closefd=False)
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return raw


_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError,
    *((_isal_zlib.error,) if _isal_zlib is not None else ()))


def _stream_error(exc: BaseException, offset: int) -> SandboxError:
    return SandboxError(f"layer stream failed after {offset} bytes: {exc}",
                        hint="the blob is truncated or corrupt, or the connection broke; "
                             "pull it again")


class ForwardReader(io.RawIOBase):
    """A read-only stream that knows its offset and can skip forward (``TarStream``'s input).

    ``read`` refuses sizes no tar header block legitimately has, so a hostile PAX header size
    cannot make us allocate gigabytes; file data goes through ``copy_to_fd`` in bounded chunks.
    """

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self._pos = 0
        self._src_readinto = getattr(src, "readinto", None)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _pull(self, size: int) -> bytes:
        """``src.read`` with decompressor and transport failures as one ``SandboxError``."""
        try:
            return self._src.read(size)
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc, self._pos) from exc

    def _pull_into(self, view: memoryview) -> int:
        try:
            if self._src_readinto is not None:
                return int(self._src_readinto(view) or 0)
            data = self._src.read(len(view))
        except _STREAM_ERRORS as exc:
            raise _stream_error(exc, self._pos) from exc
        view[: len(data)] = data
        return len(data)

    def skip(self, size: int) -> None:
        while size > 0:
            data = self._pull(min(size, _CHUNK))
            if not data:
                raise SandboxError("layer tar is truncated",
                                   hint="the blob is incomplete or corrupt; pull it again")
            size -= len(data)
            self._pos += len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            raise SpecialFileError("unbounded read of a layer stream", member="")
        if size > _MAX_HEADER_READ:
            raise SpecialFileError(f"layer tar header block of {size} bytes refused", member="")
        parts: list[bytes] = []
        need = size
        while need:
            data = self._pull(need)
            if not data:
                break
            parts.append(data)
            need -= len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def copy_to_fd(self, fd: int, size: int, buf: memoryview, *, member: str = "") -> None:
        """Copy exactly ``size`` bytes of the stream to ``fd`` at its current offset.

        A stream that ends first means the header announced more than the layer holds.
        """
        while size > 0:
            got = self._pull_into(buf[: min(size, len(buf))])
            if not got:
                raise SpecialFileError(
                    f"layer member {member!r} announces {size} more bytes than the layer holds",
                    member=member, hint="the blob is truncated, corrupt or malicious")
            view = buf[:got]
            while view:
                view = view[os.write(fd, view):]
            size -= got
            self._pos += got


class DigestingWriter:
    """Hashes what is written (the diff_id), compresses it, hashes and counts the result."""

    def __init__(self, out: BinaryIO, compression: Compression, *,
                 level: int | None = None) -> None:
        self._out = out
        self.diff_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.size = 0
        self._compressor: Any
        if compression == "gzip":
            if _isal_zlib is not None:
                self._compressor = _isal_zlib.compressobj(
                    level if level is not None else 2, _isal_zlib.DEFLATED, 31)
            else:
                self._compressor = zlib.compressobj(
                    level if level is not None else 6, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self._compressor = zstandard.ZstdCompressor(
                level=level if level is not None else 3).compressobj()
        else:
            self._compressor = None

    def write(self, data: bytes | memoryview) -> None:
        self.diff_hash.update(data)
        if self._compressor is None:
            self._emit(data)
        else:
            out = self._compressor.compress(data)
            if out:
                self._emit(out)

    def _emit(self, data: bytes | memoryview) -> None:
        self.blob_hash.update(data)
        self.size += len(data)
        self._out.write(data)

    def finish(self) -> None:
        if self._compressor is not None:
            tail = self._compressor.flush()
            if tail:
                self._emit(tail)
