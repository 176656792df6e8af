"""Readable byte streams for blobs: windows into the outer archive,
digest verification, size limits and decompression.

Each class wraps another object with a ``read(n)`` method and does one
thing; :func:`open_blob_tar_stream` chains them for a layer.
"""

import bz2
import gzip
import hashlib
import lzma
import os

from docker_rootfs import errors
from docker_rootfs.limits import RATIO_GRACE_BYTES

CHUNK = 1024 * 1024

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"


class FileWindow:
    """Reads ``size`` bytes of a file starting at ``offset`` (pread, no
    shared file position), so several windows can be open at once."""

    def __init__(self, fd, offset, size):
        self._fd = fd
        self._start = offset
        self._pos = 0
        self.size = size

    def read(self, n=-1):
        left = self.size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._start + self._pos)
        if not data:
            raise errors.ArchiveError("image archive is truncated")
        self._pos += len(data)
        return data

    def tell(self):
        return self._pos


class PrefixedReader:
    """Gives back bytes already peeked before reading on."""

    def __init__(self, prefix, raw):
        self._prefix = prefix
        self._raw = raw

    def read(self, n=-1):
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._raw.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data))
            return data
        return self._raw.read(n)


class DigestReader:
    """Hashes (sha256) and counts what passes through; :meth:`verify`
    compares with the expected digest and size once the stream is drained."""

    def __init__(self, raw, what, digest=None, size=None):
        self._raw = raw
        self._what = what
        self._digest = digest
        self._size = size
        # Nothing to compare with: count only (hashing is the costly part).
        self._hash = hashlib.sha256() if digest is not None else None
        self.count = 0

    def read(self, n=-1):
        data = self._raw.read(n)
        if self._hash is not None:
            self._hash.update(data)
        self.count += len(data)
        return data

    def hexdigest(self):
        return "sha256:" + self._hash.hexdigest()

    def drain(self):
        while self.read(CHUNK):
            pass

    def verify(self):
        if self._size is not None and self.count != self._size:
            raise errors.DigestMismatch(
                f"{self._what}: size is {self.count} bytes, manifest says {self._size}")
        if self._digest is not None and self.hexdigest() != self._digest:
            raise errors.DigestMismatch(
                f"{self._what}: content digest {self.hexdigest()} does not match {self._digest}")


class LimitedReader:
    """Enforces a byte budget on what passes through; ``used`` bytes of it
    were spent before (by earlier layers)."""

    def __init__(self, raw, limit_name, maximum, what, used=0):
        self._raw = raw
        self._limit_name = limit_name
        self._max = maximum
        self._what = what
        self.count = used

    def read(self, n=-1):
        data = self._raw.read(n)
        self.count += len(data)
        if self.count > self._max:
            raise errors.LimitExceeded(self._limit_name, self.count, self._max, self._what)
        return data


class RatioGuard:
    """Refuses decompression bombs: the output of one compressed blob
    against the compressed bytes read of that same blob (``source``, a
    counting reader below the decompressor), and, with ``totals``, the
    output of all compressed blobs against all their compressed bytes, so a
    bomb split into many small layers is refused too. Each ratio is checked
    once its output passes :data:`RATIO_GRACE_BYTES`. ``totals`` is any
    object with ``packed`` and ``unpacked`` counters (a ByteBudget)."""

    def __init__(self, raw, source, max_ratio, what, totals=None):
        self._raw = raw
        self._source = source
        self._max_ratio = max_ratio
        self._what = what
        self._totals = totals
        self._seen = source.count   # compressed bytes already added to totals
        if totals is not None:
            totals.packed += self._seen
        self.count = 0

    def read(self, n=-1):
        data = self._raw.read(n)
        self.count += len(data)
        packed = self._source.count
        self._check(self.count, packed, self._what)
        if self._totals is not None:
            t = self._totals
            t.unpacked += len(data)
            t.packed += packed - self._seen
            self._seen = packed
            self._check(t.unpacked, t.packed, "all compressed layers")
        return data

    def close(self):
        """Count compressed bytes read after the last decompressed byte
        (trailers, padding) in the totals."""
        if self._totals is not None:
            self._totals.packed += self._source.count - self._seen
            self._seen = self._source.count

    def _check(self, unpacked, packed, what):
        if self._max_ratio and unpacked > RATIO_GRACE_BYTES and packed:
            ratio = unpacked // packed
            if ratio > self._max_ratio:
                raise errors.LimitExceeded("max_compression_ratio", ratio, self._max_ratio, what)


class ForwardReader:
    """A forward-only ``seek``/``tell`` over a plain stream, so ``tarfile``
    can run in its direct ("r:") mode, which reads big members in one call
    and skips content by seeking, instead of stream mode's buffer copies.
    Skipped bytes are still read (and so hashed by readers below)."""

    def __init__(self, raw):
        self._raw = raw
        self._pos = 0

    def read(self, n=-1):
        data = self._raw.read(n)
        self._pos += len(data)
        return data

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        if whence == 1:
            offset += self._pos
        elif whence != 0:
            raise OSError("ForwardReader cannot seek from the end")
        if offset < self._pos:
            raise OSError(f"ForwardReader cannot seek back ({offset} < {self._pos})")
        while self._pos < offset:
            if not self.read(min(CHUNK, offset - self._pos)):
                break
        return self._pos


class ZstdReader:
    def __init__(self, raw):
        try:
            import zstandard
        except ImportError:  # pragma: no cover - zstandard is a requirement
            raise errors.ToolError("zstd-compressed layer but the zstandard "
                                   "Python package is not installed")
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True)

    def read(self, n=-1):
        if n is None or n < 0:
            out = []
            while True:
                chunk = self._reader.read(CHUNK)
                if not chunk:
                    return b"".join(out)
                out.append(chunk)
        return self._reader.read(n)


COMPRESSIONS = ("none", "gzip", "zstd", "xz", "bzip2")


def sniff_compression(head):
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    return "none"


def decompressor(compression, raw):
    if compression == "none":
        return raw
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        return ZstdReader(raw)
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="rb")
    if compression == "bzip2":
        return bz2.BZ2File(raw, mode="rb")
    raise errors.UnsupportedMediaType(f"unknown compression {compression}")


class DecompressErrors:
    """Turns the decompressors' own exceptions into one-line ArchiveErrors."""

    def __init__(self, raw, what):
        self._raw = raw
        self._what = what

    def read(self, n=-1):
        try:
            return self._raw.read(n)
        except errors.Docker2VMError:
            raise
        except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            raise errors.ArchiveError(f"{self._what}: corrupt compressed data: {exc}") from None
        except Exception as exc:  # zstandard.ZstdError and friends
            if type(exc).__module__.startswith("zstandard"):
                raise errors.ArchiveError(f"{self._what}: corrupt zstd data: {exc}") from None
            raise
