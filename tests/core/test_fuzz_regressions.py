"""Regression tests for what the fuzzer (fuzz/, doc/source/fuzzing.md)
found. Each input is rebuilt here in a few lines (the fuzzer's own crash
files are mutated real archives of up to 100 KiB, not committed); each test
failed before its fix in docker_rootfs/.

What every test checks is the fuzzer's rule: the archive is refused with
one Docker2VMError line (or accepted), and nothing is left behind: no file
in the temporary directory, no open descriptor, no thread.
"""

import hashlib
import io
import json
import os
import tarfile
import threading

import pytest
import zstandard

from docker_rootfs import errors
from docker_rootfs.archive import open_image
from docker_rootfs.disk import tarscan
from docker_rootfs.limits import Limits


def _fds():
    return sorted(os.listdir("/proc/self/fd"))


def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def refuse(tmp_path, data, error=errors.ArchiveError, limits=None):
    """Open ``data`` as an image archive and flatten it; it must be refused
    with ``error`` (one line) and leave nothing behind."""
    path = tmp_path / "archive"
    path.write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    fds, threads = _fds(), threading.active_count()
    with pytest.raises(error) as info:
        with open_image(path, limits=limits or Limits(), tmpdir=str(scratch)) as img:
            img.flatten(io.BytesIO())
    assert "\n" not in str(info.value) and str(info.value).strip()
    assert os.listdir(scratch) == []
    assert _fds() == fds, "a file descriptor was left open"
    assert threading.active_count() == threads
    return str(info.value)


def test_corrupt_compressed_archive_closes_its_temporary_file(tmp_path):
    """Found by the `archive` target: a zstd archive whose data is corrupt
    left the descriptor of the (unlinked) decompressed copy open, holding its
    disk space until the glance-api worker exits."""
    good = zstandard.ZstdCompressor().compress(tar_of([("index.json", b"{}")] * 40))
    bad = good[:20] + bytes(b ^ 0x55 for b in good[20:60]) + good[60:]
    msg = refuse(tmp_path, bad)
    assert "image archive" in msg


def oci_archive(index, blobs=()):
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", json.dumps(index).encode())]
    files += [("blobs/sha256/" + hashlib.sha256(b).hexdigest(), b) for b in blobs]
    return tar_of(files)


@pytest.mark.parametrize("manifests", [
    [],
    [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 2,
      "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "platform": {"os": "unknown"}}],
], ids=["empty-index", "attestations-only"])
def test_index_without_images(tmp_path, manifests):
    """Found by the `archive-unverified` target: an OCI index listing no
    image (or only BuildKit attestations) was an IndexError."""
    msg = refuse(tmp_path, oci_archive({"schemaVersion": 2, "manifests": manifests}, [b"{}"]),
                 errors.ImageSelectionError)
    assert "no container image" in msg


def huge_member_tar(name):
    """A tar whose second member claims 2**70 bytes (GNU base-256 size)."""
    small = tarfile.TarInfo("a")
    small.size = 1
    huge = tarfile.TarInfo(name)
    huge.size = 2 ** 70
    return (small.tobuf(tarfile.GNU_FORMAT) + b"x".ljust(512, b"\0")
            + huge.tobuf(tarfile.GNU_FORMAT) + bytes(1024))


def test_outer_archive_member_beyond_any_offset(tmp_path):
    """Found by the fuzzer (tarscan target; the outer archive index reads
    the same way): a member size no file offset can hold was a ValueError
    from tarfile's seek."""
    msg = refuse(tmp_path, huge_member_tar("manifest.json"))
    assert "not a readable tar archive" in msg


def test_tarscan_member_beyond_any_offset(tmp_path):
    path = tmp_path / "rootfs.tar"
    path.write_bytes(huge_member_tar("b"))
    with pytest.raises(errors.ArchiveError, match="truncated or corrupt flattened tar"):
        tarscan.scan(str(path))


def negative_size_tar(name, size=-512):
    """A tar whose second member has a negative size (GNU base-256), which
    made tarfile seek backwards to an earlier header."""
    small = tarfile.TarInfo("a")
    small.size = 1
    bad = tarfile.TarInfo(name)
    bad.size = size
    return (small.tobuf(tarfile.GNU_FORMAT) + b"x".ljust(512, b"\0")
            + bad.tobuf(tarfile.GNU_FORMAT) + bytes(1024))


def test_outer_archive_negative_size(tmp_path):
    """Found by the fuzzer: tarfile went back to re-read earlier headers
    (bounded only by max_archive_entries) or failed with OSError."""
    msg = refuse(tmp_path, negative_size_tar("manifest.json", -10 ** 6))
    assert "negative size" in msg


@pytest.mark.parametrize("size", [-512, -10 ** 12])
def test_layer_negative_size(tmp_path, size):
    """Found by the `layers` target: an OSError 'cannot seek back in a
    layer stream'."""
    from fuzz.targets import build_archive
    msg = refuse(tmp_path, build_archive([("gzip", negative_size_tar("b", size))]))
    assert "negative size" in msg


@pytest.mark.parametrize("size", [-512, -10 ** 12])
def test_tarscan_negative_size(tmp_path, size):
    """Found by the `tarscan` target: OSError EINVAL from seek."""
    path = tmp_path / "rootfs.tar"
    path.write_bytes(negative_size_tar("b", size))
    with pytest.raises(errors.ArchiveError, match="negative size"):
        tarscan.scan(str(path))


# Layouts and manifests, written in the `layout` target's form (fuzz/targets.py
# resolve_documents): documents joined by JSON_SEP, "@N" is the digest of
# document N, "@L"/"@D" the digest/diff_id of a small fixed layer.
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:@D"]}}'
MANIFEST = (b'{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
            b'"digest":"sha256:@1","size":1},"layers":[{"mediaType":"LAYER_MT","digest":"sha256:@L","size":1}]}')
LAYER_MT = b'"application/vnd.oci.image.layer.v1.tar"'


def oci_index(descriptor_extra=b"", layer_mt=LAYER_MT, second=b""):
    from fuzz.targets import JSON_SEP
    index = (b'{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
             b'"digest":"sha256:@0","size":1' + descriptor_extra + b"}" + second + b"]}")
    return JSON_SEP.join([index, MANIFEST.replace(b'"LAYER_MT"', layer_mt), CONFIG])


def docker_save(layer_sources):
    from fuzz.targets import JSON_SEP
    manifest = (b'[{"Config":"blobs/sha256/@0","Layers":["blobs/sha256/@L"],"LayerSources":'
                + layer_sources + b"}]")
    return JSON_SEP.join([manifest, CONFIG])


def layout(tmp_path, documents, error=errors.ArchiveError):
    from fuzz.targets import build_layout
    return refuse(tmp_path, build_layout(documents), error)


def test_layout_form_accepts_a_good_image(tmp_path):
    """The helpers above make a valid image: the refusals below are about
    the one field each changes."""
    from fuzz.targets import build_layout
    for documents in (oci_index(), docker_save(b'{"sha256:@L":{"mediaType":' + LAYER_MT
                                                        + b',"digest":"sha256:@L","size":1}}')):
        path = tmp_path / "good"
        path.write_bytes(build_layout(documents))
        with open_image(path) as img:
            img.flatten(io.BytesIO())


@pytest.mark.parametrize("documents,message", [
    # AttributeError: 'list' object has no attribute 'get'
    (oci_index(b',"annotations":[1]'), "annotations is not an object"),
    # TypeError: can only concatenate str (not "list") to str (listing the platforms)
    (oci_index(b',"platform":{"os":"linux","architecture":"amd64","variant":[1]}',
               second=b',{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:@0",'
                      b'"size":1,"platform":{"os":"linux","architecture":"arm"}}'),
     "are not strings"),
    # TypeError: unhashable type: 'list'
    (oci_index(layer_mt=b"[1]"), "unsupported media type"),
    # AttributeError: 'list' / 'str' object has no attribute 'get'
    (docker_save(b"[1]"), "LayerSources is not an object"),
    (docker_save(b'{"sha256:@L":"x"}'), "is malformed"),
    (docker_save(b'{"sha256:@L":{"mediaType":[1]}}'), "is malformed"),
    # (this one was already refused, as a size mismatch; now named as what it is)
    (docker_save(b'{"sha256:@L":{"size":"5"}}'), "malformed size"),
], ids=["annotations-list", "platform-variant-list", "layer-media-type-list", "layersources-list",
        "layersource-string", "layersource-media-type-list", "layersource-size-string"])
def test_malformed_layout_fields(tmp_path, documents, message):
    """Found with the `layout` target's inputs: fields of the wrong JSON
    type were AttributeError/TypeError instead of one error line."""
    assert message in layout(tmp_path, documents)


def test_deeply_nested_json(tmp_path):
    """Found with the `layout` target's inputs: 100,000 nested arrays in
    index.json (200 KB) were a RecursionError from the JSON parser."""
    assert "is not valid JSON" in layout(tmp_path, b'{"manifests":' + b"[" * 100000 + b"]" * 100000 + b"}")


def test_tarscan_deep_path(tmp_path):
    """Found by reading tarscan while writing its target (the fuzzer does
    not make 1,000-component paths): the implied parents of a deep path
    were created recursively, a RecursionError. The flattener's
    max_path_depth (256) keeps its own output below that, but an operator
    may raise it, and the builder's scan does not trust its input."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("a/" * 1500 + "f")
        tf.addfile(ti, io.BytesIO(b""))
    path = tmp_path / "rootfs.tar"
    path.write_bytes(buf.getvalue())
    entries, stats = tarscan.scan(str(path))
    assert len(entries) == 1 and stats.dirs == 1500 and stats.inodes == 1501
    assert stats.dir_bytes[b"a"] == 12 and stats.dir_bytes[b""] == 12


def pax_member(records, name="f", data=b"x"):
    """A tar of one file whose PAX header is written by hand (tarfile's
    writer would check the values)."""
    body = b""
    for key, value in records:
        rec = b" " + key + b"=" + value + b"\n"
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n += 1
        body += str(n).encode() + rec
    head = tarfile.TarInfo("PaxHeaders/" + name)
    head.type, head.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo(name)
    member.size = len(data)
    pad = -len(body) % 512
    return (head.tobuf(tarfile.USTAR_FORMAT) + body + bytes(pad)
            + member.tobuf(tarfile.USTAR_FORMAT) + data.ljust(512, b"\0") + bytes(1024))


SPARSE_1_0 = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
              (b"GNU.sparse.name", b"s"), (b"GNU.sparse.realsize", b"100")]
PAX_CASES = {
    # ValueError: cannot convert float NaN to integer (flatten, tarscan)
    "mtime-nan": ([(b"mtime", b"nan")], b"x", "invalid"),
    # OverflowError: cannot convert float infinity to integer
    "mtime-inf": ([(b"mtime", b"inf")], b"x", "invalid"),
    # ValueError from tarfile's GNU sparse 1.0 map parser
    "sparse-map-unterminated": (SPARSE_1_0, b"1", "not enough values"),
    "sparse-map-not-a-number": (SPARSE_1_0, b"x\n", "invalid literal"),
}


@pytest.mark.parametrize("case", sorted(PAX_CASES))
def test_layer_pax_values(tmp_path, case):
    """Found by inputs written in the `layers` target's form (the byte
    mutations do not write "nan" into a PAX record): ValueError or
    OverflowError instead of one error line."""
    from fuzz.targets import build_archive
    records, data, message = PAX_CASES[case]
    assert message in refuse(tmp_path, build_archive([("none", pax_member(records, data=data))]))


@pytest.mark.parametrize("case", sorted(PAX_CASES))
def test_tarscan_pax_values(tmp_path, case):
    records, data, message = PAX_CASES[case]
    path = tmp_path / "rootfs.tar"
    path.write_bytes(pax_member(records, data=data))
    with pytest.raises(errors.ArchiveError, match=message):
        tarscan.scan(str(path))


def cut_sparse_tar():
    """An old-GNU sparse member whose header says an extension block
    follows (isextended), and the tar ends there."""
    ti = tarfile.TarInfo("s")
    ti.type = tarfile.GNUTYPE_SPARSE
    block = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    block[482] = 1                                   # isextended
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_tarscan_cut_sparse_extension():
    """Found by the `tarscan` target in the campaign: tarfile's GNU sparse
    reader indexed an empty block (IndexError)."""
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(cut_sparse_tar())
        f.flush()
        with pytest.raises(errors.ArchiveError):
            tarscan.scan(f.name)


def test_layer_cut_sparse_extension(tmp_path):
    from fuzz.targets import build_archive
    refuse(tmp_path, build_archive([("none", cut_sparse_tar())]))


def test_outer_archive_cut_sparse_extension(tmp_path):
    first = tarfile.TarInfo("index.json")
    first.size = 2
    msg = refuse(tmp_path, first.tobuf(tarfile.GNU_FORMAT) + b"{}".ljust(512, b"\0") + cut_sparse_tar())
    assert "not a readable tar archive" in msg


def test_tarscan_gnu_longname_of_impossible_size(tmp_path):
    """Found by the `tarscan` target in the campaign: a GNU long-name
    header claiming 2**70 bytes was tarfile's OverflowError (now refused
    before tarfile reads it, as any extended header over 8 MiB)."""
    ti = tarfile.TarInfo("././@LongLink")
    ti.type = tarfile.GNUTYPE_LONGNAME
    ti.size = 2 ** 70
    path = tmp_path / "rootfs.tar"
    path.write_bytes(ti.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    with pytest.raises(errors.ArchiveError, match="extended header"):
        tarscan.scan(str(path))


@pytest.mark.parametrize("major, minor", [(2 ** 40, 1), (1, 2 ** 40), (-1, 0), (4096, 0), (0, 2 ** 20)])
def test_layer_device_number_out_of_range(tmp_path, major, minor):
    """Found by the `layers` target: a device whose GNU base-256 major or
    minor no ustar field (nor Linux's dev_t) holds; writing the flattened
    tar failed with tarfile's ValueError 'overflow in number field'."""
    from fuzz.targets import build_archive
    dev = tarfile.TarInfo("dev/x")
    dev.type = tarfile.CHRTYPE
    dev.devmajor, dev.devminor = major, minor
    layer = dev.tobuf(tarfile.GNU_FORMAT) + bytes(1024)
    msg = refuse(tmp_path, build_archive([("gzip", layer)]))
    assert "invalid number" in msg


def test_layer_device_numbers_at_the_linux_limits_are_kept(tmp_path):
    from fuzz.targets import build_archive
    dev = tarfile.TarInfo("x")
    dev.type = tarfile.BLKTYPE
    dev.devmajor, dev.devminor = 0xFFF, 0xFFFFF
    path = tmp_path / "archive"
    path.write_bytes(build_archive([("gzip", dev.tobuf(tarfile.GNU_FORMAT) + bytes(1024))]))
    out = io.BytesIO()
    with open_image(path, limits=Limits(), tmpdir=str(tmp_path)) as img:
        img.flatten(out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        m = tf.getmember("x")
    assert (m.devmajor, m.devminor) == (0xFFF, 0xFFFFF)


# The fuzzer's own input (1,900 bytes, zlib + base64): an old GNU sparse
# member whose header fields send tarfile's next offset below zero.
_OLD_GNU_SPARSE_CRASH = (
    "eNrT02dgYGTADcyCCQEMLUmZefoMFACwqd5YAcOgACo0Nj+1JFmf1n4wAAJzU1MwDQSo9H96AqjFhqbGBsZmJmYGhiBHmZma"
    "kZzuyATI6QuXXXrg+AC5lmEUkA0oLRiITtfDrsQZogXOLwLB7uzh6ROpV5FYUlKkV1qcWqSXTdBIdVISkSY2wRo0/nekPG2K"
    "z7Si1HQ4WwEj2ZmZGZkwKOA1AAD1s8D4"
)


def test_tarscan_old_gnu_sparse_offset_below_zero(tmp_path):
    """Found by the `tarscan` target in the final campaign: tarfile seeked
    before the file's start (OSError: Invalid argument) on the member after
    an old GNU sparse header ('S') with a negative stored size."""
    import base64
    import zlib

    from fuzz.targets import fix_checksums
    path = tmp_path / "t.tar"
    path.write_bytes(fix_checksums(zlib.decompress(base64.b64decode("".join(_OLD_GNU_SPARSE_CRASH)))))
    with pytest.raises(errors.ArchiveError) as info:
        tarscan.scan(str(path))
    assert "\n" not in str(info.value)


def _old_gnu_sparse_crash():
    import base64
    import zlib

    from fuzz.targets import fix_checksums
    return fix_checksums(zlib.decompress(base64.b64decode(_OLD_GNU_SPARSE_CRASH)))


def test_outer_archive_old_gnu_sparse_offset_below_zero(tmp_path):
    """The tarscan finding above, tried on the other two tar readers (issue
    15): as an uploaded archive it was `OSError: Invalid argument` from
    tarfile's seek."""
    assert "negative size" in refuse(tmp_path, _old_gnu_sparse_crash())


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_layer_old_gnu_sparse_offset_below_zero(tmp_path, compression):
    """... and as a layer tar it was `OSError: ForwardReader cannot seek
    back`."""
    from fuzz.targets import build_archive
    assert "negative stored size" in refuse(tmp_path, build_archive([(compression, _old_gnu_sparse_crash())]))


def huge_extended_header_tar(type_=tarfile.XHDTYPE, size=2 ** 32 + 22):
    """A PAX (or GNU long-name) header announcing a body of ``size`` bytes
    (the fuzzer's: 4 GiB + 22, octal 40000000026), then a small real body
    and a member."""
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = type_, size
    body = b"22 path=aaaaaaaaaaaaa\n" if type_ != tarfile.GNUTYPE_LONGNAME else b"a" * 13 + b"\0"
    member = tarfile.TarInfo("f")
    member.size = 1
    return (head.tobuf(tarfile.GNU_FORMAT) + body.ljust(512, b"\0")
            + member.tobuf(tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\0") + bytes(1024))


EXTENDED_CASES = {
    "pax-4GiB": (tarfile.XHDTYPE, 2 ** 32 + 22),
    "pax-global-4GiB": (tarfile.XGLTYPE, 2 ** 32 + 22),
    "gnu-longname-4GiB": (tarfile.GNUTYPE_LONGNAME, 2 ** 32 + 22),
    "pax-negative": (tarfile.XHDTYPE, -512),
}


@pytest.mark.parametrize("case", EXTENDED_CASES, ids=list(EXTENDED_CASES))
def test_tarscan_huge_extended_header(tmp_path, case):
    """Found by the `tarscan` target (this session's campaign): tarfile
    reads a PAX header's whole body into memory at once, so a body size of
    4 GiB was a MemoryError under the fuzzing process's address-space limit
    (the conversion child has one too). Now bounded before the read, in all
    three tar readers (8 MiB: far above any real header)."""
    path = tmp_path / "t.tar"
    path.write_bytes(huge_extended_header_tar(*EXTENDED_CASES[case]))
    with pytest.raises(errors.ArchiveError, match="extended header"):
        tarscan.scan(str(path))


@pytest.mark.parametrize("case", EXTENDED_CASES, ids=list(EXTENDED_CASES))
def test_outer_archive_huge_extended_header(tmp_path, case):
    assert "extended header" in refuse(tmp_path, huge_extended_header_tar(*EXTENDED_CASES[case]))


@pytest.mark.parametrize("case", EXTENDED_CASES, ids=list(EXTENDED_CASES))
def test_layer_huge_extended_header(tmp_path, case):
    from fuzz.targets import build_archive
    assert "extended header" in refuse(tmp_path, build_archive([("gzip", huge_extended_header_tar(
        *EXTENDED_CASES[case]))]))


def pax_record_length_overflow_tar():
    """A PAX record whose length (2**70) sends tarfile's parse position past
    any C offset: tarfile's `regex.match(buf, pos)` raises OverflowError."""
    body = b"%d path=x\n" % 2 ** 70
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo("f")
    member.size = 1
    return (head.tobuf(tarfile.USTAR_FORMAT) + body.ljust(512, b"\0")
            + member.tobuf(tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\0") + bytes(1024))


def test_layer_pax_record_length_overflow(tmp_path):
    """Found by the `layers` target (session 5 campaign, 12,530th input of
    its run): OverflowError out of layer tars."""
    from fuzz.targets import build_archive
    assert "invalid tar header" in refuse(tmp_path, build_archive([("none", pax_record_length_overflow_tar())]))


def test_tarscan_and_outer_pax_record_length_overflow(tmp_path):
    """The same input in the other two readers (already one line there)."""
    path = tmp_path / "t.tar"
    path.write_bytes(pax_record_length_overflow_tar())
    with pytest.raises(errors.ArchiveError):
        tarscan.scan(str(path))
    (tmp_path / "o").mkdir()
    assert "not a readable tar archive" in refuse(tmp_path / "o", pax_record_length_overflow_tar())


def extended_header_chain_tar(n):
    """``n`` PAX headers in a row before one member."""
    body = b"11 path=ab\n"
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo("f")
    member.size = 1
    return ((head.tobuf(tarfile.USTAR_FORMAT) + body.ljust(512, b"\0")) * n
            + member.tobuf(tarfile.USTAR_FORMAT) + b"x".ljust(512, b"\0") + bytes(1024))


def test_extended_header_chain(tmp_path):
    """Found by reading tarfile while fixing the fuzzer's findings: tarfile
    reads the member after an extended header by recursion, so 2,000 PAX
    headers in a row (2 MB) were a RecursionError in all three readers.
    A few in a row (real archives have up to four) still work."""
    from fuzz.targets import build_archive
    path = tmp_path / "t.tar"
    path.write_bytes(extended_header_chain_tar(10))
    entries, _ = tarscan.scan(str(path))
    assert [e.path for e in entries] == [b"ab"]
    path.write_bytes(extended_header_chain_tar(2000))
    with pytest.raises(errors.ArchiveError, match="extended headers in a row"):
        tarscan.scan(str(path))
    for sub, data in (("outer", extended_header_chain_tar(2000)),
                      ("layer", build_archive([("gzip", extended_header_chain_tar(2000))]))):
        (tmp_path / sub).mkdir()
        assert "extended headers in a row" in refuse(tmp_path / sub, data)


@pytest.mark.parametrize("field,value,message", [
    ("devmajor", -1, "invalid number"), ("devminor", 2 ** 20, "invalid number"),
    ("uid", -1, "invalid owner"), ("gid", 2 ** 32, "invalid owner")])
def test_builder_input_numbers_out_of_range(tmp_path, field, value, message):
    """Found by the new `build` target (the ext2fs builder itself, session
    5), within 22,326 inputs: a device number below zero in the builder's
    input tar was a struct.error packing the inode (the flattener refused it,
    tarscan did not); owners beyond 32 bits were silently cut to 32. Now
    tarscan refuses both, so every builder gets the same one line."""
    from docker_rootfs.disk import DiskOptions, build_disk
    ti = tarfile.TarInfo("dev/x")
    ti.type = tarfile.CHRTYPE
    setattr(ti, field, value)
    path = tmp_path / "rootfs.tar"
    path.write_bytes(ti.tobuf(tarfile.GNU_FORMAT) + bytes(1024))   # GNU: base-256 holds any number
    with pytest.raises(errors.ArchiveError, match=message):
        tarscan.scan(str(path))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with pytest.raises(errors.ArchiveError, match=message):
        build_disk(str(path), str(tmp_path / "o.raw"), DiskOptions(disk_format="raw", tmp_dir=str(tmp)),
                   digest="sha256:" + "ab" * 32)
    assert os.listdir(tmp) == [] and not (tmp_path / "o.raw").exists()
