"""The layer reader's header parser (``_StrictTarInfo.frombuf``, a fast path
for plain headers, issue 14) gives exactly what tarfile's ``frombuf`` gives
for the same 512 bytes: the same TarInfo fields, or the same exception."""

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from docker_rootfs.archive.layertar import _StrictTarInfo

SLOTS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname",
         "uname", "gname", "devmajor", "devminor", "offset", "offset_data", "pax_headers",
         "sparse", "_sparse_structs", "_link_target")


def _parse(cls, buf):
    try:
        ti = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as exc:   # the exception is part of the result
        return ("raised", type(exc), str(exc))
    return tuple(getattr(ti, a, "<unset>") for a in SLOTS)


def _headers(fmt, name, type_, size, mtime, uid, linkname, prefix_name):
    ti = tarfile.TarInfo(prefix_name + name)
    ti.type, ti.size, ti.mtime, ti.uid = type_, size if type_ == tarfile.REGTYPE else 0, mtime, uid
    ti.linkname = linkname if type_ in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    ti.uname, ti.gname = "root", "wheel"
    ti.devmajor, ti.devminor = 8, 1
    try:
        buf = ti.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:   # ustar cannot hold it
        buf = ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    return [buf[i:i + 512] for i in range(0, len(buf), 512)]


TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
         tarfile.GNUTYPE_SPARSE, b"x", b"g", b"L", b"K", b"Z"]
header = st.builds(
    _headers,
    st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.one_of(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30),
              st.text(min_size=1, max_size=120).filter(lambda t: "\0" not in t),
              st.just("dir/"), st.just("\udcff")),
    st.sampled_from(TYPES),
    st.sampled_from([0, 1, 512, 8 ** 11 - 1, 8 ** 11]),
    st.sampled_from([0, 1700000000, 8 ** 11 - 1, 8 ** 11, -1]),
    st.sampled_from([0, 1000, 8 ** 7, -5]),
    st.sampled_from(["", "target", "t" * 120]),
    st.sampled_from(["", "p" * 90 + "/", "a/" * 70]))


def _mutate(block, edits):
    b = bytearray(block)
    for pos, value in edits:
        b[pos % 512] = value
    return bytes(b)


@settings(max_examples=1500, deadline=None)
@given(header, st.integers(0, 3),
       st.lists(st.tuples(st.one_of(st.integers(0, 511), st.integers(100, 160),
                                    st.integers(329, 345)),
                          st.one_of(st.integers(0, 255), st.sampled_from(b"0 789\x00\x80\xff_+-\x1c"))),
                max_size=4),
       st.booleans())
def test_same_result_as_tarfile(blocks, pick, edits, fix_checksum):
    block = _mutate(blocks[pick % len(blocks)], edits)
    if fix_checksum and edits:   # keep mutations past the checksum test most of the time
        b = bytearray(block)
        b[148:156] = b"        "
        b[148:155] = b"%06o\0" % sum(b)
        block = bytes(b)
    assert _parse(_StrictTarInfo, block) == _parse(tarfile.TarInfo, block)


def test_edge_blocks():
    for block in (b"", b"\0" * 100, bytes(512), b"\0" * 511 + b"x", b"x" * 512):
        assert _parse(_StrictTarInfo, block) == _parse(tarfile.TarInfo, block)


def test_a_whole_tar_reads_the_same():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(50):
            ti = tarfile.TarInfo(("deep/" * (i % 30)) + f"f{i}" + ("é" if i % 7 == 0 else ""))
            ti.size = i * 37
            ti.type = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE][i % 3]
            if ti.type != tarfile.REGTYPE:
                ti.size = 0
            ti.linkname = "x" * (i * 3) if ti.type == tarfile.SYMTYPE else ""
            tf.addfile(ti, io.BytesIO(b"a" * ti.size))
    data = buf.getvalue()
    ours = tarfile.open(fileobj=io.BytesIO(data), tarinfo=_StrictTarInfo, encoding="utf-8",
                        errors="surrogateescape").getmembers()
    theirs = tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8",
                          errors="surrogateescape").getmembers()
    assert [m.get_info() for m in ours] == [m.get_info() for m in theirs]
    assert [(m.offset, m.offset_data) for m in ours] == [(m.offset, m.offset_data) for m in theirs]
