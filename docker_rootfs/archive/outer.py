"""The outer image archive: a tar (optionally gzip/zstd/xz compressed as a
whole, as ``docker save | gzip`` gives) whose members are read in place.

The tar is indexed once (headers only); members are then read through
:class:`FileWindow` without unpacking anything to disk. A compressed
archive is first decompressed into one temporary file, within limits.
"""

import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile

from docker_rootfs import errors
from docker_rootfs.archive import streams
from docker_rootfs.archive.layertar import FastTarInfo
from docker_rootfs.limits import MAX_SYMLINK_HOPS

LOG = logging.getLogger(__name__)


def _norm(name):
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


def parse_json(data, name, what):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:   # deep nesting: found by fuzzing
        raise errors.ArchiveError(f"{what} ({name}) is not valid JSON: {exc}") from None


class OuterArchive:
    def __init__(self, path, limits, tmpdir=None, tmp_prefix=None):
        self.path = str(path)
        # Glance passes "<image_id>." so its staging cleaner can reap leftovers.
        self._tmp_prefix = tmp_prefix or "docker2vm-archive-"
        self.limits = limits
        self._tmp = None
        self._fd = None
        try:
            self._open(tmpdir)
        except BaseException:
            self.close()
            raise

    def _open(self, tmpdir):
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise errors.ArchiveError(f"cannot open image archive {self.path}: {exc.strerror}") from None
        head = os.pread(fd, 8, 0)
        compression = streams.sniff_compression(head)
        if compression != "none":
            os.close(fd)
            fd = self._decompress_to_temp(compression, tmpdir)
        self._fd = fd
        self._index()

    def _decompress_to_temp(self, compression, tmpdir):
        LOG.info("image archive %s is %s-compressed; decompressing to a temporary file",
                 self.path, compression)
        fd, self._tmp = tempfile.mkstemp(prefix=self._tmp_prefix, suffix=".tar", dir=tmpdir)
        self._fd = fd   # closed by close() when decompression fails (it leaked: fuzzing)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
            counted = streams.DigestReader(src, "image archive")
            reader = streams.LimitedReader(
                streams.RatioGuard(
                    streams.DecompressErrors(streams.decompressor(compression, counted),
                                             "image archive"),
                    counted, self.limits.max_compression_ratio, "image archive"),
                "max_total_bytes", self.limits.max_total_bytes, "decompressed image archive")
            shutil.copyfileobj(reader, dst, streams.CHUNK)
        LOG.info("decompressed %d bytes into %s", size, self._tmp)
        return fd

    def _index(self):
        self.members = {}   # name -> (offset_data, size)
        self.links = {}     # name -> target name (symlinks and hard links)
        count = 0
        try:
            with os.fdopen(os.dup(self._fd), "rb") as f:
                f.seek(0)  # a dup shares the offset the decompression left at the end
                tf = tarfile.open(fileobj=f, mode="r:", tarinfo=FastTarInfo)
                for m in iter(tf.next, None):
                    count += 1
                    if count > self.limits.max_archive_entries:
                        raise errors.LimitExceeded("max_archive_entries", count,
                                                   self.limits.max_archive_entries, "image archive")
                    # tarfile would seek backwards, even loop: a negative size, or an old
                    # GNU sparse member whose stored size is negative while its real size
                    # is not (found by fuzzing)
                    if m.size < 0 or tf.offset < m.offset_data:
                        raise errors.ArchiveError(f"{self.path}: member {m.name!r} has a negative size")
                    name = _norm(m.name)
                    if m.isreg():
                        self.members[name] = (m.offset_data, m.size)
                    elif m.issym():
                        self.links[name] = _norm(posixpath.join(posixpath.dirname(name), m.linkname))
                    elif m.islnk():
                        self.links[name] = _norm(m.linkname)
                    tf.members.clear()
        except (tarfile.TarError, ValueError, OverflowError, IndexError) as exc:
            # ValueError/OverflowError: a member size beyond any file offset; IndexError: a GNU
            # sparse extension block cut short (found by fuzzing)
            raise errors.ArchiveError(f"{self.path} is not a readable tar archive: {exc}") from None
        if not self.members:
            raise errors.ArchiveError(f"{self.path} is not an image archive: no files in it")

    def resolve(self, name):
        name = _norm(name)
        for _ in range(MAX_SYMLINK_HOPS):
            if name in self.members:
                return name
            if name not in self.links:
                return None
            name = self.links[name]
        raise errors.ArchiveError(f"image archive member {name}: too many levels of links")

    def exists(self, name):
        return self.resolve(name) is not None

    def size(self, name):
        return self.members[self._must(name)][1]

    def _must(self, name):
        real = self.resolve(name)
        if real is None:
            raise errors.ArchiveError(f"image archive has no file {name}")
        return real

    def open(self, name):
        offset, size = self.members[self._must(name)]
        return streams.FileWindow(self._fd, offset, size)

    def read_bytes(self, name, what, digest=None, size=None):
        real = self._must(name)
        actual = self.members[real][1]
        if actual > self.limits.max_json_size:
            raise errors.LimitExceeded("max_json_size", actual, self.limits.max_json_size, what)
        reader = streams.DigestReader(self.open(real), what, digest, size)
        data = reader.read()
        reader.verify()
        return data

    def read_json(self, name, what, digest=None, size=None):
        return parse_json(self.read_bytes(name, what, digest, size), name, what)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
