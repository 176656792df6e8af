"""Flattened PAX tars with every feature the disk must carry, written with
tarfile (owners, devices and xattrs are just header fields, no root needed),
plus a GNU tar --sparse one (real sparse members)."""

import io
import os
import random
import struct
import subprocess
import tarfile

T0 = 1600000000


def _cap(bits):
    # VFS_CAP_REVISION_2, effective; permitted bits; no inheritable
    return struct.pack("<IIIII", 0x02000001, bits & 0xFFFFFFFF, 0, bits >> 32, 0)


def _acl(uid):
    # system.posix_acl_access, Linux xattr format v2: user::rw-, user:UID:r--, group::r--,
    # mask::r--, other::---
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _x(name, value):
    return ("SCHILY.xattr." + name, value.decode("utf-8", "surrogateescape"))


def write_feature_tar(path, many=3000, seed=1):
    rng = random.Random(seed)
    members = []

    def add(name, type=tarfile.REGTYPE, data=None, mode=0o644, uid=0, gid=0, mtime=T0,
            linkname="", dev=(0, 0), xattrs=()):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type, mode, uid, gid, mtime
        ti.linkname = linkname
        ti.devmajor, ti.devminor = dev
        ti.pax_headers = dict(_x(n, v) for n, v in xattrs)
        if data is not None:
            ti.size = len(data)
        members.append((ti, data))

    D = tarfile.DIRTYPE
    add("./", D, mode=0o755, mtime=T0 - 5)
    for d in ("bin", "etc", "dev", "usr", "usr/lib", "usr/share", "var", "srv"):
        add(d, D, mode=0o755)
    add("tmp", D, mode=0o1777)
    add("srv/setgid-dir", D, mode=0o2775, uid=33, gid=33)
    add("bin/su", data=b"\x7fELF" + rng.randbytes(5000), mode=0o4755)
    add("bin/wall", data=b"w" * 10, mode=0o2755, gid=5)
    add("bin/ping", data=b"ping", mode=0o755,
        xattrs=[("security.capability", _cap(1 << 13))])
    add("bin/none", data=b"", mode=0o000)
    add("etc/shadow", data=b"root:*:1::::::\n", mode=0o640, uid=0, gid=42)
    add("etc/owned", data=b"x", mode=0o600, uid=1000, gid=2000)
    add("etc/highid", data=b"y", mode=0o644, uid=100000, gid=165536)
    add("etc/acl", data=b"acl", mode=0o640, xattrs=[("system.posix_acl_access", _acl(1000))])
    add("etc/xattrs", data=b"x", xattrs=[("user.a", b"1"), ("user.big", rng.randbytes(600)),
                                         ("trusted.t", b"t" * 20)])
    add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    add("dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(8, 0))
    add("dev/big", tarfile.CHRTYPE, mode=0o600, dev=(259, 65537))
    add("dev/fifo", tarfile.FIFOTYPE, mode=0o620)
    add("usr/lib/libx.so.1", data=rng.randbytes(3 * 1024 * 1024 + 17), mode=0o755)
    add("usr/lib/libx.so", tarfile.SYMTYPE, linkname="libx.so.1", mode=0o777)
    add("lib", tarfile.SYMTYPE, linkname="usr/lib", mode=0o777)
    add("usr/lib/long-link", tarfile.SYMTYPE, linkname="/" + "/".join(["segment"] * 20),
        mode=0o777)
    add("usr/lib/dangling", tarfile.SYMTYPE, linkname="../nowhere/at/all", mode=0o777)
    add("bin/sudo", tarfile.LNKTYPE, linkname="bin/su")
    add("usr/lib/su-again", tarfile.LNKTYPE, linkname="bin/su")
    add("dev/null-link", tarfile.LNKTYPE, linkname="dev/null")
    add("usr/share/zeros", data=bytes(3 * 1024 * 1024) + b"end" + bytes(1 << 20), mode=0o644)
    add("usr/share/ünïcødé ñame", data="ü".encode(), mode=0o644)
    add(os.fsdecode(b"usr/share/latin1-\xe9t\xe9"), data=b"latin1", mode=0o644)
    add("usr/share/" + "N" * 255, data=b"long name", mode=0o644)
    add("usr/share/quote\"back\\slash -dash", data=b"q", mode=0o644)
    add("usr/share/future", data=b"2100", mtime=4102444800)
    add("usr/share/epoch", data=b"0", mtime=0)
    add("usr/share/ünï-link", tarfile.SYMTYPE, linkname="ünïcødé ñame", mode=0o777)
    deep = "var"
    for i in range(40):
        deep += f"/d{i}"
        add(deep, D, mode=0o755, mtime=T0 + i)
    add(deep + "/leaf", data=b"deep")
    add("var/many", D, mode=0o755)
    for i in range(many):
        add(f"var/many/f{i:05d}-{'x' * (i % 40)}", data=b"" if i % 3 else b"%d" % i,
            mtime=T0 + i)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def write_sparse_tar(path, workdir):
    """A tar with real PAX sparse members (GNU tar --sparse), sorted, numeric."""
    root = os.path.join(workdir, "sparse-root")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "holes"), "wb") as f:
        f.write(b"start")
        f.seek(64 << 20)
        f.write(b"middle")
        f.truncate(200 << 20)
    with open(os.path.join(root, "plain"), "wb") as f:
        f.write(b"plain")
    for name in ("holes", "plain"):
        os.utime(os.path.join(root, name), (T0, T0))
    os.utime(root, (T0, T0))
    subprocess.run(["tar", "--sparse", "--format=pax", "--numeric-owner", "--owner=0",
                    "--group=0", "--sort=name", "-C", root, "-cf", path, "."], check=True)
    return path
