"""Hand-built layer tars for unit tests of the flattening rules.

Real-tool archives are the reference elsewhere (test_reference.py); these
build the exact corner cases no tool writes on purpose.
"""

import contextlib
import io
import tarfile

from docker_rootfs.flatten import Flattener
from docker_rootfs.limits import Limits


def entry(name, kind="file", data=b"", mode=None, uid=0, gid=0, link="", mtime=1000,
          xattrs=None, major=0, minor=0):
    ti = tarfile.TarInfo(name)
    ti.mtime = mtime
    ti.uid, ti.gid = uid, gid
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
               "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE}[kind]
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.linkname = link
    ti.devmajor, ti.devminor = major, minor
    if xattrs:
        ti.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    if kind == "file":
        ti.size = len(data)
    return ti, (data if kind == "file" else None)


def layer_tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class MemoryLayer:
    def __init__(self, data, name="mem"):
        self.data = data
        self.name = name

    def describe(self):
        return self.name

    @contextlib.contextmanager
    def members(self, budget):
        tf = tarfile.open(fileobj=io.BytesIO(self.data), mode="r:")

        def gen():
            for i, m in enumerate(iter(tf.next, None)):
                tf.members.clear()
                yield i, m, tf
        yield gen()

    @contextlib.contextmanager
    def content(self):
        yield lambda offset, size: io.BytesIO(self.data[offset:offset + size])


def flatten_layers(layers, limits=None):
    """Flatten lists of entries; returns {path: (kind, mode, uid, gid, content|linkname)}."""
    mem = [MemoryLayer(layer_tar(entries), f"L{i + 1}") for i, entries in enumerate(layers)]
    out = io.BytesIO()
    Flattener(mem, limits or Limits()).write(out)
    return read_tar(out.getvalue())


def read_tar(data):
    result = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if m.isreg():
                val = ("file", m.mode, m.uid, m.gid, tf.extractfile(m).read())
            elif m.isdir():
                val = ("dir", m.mode, m.uid, m.gid, None)
            elif m.issym():
                val = ("sym", m.mode, m.uid, m.gid, m.linkname)
            elif m.islnk():
                val = ("hard", m.mode, m.uid, m.gid, m.linkname)
            else:
                val = (m.type.decode(), m.mode, m.uid, m.gid, (m.devmajor, m.devminor))
            assert m.name not in result, f"duplicate output entry {m.name}"
            result[m.name] = val
    return result
