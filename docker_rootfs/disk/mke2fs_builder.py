"""Builders around ``mke2fs -d``.

* ``mke2fs-tar``: ``mke2fs -d TARBALL`` (e2fsprogs >= 1.47.1 built with
  libarchive): mke2fs reads the tar itself, nothing is extracted. Not
  available on Debian 12 (1.47.0); picked only by name (untested here).
* ``mke2fs-dir``: the already-root optimisation: extract into a private
  directory as root (real owners, device nodes, xattrs), then ``mke2fs -d``.
  Never the only path (the ext2fs builder needs no root). Extraction never
  follows a symlink: every parent is walked with O_NOFOLLOW|O_DIRECTORY
  from the extraction root, entries are created with O_EXCL/mknod/symlink
  relative to that parent's fd, and the stream was checked (tarscan) to
  have only directories as parents. Not byte-reproducible: mke2fs 1.47.0
  copies each inode's ctime from the host. mke2fs 1.47.0 also stores only
  32-bit seconds (times after 2038 wrap) and gives the root directory the
  times of the last entry it copied: the ext2fs builder has neither issue.
"""

import os

from docker_rootfs import errors
from docker_rootfs.disk import base, tarscan

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Mke2fsTarBuilder(base.Builder):
    name = "mke2fs-tar"
    unprivileged = True
    reproducible = True

    @classmethod
    def unavailable_reason(cls):
        v = base.e2fsprogs_version()
        if v is None:
            return "mke2fs not found"
        if v < (1, 47, 1):
            return (f"mke2fs {'.'.join(map(str, v))} reads only directories "
                    "(tarball input needs e2fsprogs >= 1.47.1 with libarchive)")
        return None

    def build(self, job):
        base.make_filesystem(job, extra=("-d", job.tar_path),
                             env_extra={"SOURCE_DATE_EPOCH": str(job.fixed_time)})


class Mke2fsDirBuilder(base.Builder):
    name = "mke2fs-dir"
    unprivileged = False
    reproducible = False

    @classmethod
    def unavailable_reason(cls):
        if os.geteuid() != 0:
            return "needs root (real owners and device nodes on the host)"
        return None

    def build(self, job):
        root = os.path.join(job.work_dir, "root")
        os.mkdir(root, 0o700)
        job.report(0.0, "extracting")
        extract(job.tar_path, job.entries, root)
        job.report(0.5, "mke2fs -d")
        base.make_filesystem(job, extra=("-d", root))


def _walk(root_fd, rel):
    """fd of directory ``rel`` under root_fd, never following a symlink."""
    fd = os.dup(root_fd)
    if not rel:
        return fd
    try:
        for part in rel.split(b"/"):
            nfd = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        os.close(fd)
        raise errors.UnsafeEntry(f"parent {rel!r} is not a directory we created: "
                                 f"{exc.strerror}") from None
    return fd


def extract(tar_path, entries, root):
    src = os.open(tar_path, os.O_RDONLY | os.O_CLOEXEC)
    root_fd = os.open(root, _NOFOLLOW_DIR)
    dirs = []
    try:
        for e in entries:
            if e.path == b"":
                dirs.append(e)
                continue
            parent, _, name = e.path.rpartition(b"/")
            _implied(root_fd, parent)
            pfd = _walk(root_fd, parent)
            try:
                _one(e, name, pfd, root_fd, src, dirs)
            finally:
                os.close(pfd)
        for e in reversed(dirs):
            fd = _walk(root_fd, e.path)
            try:
                os.chown(fd, e.uid, e.gid)
                os.chmod(fd, e.mode)
                _xattrs(fd, e)
                os.utime(fd, ns=(_ns(e), _ns(e)))
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
        os.close(src)


def _implied(root_fd, parent):
    if not parent:
        return
    fd = os.dup(root_fd)
    try:
        for part in parent.split(b"/"):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(part, _NOFOLLOW_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        raise errors.UnsafeEntry(f"parent {parent!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _ns(e):
    return e.mtime * 1_000_000_000 + e.mtime_ns


def _xattrs(fd, e):
    for n, v in e.xattrs:
        os.setxattr(fd, n, v)


def _one(e, name, pfd, root_fd, src, dirs):
    k = e.kind
    if k == tarscan.DIR:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass    # implied earlier; metadata below
        dirs.append(e)
        return
    if k == tarscan.HARDLINK:
        tparent, _, tname = e.target.rpartition(b"/")
        tfd = _walk(root_fd, tparent)
        try:
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        return
    if k == tarscan.REG:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            pos = e.offset
            for off, length in (e.sparse or ((0, e.size),)):
                done = 0
                while done < length:
                    n = os.copy_file_range(src, fd, length - done, pos + done, off + done)
                    if n <= 0:
                        raise errors.ArchiveError(f"flattened tar truncated in {e.path!r}")
                    done += n
                pos += length
            os.ftruncate(fd, e.size)
            # chown clears security.capability and setuid bits: owner, then mode, then xattrs
            os.chown(fd, e.uid, e.gid)
            os.chmod(fd, e.mode)
            _xattrs(fd, e)
            os.utime(fd, ns=(_ns(e), _ns(e)))
        finally:
            os.close(fd)
        return
    if k == tarscan.SYMLINK:
        os.symlink(e.target, name, dir_fd=pfd)
    else:
        import stat
        fmt = {tarscan.CHR: stat.S_IFCHR, tarscan.BLK: stat.S_IFBLK, tarscan.FIFO: stat.S_IFIFO}[k]
        os.mknod(name, fmt | 0o600, os.makedev(e.devmajor, e.devminor), dir_fd=pfd)
    # symlinks, devices, fifos: by name relative to the parent fd, never followed
    os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
    if k != tarscan.SYMLINK:
        os.chmod(name, e.mode, dir_fd=pfd)
    for n, v in e.xattrs:
        os.setxattr(f"/proc/self/fd/{pfd}/".encode() + name, n, v, follow_symlinks=False)
    os.utime(name, ns=(_ns(e), _ns(e)), dir_fd=pfd, follow_symlinks=False)
