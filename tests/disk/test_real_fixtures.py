"""Real-tool fixtures (podman/buildah/skopeo/umoci archives): archive ->
open_image().flatten() -> disk; the disk holds exactly the flattened tree, and
where the flattening equals umoci's reference unpack, the disk equals it too."""

import pytest

from docker_rootfs.archive import open_image
from docker_rootfs.disk import DiskOptions, build_disk
from docker_rootfs.limits import Limits
from tests import treecmp
from tests.disk import ext4_reader
from tests.disk.test_content import check_disk_equals_tar, normalise


def _names():
    try:
        from tests.core.test_reference import FIXTURE_NAMES
        return list(FIXTURE_NAMES)
    except Exception:   # the core's test module moved: collect nothing
        return []


@pytest.mark.parametrize("name", _names())
def test_fixture_disk_equals_flattening(name, fixture_index, tmp_path):
    fx = fixture_index["fixtures"][name]
    tar = tmp_path / "flat.tar"
    with open(tar, "wb") as out:
        with open_image(fx["archive_path"], limits=Limits(), image=fx["image"],
                        platform=fx["platform"]) as img:
            img.flatten(out)
            digest = img.config.config_digest
    raw = str(tmp_path / "disk.raw")
    build_disk(str(tar), raw, DiskOptions(disk_format="raw"), digest=digest)
    check_disk_equals_tar(raw, str(tar))
    if "umoci_path" in fx:
        ref = treecmp.manifest_from_dir(fx["umoci_path"])
        flat = treecmp.manifest_from_tar(str(tar))
        if not treecmp.diff_manifests(ref, flat, "umoci", "flat"):
            got = normalise(ext4_reader.manifest_from_image(raw))
            diff = treecmp.diff_manifests(normalise(ref), got, "umoci", "disk")
            assert not diff, treecmp.format_diff(diff)
