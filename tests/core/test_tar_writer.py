"""The flattener's TarWriter writes exactly what tarfile writes in
PAX_FORMAT (utf-8, surrogateescape), fast path or not."""

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from docker_rootfs.flatten import TarWriter

TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
names = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/"),
            min_size=1, max_size=40),
    st.text(min_size=1, max_size=140).filter(lambda t: "\0" not in t),   # non-ASCII, long
    st.just("é" * 3), st.just("d/" * 60 + "x"), st.just("\udcff-bad-utf8"))
member = st.fixed_dictionaries({
    "name": names, "type": st.sampled_from(TYPES),
    "mode": st.integers(0, 0o7777), "uid": st.sampled_from([0, 1000, 2 ** 21, 2 ** 31]),
    "gid": st.sampled_from([0, 50, 2 ** 21]),
    "mtime": st.one_of(st.integers(0, 2 ** 33), st.floats(0, 2 ** 31, allow_nan=False)),
    "linkname": names, "uname": st.sampled_from(["", "root", "u" * 40, "ü"]),
    "gname": st.sampled_from(["", "wheel"]), "size": st.sampled_from([0, 1, 511, 512, 70000]),
    "dev": st.tuples(st.integers(0, 4095), st.integers(0, 2 ** 20)),
    "xattr": st.booleans()})


def _ti(d):
    ti = tarfile.TarInfo(d["name"])
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = d["type"], d["mode"], d["uid"], d["gid"], d["mtime"]
    ti.uname, ti.gname = d["uname"], d["gname"]
    if d["type"] in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        ti.linkname = d["linkname"]
    if d["type"] in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = d["dev"]
    ti.size = d["size"] if d["type"] == tarfile.REGTYPE else 0
    if d["xattr"]:
        ti.pax_headers = {"SCHILY.xattr.user.k": "v"}
    return ti


@settings(max_examples=300, deadline=None)
@given(st.lists(member, min_size=1, max_size=6))
def test_same_bytes_as_tarfile(members):
    ours, theirs = io.BytesIO(), io.BytesIO()
    w = TarWriter(ours)
    tf = tarfile.open(fileobj=theirs, mode="w:", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape")
    for d in members:
        data = bytes(range(256)) * (d["size"] // 256 + 1)
        ti = _ti(d)
        body = data[:ti.size]
        tf.addfile(ti, io.BytesIO(body) if ti.size else None)
        w.addfile(_ti(d), io.BytesIO(body) if ti.size else None)
    tf.close()
    w.close()
    assert ours.getvalue() == theirs.getvalue()


def test_member_offsets_are_reported():
    seen = []
    out = io.BytesIO()
    w = TarWriter(out, lambda ti, off: seen.append((ti.name, off)))
    for name, size in (("a", 3), ("é" * 200, 1000)):
        ti = tarfile.TarInfo(name)
        ti.size = size
        w.addfile(ti, io.BytesIO(b"z" * size))
    w.close()
    data = out.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [(m.name, m.offset_data) for m in tf] == seen
