"""Work directories (glance_docker_import.workdir) and the recovery of dead
imports (glance_docker_import.recovery) at their edges: what the sweep
leaves alone, races with a sweep in another glance-api worker, a full
temporary file system, an image whose data already landed."""

import os
import time

import pytest

from glance_docker_import import workdir

IMAGE = "0c6d1f8e-1b38-4f7b-9c5b-3c3d0f5f2a11"
TASK = "5d4f3c2b-aaaa-bbbb-cccc-123456789abc"


def _age(path, seconds=None):
    old = time.time() - (seconds or 2 * workdir.CREATION_GRACE)
    os.utime(path, (old, old))


# -- what the sweep considers ------------------------------------------------------

def test_sweep_leaves_other_docker2vm_directories_alone(tmp_path):
    # [docker_convert] temp_dir=/tmp: the CLI's scratch directories (a disk
    # being built, a bundle, a running VM's directory) share the prefix.
    others = ["docker2vm-disk-k2j4h5", "docker2vm-bundle-x1y2z3", "docker2vm-run-abc",
              "docker2vm-%s" % IMAGE, "docker2vm-%s-%s-extra" % (IMAGE, TASK),
              "docker2vm-%s-not-a-uuid" % IMAGE]
    for name in others:
        (tmp_path / name).mkdir()
        (tmp_path / name / "disk.qcow2").write_bytes(b"x")
        _age(tmp_path / name)
    dead = tmp_path / workdir.dir_name(IMAGE, TASK)
    dead.mkdir()
    (dead / "rootfs.tar").write_bytes(b"x")
    _age(dead)
    assert workdir.sweep(str(tmp_path)) == [dead.name]
    assert sorted(os.listdir(tmp_path)) == sorted(others)
    assert all((tmp_path / name / "disk.qcow2").exists() for name in others)


def test_work_directory_names_are_what_the_sweep_matches():
    assert workdir.is_work_dir_name(workdir.dir_name(IMAGE, TASK))
    assert workdir.is_work_dir_name(workdir.dir_name(IMAGE.upper(), TASK))
    assert not workdir.is_work_dir_name("docker2vm-disk-abcdef")
    assert not workdir.is_work_dir_name(workdir.dir_name(IMAGE, TASK) + "x")
