"""The disk builder's entries recorded while the flattener writes the tar
(``member_written``) are exactly what scanning the written tar gives, so
convert need not read its flattened tar back (issue 14)."""

import pytest

from docker_rootfs.archive import open_image
from docker_rootfs.disk import build, tarscan

pytestmark = pytest.mark.tools


def test_recorded_entries_equal_a_scan_of_the_tar(fixture_index, tmp_path):
    from tests.core.test_reference import FIXTURE_NAMES
    checked = 0
    for name in FIXTURE_NAMES:
        fx = fixture_index["fixtures"][name]
        tar_path = tmp_path / f"{name}.tar"
        scanner = tarscan.Scanner()
        with open_image(str(fx["archive_path"]), image=fx["image"],
                        platform=fx["platform"]) as img:
            _, fed = build._spool(img.flatten, str(tar_path), False, scanner)
        assert fed, name
        entries, stats = tarscan.scan(str(tar_path))
        assert scanner.entries == entries, name
        assert scanner.stats == stats, name
        checked += 1
    assert checked >= 10
