"""Work directories (glance_docker_import.workdir) and the recovery of dead
imports (glance_docker_import.recovery) at their edges: what the sweep
leaves alone, races with a sweep in another glance-api worker, a full
temporary file system, an image whose data already landed."""

import os
import time

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


# -- a sweep in another worker while an import cleans up -------------------------

def test_sweep_during_remove_does_not_recover_the_live_import(tmp_path, monkeypatch):
    # After a successful import, WorkDir.remove deletes the directory while
    # holding the lock; rmtree may unlink .lock before meta.json. A sweep in
    # another glance-api worker at that moment must not take the directory
    # for a dead import (that would fail the task and revert the image).
    wd = workdir.WorkDir.create(str(tmp_path), IMAGE, TASK, meta={"stores": ["fs"]})
    (tmp_path / os.path.basename(wd.path) / "out.qcow2").write_bytes(b"x")
    dead, seen = [], []
    real_rmtree = workdir.shutil.rmtree

    def rmtree_lock_first(path, *args, **kwargs):
        if not seen:
            seen.append(path)
            os.unlink(os.path.join(path, workdir.LOCK))       # the worst order
            assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(workdir.shutil, "rmtree", rmtree_lock_first)
    wd.remove()
    assert seen and dead == []
    assert os.listdir(tmp_path) == []


def test_directory_with_meta_but_no_lock_gets_a_grace_period(tmp_path):
    path = tmp_path / workdir.dir_name(IMAGE, TASK)
    path.mkdir()
    (path / workdir.META).write_text('{"image_id": "%s", "task_id": "%s"}' % (IMAGE, TASK))
    dead = []
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []
    assert dead == [] and path.is_dir()
    _age(path)
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == [path.name]
    assert [m["task_id"] for m in dead] == [TASK] and not path.exists()


def test_sweep_removes_what_a_dead_process_left_half_removed(tmp_path):
    # A process killed in the middle of WorkDir.remove leaves the renamed
    # directory: the sweep removes it once it is old (nothing to recover).
    wd = workdir.WorkDir.create(str(tmp_path), IMAGE, TASK)
    hidden = tmp_path / (".removing-%s.abc123" % os.path.basename(wd.path))
    os.rename(wd.path, hidden)
    dead = []
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []   # still locked
    wd._lock_fd, fd = None, wd._lock_fd
    os.close(fd)                                                    # the process died
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []   # young
    _age(hidden)
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == [hidden.name]
    assert os.listdir(tmp_path) == [] and dead == []
