"""Regression tests for issue 9 (parts 1 and 2), on hand-built archives:

* the compression ratio is measured per blob and over all compressed
  layers together, so an ordinary image with a large honest base layer is
  accepted, and a bomb behind such a layer, or one split into many small
  layers, is still refused;
* a layer tar ends where Go's ``archive/tar`` (Docker, containerd, podman)
  says it ends: a stream stopping right after a member's data, without
  padding or end-of-archive blocks (as ``umoci insert`` writes), is
  accepted; a member or header cut short, or garbage where a header must
  be, is refused.

The same bugs on archives written by real tools are in
test_real_corpus.py.
"""

import io
import os
import tarfile

import pytest

from docker_rootfs import errors
from docker_rootfs.archive import layertar
from docker_rootfs.limits import RATIO_GRACE_BYTES, Limits, MiB
from tests.core.layerkit import entry as e
from tests.core.layerkit import layer_tar, read_tar
from tests.core.ocikit import OCIBuilder
from tests.core.test_archive_reader import flat

# Incompressible, larger than the ratio's grace: a distribution base layer.
HONEST = layer_tar([e("base.bin", data=os.urandom(RATIO_GRACE_BYTES + 6 * MiB))])
SMALL = layer_tar([e("app.txt", data=b"hello\n")])


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_small_layer_after_a_large_honest_layer_is_accepted(tmp_path, compression):
    # Issue 9 part 1: the second layer's first read was divided against the
    # first layer's output and refused as a bomb.
    b = OCIBuilder()
    b.image([HONEST, SMALL, SMALL], compression=compression)
    _, tree = flat(b.write(tmp_path / "img.tar"))
    assert set(tree) == {".", "base.bin", "app.txt"}


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_bomb_behind_a_large_honest_layer_is_refused(tmp_path, compression):
    bomb = layer_tar([e("zeros", data=bytes(RATIO_GRACE_BYTES + 16 * MiB))])
    b = OCIBuilder()
    b.image([HONEST, bomb], compression=compression)
    with pytest.raises(errors.LimitExceeded, match=r"max_compression_ratio.*\(layer 2 "):
        flat(b.write(tmp_path / "img.tar"), limits=Limits(max_compression_ratio=100))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_bomb_split_into_many_small_layers_is_refused(tmp_path, compression):
    # Each layer stays under the per-blob grace; together they are a bomb.
    parts = [layer_tar([e(f"zeros{i}", data=bytes(20 * MiB))]) for i in range(5)]
    b = OCIBuilder()
    b.image(parts, compression=compression)
    with pytest.raises(errors.LimitExceeded,
                       match=r"max_compression_ratio.*\(all compressed layers\)"):
        flat(b.write(tmp_path / "img.tar"), limits=Limits(max_compression_ratio=100))
    # The same image is accepted with a ratio limit it honestly meets.
    _, tree = flat(b.write(tmp_path / "img2.tar"), limits=Limits(max_compression_ratio=10 ** 6))
    assert len(tree) == 6


# --------------------------------------------------------------------------
# End of a layer stream (part 2)
# --------------------------------------------------------------------------

FILES = [e("etc", "dir"), e("etc/a", data=b"A" * 700), e("etc/b", data=b"B" * 5)]
PADDED = layer_tar(FILES)
# Where the last member's data ends: header of etc/b + 5 bytes.
DATA_END = PADDED.rindex(b"B" * 5) + 5


def _members(data):
    return [m.name for _, m, _ in layertar.iterate_members(io.BytesIO(data))]


@pytest.mark.parametrize("cut", [
    DATA_END,                   # right after the data (umoci insert)
    DATA_END + 3,               # inside the padding
    (DATA_END + 511) // 512 * 512,        # padded, no end-of-archive blocks
    (DATA_END + 511) // 512 * 512 + 512,  # one end-of-archive block
], ids=["after-data", "in-padding", "padded", "one-zero-block"])
def test_clean_end_of_stream_after_a_member_is_accepted(cut):
    assert _members(PADDED[:cut]) == ["etc", "etc/a", "etc/b"]


@pytest.mark.parametrize("cut", [DATA_END - 1, DATA_END - 5], ids=["1-byte", "all-data"])
def test_member_data_cut_short_is_refused(cut):
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        _members(PADDED[:cut])


def test_header_cut_short_is_refused():
    start = PADDED.index(b"etc/b") - 0  # the ustar header of etc/b begins with its name
    hdr = start - start % 512
    with pytest.raises(errors.ArchiveError, match="header cut short"):
        _members(PADDED[:hdr + 100])


def test_garbage_after_one_zero_block_is_refused():
    end = (DATA_END + 511) // 512 * 512
    data = PADDED[:end] + bytes(512) + b"x" * 512
    with pytest.raises(errors.ArchiveError, match="after the end-of-archive block"):
        _members(data)


def test_bad_checksum_where_a_header_must_be_is_refused():
    end = (DATA_END + 511) // 512 * 512
    with pytest.raises(errors.ArchiveError, match="invalid tar header"):
        _members(PADDED[:end] + b"y" * 512)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_unpadded_layer_in_an_image(tmp_path, compression):
    # Through the whole reader (digests, diff_id, both flatten passes).
    b = OCIBuilder()
    b.image([PADDED[:DATA_END], SMALL], compression=compression)
    _, tree = flat(b.write(tmp_path / "img.tar"))
    assert set(tree) == {".", "etc", "etc/a", "etc/b", "app.txt"}
    assert tree["etc/b"][4] == b"B" * 5


def test_cut_layer_in_an_image_names_the_layer(tmp_path):
    b = OCIBuilder()
    b.image([SMALL, PADDED[:DATA_END - 2]])
    with pytest.raises(errors.ArchiveError, match=r"layer 2 .*truncated or corrupt tar"):
        flat(b.write(tmp_path / "img.tar"))


# --------------------------------------------------------------------------
# One read per layer (issue 14): gzip through zlib, the reader thread, spools
# --------------------------------------------------------------------------

def _gunzip(data, n=65536):
    from docker_rootfs.archive import streams
    r = streams.GzipReader(io.BytesIO(data))
    out = []
    while True:
        chunk = r.read(n)
        if not chunk:
            return b"".join(out)
        assert len(chunk) <= n
        out.append(chunk)


def test_gzip_reader_reads_what_gzip_writes():
    import gzip
    payload = os.urandom(300_000) + bytes(3_000_000)
    one = gzip.compress(payload, mtime=0)
    assert _gunzip(one) == payload
    # Several members (pigz -i, concatenated files) and zero padding after them.
    assert _gunzip(one + gzip.compress(b"tail", mtime=0) + bytes(1000)) == payload + b"tail"


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-9], "ended before the end-of-stream marker"),
    (lambda d: d[:-8] + bytes([d[-8] ^ 1]) + d[-7:], "incorrect data check"),
    (lambda d: d + b"garbage", "trailing data"),
], ids=["truncated", "crc", "trailing-garbage"])
def test_gzip_reader_refuses_damage(damage, message):
    import gzip
    data = damage(gzip.compress(b"x" * 100_000, mtime=0))
    with pytest.raises((OSError, EOFError), match=message):
        _gunzip(data)


def test_prefetcher_passes_errors_and_stops_its_thread():
    import threading

    from docker_rootfs.archive import streams

    class Failing:
        calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 3:
                raise errors.ArchiveError("boom")
            return b"x" * n

    with streams.Prefetcher(Failing(), name="t-prefetch") as p:
        assert p.read(10) == b"x" * 10
        with pytest.raises(errors.ArchiveError, match="boom"):
            while p.read(streams.CHUNK):
                pass
    assert not [t for t in threading.enumerate() if t.name == "t-prefetch"]

    class Endless:
        def read(self, n):
            return b"y" * n

    p = streams.Prefetcher(Endless(), name="t-endless")
    assert p.read(3) == b"yyy"
    p.close()   # the reader stops early: the thread must not hang on a full queue
    assert not [t for t in threading.enumerate() if t.name == "t-endless"]


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_hostile_layer_stops_the_reader_thread_and_drops_spools(tmp_path, compression):
    import threading

    from docker_rootfs.archive import open_image
    bad = layer_tar([e("a", data=b"1" * 3000), e("../../escape", data=b"2")])
    b = OCIBuilder()
    b.image([SMALL, bad], compression=compression)
    spools = tmp_path / "spools"
    spools.mkdir()
    with open_image(b.write(tmp_path / "img.tar"), tmpdir=str(spools)) as img:
        with pytest.raises(errors.UnsafeEntry):
            img.flatten(io.BytesIO())
        assert img.spools == {} if compression == "none" else set(img.spools) <= {0}
    assert img.spools == {}
    assert not [t for t in threading.enumerate() if t.name.startswith("docker2vm-layer")]
    assert os.listdir(spools) == []


def test_spools_are_anonymous_and_dropped_after_the_content_pass(tmp_path):
    from docker_rootfs.archive import open_image
    b = OCIBuilder()
    b.image([PADDED, SMALL], compression="gzip")
    spools = tmp_path / "spools"
    spools.mkdir()
    with open_image(b.write(tmp_path / "img.tar"), tmpdir=str(spools)) as img:
        first, second = io.BytesIO(), io.BytesIO()
        img.flatten(first)
        assert img.spools == {} and os.listdir(spools) == []
        img.flatten(second)           # a second flatten reads the layers again
    assert first.getvalue() == second.getvalue()
    assert set(read_tar(first.getvalue())) == {".", "etc", "etc/a", "etc/b", "app.txt"}
