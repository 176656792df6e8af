"""Work directories (glance_docker_import.workdir) and the recovery of dead
imports (glance_docker_import.recovery) at their edges: what the sweep
leaves alone, races with a sweep in another glance-api worker, a full
temporary file system, an image whose data already landed."""

import errno
import fcntl
import os
import threading
import time
import types

import pytest

from glance_docker_import import recovery, workdir

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


@pytest.mark.parametrize("prefix", [".removing-", ".creating-"])
def test_sweep_removes_what_a_dead_process_left_half_done(tmp_path, monkeypatch, prefix):
    # A process killed in the middle of WorkDir.remove (or create) leaves the
    # hidden directory: the sweep removes it once it is old (nothing to recover).
    wd = workdir.WorkDir.create(str(tmp_path), IMAGE, TASK)
    hidden = tmp_path / ("%s%s.abc123" % (prefix, os.path.basename(wd.path)))
    os.rename(wd.path, hidden)
    dead = []
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []   # still locked
    wd._lock_fd, fd = None, wd._lock_fd
    os.close(fd)                                                    # the process died
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == []   # young
    _age(hidden)
    real_rmtree, deleted = workdir.shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        deleted.append(os.path.basename(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(workdir.shutil, "rmtree", rmtree)
    assert workdir.sweep(str(tmp_path), on_dead=dead.append) == [hidden.name]
    assert deleted == [hidden.name]                                 # in place, not renamed again
    assert os.listdir(tmp_path) == [] and dead == []


# -- creation: nothing left on failure, the lock never lost to a sweep -------------

def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def test_create_on_a_full_file_system_leaves_nothing(small_tmpfs):
    # A real 1 MiB tmpfs, filled: the directory and .lock fit (no data
    # blocks), meta.json does not.
    if small_tmpfs is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    filler = os.path.join(small_tmpfs, "filler")
    try:
        with open(filler, "wb") as f, pytest.raises(OSError) as ei:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        assert ei.value.errno == errno.ENOSPC
        fds = _open_fds()
        with pytest.raises(OSError) as ei:
            workdir.WorkDir.create(small_tmpfs, IMAGE, TASK, meta={"src": "x"})
        assert ei.value.errno == errno.ENOSPC
        assert os.listdir(small_tmpfs) == ["filler"]          # no directory left
        assert _open_fds() == fds                             # no lock fd leaked
    finally:
        os.unlink(filler)


def test_create_does_not_lose_its_lock_to_a_sweep(tmp_path, monkeypatch):
    # A sweep in another worker that opens and flocks the new .lock between
    # create's open and flock (it holds the lock while it reads meta.json)
    # must not make create fail with EAGAIN ("Resource temporarily
    # unavailable"), nor remove the new directory.
    real_open, real_read_meta = os.open, workdir.read_meta
    sweep_holds, create_tried = threading.Event(), threading.Event()
    creator = threading.get_ident()
    swept = []

    def read_meta(path):
        sweep_holds.set()                     # the sweep has the lock now
        create_tried.wait(5)
        return real_read_meta(path)

    def sweep():
        swept.extend(workdir.sweep(str(tmp_path)))

    def hooked_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        if threading.get_ident() == creator and path.endswith("/" + workdir.LOCK) and not swept:
            t = threading.Thread(target=sweep)
            t.start()
            sweep_holds.wait(2)               # never set once the sweep skips it
            threads.append(t)
        return fd

    real_flock = fcntl.flock

    def hooked_flock(fd, op):
        try:
            return real_flock(fd, op)
        finally:
            if threading.get_ident() == creator:
                create_tried.set()

    threads = []
    monkeypatch.setattr(workdir, "read_meta", read_meta)
    monkeypatch.setattr(workdir.os, "open", hooked_open)
    monkeypatch.setattr(workdir.fcntl, "flock", hooked_flock)
    try:
        wd = workdir.WorkDir.create(str(tmp_path), IMAGE, TASK)
    finally:
        create_tried.set()
        for t in threads:
            t.join()
    monkeypatch.undo()
    try:
        assert threads and swept == []
        assert os.listdir(tmp_path) == [os.path.basename(wd.path)]
        assert workdir.read_meta(wd.path)["task_id"] == TASK
        assert workdir.sweep(str(tmp_path)) == []             # held
    finally:
        wd.remove()
    assert os.listdir(tmp_path) == []


# -- the plugin: a full disk after the conversion is one clean message ----------

def test_full_disk_writing_meta_after_the_conversion_is_one_line(tmp_path, glance_archives,
                                                                 monkeypatch):
    pytest.importorskip("glance")
    from tests.glance.test_unit import _setup

    task, image, tasks, staged = _setup(tmp_path, {"docker_delivery": "share"})
    staged.write_bytes(open(glance_archives["docker"], "rb").read())
    real_update = workdir.WorkDir.update_meta

    def update_meta(self, changes):
        if "new_properties" in changes:       # meta.json.tmp on a full temp_dir
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.file("meta.json.tmp"))
        return real_update(self, changes)

    monkeypatch.setattr(workdir.WorkDir, "update_meta", update_meta)
    with pytest.raises(Exception) as ei:
        task.execute("file://" + str(staged))
    from glance.common import exception as glance_exc
    assert isinstance(ei.value, glance_exc.UploadException), repr(ei.value)
    assert str(ei.value) == ("docker-convert: no space left on device for the "
                             "conversion's temporary files")
    task.revert(result=None)
    assert image.status == "queued" and image.disk_format == "raw"
    assert os.listdir(tmp_path) == []


# -- recovery of a dead import: never roll back an image whose data landed --------

class _Task:
    def __init__(self, status="processing"):
        self.status, self.message = status, ""

    def fail(self, message):
        self.status, self.message = "failure", message


class _Repo:
    """The image and task repositories (what Glance's gateway gives recover)."""

    def __init__(self, image, task):
        self.image, self.task = image, task

    def get(self, some_id):
        return self.task if some_id == TASK else self.image

    def save(self, obj, from_state=None):
        pass

    def delete_property_atomic(self, image, name, value):
        from glance.common import exception as glance_exc
        if image.extra_properties.get(name) != value:
            raise glance_exc.NotFound()
        del image.extra_properties[name]


def _recover(monkeypatch, tmp_path, status, locations, importing_to, task_status="processing"):
    pytest.importorskip("glance")
    from glance import gateway

    image = types.SimpleNamespace(
        image_id=IMAGE, status=status, disk_format="qcow2", container_format="bare",
        size=123, virtual_size=456, locations=locations,
        extra_properties={"os_glance_import_task": TASK,
                          "os_glance_importing_to_stores": importing_to,
                          "os_glance_failed_import": "",
                          "docker_delivery": "disk", "docker_cmd": '["sh"]'})
    task = _Task(task_status)
    repo = _Repo(image, task)
    monkeypatch.setattr(gateway, "Gateway", lambda: types.SimpleNamespace(
        get_task_repo=lambda ctx: repo, get_repo=lambda ctx: repo))
    staged = tmp_path / IMAGE
    staged.write_bytes(b"archive")
    recovery.recover({
        "image_id": IMAGE, "task_id": TASK, "src": str(staged), "stores": ["fs1", "fs2"],
        "old_attributes": {"disk_format": "raw", "container_format": "docker"},
        "old_properties": {"docker_delivery": "disk"},
        "new_properties": ["docker_cmd", "docker_delivery"]})
    return image, task, staged


LANDED = [{"url": "file:///var/lib/glance/images/%s" % IMAGE, "metadata": {"store": "fs1"}}]


@pytest.mark.parametrize("status, locations, task_status", [
    ("active", LANDED, "processing"),      # all_stores_must_succeed=false, fs2 still uploading
    ("importing", LANDED, "processing"),   # all_stores_must_succeed=true, fs2 still uploading
    ("active", LANDED, "success"),         # between set_image_data and the removal
])
def test_recovery_leaves_an_image_whose_data_landed(monkeypatch, tmp_path, caplog,
                                                     status, locations, task_status):
    image, task, staged = _recover(monkeypatch, tmp_path, status, locations,
                                   importing_to="fs2" if task_status == "processing" else "",
                                   task_status=task_status)
    props = image.extra_properties
    # Not rolled back: the stored data is the converted disk.
    assert (image.status, image.disk_format, image.container_format) == (status, "qcow2", "bare")
    assert props["docker_cmd"] == '["sh"]' and image.locations == LANDED
    # Only the store the import did not reach is failed; the lock is dropped.
    assert props["os_glance_failed_import"] == ("fs2" if task_status == "processing" else "")
    assert props["os_glance_importing_to_stores"] == ""
    assert "os_glance_import_task" not in props
    if task_status == "processing":
        assert (task.status, task.message) == ("failure", recovery.MESSAGE)
    else:
        assert task.status == "success"
    assert not staged.exists()
    assert IMAGE in caplog.text


def test_recovery_gives_back_an_image_whose_data_did_not_land(monkeypatch, tmp_path):
    image, task, staged = _recover(monkeypatch, tmp_path, "importing", [], importing_to="fs1,fs2")
    props = image.extra_properties
    assert (image.status, image.disk_format, image.container_format) == ("queued", "raw", "docker")
    assert "docker_cmd" not in props and props["docker_delivery"] == "disk"
    assert props["os_glance_failed_import"] == "fs1,fs2"
    assert props["os_glance_importing_to_stores"] == ""
    assert "os_glance_import_task" not in props
    assert (task.status, task.message) == ("failure", recovery.MESSAGE)
    assert not staged.exists()
