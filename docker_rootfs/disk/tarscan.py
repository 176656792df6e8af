"""Read a flattened PAX tar (the flattener's output) into a compact entry list.

The builders' input contract is "one PAX tar of the final merged tree": paths
relative (``usr/bin/x``), parents resolved, no whiteouts, hard links as
LNKTYPE entries naming an earlier member. This module checks that contract
again (defence in depth: the builder never trusts its input to be the
flattener's), and records per entry what a builder needs: type, owner,
mode, times, device numbers, xattrs, and where the data lies in the tar file,
so a builder reads the data with ``pread`` and never re-parses headers.

Nothing here touches the host filesystem except reading the tar.
"""

import dataclasses
import hashlib
import math
import os
import tarfile

from docker_rootfs import errors
from docker_rootfs.archive.layertar import FastTarInfo
from docker_rootfs.limits import MAX_ID, check_device_number

# Entry kinds
REG, DIR, SYMLINK, HARDLINK, CHR, BLK, FIFO = "reg", "dir", "sym", "link", "chr", "blk", "fifo"

_TYPES = {
    tarfile.REGTYPE: REG, tarfile.AREGTYPE: REG, tarfile.CONTTYPE: REG,
    tarfile.GNUTYPE_SPARSE: REG, tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK,
    tarfile.LNKTYPE: HARDLINK, tarfile.CHRTYPE: CHR, tarfile.BLKTYPE: BLK,
    tarfile.FIFOTYPE: FIFO,
}

XATTR_PREFIX = "SCHILY.xattr."
NAME_MAX = 255
BLOCK = 4096


@dataclasses.dataclass(slots=True)
class Entry:
    path: bytes            # b"usr/bin/x"; b"" is the root directory
    kind: str
    mode: int              # permission bits incl. setuid/setgid/sticky (no type bits)
    uid: int
    gid: int
    mtime: int             # seconds
    mtime_ns: int          # nanoseconds part
    size: int = 0          # regular files: apparent size
    offset: int = 0        # regular files: where the data starts in the tar file
    sparse: tuple = ()     # ((offset, length), ...) data segments of a sparse file
    target: bytes = b""    # symlink target or hard link target path
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple = ()     # ((name bytes, value bytes), ...) sorted by name
    fd: int = -1           # regular files: the file holding the data, if not the tar


@dataclasses.dataclass
class TarStats:
    entries: int = 0
    inodes: int = 0          # distinct inodes (entries minus hard links)
    dirs: int = 0
    data_blocks: int = 0     # 4 KiB blocks of file data (sparse-aware)
    data_bytes: int = 0
    dir_bytes: dict = dataclasses.field(default_factory=dict)  # dir path -> dirent bytes
    xattr_blocks: int = 0
    symlink_blocks: int = 0
    max_mtime: int = 0
    sha256: str = ""         # of the whole tar file, when asked for


def _norm_path(name):
    """Tar member name -> b"a/b/c"; raises UnsafeEntry for anything odd."""
    raw = os.fsencode(name)
    if b"\0" in raw:
        raise errors.UnsafeEntry(f"entry name contains NUL: {name!r}")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    for p in parts:
        if p == b"..":
            raise errors.UnsafeEntry(f"entry name has a '..' component: {name!r}")
        if len(p) > NAME_MAX:
            raise errors.UnsafeEntry(
                f"entry name component longer than {NAME_MAX} bytes: {name!r}")
    return b"/".join(parts)


def _xattrs(member):
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith(XATTR_PREFIX):
            name = key[len(XATTR_PREFIX):].encode("utf-8", "surrogateescape")
            val = value.encode("utf-8", "surrogateescape")
            out.append((name, val))
    out.sort()
    return tuple(out)


def _xattr_block_needed(xattrs):
    """Whether the xattrs overflow the 256-byte inode's in-inode space (~92 bytes)."""
    used = 0
    for name, value in xattrs:
        short = name.split(b".", 1)[-1]
        used += 16 + (len(short) + 3) // 4 * 4 + (len(value) + 3) // 4 * 4
    return used > 80


def _dirent_bytes(name):
    return 8 + (len(name) + 3) // 4 * 4


def _split_time(mtime):
    if isinstance(mtime, float):
        if not math.isfinite(mtime):   # PAX "nan", "inf": found with the fuzz targets
            raise errors.ArchiveError(f"invalid modification time {mtime!r} in the flattened tar")
        sec = int(mtime // 1)
        ns = int(round((mtime - sec) * 1e9))
        if ns >= 1_000_000_000:
            sec, ns = sec + 1, ns - 1_000_000_000
        return sec, ns
    return int(mtime), 0


def scan(path, max_entries=None, want_sha256=False):
    """Read the tar file at ``path``; return (entries, stats).

    Checks: see :class:`Scanner`. Anything wrong raises
    :class:`~docker_rootfs.errors.UnsafeEntry` or
    :class:`~docker_rootfs.errors.ArchiveError`.
    """
    scanner = Scanner(max_entries)
    try:
        tf = tarfile.open(path, mode="r:", errors="surrogateescape", tarinfo=FastTarInfo)
    except (tarfile.TarError, OSError, ValueError, IndexError, OverflowError) as exc:
        # a malformed or cut GNU sparse map, a GNU long name of impossible size (found by fuzzing)
        raise errors.ArchiveError(f"cannot read the flattened tar: {exc}") from None
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, EOFError, ValueError, OverflowError, IndexError, OSError) as exc:
                # ValueError/OverflowError: a size beyond any file offset; IndexError: a GNU
                # sparse extension block cut short; OSError: a seek before the file's start
                # (found by fuzzing)
                raise errors.ArchiveError(f"truncated or corrupt flattened tar: {exc}") from None
            if m is None:
                break
            # tarfile would seek backwards, even loop: a negative size, or an old GNU
            # sparse member whose stored size is negative while its real size is not
            # (found by fuzzing)
            if m.size < 0 or tf.offset < m.offset_data:
                raise errors.ArchiveError(f"corrupt flattened tar: {m.name!r} has a negative size")
            tf.members = []     # keep memory flat: we record our own compact entry
            scanner.add(m)
    if want_sha256:
        with open(path, "rb") as f:
            scanner.stats.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    return scanner.entries, scanner.stats


class Scanner:
    """Turns tar members, in stream order, into :class:`Entry` records and
    :class:`TarStats`: from a tar file (:func:`scan`), or from the members a
    writer is writing (``add(tarinfo, data_offset)``), so a flattened tar
    never needs reading back.

    Checks: every path is relative and normalised; no entry appears twice;
    an entry's parent is a directory of the stream (or implied by it), never
    a symlink, file or device; hard links name an earlier non-directory
    entry.
    """

    def __init__(self, max_entries=None):
        self.max_entries = max_entries
        self.entries = []
        self.stats = TarStats()
        self.kinds = {b"": DIR}      # path -> kind, for parent/hard link checks
        self.implied = set()         # directories created because a child needed them
        self.stats.dir_bytes[b""] = 0

    def add(self, m, offset=None, fd=-1):
        """Record member ``m`` (a TarInfo); ``offset``: where its data
        starts in the tar (default ``m.offset_data``), or in the file ``fd``
        when one is given (data read in place, no tar written)."""
        stats, kinds, implied = self.stats, self.kinds, self.implied
        kind = _TYPES.get(m.type)
        if kind is None:
            raise errors.UnsafeEntry(
                f"unsupported tar entry type {m.type!r} for {m.name!r}")
        p = _norm_path(m.name)
        if p == b"":
            if kind != DIR:
                raise errors.UnsafeEntry("the root entry is not a directory")
        existing = False
        if p in kinds:
            if p in implied and kind == DIR:
                implied.discard(p)   # an implied parent now gets its own entry
                existing = True
            elif p:
                raise errors.ArchiveError(f"entry appears twice: {m.name!r}")
        parent, _, base = p.rpartition(b"/")
        if p:
            # Parents must be directories; create implied ones.
            _ensure_parents(parent, kinds, stats, implied)
        sec, ns = _split_time(m.mtime)
        if not (0 <= m.uid <= MAX_ID and 0 <= m.gid <= MAX_ID):
            # base-256 and PAX hold any number; ext4 holds 32 bits (found by
            # fuzzing the builder)
            raise errors.ArchiveError(f"{m.name!r} has an invalid owner {m.uid}:{m.gid}")
        e = Entry(p, kind, m.mode & 0o7777, m.uid, m.gid, sec, ns)
        stats.max_mtime = max(stats.max_mtime, sec)
        if kind == REG:
            e.size = m.size
            e.offset = m.offset_data if offset is None else offset
            e.fd = fd
            if m.sparse:
                e.sparse = tuple((int(o), int(n)) for o, n in m.sparse)
                blocks = sum((n + BLOCK - 1) // BLOCK + 1 for o, n in e.sparse if n)
            else:
                blocks = (m.size + BLOCK - 1) // BLOCK
            # extent tree blocks for big (possibly fragmented) files
            blocks += blocks // 2048
            stats.data_blocks += blocks
            stats.data_bytes += m.size
        elif kind == SYMLINK:
            e.target = os.fsencode(m.linkname)
            if not e.target or len(e.target) >= BLOCK:
                raise errors.UnsafeEntry(f"symlink target empty or too long: {m.name!r}")
            if len(e.target) >= 60:
                stats.symlink_blocks += 1
        elif kind == HARDLINK:
            e.target = _norm_path(m.linkname)
            tkind = kinds.get(e.target)
            if tkind is None or e.target not in kinds or tkind == DIR or not e.target:
                raise errors.UnsafeEntry(
                    f"hard link {m.name!r} names no earlier file: {m.linkname!r}")
        elif kind in (CHR, BLK):
            check_device_number(m)      # as the flattener (found by fuzzing the builder)
            e.devmajor, e.devminor = m.devmajor, m.devminor
        if kind != HARDLINK:
            e.xattrs = _xattrs(m)
            if e.xattrs and _xattr_block_needed(e.xattrs):
                stats.xattr_blocks += 1
            if p and not existing:
                stats.inodes += 1
        if p and not existing:
            kinds[p] = kind if kind != HARDLINK else kinds[e.target]
            stats.dir_bytes[parent] = stats.dir_bytes.get(parent, 0) + _dirent_bytes(base)
        if kind == DIR and not existing:
            stats.dir_bytes.setdefault(p, 0)
            if p:
                stats.dirs += 1
        self.entries.append(e)
        stats.entries += 1
        if self.max_entries and stats.entries > self.max_entries:
            raise errors.LimitExceeded("max_entries", stats.entries, self.max_entries,
                                       "flattened tar")


def _ensure_parents(parent, kinds, stats, implied):
    # A loop, not recursion: a path of 1,000 components was a RecursionError.
    missing = []
    while parent not in kinds:      # b"" (the root) is always there
        missing.append(parent)
        parent = parent.rpartition(b"/")[0]
    if kinds[parent] != DIR:
        raise errors.UnsafeEntry(
            f"parent {parent.decode(errors='replace')!r} of an entry is a "
            f"{kinds[parent]}, not a directory")
    for parent in reversed(missing):
        grand, _, base = parent.rpartition(b"/")
        kinds[parent] = DIR
        implied.add(parent)
        stats.dir_bytes[grand] = stats.dir_bytes.get(grand, 0) + _dirent_bytes(base)
        stats.dir_bytes.setdefault(parent, 0)
        stats.dirs += 1
        stats.inodes += 1
