"""The fast builder: populate the filesystem in-process with libext2fs.

``mke2fs`` makes the empty filesystem; then every tar entry is written
straight into the image through libext2fs (the library ``mke2fs -d`` and
``debugfs`` are made of), with the owner, mode, device numbers, xattrs and
times taken from the tar header. Consequences:

* no root, no fakeroot, no user namespace: the image file is ours, and an
  inode's owner is just a number we write;
* tenant data never becomes a file tree on the host: file contents go from
  the tar (read with ``pread``) into the image, so no symlink in the tenant's
  tree can redirect anything on the host;
* reproducible: inode allocation follows the stream's order, every time is
  fixed (ctime/crtime = the build's fixed time, atime = mtime), UUID and
  hash seed are given.
"""

import ctypes
import os

from docker_rootfs import errors
from docker_rootfs.disk import base, tarscan
from docker_rootfs.disk import ext2fs_lib as L

CHUNK = 1024 * 1024
ZERO_CHUNK = bytes(CHUNK)
# Files at least this big take the direct data path (fewer library calls
# per file below it).
DIRECT_MIN = 64 * 1024
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)

_FT = {tarscan.REG: L.FT_REG, tarscan.DIR: L.FT_DIR, tarscan.SYMLINK: L.FT_SYMLINK,
       tarscan.CHR: L.FT_CHRDEV, tarscan.BLK: L.FT_BLKDEV, tarscan.FIFO: L.FT_FIFO}
_IFMT = {tarscan.CHR: L.S_IFCHR, tarscan.BLK: L.S_IFBLK, tarscan.FIFO: L.S_IFIFO}


def _hole(data):
    """All-zero data of at least a block stays a hole (as ``mke2fs -d``);
    the last byte is tested first: random data rarely ends in a zero."""
    n = len(data)
    return n >= BLOCK and not data[-1] and data == (ZERO_CHUNK if n == CHUNK else bytes(n))


class Ext2fsBuilder(base.Builder):
    name = "ext2fs"
    unprivileged = True
    reproducible = True
    reads_entries = True

    @classmethod
    def unavailable_reason(cls):
        try:
            L.load()
            base.need_tool("mke2fs", "e2fsprogs")
        except errors.ToolError as exc:
            return str(exc)
        return None

    def build(self, job):
        base.make_filesystem(job)
        job.report(0.0, "writing files")
        Populator(job).run()


class Populator:
    def __init__(self, job):
        self.job = job
        self.lib = L.load()
        self.fs = ctypes.c_void_p()
        self.inos = {b"": (L.ROOT_INO, L.FT_DIR)}
        self.inode = L.Inode(256)
        self.ctime = job.fixed_time
        self.written = ctypes.c_uint()
        self.written_ref = ctypes.byref(self.written)
        self.new_ino = L.c_ino()
        self.new_ino_ref = ctypes.byref(self.new_ino)
        self.file = ctypes.c_void_p()
        self.file_ref = ctypes.byref(self.file)
        self.extent = L.Extent()
        self.raw_fd = None
        self._ahead = (-1, 0, b"")   # (fd, offset, bytes) read ahead for small files
        self.sb = None
        self.range_start, self.range_len = ctypes.c_uint64(), ctypes.c_uint64()
        self.range_start_ref = ctypes.byref(self.range_start)
        self.range_len_ref = ctypes.byref(self.range_len)
        # small files' data, a run of consecutive blocks not written yet
        self._run, self._run_start, self._run_next = bytearray(), 0, -1

    # -- plumbing -------------------------------------------------------
    def _open(self):
        io_manager = ctypes.c_void_p.in_dll(self.lib, "unix_io_manager")
        old = os.environ.get("E2FSPROGS_FAKE_TIME")
        # libext2fs reads this once in ext2fs_open: fs->now, used for the
        # superblock's write time and any time field we do not set.
        os.environ["E2FSPROGS_FAKE_TIME"] = str(self.job.fixed_time)
        try:
            L.check(self.lib.ext2fs_open(os.fsencode(self.job.raw_path),
                                         L.FLAG_RW | L.FLAG_64BITS, 0, 0,
                                         io_manager, ctypes.byref(self.fs)), "open")
        finally:
            if old is None:
                del os.environ["E2FSPROGS_FAKE_TIME"]
            else:
                os.environ["E2FSPROGS_FAKE_TIME"] = old
        L.check(self.lib.ext2fs_read_bitmaps(self.fs), "read bitmaps")

    def _close(self):
        if self.fs:
            L.check(self.lib.ext2fs_close_free(ctypes.byref(self.fs)), "close")

    # The hot calls check their result inline (``if r:``): no error text
    # is formatted, no call made, for the ~100k entries that succeed.
    def _new_inode(self, parent, mode):
        r = self.lib.ext2fs_new_inode(self.fs, parent, mode, None, self.new_ino_ref)
        if r:
            L.check(r, "allocate inode")
        return self.new_ino.value

    def _link(self, parent, name, ino, ft):
        lib = self.lib
        r = lib.ext2fs_link(self.fs, parent, name, ino, ft)
        if r in (L.ET_DIR_NO_SPACE, L.ET_DIR_NO_SPACE_FOR_CSUM):
            L.check(lib.ext2fs_expand_dir(self.fs, parent), "expand directory")
            r = lib.ext2fs_link(self.fs, parent, name, ino, ft)
        if r:
            L.check(r, f"link {name.decode(errors='replace')!r}")

    def _read(self, ino):
        L.check(self.lib.ext2fs_read_inode_full(self.fs, ino, self.inode.buf, 256), "read inode")

    def _write(self, ino):
        r = self.lib.ext2fs_write_inode_full(self.fs, ino, self.inode.buf, 256)
        if r:
            L.check(r, "write inode")

    def _set_xattrs(self, ino, xattrs):
        h = ctypes.c_void_p()
        lib = self.lib
        L.check(lib.ext2fs_xattrs_open(self.fs, ino, ctypes.byref(h)), "open xattrs")
        try:
            L.check(lib.ext2fs_xattrs_read(h), "read xattrs")
            for name, value in xattrs:
                r = lib.ext2fs_xattr_set(h, name, value, len(value))
                if r == L.ET_EA_NO_SPACE:
                    raise errors.UnsafeEntry(
                        f"xattrs of inode {ino} do not fit in one 4 KiB block")
                L.check(r, f"set xattr {name.decode(errors='replace')}")
        finally:
            lib.ext2fs_xattrs_close(ctypes.byref(h))

    def _parent(self, path):
        """Inode of the directory ``path``, creating implied directories."""
        got = self.inos.get(path)
        if got is not None:
            if got[1] != L.FT_DIR:
                raise errors.UnsafeEntry(f"parent {path!r} is not a directory")
            return got[0]
        grand, _, name = path.rpartition(b"/")
        pino = self._parent(grand)
        e = tarscan.Entry(path, tarscan.DIR, 0o755, 0, 0, self.ctime, 0)
        return self._mkdir(pino, name, e)

    def _mkdir(self, parent, name, e):
        ino = self._new_inode(parent, L.S_IFDIR | 0o755)
        L.check(self.lib.ext2fs_mkdir(self.fs, parent, ino, None), "mkdir")
        self._link(parent, name, ino, L.FT_DIR)
        self.inos[e.path] = (ino, L.FT_DIR)
        self.dirs.append((ino, e))
        return ino

    # -- the work -------------------------------------------------------
    def run(self):
        job = self.job
        self.dirs = []
        # No tar when every entry says where its data is (Entry.fd).
        fd = os.open(job.tar_path, os.O_RDONLY) if job.tar_path else -1
        self.raw_fd = os.open(job.raw_path, os.O_WRONLY)
        try:
            self.sb = L.Superblock(job.raw_path)
            self._open()
            try:
                total = max(1, job.stats.data_bytes)
                done = 0
                next_report = 0
                for e in job.entries:
                    self._entry(e, fd)
                    if e.kind == tarscan.REG:
                        done += e.size
                        if done >= next_report:
                            job.report(done / total, "writing files")
                            next_report = done + total // 100
                self._flush_run()
                # Directory metadata last: linking into a directory changes it.
                for ino, e in self.dirs:
                    self._read(ino)
                    self.inode.set_meta(L.S_IFDIR | e.mode, e.uid, e.gid, e.mtime,
                                        e.mtime_ns, self.ctime)
                    self._write(ino)
                    if e.xattrs:
                        self._set_xattrs(ino, e.xattrs)
            finally:
                self._close()
        finally:
            if fd >= 0:
                os.close(fd)
            os.close(self.raw_fd)
        job.report(1.0, "files written")

    def _entry(self, e, fd):
        if e.path == b"":
            self.dirs.append((L.ROOT_INO, e))
            return
        parent_path, _, name = e.path.rpartition(b"/")
        parent = self._parent(parent_path)
        kind = e.kind
        if kind == tarscan.DIR:
            got = self.inos.get(e.path)
            if got is not None:          # implied earlier by a child entry
                self.dirs.append((got[0], e))
            else:
                self._mkdir(parent, name, e)
            return
        if e.path in self.inos:
            raise errors.ArchiveError(f"entry appears twice: {e.path!r}")
        if kind == tarscan.HARDLINK:
            target = self.inos.get(e.target)
            if target is None or target[1] == L.FT_DIR:
                raise errors.UnsafeEntry(f"hard link {e.path!r} names no earlier file")
            ino, ft = target
            self._link(parent, name, ino, ft)
            self._read(ino)
            self.inode.links = self.inode.links + 1
            self._write(ino)
            self.inos[e.path] = target
            return
        lib, fs, inode = self.lib, self.fs, self.inode
        if kind == tarscan.REG:
            ino = self._new_inode(parent, L.S_IFREG | 0o644)
            lib.ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
            self._link(parent, name, ino, L.FT_REG)
            # = clear, set_meta, set_size and ext2fs_extent_open2 (which
            # only sets the extents flag and an empty extent header).
            inode.init_regular(L.S_IFREG | e.mode, e.uid, e.gid, e.mtime, e.mtime_ns,
                               self.ctime, e.size)
            if not e.size:
                self._write(ino)
            elif e.size < DIRECT_MIN and not e.sparse:
                self._write_small(ino, e, fd)
            else:
                self._write(ino)
                if e.size >= DIRECT_MIN and not any(off % BLOCK for off, _ in e.sparse):
                    self._write_data_direct(ino, e, fd)
                else:
                    self._write_data(ino, e, fd)
        elif kind == tarscan.SYMLINK:
            ino = self._new_inode(parent, L.S_IFLNK | 0o777)
            L.check(lib.ext2fs_symlink(fs, parent, ino, None, e.target), "symlink")
            self._link(parent, name, ino, L.FT_SYMLINK)
            self._read(ino)
            inode.set_meta(L.S_IFLNK | e.mode, e.uid, e.gid, e.mtime, e.mtime_ns, self.ctime)
            self._write(ino)
        else:  # device nodes, fifos
            ino = self._new_inode(parent, _IFMT[kind] | 0o644)
            lib.ext2fs_inode_alloc_stats2(fs, ino, 1, 0)
            self._link(parent, name, ino, _FT[kind])
            inode.clear()
            inode.set_meta(_IFMT[kind] | e.mode, e.uid, e.gid, e.mtime, e.mtime_ns,
                           self.ctime, links=1)
            if kind != tarscan.FIFO:
                inode.set_dev(e.devmajor, e.devminor)
            self._write(ino)
        self.inos[e.path] = (ino, _FT[kind])
        if e.xattrs:
            self._set_xattrs(ino, e.xattrs)

    def _write_small(self, ino, e, fd):
        """A small file without a sparse map (most files of an image): its
        blocks are one run allocated here (``ext2fs_new_range`` from the goal
        libext2fs itself would take), one extent in the inode, and its data
        joins the run of blocks written next to it: consecutive small files
        get consecutive blocks, so 100k files cost ~1k ``pwrite`` calls, not
        one block write (through libext2fs's 8-block cache) each. All-zero
        data stays a hole, as in :meth:`_data_chunks`."""
        n = e.size
        data = self._read_data(e, e.fd if e.fd >= 0 else fd, n, e.offset)
        inode = self.inode
        if not _hole(data):
            nblk = (n + BLOCK - 1) // BLOCK
            r = self.lib.ext2fs_new_range(self.fs, L.NEWRANGE_MIN_LENGTH, self.sb.inode_goal(ino), nblk,
                                          None, self.range_start_ref, self.range_len_ref)
            if r:
                L.check(r, "allocate blocks")
            pblk = self.range_start.value
            self.lib.ext2fs_block_alloc_stats_range(self.fs, pblk, nblk, 1)
            inode.set_one_extent(pblk, nblk)
            if pblk != self._run_next or len(self._run) >= CHUNK:
                self._flush_run()
                self._run_start = pblk
            self._run += data
            if n % BLOCK:
                self._run += ZERO_BLOCK[n % BLOCK:]
            self._run_next = pblk + nblk
        self._write(ino)

    def _flush_run(self):
        """Write the pending run of small files' blocks into the image."""
        view, pos = memoryview(self._run), 0
        while pos < len(view):
            pos += os.pwrite(self.raw_fd, view[pos:], self._run_start * BLOCK + pos)
        view.release()
        self._run = bytearray()

    def _read_data(self, e, fd, n, offset):
        """``n`` bytes of ``e``'s data at ``offset``; a short read means the
        flattened tar ends inside ``e``."""
        data = self._pread(fd, n, offset)
        if len(data) != n:
            raise errors.ArchiveError(f"flattened tar truncated in {e.path.decode(errors='replace')!r}")
        return data

    def _pread(self, fd, n, offset):
        """``os.pread``; small reads are served from a megabyte read at once
        (entries come in data offset order, so 100k small files cost ~1k
        reads, not 100k)."""
        if n > DIRECT_MIN:
            return os.pread(fd, n, offset)
        ahead_fd, ahead_start, ahead = self._ahead
        start = offset - ahead_start
        if ahead_fd != fd or start < 0 or start + n > len(ahead):
            ahead = os.pread(fd, CHUNK, offset)
            self._ahead = (fd, offset, ahead)
            start = 0
        return ahead[start:start + n]

    def _data_chunks(self, e, fd):
        """Yield ``(file offset, data)`` for each chunk of ``e``'s data read
        from the tar at ``fd``; like mke2fs -d, all-zero chunks are skipped
        (they stay holes)."""
        src = e.offset
        if e.fd >= 0:
            fd = e.fd       # data read in place (a layer spool), no tar written
        for off, length in (e.sparse or ((0, e.size),)):
            done = 0
            while done < length:
                n = min(CHUNK, length - done)
                data = self._read_data(e, fd, n, src)
                src += n
                if not _hole(data):
                    yield off + done, data
                done += n

    def _write_data_direct(self, ino, e, fd):
        """Allocate the file's blocks with ``ext2fs_fallocate`` and copy its
        data straight into the image file at their physical offsets: one
        ``pwrite`` per contiguous run, instead of libext2fs's one 4 KiB
        block write at a time. Same layout rules as :meth:`_write_data`;
        libext2fs never caches data blocks, so writing them beside it is
        safe."""
        lib, fs, buf = self.lib, self.fs, self.inode.buf
        extent = self.extent
        handle = ctypes.c_void_p()
        for offset, data in self._data_chunks(e, fd):
            lblk = offset // BLOCK
            nblk = (len(data) + BLOCK - 1) // BLOCK
            if len(data) % BLOCK:
                data += bytes(nblk * BLOCK - len(data))
            L.check(lib.ext2fs_fallocate(fs, L.FALLOCATE_FORCE_INIT, ino, buf, L.GOAL_AUTO,
                                         lblk, nblk), "allocate blocks")
            L.check(lib.ext2fs_extent_open2(fs, ino, buf, ctypes.byref(handle)), "open extents")
            try:
                pos = 0
                view = memoryview(data)
                while pos < nblk:
                    L.check(lib.ext2fs_extent_goto2(handle, 0, lblk + pos), "find extent")
                    L.check(lib.ext2fs_extent_get(handle, L.EXTENT_CURRENT, ctypes.byref(extent)),
                            "read extent")
                    skip = lblk + pos - extent.e_lblk
                    take = min(extent.e_len - skip, nblk - pos)
                    if take <= 0:
                        raise errors.ToolError("libext2fs: block not mapped after fallocate")
                    os.pwrite(self.raw_fd, view[pos * BLOCK:(pos + take) * BLOCK],
                              (extent.e_pblk + skip) * BLOCK)
                    pos += take
            finally:
                lib.ext2fs_extent_free(handle)
        self._write(ino)

    def _write_data(self, ino, e, fd):
        lib = self.lib
        L.check(lib.ext2fs_file_open2(self.fs, ino, self.inode.buf, L.FILE_WRITE,
                                      self.file_ref), "open file")
        f = self.file.value
        written, written_ref = self.written, self.written_ref
        try:
            for offset, data in self._data_chunks(e, fd):
                if offset:      # a new file handle starts at offset 0
                    L.check(lib.ext2fs_file_llseek(f, offset, L.SEEK_SET, None), "seek")
                n = len(data)
                pos = 0
                while pos < n:
                    chunk = data if pos == 0 else data[pos:]
                    r = lib.ext2fs_file_write(f, chunk, n - pos, written_ref)
                    if r:
                        L.check(r, "write")
                    if not written.value:
                        raise errors.ToolError("libext2fs: short write")
                    pos += written.value
        finally:
            L.check(lib.ext2fs_file_close(f), "close file")
