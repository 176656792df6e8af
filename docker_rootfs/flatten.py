"""Apply image layers in order and write the merged tree as one PAX tar.

Each layer's stream is read once, never unpacked to disk:

1. metadata pass: every layer's entries are applied to an in-memory tree
   (no file contents) with the OCI/Docker rules: ``.wh.NAME`` whiteouts,
   ``.wh..wh..opq`` opaque directories, type replacement, hard links
   (also to lower-layer files, surviving deletion of the original), and
   parent paths resolved through symlinks *inside* the image root, as
   Docker does for merged-``/usr`` trees. Each regular file remembers
   where its data sits in its layer's uncompressed tar.
2. content pass: non-regular entries are written first (directories
   parents-first), then, layer by layer in stream order, the final files'
   data is copied from the offsets noted in pass 1 (the layer reader keeps
   the verified uncompressed bytes at hand: see ``LayerReader.content``),
   each file followed by its hard links.

Nothing here touches the host filesystem: paths are only names in the
tree, so no tenant path, symlink or hard link can reach outside it.
Memory is bounded by the number of entries, not by their size.
"""

import io
import logging
import math
import os
import struct
import tarfile

from docker_rootfs import errors
from docker_rootfs.limits import MAX_SYMLINK_HOPS, check_device_number

LOG = logging.getLogger(__name__)

DIR, REG, SYM, CHR, BLK, FIFO = "dir", "reg", "sym", "chr", "blk", "fifo"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
COPY_CHUNK = 1024 * 1024


class Inode:
    __slots__ = ("kind", "mode", "uid", "gid", "uname", "gname", "mtime", "size",
                 "linkname", "devmajor", "devminor", "xattrs", "src", "children")

    def __init__(self, kind, mode=0o755, uid=0, gid=0, uname="", gname="", mtime=0,
                 size=0, linkname="", devmajor=0, devminor=0, xattrs=None, src=None):
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.uname = uname
        self.gname = gname
        self.mtime = mtime
        self.size = size
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs
        self.src = src
        self.children = {} if kind == DIR else None

    @classmethod
    def from_member(cls, m, src):
        if m.isreg():
            kind = REG
        elif m.isdir():
            kind = DIR
        elif m.issym():
            kind = SYM
        elif m.ischr():
            kind = CHR
        elif m.isblk():
            kind = BLK
        elif m.isfifo():
            kind = FIFO
        else:
            return None
        if kind in (CHR, BLK):
            # GNU base-256 fields hold any number; Linux (and ext4's encoding)
            # 12-bit majors and 20-bit minors (found by the fuzzer, issue 15).
            check_device_number(m)
        xattrs = {k: v for k, v in m.pax_headers.items() if k.startswith(XATTR_PREFIXES)} or None
        return cls(kind, mode=m.mode & 0o7777, uid=m.uid, gid=m.gid, uname=m.uname,
                   gname=m.gname, mtime=m.mtime, size=m.size if kind == REG else 0,
                   linkname=m.linkname if kind == SYM else "",
                   devmajor=m.devmajor, devminor=m.devminor, xattrs=xattrs,
                   src=src if kind == REG else None)

    def take_metadata(self, other):
        for attr in ("mode", "uid", "gid", "uname", "gname", "mtime", "xattrs"):
            setattr(self, attr, getattr(other, attr))


def split_path(name, limits, what):
    """Entry name -> list of components inside the root.

    Leading ``/`` and ``./`` are neutralised (paths are image-root relative,
    as Docker treats them); a ``..`` that would climb above the root is an
    :class:`UnsafeEntry`, as Docker's breakout check makes it.
    """
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_path_length:
        raise errors.LimitExceeded("max_path_length", len(name), limits.max_path_length, what)
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise errors.UnsafeEntry(f"{what}: path {name!r} climbs out of the image root")
            parts.pop()
            continue
        parts.append(p)
    if len(parts) > limits.max_path_depth:
        raise errors.LimitExceeded("max_path_depth", len(parts), limits.max_path_depth, what)
    return parts


def _add_with_parents(added, path):
    """Add ``path`` and every prefix of it to ``added``.

    ``added`` always holds the prefixes of what it holds, so the walk up
    stops at the first prefix already there: in an existing directory that
    is one lookup, and an entry costs time linear in its path depth (adding
    every prefix each time cost its square: 0.77 CPU-s for 2,000 entries at
    depth 256).
    """
    while path and path not in added:
        added.add(path)
        path = path[:-1]


class Tree:
    """The merged filesystem tree (metadata only)."""

    def __init__(self, limits):
        self.limits = limits
        self.root = Inode(DIR, mode=0o755)
        self.entries = 0

    # -- path resolution inside the root ------------------------------------
    def resolve_dir(self, parts, what, create_mtime=None, added=None):
        """Walk ``parts`` from the root following symlinks inside the root.

        ``..`` in symlink targets stops at the root (as in a chroot).
        Missing directories are created (0755, as Docker's MkdirAll) when
        ``create_mtime`` is given, else None is returned.
        Returns (directory inode, resolved path tuple).
        """
        stack = list(reversed(parts))
        inodes = [self.root]
        path = []
        hops = 0
        while stack:
            c = stack.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if path:
                    path.pop()
                    inodes.pop()
                continue
            node = inodes[-1].children.get(c)
            if node is None:
                if create_mtime is None:
                    return None, None
                node = Inode(DIR, mode=0o755, mtime=create_mtime)
                inodes[-1].children[c] = node
                if added is not None:
                    _add_with_parents(added, tuple(path) + (c,))
            if node.kind == SYM:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise errors.UnsafeEntry(f"{what}: too many levels of symbolic links")
                if node.linkname.startswith("/"):
                    inodes, path = [self.root], []
                stack.extend(reversed(node.linkname.split("/")))
                continue
            if node.kind != DIR:
                raise errors.ArchiveError(
                    f"{what}: parent {'/'.join(path + [c])} is not a directory")
            path.append(c)
            inodes.append(node)
        return inodes[-1], tuple(path)

    # -- applying one layer -------------------------------------------------------
    def apply_member(self, m, src, what, added):
        """Apply one tar member of the current layer; ``added`` collects the
        resolved paths this layer created (for whiteout/opaque rules)."""
        parts = split_path(m.name, self.limits, what)
        if not parts:
            if m.isdir():
                self.root.take_metadata(Inode.from_member(m, None))
                return
            raise errors.UnsafeEntry(f"{what}: entry {m.name!r} would replace the image root")
        *parent_parts, name = parts
        if isinstance(m.mtime, float) and not math.isfinite(m.mtime):   # PAX "nan", "inf": found with the fuzz targets
            raise errors.ArchiveError(f"{what}: entry {m.name!r} has an invalid mtime {m.mtime!r}")
        mtime = m.mtime if isinstance(m.mtime, int) else int(m.mtime)
        parent, ppath = self.resolve_dir(parent_parts, what, create_mtime=mtime, added=added)
        if name.startswith(WHITEOUT):
            self._whiteout(parent, ppath, name, added)
            return
        path = ppath + (name,)
        # This layer's entries, and the directories holding them, are never
        # hidden by this layer's own whiteouts (OCI image spec), whatever
        # the order of the entries.
        _add_with_parents(added, ppath)
        existing = parent.children.get(name)
        if m.islnk():
            if len(m.linkname.encode("utf-8", "surrogateescape")) > self.limits.max_path_length:
                raise errors.LimitExceeded("max_path_length", len(m.linkname),
                                           self.limits.max_path_length, what)
            target = self._link_target(m.linkname, what)
            if target is not existing:
                parent.children[name] = target
            added.add(path)
            return
        if m.issym() and len(m.linkname.encode("utf-8", "surrogateescape")) > self.limits.max_path_length:
            raise errors.LimitExceeded("max_path_length", len(m.linkname),
                                       self.limits.max_path_length, what)
        node = Inode.from_member(m, src)
        if node is None:
            LOG.warning("%s: skipping entry %r of unsupported tar type %r", what, m.name, m.type)
            return
        if node.kind == DIR and existing is not None and existing.kind == DIR:
            existing.take_metadata(node)   # directories merge
        else:
            parent.children[name] = node   # anything else replaces (a dir with its subtree)
        added.add(path)

    def _link_target(self, linkname, what):
        parts = split_path(linkname, self.limits, what)
        if not parts:
            raise errors.UnsafeEntry(f"{what}: hard link to the image root")
        parent, _ = self.resolve_dir(parts[:-1], what)
        target = parent.children.get(parts[-1]) if parent is not None else None
        if target is None:
            raise errors.ArchiveError(f"{what}: hard link target {linkname!r} does not exist")
        if target.kind == DIR:
            raise errors.UnsafeEntry(f"{what}: hard link to directory {linkname!r}")
        return target

    def _whiteout(self, parent, ppath, name, added):
        if name == OPAQUE:
            self._make_opaque(parent, ppath, added)
            return
        if name.startswith(WHITEOUT + WHITEOUT):
            return  # other AUFS metadata (.wh..wh.plnk, ...): not content
        victim = name[len(WHITEOUT):]
        # Whiteouts hide lower layers only (OCI image spec): a path this
        # layer itself created stays.
        if ppath + (victim,) not in added:
            parent.children.pop(victim, None)

    def _make_opaque(self, directory, dpath, added):
        for child_name in list(directory.children):
            cpath = dpath + (child_name,)
            if cpath not in added:
                del directory.children[child_name]
            elif directory.children[child_name].kind == DIR:
                self._make_opaque(directory.children[child_name], cpath, added)

    # -- walking the result ---------------------------------------------------------
    def walk(self):
        """Yield (path, inode) depth-first, children sorted by name, root first as '.'."""
        yield ".", self.root
        stack = [("", self.root)]
        while stack:
            prefix, d = stack.pop()
            subdirs = []
            for name in sorted(d.children):
                node = d.children[name]
                path = prefix + name
                yield path, node
                if node.kind == DIR:
                    subdirs.append((path + "/", node))
            stack.extend(reversed(subdirs))


def _tarinfo(path, node):
    ti = tarfile.TarInfo(path)
    ti.mode = node.mode
    ti.uid, ti.gid = node.uid, node.gid
    ti.uname, ti.gname = node.uname, node.gname
    ti.mtime = node.mtime
    ti.type = {DIR: tarfile.DIRTYPE, REG: tarfile.REGTYPE, SYM: tarfile.SYMTYPE,
               CHR: tarfile.CHRTYPE, BLK: tarfile.BLKTYPE, FIFO: tarfile.FIFOTYPE}[node.kind]
    if node.kind == SYM:
        ti.linkname = node.linkname
    if node.kind in (CHR, BLK):
        ti.devmajor, ti.devminor = node.devmajor, node.devminor
    if node.kind == REG:
        ti.size = node.size
    if node.xattrs:
        ti.pax_headers = dict(node.xattrs)
    return ti


def _hardlink(path, primary, node):
    ti = _tarinfo(path, node)
    ti.type = tarfile.LNKTYPE
    ti.linkname = primary
    ti.size = 0
    return ti


class TarWriter:
    """Writes a PAX tar, byte for byte what ``tarfile`` writes in
    ``PAX_FORMAT`` (utf-8, surrogateescape), with a fast path for the common
    member that fits a plain ustar header, and small members gathered into
    megabyte writes (``fileobj`` may then be their bytes). ``notify(tarinfo,
    data_offset)``, if given, is called after each member (the bytes may not
    be written yet: all are once :meth:`close` returns)."""

    def __init__(self, out, notify=None):
        self._out = out
        self._notify = notify
        self.offset = 0
        self._pending = []          # small members' bytes not written yet
        self._pending_bytes = 0
        self._out_fd = None
        if isinstance(out, (io.BufferedWriter, io.FileIO)):
            try:
                self._out_fd = out.fileno()
            except (OSError, ValueError):
                pass

    def addfile(self, ti, fileobj=None):
        header = _ustar_header(ti) or ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        size = ti.size if ti.type in tarfile.REGULAR_TYPES else 0
        pad = -size % tarfile.BLOCKSIZE
        data_offset = self.offset + len(header)
        if size <= SMALL_MEMBER:
            # Small members are gathered and written a megabyte at a time.
            put = self._pending.append
            put(header)
            if size:
                data = fileobj if isinstance(fileobj, bytes) else fileobj.read(size)
                if len(data) != size:
                    raise errors.ArchiveError(f"{ti.name}: file data ended early")
                put(data)
                if pad:
                    put(_ZEROS[:pad])
            self._pending_bytes += len(header) + size + pad
            if self._pending_bytes >= COPY_CHUNK:
                self._flush()
        else:
            self._flush()
            self._out.write(header)
            left = size - self._send(ti.name, fileobj, size)
            while left:
                data = fileobj.read(min(COPY_CHUNK, left))
                if not data:
                    raise errors.ArchiveError(f"{ti.name}: file data ended early")
                self._out.write(data)
                left -= len(data)
            if pad:
                self._out.write(_ZEROS[:pad])
        self.offset = data_offset + size + pad
        if self._notify is not None:
            self._notify(ti, data_offset)

    def _send(self, name, fileobj, size):
        """Copy a big member's data in the kernel (sendfile: no trip through
        Python buffers) when it is a window of a file (the layer spool or
        the archive, see ``FileWindow``) and the output a file descriptor;
        returns how many bytes were copied (0 when it cannot be done)."""
        fd = getattr(fileobj, "fd", None)
        if self._out_fd is None or fd is None or fileobj.tell() != 0 or fileobj.size != size:
            return 0
        self._out.flush()
        src, done = fileobj.start, 0
        while done < size:
            try:
                n = os.sendfile(self._out_fd, fd, src + done, size - done)
            except OSError:
                if done:
                    raise
                self._out_fd = None   # not with this output: copy as before
                return 0
            if not n:
                raise errors.ArchiveError(f"{name}: file data ended early")
            done += n
        fileobj.skip(size)
        return done

    def _flush(self):
        if self._pending:
            self._out.write(b"".join(self._pending))
            self._pending = []
            self._pending_bytes = 0

    def close(self):
        """End-of-archive blocks, padded to tarfile's record size."""
        self._flush()
        end = self.offset + 2 * tarfile.BLOCKSIZE
        self._out.write(bytes(2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))


class RefWriter:
    """Stands in for :class:`TarWriter` when the consumer reads file data
    itself (the disk builder): instead of writing a tar, it reports each
    member, in the same order and as the same TarInfo the tar would hold,
    with where its data already lies: ``member_at(tarinfo, fd, offset)``
    (``fd`` -1 for members without data). The data of a regular file is a
    window of a verified layer (its spool, or the archive itself); a sparse
    file, which has no such window once expanded, is copied to ``scratch()``
    (a binary file object)."""

    def __init__(self, member_at, scratch):
        self._report = member_at
        self._scratch = scratch

    def addfile(self, ti, fileobj=None):
        if fileobj is None:
            self._report(ti, -1, 0)
            return
        fd = getattr(fileobj, "fd", None)
        if fd is not None and fileobj.tell() == 0 and fileobj.size == ti.size:
            self._report(ti, fd, fileobj.start)
            return
        f = self._scratch()
        start = f.seek(0, 2)
        left = ti.size
        while left:
            data = fileobj.read(min(COPY_CHUNK, left))
            if not data:
                raise errors.ArchiveError(f"{ti.name}: file data ended early")
            f.write(data)
            left -= len(data)
        f.flush()
        self._report(ti, f.fileno(), start)

    def close(self):
        pass


SMALL_MEMBER = 64 * 1024
_ZEROS = bytes(tarfile.BLOCKSIZE)
_USTAR_TYPES = {tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE}


def _ustar_header(ti):
    """The ustar block ``tarfile`` writes for ``ti`` in PAX_FORMAT when it
    needs no extended header; None when it does (or for anything unusual)."""
    if ti.pax_headers or ti.type not in _USTAR_TYPES or not isinstance(ti.mtime, int):
        return None
    name = ti.name + "/" if ti.type == tarfile.DIRTYPE and not ti.name.endswith("/") else ti.name
    try:
        bname = name.encode("ascii")
        blink = ti.linkname.encode("ascii")
        buname = ti.uname.encode("ascii")
        bgname = ti.gname.encode("ascii")
    except UnicodeEncodeError:
        return None
    size = ti.size if ti.type == tarfile.REGTYPE else 0
    if (len(bname) > 100 or len(blink) > 100 or len(buname) > 32 or len(bgname) > 32
            or not 0 <= ti.uid < 0o7777777 + 1 or not 0 <= ti.gid < 0o7777777 + 1
            or not 0 <= size < 0o77777777777 + 1 or not 0 <= ti.mtime < 0o77777777777 + 1):
        return None
    if ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        if not (0 <= ti.devmajor <= 0o7777777 and 0 <= ti.devminor <= 0o7777777):
            return None
        dev = b"%07o\0%07o\0" % (ti.devmajor, ti.devminor)
    else:
        dev = bytes(16)
    buf = _USTAR.pack(bname, b"%07o\0" % (ti.mode & 0o7777), b"%07o\0" % ti.uid,
                      b"%07o\0" % ti.gid, b"%011o\0" % size, b"%011o\0" % ti.mtime, b"        ",
                      ti.type, blink, tarfile.POSIX_MAGIC, buname, bgname, dev)
    return b"%s%06o\0%s" % (buf[:148], sum(buf), buf[155:])


# name mode uid gid size mtime chksum type linkname magic+version uname gname
# devmajor+devminor, NUL padded (as ljust) to the block.
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s16s167x")


class SparseReader:
    """The ``size`` bytes of a sparse (GNU/PAX sparse) member: its stored
    data segments (``raw``, read in order) placed at the offsets of
    ``sparse`` (``[(offset, length), ...]``), zeros in the holes."""

    def __init__(self, raw, sparse, size):
        # Zero-length segments carry no data (GNU's end marker, old GNU's
        # empty slots): only the data segments must be in order.
        sparse = [(offset, length) for offset, length in sparse if length]
        end = 0
        for offset, length in sparse:
            if offset < end or length < 0 or offset + length > size:
                raise errors.ArchiveError(f"sparse file map {sparse[:4]!r}... is not in order "
                                          f"or not inside the file's {size} bytes")
            end = offset + length
        self._raw = raw
        self._segments = sparse + [(size, 0)]
        self._pos = 0

    def read(self, n=-1):
        parts = []
        while n:
            if not self._segments:
                break
            offset, length = self._segments[0]
            if self._pos < offset:
                take = offset - self._pos if n < 0 else min(n, offset - self._pos)
                parts.append(bytes(take))
            else:
                end = offset + length
                take = end - self._pos if n < 0 else min(n, end - self._pos)
                data = self._raw.read(take)
                if len(data) != take:
                    raise errors.ArchiveError("sparse file data cut short")
                parts.append(data)
                if self._pos + take == end:
                    self._segments.pop(0)
            self._pos += take
            if n > 0:
                n -= take
        return b"".join(parts)


class _SmallReads:
    """Small files' data of one layer, asked for in offset order, read a
    megabyte of the layer at a time instead of one read per file."""

    def __init__(self, read_at):
        self._read_at = read_at
        self._start = 0
        self._buf = b""

    def read(self, offset, size):
        start = offset - self._start
        if start < 0 or start + size > len(self._buf):
            self._buf = self._read_at(offset, max(size, COPY_CHUNK)).read()
            self._start, start = offset, 0
            if len(self._buf) < size:
                raise errors.ArchiveError("file data ended early")
        return self._buf[start:start + size]


class ByteBudget:
    """Uncompressed bytes read so far in one pass over all layers, and, for
    the whole-image compression ratio, the compressed bytes read of the
    compressed layers (``packed``) and what they decompressed to
    (``unpacked``)."""

    def __init__(self):
        self.used = 0
        self.packed = 0
        self.unpacked = 0


class Flattener:
    """Merge ``layers`` into a PAX tar written to ``out``. A layer has
    ``describe()``, ``members(budget)`` (a context manager taking a
    :class:`ByteBudget` and yielding an iterator of ``(ordinal, TarInfo,
    TarFile)`` in stream order) and, once its members were read,
    ``content()`` (a context manager yielding ``read_at(offset, size)``,
    a reader of the file data at ``TarInfo.offset_data``)."""

    def __init__(self, layers, limits, progress=None):
        self.layers = layers
        self.limits = limits
        self.progress = progress or (lambda fraction, message: None)
        self.tree = Tree(limits)

    def build_tree(self):
        count = 0
        n = len(self.layers)
        budget = ByteBudget()
        for i, layer in enumerate(self.layers):
            self.progress(i / n / 2, f"reading layer {i + 1}/{n}")
            added = set()
            with layer.members(budget) as members:
                for _, m, _ in members:
                    count += 1
                    if count > self.limits.max_entries:
                        raise errors.LimitExceeded("max_entries", count, self.limits.max_entries,
                                                   "all layers")
                    what = f"layer {i + 1} ({layer.describe()})"
                    if m.isreg() and m.size > self.limits.max_file_size:
                        raise errors.LimitExceeded("max_file_size", m.size,
                                                   self.limits.max_file_size,
                                                   f"{what} entry {m.name!r}")
                    self.tree.apply_member(m, (i, m.offset_data, m.sparse), what, added)
        self.tree.entries = count
        return self.tree

    def write(self, out):
        """Write the PAX tar to ``out``. If ``out`` has a
        ``member_written(tarinfo, data_offset)`` method, it is called after
        each member (the disk builder records its entries that way instead
        of reading the tar back).

        If ``out`` has a ``member_at`` method (not None), no tar is written:
        see :class:`RefWriter`; the layers' data then stays where it is
        (spools kept) until the image is closed."""
        tree = self.build_tree()
        primary = {}          # id(inode) -> first path written (or planned) for it
        later = {}            # id(inode) -> [extra paths] for regular files
        by_layer = {}         # layer index -> {data offset: (path, inode)}
        refs = getattr(out, "member_at", None)
        if refs is not None:
            tf = RefWriter(refs, out.scratch)
        else:
            tf = TarWriter(out, getattr(out, "member_written", None))
        # Pass A: everything without content, parents before children.
        for path, node in tree.walk():
            key = id(node)
            if key in primary:
                if node.kind == REG and node.size:
                    later[key].append(path)
                else:
                    tf.addfile(_hardlink(path, primary[key], node))
                continue
            primary[key] = path
            if node.kind == REG and node.size:
                later[key] = []
                layer, offset, sparse = node.src
                by_layer.setdefault(layer, {})[offset] = (path, node, sparse)
            else:
                tf.addfile(_tarinfo(path, node))
        # Pass B: file contents, layer by layer, each file followed by its links.
        n = len(self.layers)
        for i in sorted(by_layer):
            wanted = by_layer[i]
            layer = self.layers[i]
            self.progress(0.5 + i / n / 2, f"copying files of layer {i + 1}/{n}")
            with (layer.content(keep=True) if refs else layer.content()) as read_at:
                small = None if refs else _SmallReads(read_at)
                for offset in sorted(wanted):
                    path, node, sparse = wanted[offset]
                    if sparse:
                        data = SparseReader(read_at(offset, sum(n for _, n in sparse)), sparse, node.size)
                    elif small is not None and node.size <= SMALL_MEMBER:
                        data = small.read(offset, node.size)
                    else:
                        data = read_at(offset, node.size)
                    tf.addfile(_tarinfo(path, node), data)
                    for link in later[id(node)]:
                        tf.addfile(_hardlink(link, path, node))
        tf.close()
        self.progress(1.0, "done")
        return tree
