"""Compare file trees: an unpacked directory, or a tar stream.

``manifest_from_dir(root)`` and ``manifest_from_tar(path)`` both return
``{relpath: Entry}``; :func:`diff_manifests` lists the differences in
readable lines.  What counts:

* type (file/dir/symlink/char/block/fifo/socket), permission bits INCLUDING
  setuid/setgid/sticky (``mode & 0o7777``), uid, gid;
* files: size and sha256 of the content (sparse files are read through);
* symlinks: the target string;  devices: (major, minor);
* xattrs, minus the ones a storage layer adds by itself (``trusted.overlay.*``,
  ``user.overlay.*``, ``security.selinux``, ``user.rootlesscontainers``);
* hard links: ``link_group`` is the smallest path of the group of names that
  share one inode (directory) or are joined by tar hard-link members (tar);
  ``None`` for a name with no other link in the tree.  So the group's
  identity does not depend on which name a tool happened to write first.

mtime is recorded but compared only when asked (``mtime="files"`` compares
regular files and symlinks, whose mtimes every tool copies from the layer
tar; ``"all"`` adds directories).  Directory mtimes differ between correct
tools: deleting a whiteout's target or creating a child bumps the parent's
mtime on a real filesystem unless the tool restores it afterwards, and
umoci, podman and Docker do that differently.  Sub-second parts are
dropped (tar headers carry whole seconds unless PAX mtime is used).

A umoci bundle (``config.json`` + ``rootfs/``) is read from its rootfs.
The root itself is the entry ``"."`` (present in a tar only when the tar has
a ``./`` member); :func:`diff_manifests` ignores ``"."`` unless both sides
have it.
"""

import base64
import collections
import dataclasses
import hashlib
import os
import posixpath
import stat
import tarfile
import urllib.parse

IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux",
                          "user.rootlesscontainers")

FIELDS = ("type", "mode", "uid", "gid", "size", "sha256", "linkname", "rdev",
          "xattrs", "link_group")


@dataclasses.dataclass(frozen=True)
class Entry:
    type: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    sha256: str = None
    linkname: str = None
    rdev: tuple = None
    xattrs: tuple = ()          # sorted ((name, bytes), ...)
    link_group: str = None
    mtime: int = None

    def describe(self):
        bits = ["%s %04o %d:%d" % (self.type, self.mode, self.uid, self.gid)]
        if self.type == "file":
            bits.append("%dB sha256:%s" % (self.size, (self.sha256 or "")[:12]))
        if self.linkname is not None:
            bits.append("-> %s" % self.linkname)
        if self.rdev is not None:
            bits.append("dev %d,%d" % self.rdev)
        if self.xattrs:
            bits.append("xattrs %s" % ",".join(n for n, _ in self.xattrs))
        if self.link_group:
            bits.append("linkgroup %s" % self.link_group)
        return " ".join(bits)


def _keep_xattr(name):
    return not name.startswith(IGNORED_XATTR_PREFIXES)


def _norm(name):
    """Tar member name -> manifest key ('a/b', '.' for the root)."""
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    if n in ("", "."):
        return "."
    return n


def _sha256_stream(f):
    h = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


# --------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------

_TYPES = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
          (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISSOCK, "socket"))


def _stat_type(st_mode):
    for test, name in _TYPES:
        if test(st_mode):
            return name
    return "unknown"


def _dir_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in names:
        if not _keep_xattr(n):
            continue
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(sorted(out))


def manifest_from_dir(root):
    """Manifest of a directory tree (a umoci bundle is read from rootfs/)."""
    root = os.fspath(root)
    if os.path.isfile(os.path.join(root, "config.json")) and \
            os.path.isdir(os.path.join(root, "rootfs")):
        root = os.path.join(root, "rootfs")
    entries = {}
    inodes = collections.defaultdict(list)

    def add(rel, full):
        st = os.lstat(full)
        typ = _stat_type(st.st_mode)
        kw = {}
        if typ == "file":
            with open(full, "rb") as f:
                kw["sha256"], kw["size"] = _sha256_stream(f)
        elif typ == "symlink":
            kw["linkname"] = os.readlink(full)
        elif typ in ("char", "block"):
            kw["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if typ != "dir" and st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)].append(rel)
        entries[rel] = Entry(type=typ, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                             gid=st.st_gid, xattrs=_dir_xattrs(full),
                             mtime=int(st.st_mtime), **kw)

    add(".", root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            add(rel, full)
    for names in inodes.values():
        if len(names) > 1:
            group = min(names)
            for n in names:
                entries[n] = dataclasses.replace(entries[n], link_group=group)
    return entries


# --------------------------------------------------------------------------
# Tars
# --------------------------------------------------------------------------

def _tar_xattrs(member):
    out = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            # tarfile decodes PAX values as UTF-8, falling back to
            # surrogateescape for binary values: undo that exactly.
            out[name] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
            out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
    return tuple(sorted((n, v) for n, v in out.items() if _keep_xattr(n)))


_TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file",
              tarfile.CONTTYPE: "file", tarfile.GNUTYPE_SPARSE: "file",
              tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
              tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
              tarfile.FIFOTYPE: "fifo"}


def manifest_from_tar(path_or_fileobj):
    """Manifest of a tar (plain or gzip/bz2/xz), later members win."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        tf = tarfile.open(os.fspath(path_or_fileobj), "r:*")
    else:
        tf = tarfile.open(fileobj=path_or_fileobj, mode="r:*")
    entries = {}
    group_of = {}              # name -> group key (first name of the inode)
    with tf:
        for m in tf:
            name = _norm(m.name)
            if name in group_of:
                del group_of[name]
            if m.islnk():
                target = _norm(m.linkname)
                if target not in entries:
                    raise ValueError("%s: hard link %s -> %s: target not in tar"
                                     % (path_or_fileobj, m.name, m.linkname))
                t = entries[target]
                # A hard link carries its own header, but the inode's
                # metadata is the target's: that is what extraction yields.
                entries[name] = t
                group_of[name] = group_of.setdefault(target, target)
                continue
            typ = _TAR_TYPES.get(m.type, "unknown:%r" % m.type)
            kw = {}
            if typ == "file":
                f = tf.extractfile(m)
                kw["sha256"], kw["size"] = _sha256_stream(f)
            elif typ == "symlink":
                kw["linkname"] = m.linkname
            elif typ in ("char", "block"):
                kw["rdev"] = (m.devmajor, m.devminor)
            entries[name] = Entry(type=typ, mode=m.mode & 0o7777, uid=m.uid, gid=m.gid,
                                  xattrs=_tar_xattrs(m), mtime=int(m.mtime), **kw)
    groups = collections.defaultdict(list)
    for name, key in group_of.items():
        groups[key].append(name)
    for names in groups.values():
        if len(names) > 1:
            g = min(names)
            for n in names:
                entries[n] = dataclasses.replace(entries[n], link_group=g)
    return entries


# --------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------

def diff_manifests(a, b, name_a="a", name_b="b", mtime=None, ignore=(),
                   fields=FIELDS):
    """Readable differences between two manifests (empty list: same tree).

    ``mtime``: None (default, not compared), "files" (regular files and
    symlinks) or "all".  ``ignore``: paths (and everything under them) to
    leave out.  ``fields``: the Entry fields to compare.
    """
    def ignored(p):
        return any(p == i or p.startswith(i.rstrip("/") + "/") for i in ignore)

    out = []
    keys = set(a) | set(b)
    if not ("." in a and "." in b):
        keys.discard(".")
    for p in sorted(keys):
        if ignored(p):
            continue
        ea, eb = a.get(p), b.get(p)
        if ea is None:
            out.append("only in %s: %s (%s)" % (name_b, p, eb.describe()))
            continue
        if eb is None:
            out.append("only in %s: %s (%s)" % (name_a, p, ea.describe()))
            continue
        for f in fields:
            va, vb = getattr(ea, f), getattr(eb, f)
            if f == "link_group" and (va is None) != (vb is None):
                pass
            elif f == "link_group" and va is not None:
                # compare group membership, not just the representative
                continue
            if va != vb:
                if f == "mode":
                    va, vb = "%04o" % va, "%04o" % vb
                out.append("%s: %s %s=%r %s=%r" % (p, f, name_a, va, name_b, vb))
        if mtime and ea.mtime != eb.mtime and (
                mtime == "all" or ea.type in ("file", "symlink")):
            out.append("%s: mtime %s=%s %s=%s" % (p, name_a, ea.mtime, name_b, eb.mtime))
    # hard-link groups as sets of names
    ga, gb = _groups(a, ignored), _groups(b, ignored)
    for g in sorted(set(ga) | set(gb), key=lambda s: sorted(s)):
        if g in ga and g in gb:
            continue
        side = name_a if g in ga else name_b
        out.append("hard-link group only in %s: %s" % (side, ", ".join(sorted(g))))
    return out


def _groups(m, ignored):
    by = collections.defaultdict(set)
    for p, e in m.items():
        if e.link_group and not ignored(p):
            by[e.link_group].add(p)
    return {frozenset(v) for v in by.values() if len(v) > 1}


def format_diff(lines, limit=60):
    if len(lines) > limit:
        lines = lines[:limit] + ["... %d more" % (len(lines) - limit)]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Safety of a flattened tar
# --------------------------------------------------------------------------

def check_tar_safe(path_or_fileobj):
    """Problems that would let a naive extractor write outside its target.

    Returns a list of strings (empty: safe): absolute names, ``..``
    components, a member below a non-directory member of the same tar
    (e.g. ``evil/pwned`` after ``evil`` as a symlink), hard links whose
    target is absolute, has ``..``, or was not an earlier member, and
    leftover whiteout files.
    """
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        tf = tarfile.open(os.fspath(path_or_fileobj), "r:*")
    else:
        tf = tarfile.open(fileobj=path_or_fileobj, mode="r:*")
    problems = []
    kinds = {}
    with tf:
        for m in tf:
            raw = m.name
            if raw.startswith("/"):
                problems.append("absolute member name %r" % raw)
            parts = [c for c in raw.split("/") if c not in ("", ".")]
            if ".." in parts:
                problems.append("'..' in member name %r" % raw)
            name = "/".join(parts) or "."
            if name != "." and posixpath.basename(name).startswith(".wh."):
                problems.append("whiteout left in output: %r" % raw)
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in kinds and kinds[parent] != "dir":
                    problems.append("member %r is below %r, which is a %s"
                                    % (raw, parent, kinds[parent]))
                    break
            if m.islnk():
                ln = m.linkname
                lparts = [c for c in ln.split("/") if c not in ("", ".")]
                if ln.startswith("/") or ".." in lparts:
                    problems.append("hard link %r -> %r escapes" % (raw, ln))
                elif "/".join(lparts) not in kinds:
                    problems.append("hard link %r -> %r: target not an earlier member"
                                    % (raw, ln))
                kinds[name] = kinds.get("/".join(lparts), "file")
            elif m.issym():
                kinds[name] = "symlink"
            elif m.isdir():
                kinds[name] = "dir"
            else:
                kinds[name] = "other"
    return problems
