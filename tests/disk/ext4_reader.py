"""Read the tree inside an ext4 image without mounting it (debugfs), as a
:mod:`tests.treecmp` manifest, so tests compare "what is in the disk" with
"what the flattened image says" (``treecmp.manifest_from_tar``).

Independent of the builder's own libext2fs binding: only debugfs's text
interface (``ls -p``, ``stat``, ``ea_list``/``ea_get``, ``dump``).
A model is ``{path bytes: dict}`` with keys kind, mode, uid, gid, mtime,
size, sha256 (regular files), target (symlinks), dev (devices), xattrs
(dict), and ``link`` (a hard-link group key shared by all names of one inode).
"""

import hashlib
import os
import re
import subprocess
import tempfile

LS_RE = re.compile(rb"^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$")
KIND = {0o100000: "reg", 0o040000: "dir", 0o120000: "sym", 0o020000: "chr",
        0o060000: "blk", 0o010000: "fifo", 0o140000: "sock"}
IGNORE = {b"lost+found"}


def _debugfs(image, commands):
    with tempfile.NamedTemporaryFile("wb", suffix=".cmds") as f:
        f.write(b"\n".join(commands) + b"\n")
        f.flush()
        out = subprocess.run(["debugfs", "-f", f.name, image], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, check=True).stdout
    # With -f, debugfs echoes "debugfs: CMD" before each command's output.
    chunks = re.split(rb"^debugfs: .*$\n?", out, flags=re.M)
    return chunks[1:]


def _q(path):
    return b'"' + path + b'"'


def read_image(image, with_content=True):
    model = {}
    inode_of = {}
    # 1. The directory tree, breadth-first, one debugfs run per level.
    level = [b""]
    while level:
        outs = _debugfs(image, [b"ls -p " + _q(b"/" + d) for d in level])
        nxt = []
        for d, out in zip(level, outs):
            for line in out.splitlines():
                m = LS_RE.match(line)
                if not m:
                    continue
                ino, mode, uid, gid, name, size = m.groups()
                if name in (b".", b".."):
                    continue
                path = d + b"/" + name if d else name
                if path in IGNORE:
                    continue
                mode = int(mode, 8)
                kind = KIND[mode & 0o170000]
                model[path] = {"kind": kind, "mode": mode & 0o7777, "uid": int(uid),
                               "gid": int(gid), "ino": int(ino)}
                inode_of[path] = int(ino)
                if kind == "reg":
                    model[path]["size"] = int(size)
                if kind == "dir":
                    nxt.append(path)
        level = nxt
    model[b""] = {"kind": "dir", "ino": 2}
    inode_of[b""] = 2
    # 2. Per-inode details: times, links, devices, symlinks, xattr names.
    inos = sorted(set(inode_of.values()))
    stats = _debugfs(image, [f"stat <{i}>".encode() for i in inos])
    eas = _debugfs(image, [f"ea_list <{i}>".encode() for i in inos])
    detail = {}
    for i, st, ea in zip(inos, stats, eas):
        d = {}
        m = re.search(rb"mtime: 0x([0-9a-f]+)(?::([0-9a-f]+))?", st)
        lo = int(m.group(1), 16)
        extra = int(m.group(2), 16) if m.group(2) else 0
        d["mtime"] = (lo - (1 << 32) if lo >= 1 << 31 else lo) + ((extra & 3) << 32)
        d["links"] = int(re.search(rb"Links: (\d+)", st).group(1))
        m = re.search(rb"Device major/minor number: ([0-9a-f]+):([0-9a-f]+) \(hex", st)
        if m:
            d["dev"] = (int(m.group(1)), int(m.group(2)))
        m = re.search(rb"User:\s+(\d+)\s+Group:\s+(\d+)", st)
        d["uid"], d["gid"] = int(m.group(1)), int(m.group(2))
        m = re.search(rb"Mode:\s+(\d+)", st)
        d["mode"] = int(m.group(1), 8)
        m = re.search(rb'Fast link dest: "(.*)"\n', st)
        if m:
            d["fast_target"] = m.group(1)
        d["xattr_names"] = re.findall(rb"^  (\S+) \(\d+\)", ea, flags=re.M)
        detail[i] = d
    # 3. Contents, symlink targets and xattr values via files.
    with tempfile.TemporaryDirectory() as tmp:
        cmds = []
        for i in inos:
            kind = None
            for p, ino in inode_of.items():
                if ino == i:
                    kind = model[p]["kind"]
                    break
            if kind in ("reg", "sym") and with_content:
                cmds.append(f"dump <{i}> {tmp}/c{i}".encode())
            for n, name in enumerate(detail[i]["xattr_names"]):
                cmds.append(f"ea_get -f {tmp}/x{i}_{n} <{i}> ".encode() + name)
        for k in range(0, len(cmds), 5000):
            _debugfs(image, cmds[k:k + 5000])
        for i in inos:
            d = detail[i]
            d["xattrs"] = {}
            for n, name in enumerate(d["xattr_names"]):
                with open(f"{tmp}/x{i}_{n}", "rb") as f:
                    d["xattrs"][name] = f.read()
            if os.path.exists(f"{tmp}/c{i}"):
                with open(f"{tmp}/c{i}", "rb") as f:
                    data = f.read()
                d["content"] = data
    groups = {}
    for path, ino in inode_of.items():
        d = detail[ino]
        e = model[path]
        e.update(mode=d["mode"], uid=d["uid"], gid=d["gid"], mtime=d["mtime"],
                 xattrs=d["xattrs"])
        if e["kind"] == "reg":
            e["sha256"] = hashlib.sha256(d.get("content", b"")).hexdigest() if with_content else None
        elif e["kind"] == "sym":
            e["target"] = d["fast_target"] if "fast_target" in d else d.get("content", b"")
        elif e["kind"] in ("chr", "blk"):
            e["dev"] = d["dev"]
        if e["kind"] != "dir":
            groups.setdefault(ino, []).append(path)
            e["nlink"] = d["links"]
    for ino, paths in groups.items():
        for p in paths:
            model[p]["link"] = min(paths)
    for e in model.values():
        e.pop("ino", None)
    return model


_TYPES = {"reg": "file", "dir": "dir", "sym": "symlink", "chr": "char", "blk": "block",
          "fifo": "fifo", "sock": "socket"}


def manifest_from_image(image, with_content=True):
    """``{relpath: treecmp.Entry}`` of the tree in an ext4 image (lost+found left out)."""
    from tests import treecmp
    model = read_image(image, with_content=with_content)
    out = {}
    for path, e in model.items():
        name = os.fsdecode(path) if path else "."
        kw = {}
        if e["kind"] == "reg":
            kw["size"] = e["size"]
            kw["sha256"] = e["sha256"]
        elif e["kind"] == "sym":
            kw["linkname"] = os.fsdecode(e["target"])
        elif e["kind"] in ("chr", "blk"):
            kw["rdev"] = e["dev"]
        link = e.get("link")
        if e.get("nlink", 1) > 1 and link is not None:
            kw["link_group"] = os.fsdecode(link)
        xattrs = tuple(sorted((os.fsdecode(n), v) for n, v in e.get("xattrs", {}).items()
                              if treecmp._keep_xattr(os.fsdecode(n))))
        out[name] = treecmp.Entry(type=_TYPES[e["kind"]], mode=e.get("mode", 0),
                                  uid=e.get("uid", 0), gid=e.get("gid", 0), xattrs=xattrs,
                                  mtime=e.get("mtime"), **kw)
    return out
