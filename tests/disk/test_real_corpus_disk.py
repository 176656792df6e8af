"""The realistic corpus (tests/fixtures/build_corpus.py) through
``docker2vm convert``: the ext4 disk holds, entry by entry, what the
runtimes (``podman export``, ``umoci unpack``) make of each image.

The disk is read back without mounting it (tests/disk/ext4_reader.py,
debugfs), the ``large`` group's (slow tier) through a read-only loop mount,
and compared like the flattened tar in tests/core/test_real_corpus.py
(directory mtimes a runtime sets at extraction time left out).
"""

import json
import subprocess
import sys

import pytest

from tests import treecmp
from tests.core import corpus_kit as kit
from tests.disk import ext4_reader
from tests.disk.test_content import normalise

DOCKER2VM = [sys.executable, "-m", "docker_rootfs.cli"]

pytestmark = pytest.mark.tools

CASES = ([kit.param("issue9", n) for n in kit.ISSUE9_SAME]
         + [kit.param("producers", n) for n in kit.PRODUCERS]
         + [kit.param("large", n, pytest.mark.slow) for n in ("debian-oci-gzip", "many-files")])


def convert(archive, disk, tmp_path, *extra):
    proc = subprocess.run(DOCKER2VM + ["convert", str(archive), "-o", str(disk), "--format",
                                       "raw", "--json", "--no-progress",
                                       "--tmpdir", str(tmp_path), *extra],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def mounted_manifest(disk, tmp_path):
    """The disk's tree through a read-only loop mount: ext4_reader (debugfs)
    took 11 minutes for 104k files (it pairs inodes and paths in O(n^2));
    the kernel's ext4 reads them in seconds.  Always unmounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro,noload", str(disk), str(mnt)], check=True,
                   capture_output=True)
    try:
        man = treecmp.manifest_from_dir(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    return {p: e for p, e in man.items() if p != "lost+found" and not p.startswith("lost+found/")}


@pytest.mark.parametrize("group,name", CASES)
def test_convert_matches_runtimes(group, name, tmp_path):
    img = kit.image(group, name)
    disk = tmp_path / "disk.raw"
    convert(img["archive_path"], disk, tmp_path)
    if group == "large":
        got = normalise(mounted_manifest(disk, tmp_path))
    else:
        got = normalise(ext4_reader.manifest_from_image(str(disk)))
    failures = kit.diff_against_references(group, name, got)
    assert not failures, "\n".join(failures)


def test_convert_refuses_a_bomb_in_one_line(tmp_path):
    img = kit.image("issue9", "bomb-behind-honest")
    disk = tmp_path / "disk.raw"
    proc = subprocess.run(DOCKER2VM + ["convert", str(img["archive_path"]), "-o", str(disk),
                                       "--no-progress", "--tmpdir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "max_compression_ratio" in proc.stderr, proc.stderr
    assert not disk.exists()
    assert [p.name for p in tmp_path.iterdir()] == []
