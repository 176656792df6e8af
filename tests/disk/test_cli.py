"""docker2vm convert on a real-tool archive, and --print-properties."""

import json
import os
import subprocess
import sys

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
