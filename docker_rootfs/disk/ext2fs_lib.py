"""A small ctypes binding to libext2fs (the library inside e2fsprogs).

Only the stable, public calls that e2fsprogs' own ``mke2fs -d`` populate
code (misc/create_inode.c) uses: open/close, inode allocation, link, mkdir,
symlink, file writes, extents, xattrs, raw inode read/write. The library is
``libext2fs.so.2`` (package libext2fs2, a dependency of e2fsprogs).
"""

import ctypes
import ctypes.util
import os
import struct

from docker_rootfs import errors

# Error codes: com_err table "ext2" starts at EXT2_ET_BASE.
EXT2_ET_BASE = 2133571328
ET_DIR_NO_SPACE = EXT2_ET_BASE + 38
ET_BLOCK_ALLOC_FAIL = EXT2_ET_BASE + 72
ET_INODE_ALLOC_FAIL = EXT2_ET_BASE + 73
ET_EXTENT_NO_SPACE = EXT2_ET_BASE + 122
ET_DIR_NO_SPACE_FOR_CSUM = EXT2_ET_BASE + 149
ET_EA_NO_SPACE = EXT2_ET_BASE + 163
NO_SPACE = {ET_BLOCK_ALLOC_FAIL, ET_INODE_ALLOC_FAIL, 28}  # 28 = ENOSPC

FLAG_RW = 0x01
FLAG_64BITS = 0x20000
FILE_WRITE = 0x01
SEEK_SET = 0

EXT4_EXTENTS_FL = 0x00080000
ROOT_INO = 2

# ext2 dirent file types
FT_REG, FT_DIR, FT_CHRDEV, FT_BLKDEV, FT_FIFO, FT_SOCK, FT_SYMLINK = 1, 2, 3, 4, 5, 6, 7

# Linux on-disk mode type bits
S_IFREG, S_IFDIR, S_IFLNK = 0o100000, 0o040000, 0o120000
S_IFCHR, S_IFBLK, S_IFIFO = 0o020000, 0o060000, 0o010000

FALLOCATE_FORCE_INIT = 0x2
NEWRANGE_MIN_LENGTH = 0x2   # ext2fs_new_range: the whole length in one run, or fail
EXTENT_CURRENT = 0x0000
GOAL_AUTO = 2 ** 64 - 1     # ~0ULL: let libext2fs pick the inode's goal

BLOCK = 4096          # the block size base.make_filesystem gives every filesystem
INODE_LARGE = 160     # sizeof(struct ext2_inode_large) in 1.46/1.47

c_ino = ctypes.c_uint32
c_errcode = ctypes.c_long

_lib = None
_com_err = None


class Extent(ctypes.Structure):
    """struct ext2fs_extent"""
    _fields_ = [("e_pblk", ctypes.c_uint64), ("e_lblk", ctypes.c_uint64),
                ("e_len", ctypes.c_uint32), ("e_flags", ctypes.c_uint32)]


class Ext2Error(errors.ToolError):
    def __init__(self, code, what):
        self.code = code
        super().__init__(f"libext2fs: {what}: {message(code)}")


class NoSpace(Ext2Error):
    """The filesystem ran out of blocks or inodes (the caller may retry bigger)."""


def message(code):
    if _com_err is not None:
        try:
            return _com_err.error_message(code).decode("utf-8", "replace")
        except Exception:   # pragma: no cover
            pass
    if 0 < code < 200:
        return os.strerror(code)
    return f"error {code}"


def load():
    """The loaded library; raises ToolError when libext2fs is not there."""
    global _lib, _com_err
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("ext2fs") or "libext2fs.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise errors.ToolError(f"libext2fs not found ({exc}); install e2fsprogs") from None
    try:
        ce = ctypes.CDLL(ctypes.util.find_library("com_err") or "libcom_err.so.2")
        ce.error_message.restype = ctypes.c_char_p
        ce.error_message.argtypes = [ctypes.c_long]
        _com_err = ce
    except OSError:
        _com_err = None
    P, I, U = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
    sigs = {
        "ext2fs_open": [ctypes.c_char_p, I, I, U, P, ctypes.POINTER(P)],
        "ext2fs_close_free": [ctypes.POINTER(P)],
        "ext2fs_read_bitmaps": [P],
        "ext2fs_new_inode": [P, c_ino, I, P, ctypes.POINTER(c_ino)],
        "ext2fs_link": [P, c_ino, ctypes.c_char_p, c_ino, I],
        "ext2fs_expand_dir": [P, c_ino],
        "ext2fs_mkdir": [P, c_ino, c_ino, ctypes.c_char_p],
        "ext2fs_symlink": [P, c_ino, c_ino, ctypes.c_char_p, ctypes.c_char_p],
        "ext2fs_read_inode_full": [P, c_ino, ctypes.c_char_p, I],
        "ext2fs_write_inode_full": [P, c_ino, ctypes.c_char_p, I],
        "ext2fs_extent_open2": [P, c_ino, ctypes.c_char_p, ctypes.POINTER(P)],
        "ext2fs_file_open2": [P, c_ino, ctypes.c_char_p, I, ctypes.POINTER(P)],
        "ext2fs_file_write": [P, ctypes.c_char_p, U, ctypes.POINTER(U)],
        "ext2fs_file_llseek": [P, ctypes.c_uint64, I, P],
        "ext2fs_file_close": [P],
        "ext2fs_xattrs_open": [P, c_ino, ctypes.POINTER(P)],
        "ext2fs_xattrs_read": [P],
        "ext2fs_xattr_set": [P, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
        "ext2fs_xattrs_close": [ctypes.POINTER(P)],
        "ext2fs_fallocate": [P, I, c_ino, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64,
                             ctypes.c_uint64],
        "ext2fs_extent_goto2": [P, I, ctypes.c_uint64],
        "ext2fs_extent_get": [P, I, ctypes.POINTER(Extent)],
        "ext2fs_new_range": [P, I, ctypes.c_uint64, ctypes.c_uint64, P,
                             ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64)],
    }
    for fname, argtypes in sigs.items():
        fn = getattr(lib, fname)
        fn.argtypes = argtypes
        fn.restype = c_errcode
    lib.ext2fs_inode_alloc_stats2.argtypes = [P, c_ino, I, I]
    lib.ext2fs_inode_alloc_stats2.restype = None
    lib.ext2fs_extent_free.argtypes = [P]
    lib.ext2fs_extent_free.restype = None
    lib.ext2fs_block_alloc_stats_range.argtypes = [P, ctypes.c_uint64, U, I]
    lib.ext2fs_block_alloc_stats_range.restype = None
    _lib = lib
    return lib


def check(code, what):
    if code:
        if code in NO_SPACE:
            raise NoSpace(code, what)
        raise Ext2Error(code, what)


class Superblock:
    """The few superblock fields the builder's own block allocation needs,
    read from the image mke2fs made (struct ext2_super_block)."""

    def __init__(self, raw_path):
        with open(raw_path, "rb") as f:
            f.seek(1024)
            sb = f.read(1024)
        if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53:
            raise errors.ToolError(f"{raw_path}: no ext2/3/4 superblock")
        self.first_data_block, = struct.unpack_from("<I", sb, 0x14)
        self.log_block_size, = struct.unpack_from("<I", sb, 0x18)
        self.blocks_per_group, = struct.unpack_from("<I", sb, 0x20)
        self.inodes_per_group, = struct.unpack_from("<I", sb, 0x28)
        self.log_groups_per_flex = sb[0x174]
        if 1024 << self.log_block_size != BLOCK:
            raise errors.ToolError(f"{raw_path}: block size {1024 << self.log_block_size}, not {BLOCK}")

    def inode_goal(self, ino):
        """Where libext2fs starts looking for a file's first block
        (``ext2fs_find_inode_goal`` of an inode without blocks): the first
        block of the inode's flex group."""
        group = (ino - 1) // self.inodes_per_group
        if self.log_groups_per_flex:
            group &= ~((1 << self.log_groups_per_flex) - 1)
        return self.first_data_block + group * self.blocks_per_group


class Inode:
    """A raw 256-byte inode buffer with the fields we set (struct ext2_inode_large)."""

    __slots__ = ("buf",)

    def __init__(self, size):
        self.buf = ctypes.create_string_buffer(size)

    def set_meta(self, mode, uid, gid, mtime, mtime_ns, ctime, links=None):
        b = self.buf
        struct.pack_into("<HH", b, 0, mode & 0xFFFF, uid & 0xFFFF)
        struct.pack_into("<H", b, 24, gid & 0xFFFF)
        struct.pack_into("<HH", b, 120, (uid >> 16) & 0xFFFF, (gid >> 16) & 0xFFFF)
        if links is not None:
            struct.pack_into("<H", b, 26, links)
        m_lo, m_ex = _time(mtime, mtime_ns)
        c_lo, c_ex = _time(ctime, 0)
        # atime = mtime, ctime = crtime = the fixed build time
        struct.pack_into("<III", b, 8, m_lo, c_lo, m_lo)
        struct.pack_into("<H", b, 128, INODE_LARGE - 128)
        struct.pack_into("<IIIII", b, 132, c_ex, m_ex, m_ex, c_lo, c_ex)

    def init_regular(self, mode, uid, gid, mtime, mtime_ns, ctime, size):
        """The whole inode of a new regular file in one write: what
        ``clear``, ``set_meta(..., links=1)``, ``set_size`` and
        ``ext2fs_extent_open2`` (the extents flag and an empty extent
        header in i_block) make, without the library call."""
        m_lo, m_ex = _time(mtime, mtime_ns)
        c_lo, c_ex = _time(ctime, 0)
        ctypes.memmove(self.buf, _REGULAR.pack(
            mode & 0xFFFF, uid & 0xFFFF, size & 0xFFFFFFFF, m_lo, c_lo, m_lo, gid & 0xFFFF, 1,
            EXT4_EXTENTS_FL, EXTENT_MAGIC, 0, EXTENT_ROOT_MAX, 0, 0, size >> 32,
            (uid >> 16) & 0xFFFF, (gid >> 16) & 0xFFFF, INODE_LARGE - 128,
            c_ex, m_ex, m_ex, c_lo, c_ex), 256)

    def set_one_extent(self, pblk, nblk):
        """i_block of a file whose ``nblk`` blocks are one run at ``pblk``
        (on an inode from :meth:`init_regular`: one extent in the inode's
        own extent root), and i_blocks (512-byte units: no HUGE_FILE flag)."""
        b = self.buf
        struct.pack_into("<I", b, 28, nblk * (BLOCK // 512))
        struct.pack_into("<H", b, 42, 1)
        struct.pack_into("<IHHI", b, 52, 0, nblk, pblk >> 32, pblk & 0xFFFFFFFF)

    def set_size(self, size):
        struct.pack_into("<I", self.buf, 4, size & 0xFFFFFFFF)
        struct.pack_into("<I", self.buf, 108, size >> 32)

    def set_dev(self, major, minor):
        if major < 256 and minor < 256:
            struct.pack_into("<II", self.buf, 40, major * 256 + minor, 0)
        else:
            struct.pack_into("<II", self.buf, 40, 0,
                             (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))

    @property
    def links(self):
        return struct.unpack_from("<H", self.buf, 26)[0]

    @links.setter
    def links(self, n):
        struct.pack_into("<H", self.buf, 26, n)

    def clear(self):
        ctypes.memset(self.buf, 0, len(self.buf))


EXTENT_MAGIC = 0xF30A
EXTENT_ROOT_MAX = 4     # (sizeof(i_block) - header) / sizeof(extent)
# struct ext2_inode_large, 256 bytes; the x's stay zero: mode, uid, size_lo,
# atime, ctime, mtime, (dtime), gid, links, (blocks), flags, (osd1), extent
# header (magic, entries, max, depth, generation), (rest of i_block,
# generation, file_acl), size_high, (faddr, blocks_hi, file_acl_hi),
# uid_high, gid_high, (checksum_lo, reserved), extra_isize, (checksum_hi),
# ctime_extra, mtime_extra, atime_extra, crtime, crtime_extra.
_REGULAR = struct.Struct("<HHIIII4xHH4xI4xHHHHI48x4x4xI4x4xHH4xH2xIIIII104x")
assert _REGULAR.size == 256


def _time(sec, ns):
    lo = sec & 0xFFFFFFFF
    signed = lo - (1 << 32) if lo >= (1 << 31) else lo
    epoch = ((sec - signed) >> 32) & 3
    return lo, (ns << 2) | epoch
