"""Reading one layer's tar stream with the end-of-stream rules of Go's
``archive/tar``, which Docker, containerd and podman all use.

Python's :mod:`tarfile` differs from Go's reader at the end of a stream in
both directions:

* it refuses a stream that ends right after the last member's data, with
  no padding to 512 bytes and no end-of-archive blocks (as ``umoci insert``
  writes layers): Go takes a clean end of stream anywhere after a member's
  data as the end of the archive, so we do too;
* it silently ends the archive at a header cut short, at a header with a
  bad checksum, or at one zero block followed by anything: Go refuses a
  header cut short and a non-zero block where a header must be
  (``ErrUnexpectedEOF``, ``ErrHeader``), so we do too.

A member whose data is cut short stays an error, as in Go.
"""

import struct
import tarfile

from docker_rootfs import errors
from docker_rootfs.archive.streams import ForwardReader

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)


class LayerTarError(errors.ArchiveError):
    """Raised from inside tarfile's header parsing; not a tarfile error, so
    tarfile passes it through instead of treating it as the end."""


# One header block: name mode uid gid size mtime chksum type linkname
# (magic, version) uname gname devmajor devminor prefix.
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8x32s32s8s8s155s12x")
# Headers whose body tarfile reads whole (PAX extended and global, Solaris
# extended, GNU long name and long link), and the most a body may hold: paths
# are at most max_path_length (4 KiB by default) and the xattrs of one inode
# fit in a 4 KiB block, so real bodies are far smaller; GNU sparse 0.x maps
# (PAX GNU.sparse.map) of very fragmented files are the largest legitimate ones.
_EXTENDED_TYPES = frozenset((tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK))
MAX_EXTENDED_HEADER = 8 * 1024 * 1024
# Extended headers before one member: a global and a PAX header, GNU long
# name and long link: four at most in real archives.
MAX_EXTENDED_CHAIN = 16
_PLAIN_TYPES = frozenset((tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE,
                          tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE))


def _octal(field):
    """tarfile.nti for a plain octal field; ValueError for anything else."""
    digits = field[:-1]
    if not field[-1] and digits.isdigit():   # the usual "0000644\0"
        return int(digits, 8)
    if field[0] in (0o200, 0o377):
        raise ValueError("base-256 number")
    p = field.find(b"\0")
    if p != -1:
        field = field[:p]
    return int(field.decode("ascii").strip() or "0", 8)


def _text(field, encoding, errors):
    """tarfile.nts."""
    if not field[0]:
        return ""
    p = field.find(b"\0")
    if p != -1:
        field = field[:p]
    return field.decode(encoding, errors)


class FastTarInfo(tarfile.TarInfo):
    """A TarInfo whose header parsing is faster, with the same results."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        """tarfile's ``frombuf``, the same result for the same block (see
        tests/core/test_layer_header.py) at a fraction of the cost, for the
        plain case: a member of a common type, octal numbers, the unsigned
        checksum. Anything else goes to tarfile's own parser."""
        try:
            (name, mode, uid, gid, size, mtime, chksum, type_, linkname, uname, gname,
             devmajor, devminor, prefix) = _HEADER.unpack(buf)
            if type_ not in _PLAIN_TYPES or buf == ZERO_BLOCK:
                raise ValueError("not a plain member")
            chksum = _octal(chksum)
            if chksum != 256 + sum(buf) - sum(buf[148:156]):
                raise ValueError("checksum is not the plain one")
            obj = cls()
            obj.name = _text(name, encoding, errors)
            obj.mode = _octal(mode)
            obj.uid = _octal(uid)
            obj.gid = _octal(gid)
            obj.size = _octal(size)
            obj.mtime = _octal(mtime)
            obj.devmajor = _octal(devmajor)
            obj.devminor = _octal(devminor)
            obj.linkname = _text(linkname, encoding, errors)
            obj.uname = _text(uname, encoding, errors)
            obj.gname = _text(gname, encoding, errors)
            prefix = _text(prefix, encoding, errors)
        except (ValueError, struct.error):
            return super().frombuf(buf, encoding, errors)
        obj.chksum = chksum
        obj.type = type_
        if type_ == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        if prefix:
            obj.name = prefix + "/" + obj.name
        return obj


    def _proc_member(self, tarfile_):
        """tarfile reads a PAX or GNU long-name header's whole body into
        memory at once: bound it first (a body of 4 GiB was a MemoryError
        under the conversion's address-space limit; found by fuzzing)."""
        if self.type not in _EXTENDED_TYPES:
            return super()._proc_member(tarfile_)
        if not 0 <= self.size <= MAX_EXTENDED_HEADER:
            raise LayerTarError(
                f"tar header at byte {self.offset}: extended header ({self.type.decode(errors='replace')!r}) "
                f"of {self.size} bytes (at most {MAX_EXTENDED_HEADER} allowed)")
        # tarfile reads the member an extended header describes by recursion:
        # 2,000 headers in a row (2 MB) were a RecursionError (found by reading)
        depth = getattr(tarfile_, "_extended_depth", 0)
        if depth >= MAX_EXTENDED_CHAIN:
            raise LayerTarError(f"tar header at byte {self.offset}: more than {MAX_EXTENDED_CHAIN} "
                                "extended headers in a row")
        tarfile_._extended_depth = depth + 1
        try:
            return super()._proc_member(tarfile_)
        finally:
            tarfile_._extended_depth = depth


class _StrictTarInfo(FastTarInfo):

    @classmethod
    def fromtarfile(cls, tf):
        buf = tf.fileobj.read(BLOCK)
        if 0 < len(buf) < BLOCK:
            raise LayerTarError(f"tar header cut short at byte {tf.offset} "
                                f"({len(buf)} of {BLOCK} bytes)")
        if buf == ZERO_BLOCK:
            # End-of-archive: Go reads one more block; a clean end of stream
            # or a second zero block ends the archive, anything else is wrong.
            second = tf.fileobj.read(BLOCK)
            if second and second != ZERO_BLOCK:
                raise LayerTarError(
                    f"invalid tar data after the end-of-archive block at byte {tf.offset}")
            raise tarfile.EOFHeaderError("end of file header")
        try:
            obj = cls.frombuf(buf, tf.encoding, tf.errors)
        except tarfile.InvalidHeaderError as exc:
            raise LayerTarError(f"invalid tar header at byte {tf.offset}: {exc}") from None
        obj.offset = tf.fileobj.tell() - BLOCK
        try:
            member = obj._proc_member(tf)
        except (ValueError, IndexError, OverflowError) as exc:
            # tarfile's own, on malformed extended headers (found by fuzzing): a
            # malformed or cut GNU sparse map, a PAX record length past any offset
            raise LayerTarError(f"invalid tar header at byte {obj.offset}: {exc}") from None
        if member.size < 0:   # base-256 or PAX; tarfile would seek backwards (found by fuzzing)
            raise LayerTarError(f"invalid tar header at byte {obj.offset}: negative size {member.size}")
        if tf.offset < member.offset_data:
            # an old GNU sparse member whose stored size is negative while its
            # real size is not: tarfile's next offset goes backwards (found by
            # fuzzing the builder's scan; the same input reaches layer tars)
            raise LayerTarError(f"invalid tar header at byte {obj.offset}: negative stored size")
        return member


class _EndAwareReader(ForwardReader):
    """A :class:`ForwardReader` that returns short reads only at the end of
    the stream (some decompressors return less than asked), and remembers
    where the stream ended."""

    def __init__(self, raw):
        super().__init__(raw)
        self.end = None

    def read(self, n=-1):
        data = super().read(n)
        if n is None or n < 0 or len(data) == n:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = super().read(n - got)
            if not more:
                self.end = self._pos
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def seek(self, offset, whence=0):
        # Skipping member data: let a Prefetcher drop it without copying.
        skip = getattr(self._raw, "skip", None)
        if skip is None:
            return super().seek(offset, whence)
        if whence == 1:
            offset += self._pos
        elif whence != 0:
            raise OSError("cannot seek from the end of a layer stream")
        if offset < self._pos:
            raise OSError(f"cannot seek back in a layer stream ({offset} < {self._pos})")
        want = offset - self._pos
        got = skip(want)
        self._pos += got
        if got < want:
            self.end = self._pos
        return self._pos


def iterate_members(stream):
    """Yield ``(ordinal, TarInfo, TarFile)`` for each member of ``stream``
    (a readable object), in order. Content is read through the TarFile
    (``extractfile``) before asking for the next member, or skipped."""
    reader = _EndAwareReader(stream)
    tf = tarfile.open(fileobj=reader, mode="r:", tarinfo=_StrictTarInfo,
                      encoding="utf-8", errors="surrogateescape")
    ordinal = 0
    last = None
    while True:
        try:
            m = tf.next()
        except tarfile.ReadError as exc:
            if (str(exc) == "unexpected end of data" and last is not None
                    and reader.end is not None
                    and reader.end >= last.offset_data + last.size):
                # The stream ended inside the last member's padding.
                return
            raise
        if m is None:
            return
        tf.members.clear()   # tarfile would keep every header otherwise
        last = m
        yield ordinal, m, tf
        ordinal += 1
