"""Readable byte streams for blobs: windows into the outer archive,
digest verification, size limits and decompression.

Each class wraps another object with a ``read(n)`` method and does one
thing; :func:`open_blob_tar_stream` chains them for a layer.
"""

import bz2
import hashlib
import lzma
import os
import queue
import threading
import zlib

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
        self.fd = fd
        self.start = offset
        self._pos = 0
        self.size = size

    def read(self, n=-1):
        left = self.size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.start + self._pos)
        if not data:
            raise errors.ArchiveError("image archive is truncated")
        self._pos += len(data)
        return data

    def tell(self):
        return self._pos

    def skip(self, n):
        """Move on ``n`` bytes (read by other means, e.g. sendfile)."""
        self._pos = min(self.size, self._pos + n)


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


class GzipReader:
    """gzip (one or more members, as ``gzip.GzipFile`` reads them) through
    zlib alone: the CRC-32 and length trailers are checked inside zlib, not
    by a second pass in Python. Output per call is bounded by ``n`` (never
    more than CHUNK), so a bomb cannot blow up one read."""

    def __init__(self, raw):
        self._raw = raw
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""     # compressed input not yet given to zlib
        self._eof = False

    def read(self, n=-1):
        if n is None or n < 0 or n > CHUNK:
            n = CHUNK
        while not self._eof:
            if self._d.unconsumed_tail:
                data = self._d.unconsumed_tail
            else:
                data = self._pending or self._raw.read(CHUNK)
                self._pending = b""
                if not data:
                    if self._d.eof:
                        self._eof = True
                        break
                    raise EOFError("compressed file ended before the end-of-stream marker")
            try:
                out = self._d.decompress(data, n)
            except zlib.error as exc:
                raise OSError(str(exc)) from None
            if self._d.eof:
                self._next_member()
            if out:
                return out
        return b""

    def _next_member(self):
        rest = self._d.unused_data
        # Zero padding after a member is allowed (as gzip.GzipFile does).
        while True:
            rest = rest.lstrip(b"\0")
            if rest:
                break
            rest = self._raw.read(CHUNK)
            if not rest:
                self._eof = True
                return
        if not rest.startswith(GZIP_MAGIC[:1]) or (len(rest) > 1 and not rest.startswith(GZIP_MAGIC)):
            raise OSError("not a gzipped file (trailing data after a gzip member)")
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = rest


class TeeReader:
    """Copies what passes through to ``fd`` (a spool file)."""

    def __init__(self, raw, fd):
        self._raw = raw
        self._fd = fd

    def read(self, n=-1):
        data = self._raw.read(n)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        return data


class Prefetcher:
    """Runs ``source.read(CHUNK)`` in a thread, a few chunks ahead of the
    reader, so the work below it (reading, hashing, decompressing and
    spooling, all of which release the GIL) runs on another core than the
    tar parsing above it. An exception in the thread is raised to the
    reader. :meth:`close` stops and joins the thread; use it as a context
    manager."""

    DEPTH = 4

    def __init__(self, source, name="docker2vm-reader"):
        self._source = source
        self._queue = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._chunk = b""
        self._off = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                data = self._source.read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next(self):
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if not item:
            self._done = True
        self._chunk, self._off = item, 0

    def read(self, n=-1):
        if n is None or n < 0:
            parts = []
            while True:
                data = self.read(CHUNK)
                if not data:
                    return b"".join(parts)
                parts.append(data)
        parts = []
        while n > 0:
            left = len(self._chunk) - self._off
            if not left:
                if self._done:
                    break
                self._next()
                continue
            take = min(n, left)
            if take == len(self._chunk) and self._off == 0:
                parts.append(self._chunk)
            else:
                parts.append(self._chunk[self._off:self._off + take])
            self._off += take
            n -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)   # b"" for none

    def skip(self, n):
        """Discard up to ``n`` bytes without copying them; returns how many."""
        skipped = 0
        while skipped < n:
            left = len(self._chunk) - self._off
            if not left:
                if self._done:
                    break
                self._next()
                continue
            take = min(n - skipped, left)
            self._off += take
            skipped += take
        return skipped

    def close(self):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        return GzipReader(raw)
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
