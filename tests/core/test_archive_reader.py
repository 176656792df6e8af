"""The archive reader's own checks: compression, digests, media types,
image/platform selection, compressed outer archives, temp-file cleanup."""

import gzip
import io
import os
import subprocess
import sys

import pytest

from docker_rootfs import errors
from docker_rootfs.archive import open_image
from docker_rootfs.limits import Limits
from tests.core.layerkit import entry as e
from tests.core.layerkit import layer_tar, read_tar
from tests.core.ocikit import OCIBuilder, sha

L1 = layer_tar([e("etc", "dir"), e("etc/a", data=b"A" * 5000)])
L2 = layer_tar([e("etc/.wh.a"), e("etc/b", data=b"B")])


def flat(path, **kw):
    with open_image(path, **kw) as img:
        out = io.BytesIO()
        img.flatten(out)
        return img.config, read_tar(out.getvalue())


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layers_in_every_compression(tmp_path, compression):
    b = OCIBuilder()
    b.image([L1, L2], compression=compression)
    cfg, tree = flat(b.write(tmp_path / "img.tar"))
    assert set(tree) == {".", "etc", "etc/b"}
    assert cfg.cmd == ["/bin/sh"]


@pytest.mark.parametrize("compression, label", [
    ("gzip", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ("none", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("zstd", "application/vnd.oci.image.layer.v1.tar"),
])
def test_media_type_contradicting_magic_reads_the_content(tmp_path, caplog, compression, label):
    # Runtimes sniff the compression (issue 9: skopeo --dest-decompress
    # writes plain tars labelled +gzip, podman pull accepts them).
    b = OCIBuilder()
    b.image([L1, L2], compression=compression, media_type=label)
    assert set(flat(b.write(tmp_path / "img.tar"))[1]) == {".", "etc", "etc/b"}
    assert f"says {label.rpartition('+')[2] if '+' in label else 'none'} but the blob is" \
        in caplog.text


def test_unknown_layer_media_type_is_refused(tmp_path):
    b = OCIBuilder()
    b.image([L1], media_type="application/x-whatever")
    with pytest.raises(errors.UnsupportedMediaType, match="application/x-whatever"):
        flat(b.write(tmp_path / "img.tar"))


def _flip_blob(files, predicate):
    for name, data in files.items():
        if name.startswith("blobs/") and predicate(data):
            files[name] = data[:-600] + bytes([data[-600] ^ 1]) + data[-599:]
            return


def test_layer_blob_digest_mismatch_names_the_layer(tmp_path):
    b = OCIBuilder()
    b.image([L1, L2])
    path = b.write(tmp_path / "img.tar", tamper=lambda f: _flip_blob(f, lambda d: d == L2))
    with pytest.raises(errors.DigestMismatch, match="layer 2 .*does not match"):
        flat(path)


def test_diff_id_mismatch_is_refused(tmp_path):
    b = OCIBuilder()
    b.image([L1], compression="gzip")

    def bad_config(files):
        for name, data in files.items():
            if b'"diff_ids"' in data:
                new = data.replace(sha(L1).encode(), sha(b"other").encode())
                files[name] = new
    # The config digest would no longer match either; both are errors: the
    # config digest is checked first.
    with pytest.raises(errors.DigestMismatch, match="image config"):
        flat(b.write(tmp_path / "img.tar", tamper=bad_config))


def test_truncated_layer_is_an_archive_error(tmp_path):
    b = OCIBuilder()
    trunc = L1[:1536]
    b.image([trunc])
    with pytest.raises(errors.ArchiveError):
        flat(b.write(tmp_path / "img.tar"))


def test_missing_blob_and_bad_json(tmp_path):
    b = OCIBuilder()
    b.image([L1])

    def drop_layer(files):
        for name in list(files):
            if files[name] == L1:
                del files[name]
    with pytest.raises(errors.ArchiveError, match="missing from the archive"):
        flat(b.write(tmp_path / "a.tar", tamper=drop_layer))

    def bad_index(files):
        files["index.json"] = b"{not json"
    with pytest.raises(errors.ArchiveError, match="not valid JSON"):
        flat(b.write(tmp_path / "b.tar", tamper=bad_index))


def test_not_an_image_archive(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(b"hello" * 1000)
    with pytest.raises(errors.ArchiveError, match="not a readable tar"):
        flat(p)


def test_platform_selection_and_clear_choices(tmp_path):
    b = OCIBuilder()
    b.image([L1], arch="amd64", tag="app:1")
    b.image([L2], arch="arm64", tag="app:1")
    path = b.write(tmp_path / "multi.tar")
    cfg, _ = flat(path, platform="linux/arm64")
    assert cfg.architecture == "arm64"
    cfg, _ = flat(path, platform="linux/amd64")
    assert cfg.architecture == "amd64"
    with pytest.raises(errors.ImageSelectionError,
                       match=r"linux/s390x is not in the archive; it has: linux/amd64, linux/arm64"):
        flat(path, platform="linux/s390x")


def test_image_selection_by_tag_and_digest(tmp_path):
    b = OCIBuilder()
    b.image([L1], tag="one", platform=False)
    d2 = b.image([L2], tag="two", platform=False)
    path = b.write(tmp_path / "two.tar")
    with pytest.raises(errors.ImageSelectionError, match="several images"):
        flat(path)
    assert flat(path, image="one")[0].repo_tags == ["one"]
    assert flat(path, image=d2["digest"][:19])[0].repo_tags == ["two"]
    with pytest.raises(errors.ImageSelectionError, match="no image 'three'"):
        flat(path, image="three")


def test_compressed_outer_archive_and_no_temp_left(tmp_path):
    b = OCIBuilder()
    b.image([L1, L2])
    plain = b.write(tmp_path / "img.tar")
    gz = tmp_path / "img.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert set(flat(gz, tmpdir=str(tmp))[1]) == {".", "etc", "etc/b"}
    assert os.listdir(tmp) == []


def test_decompression_bomb_is_stopped_by_ratio(tmp_path):
    bomb = layer_tar([e("zeros", data=b"\0" * (80 * 1024 * 1024))])
    b = OCIBuilder()
    b.image([bomb], compression="gzip")
    with pytest.raises(errors.LimitExceeded, match="max_compression_ratio"):
        flat(b.write(tmp_path / "bomb.tar"), limits=Limits(max_compression_ratio=100))


def test_total_bytes_limit(tmp_path):
    b = OCIBuilder()
    b.image([L1, L2])
    with pytest.raises(errors.LimitExceeded, match="max_total_bytes"):
        flat(b.write(tmp_path / "img.tar"), limits=Limits(max_total_bytes=8000))


def test_cli_error_is_one_line_and_leaves_no_output(tmp_path):
    b = OCIBuilder()
    b.image([L1])
    path = b.write(tmp_path / "img.tar", tamper=lambda f: _flip_blob(f, lambda d: d == L1))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "docker_rootfs.cli", "flatten", str(path),
                        "-o", str(out / "root.tar")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("docker2vm: error: layer 1")
    assert os.listdir(out) == []


def test_decompressed_archive_temp_name_carries_the_callers_prefix(tmp_path):
    # Glance passes "<image_id>.docker2vm-<task>." so its staging cleaner can reap it.
    b = OCIBuilder()
    b.image([L1])
    gz = tmp_path / "img.tar.gz"
    gz.write_bytes(gzip.compress(b.write(tmp_path / "img.tar").read_bytes()))
    tmp = tmp_path / "staging"
    tmp.mkdir()
    with open_image(gz, tmpdir=str(tmp), tmp_prefix="1234-abcd.docker2vm-x.") as img:
        names = os.listdir(tmp)
        assert len(names) == 1 and names[0].startswith("1234-abcd.docker2vm-x.")
        assert img.layers
    assert os.listdir(tmp) == []
