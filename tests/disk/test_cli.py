"""docker2vm convert on a real-tool archive, and --print-properties."""

import json
import os
import stat
import subprocess
import sys

import pytest

DOCKER2VM = [sys.executable, "-m", "docker_rootfs.cli"]


def _archive(fixture_index):
    return next(iter(sorted(fx["archive_path"] for fx in fixture_index["fixtures"].values())))


def test_convert_qcow2_and_raw(fixture_index, tmp_path):
    archive = str(_archive(fixture_index))
    for fmt in ("qcow2", "raw"):
        out = tmp_path / f"root.{fmt}"
        proc = subprocess.run(DOCKER2VM + ["convert", archive, "-o", str(out), "--format", fmt,
                                           "--json", "--tmpdir", str(tmp_path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["builder"] == "ext2fs" and result["disk_format"] == fmt
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)],
                                         capture_output=True, text=True, check=True).stdout)
        assert info["format"] == fmt and info["virtual-size"] == result["virtual_size"]
    assert [p for p in os.listdir(tmp_path) if p.startswith("docker2vm-disk-")] == []


def test_print_properties(fixture_index):
    proc = subprocess.run(DOCKER2VM + ["convert", "--print-properties",
                                       str(_archive(fixture_index))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    props = json.loads(proc.stdout)
    assert props["docker_delivery"] == "disk"
    assert props["docker_image_digest"].startswith("sha256:")


def test_bad_size_is_one_line(fixture_index, tmp_path):
    proc = subprocess.run(DOCKER2VM + ["convert", str(_archive(fixture_index)), "-o",
                                       str(tmp_path / "x.qcow2"), "--size", "1M"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "does not fit" in proc.stderr


def _special_outputs(tmp_path):
    """An output path of each kind a rename must not replace: a character
    device (our own null device node, not the host's /dev/null), a FIFO, a
    directory, and a symbolic link to the device."""
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    link = tmp_path / "link-to-null"
    link.symlink_to(dev)
    return [("character device", dev), ("FIFO", fifo), ("directory", directory),
            ("character device", link)]


def test_output_that_is_not_a_regular_file_is_refused_and_kept(fixture_index, tmp_path):
    """`-o /dev/null` run as root used to rename a new regular file over the
    host's /dev/null; every later reader of /dev/null (QEMU's console input
    among them) then read what had been written to it. Flatten and convert
    now refuse, in one line, before any work, and leave the path alone."""
    archive = str(_archive(fixture_index))
    for kind, path in _special_outputs(tmp_path):
        before = os.lstat(path)
        for command in ("flatten", "convert"):
            proc = subprocess.run(DOCKER2VM + [command, "--no-progress", archive, "-o", str(path),
                                               *(("--tmpdir", str(tmp_path)) if command == "convert"
                                                 else ())],
                                  capture_output=True, text=True)
            assert proc.returncode == 1, (command, kind, proc.stderr)
            assert proc.stderr.count("\n") == 1, proc.stderr
            assert f"is a {kind}, not a regular file" in proc.stderr, proc.stderr
            after = os.lstat(path)
            assert (after.st_mode, after.st_ino, after.st_rdev) == \
                (before.st_mode, before.st_ino, before.st_rdev), (command, kind)
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith((".docker2vm-", "docker2vm-"))]
    assert leftovers == []
    # A regular file (and a link to one) is still replaced, as before.
    target = tmp_path / "old.tar"
    target.write_bytes(b"old")
    link = tmp_path / "link.tar"
    link.symlink_to(target)
    for path in (target, link):
        proc = subprocess.run(DOCKER2VM + ["flatten", "--no-progress", archive, "-o", str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert os.path.getsize(path) > 512


def test_bundle_refuses_a_device_output(tmp_path):
    from docker_rootfs import errors
    from docker_rootfs.guest import bundle
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(errors.Docker2VMError, match="is a character device, not a regular file"):
        bundle.build_bundle(lambda f: None, str(dev), config=None, digest="sha256:0")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
