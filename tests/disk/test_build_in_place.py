"""convert without a flattened tar (issue 14): with the image digest given,
``build_disk(img.flatten)`` lets the ext2fs builder read file data where the
flattener found it (the layers' verified spools, the archive itself, a
scratch copy of expanded sparse files) instead of a tar written and read
back. The filesystem must be byte for byte the one built from the tar."""

import hashlib
import os

import pytest

from docker_rootfs.archive import open_image
from docker_rootfs.disk import build_disk
from docker_rootfs.disk.options import DiskOptions

pytestmark = pytest.mark.tools


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_in_place_build_equals_the_build_from_the_tar(fixture_index, tmp_path):
    from tests.core.test_reference import FIXTURE_NAMES
    options = DiskOptions(disk_format="raw", tmp_dir=str(tmp_path), fsck=False)
    checked = set()
    for name in FIXTURE_NAMES:
        fx = fixture_index["fixtures"][name]
        kw = dict(image=fx["image"], platform=fx["platform"])
        direct, via_tar, tar = (str(tmp_path / f"{name}.{ext}") for ext in ("a.raw", "b.raw", "tar"))
        with open_image(str(fx["archive_path"]), **kw) as img:
            digest = img.config.config_digest
            built = build_disk(img.flatten, direct, options, digest=digest)
        with open_image(str(fx["archive_path"]), **kw) as img:
            with open(tar, "wb") as f:
                img.flatten(f)
        from_tar = build_disk(tar, via_tar, options, digest=digest)
        assert "scan" in from_tar.timings and "flatten" in built.timings
        assert _sha(direct) == _sha(via_tar), name
        checked.add(name)
        for p in (direct, via_tar, tar):
            os.unlink(p)
    assert {"sparse-gnutar", "hardlinks", "fmt-gzip", "fmt-zstd"} <= checked
    assert sorted(os.listdir(tmp_path)) == []   # no scratch file or work dir left


def test_without_digest_a_tar_is_still_written_and_hashed(fixture_index, tmp_path):
    """No digest: the ids are seeded by the tar's sha256, so the tar is made."""
    fx = fixture_index["fixtures"]["basic-shell"]
    options = DiskOptions(disk_format="raw", tmp_dir=str(tmp_path), fsck=False)
    with open_image(str(fx["archive_path"]), image=fx["image"], platform=fx["platform"]) as img:
        result = build_disk(img.flatten, str(tmp_path / "a.raw"), options)
    tar = tmp_path / "t.tar"
    with open_image(str(fx["archive_path"]), image=fx["image"], platform=fx["platform"]) as img:
        with open(tar, "wb") as f:
            img.flatten(f)
    assert result.seed == "sha256:" + _sha(tar)


def test_fsck_failure_during_qcow2_conversion_leaves_nothing(fixture_index, tmp_path, monkeypatch):
    """e2fsck runs beside qemu-img; when it finds the filesystem unclean the
    qcow2 is not published and no partial file or scratch directory stays."""
    from docker_rootfs import errors
    from docker_rootfs.disk import build

    def unclean(raw_path):
        assert os.path.exists(raw_path)
        raise errors.ToolError("built filesystem is not clean (e2fsck exit 4): test")

    monkeypatch.setattr(build, "fsck", unclean)
    fx = fixture_index["fixtures"]["basic-shell"]
    out_dir, scratch = tmp_path / "out", tmp_path / "scratch"
    out_dir.mkdir()
    scratch.mkdir()
    with open_image(str(fx["archive_path"]), image=fx["image"], platform=fx["platform"]) as img:
        with pytest.raises(errors.ToolError, match="not clean"):
            build_disk(img.flatten, str(out_dir / "rootfs.qcow2"),
                       DiskOptions(tmp_dir=str(scratch)), digest=img.config.config_digest)
    assert os.listdir(out_dir) == [] and os.listdir(scratch) == []
