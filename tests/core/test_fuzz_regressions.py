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
