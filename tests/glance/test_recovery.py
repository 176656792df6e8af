"""Nothing left behind, against a real glance-api (gunicorn, sqlite, file
store): kill -9 of glance-api in the middle of a conversion then a restart,
a killed conversion child, an image deleted while converting, and the disk
filling up at each stage of a conversion (a real tmpfs filled for real)."""

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from devcloud.glance_dev import DevServer
from glance_docker_import import recovery
from tests.glance.conftest import Api, pid_gone, running
from tests.glance.slow_archive import build_zero_archive

pytestmark = [pytest.mark.glance, pytest.mark.tools, pytest.mark.slow]

# The zero archive is far above the default compression ratio limit.
LIMITS = {"max_compression_ratio": 1000000000}


@pytest.fixture(scope="module")
def zeros(tmp_path_factory):
    """An archive whose conversion takes a while (4 GiB of zeros to
    decompress, hash and write; the last check fails on purpose)."""
    return build_zero_archive(str(tmp_path_factory.mktemp("zeros") / "zeros.tar"), chunks=64)


def _create(api, delivery="share"):
    status, _, img = api.request("POST", "/v2/images", {
        "name": "victim", "container_format": "docker", "disk_format": "raw",
        "docker_delivery": delivery})
    assert status == 201, img
    return img["id"]


def _workdirs(base, image_id=None):
    return [n for n in os.listdir(base)
            if n.startswith("docker2vm-") and (image_id is None or image_id in n)]


def _wait_for(what, predicate, timeout=120, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _meta(base, image_id):
    names = _workdirs(base, image_id)
    if not names:
        return None
    try:
        with open(os.path.join(base, names[0], "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _child_pid(base, image_id):
    return _wait_for("the conversion child", lambda: (_meta(base, image_id) or {}).get("child_pid"))


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _check_queued(api, image_id, needle):
    img = api.wait(image_id, timeout=180)
    assert img["status"] == "queued", img
    assert img["os_glance_failed_import"] == "fs"
    assert "os_glance_import_task" not in img
    task = api.task_of(image_id)
    assert task["status"] == "failure"
    msg = task["message"]
    assert "\n" not in msg and msg.startswith("docker-convert: "), msg
    assert needle in msg, msg
    assert not re.search(r"(^|[\s(:'\"])/\w", msg), msg        # no server path
    return msg


def _reimport_works(api, image_id, archive):
    api.stage_import(image_id, archive)
    img = api.wait(image_id, timeout=180)
    assert img["status"] == "active", api.task_of(image_id)
    assert img["docker_delivery"] == "share"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(DevServer(str(tmp_path_factory.mktemp("glance-recovery")), limits=LIMITS,
                           convert_opts={"progress_interval": 1})) as srv:
        yield srv


def test_killed_child(server, zeros, glance_archives):
    api = Api(server)
    image_id = _create(api)
    api.stage_import(image_id, zeros)
    pid = _child_pid(server.staging_dir, image_id)
    os.kill(pid, signal.SIGKILL)
    _check_queued(api, image_id, "conversion killed by signal 9 (SIGKILL)")
    assert _workdirs(server.staging_dir, image_id) == []
    assert [n for n in os.listdir(server.staging_dir) if image_id in n] == []
    _reimport_works(api, image_id, glance_archives["docker"])
    _wait_for("the work directory to go", lambda: not _workdirs(server.staging_dir, image_id),
              timeout=30)


def test_image_deleted_while_converting_stops_the_child(server, zeros):
    api = Api(server)
    image_id = _create(api)
    api.stage_import(image_id, zeros)
    pid = _child_pid(server.staging_dir, image_id)
    status, _, body = api.request("DELETE", f"/v2/images/{image_id}")
    assert status == 204, body
    # The heartbeat (every progress_interval) notices and kills the child
    # long before its 4 GiB are through.
    _wait_for("the child to be killed", lambda: pid_gone(pid), timeout=60)
    _wait_for("the work directory to go", lambda: not _workdirs(server.staging_dir, image_id),
              timeout=60)
    assert [n for n in os.listdir(server.staging_dir) if image_id in n] == []


def test_kill9_glance_api_then_restart(tmp_path, zeros, glance_archives):
    srv = DevServer(str(tmp_path / "glance"), limits=LIMITS,
                    convert_opts={"progress_interval": 1})
    srv.start()
    try:
        api = Api(srv)
        image_id = _create(api)
        api.stage_import(image_id, zeros)
        child = _child_pid(srv.staging_dir, image_id)
        workdir = os.path.join(srv.staging_dir, _workdirs(srv.staging_dir, image_id)[0])
        _wait_for("scratch data", lambda: os.path.exists(os.path.join(workdir, "share.tar")))
        master = srv.proc.pid
        for pid in _children(master) + [master]:      # the worker running the import, then gunicorn
            os.kill(pid, signal.SIGKILL)
        srv.proc.wait()
        srv.proc = None
        # The child notices its parent is gone and kills its process group.
        _wait_for("the orphaned child to die", lambda: pid_gone(child), timeout=30)
        assert os.path.isdir(workdir)                  # left behind, for now
        assert api_image_status_offline(srv, image_id) == "importing"
        srv.start()                                    # the sweep runs at start-up
        _wait_for("the start-up sweep", lambda: not os.path.exists(workdir), timeout=60)
        msg = _check_queued(api, image_id, "its glance-api process ended")
        assert msg == recovery.MESSAGE
        assert [n for n in os.listdir(srv.staging_dir) if image_id in n] == []
        _reimport_works(api, image_id, glance_archives["docker"])
        # The work directory goes once Glance has deleted the uploaded output.
        _wait_for("the last work directory to go", lambda: not _workdirs(srv.staging_dir),
                  timeout=30)
    finally:
        srv.stop()


def api_image_status_offline(srv, image_id):
    """The image's status straight from the sqlite database (glance-api is down)."""
    import sqlite3
    db = sqlite3.connect(os.path.join(srv.dir, "glance.sqlite"))
    try:
        return db.execute("SELECT status FROM images WHERE id = ?", (image_id,)).fetchone()[0]
    finally:
        db.close()


# -- disk full at each stage ------------------------------------------------------

TMPFS_MIB = 160


@pytest.fixture(scope="module")
def full_tmpfs(tmp_path_factory):
    path = tmp_path_factory.mktemp("fulltmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(path)],
                         capture_output=True)
    if res.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def full_server(tmp_path_factory, full_tmpfs):
    with running(DevServer(str(tmp_path_factory.mktemp("glance-full")),
                           convert_opts={"temp_dir": full_tmpfs, "progress_interval": 1})) as srv:
        yield srv


@pytest.fixture(scope="module")
def gz_big_archive(big_archive, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gz") / "big.tar.gz")
    with open(big_archive, "rb") as f, gzip.open(out, "wb", compresslevel=1) as g:
        shutil.copyfileobj(f, g)
    return out


@pytest.fixture(scope="module")
def gzip_layers_archive(big_archive, tmp_path_factory):
    """The big archive with gzip layers (an OCI archive by skopeo): their
    verified uncompressed copies are spooled in the work directory."""
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is needed to recompress the layers")
    out = str(tmp_path_factory.mktemp("oci") / "big-oci.tar")
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
                    f"docker-archive:{big_archive}", f"oci-archive:{out}"], check=True,
                   capture_output=True)
    return out


def _tmpfs_used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _marker(stage, workdir):
    """Has the conversion in ``workdir`` started writing ``stage``?"""
    try:
        names = os.listdir(workdir)
    except FileNotFoundError:
        return False
    if stage == "decompressed copy":
        return any(n.startswith("archive-") for n in names)
    if stage == "layer spool":
        # anonymous files (O_TMPFILE): seen only as the file system filling
        return _tmpfs_used(workdir) > 4 * 2 ** 20 and not _marker("disk image", workdir)
    if stage == "flattened stream":
        return "share.tar" in names
    if stage == "disk image":
        return any(os.path.exists(os.path.join(workdir, n, "rootfs.raw"))
                   for n in names if n.startswith("disk-"))
    if stage == "qcow2":
        return any(n.startswith(".docker2vm-") and n.endswith(".qcow2") for n in names)
    raise ValueError(stage)


def _fill(directory):
    """Fill the file system of ``directory`` to the last byte."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            block = b"\xa5" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


# (stage, delivery, archive): the disk delivery with the default (ext2fs)
# builder writes no flattened tar (the builder reads the files in the layers'
# verified copies), so the flattened stream is the share delivery's.
STAGES = [("decompressed copy", "disk", "gz_big_archive"),
          ("layer spool", "disk", "gzip_layers_archive"),
          ("flattened stream", "share", "big_archive"),
          ("disk image", "disk", "big_archive"),
          ("qcow2", "disk", "big_archive")]


@pytest.mark.parametrize("stage,delivery,archive", STAGES, ids=[s[0] for s in STAGES])
def test_disk_full_at_each_stage(full_server, full_tmpfs, request, stage, delivery, archive):
    """The tmpfs holding the work directories fills up while the conversion
    writes ``stage``: the child is stopped (SIGSTOP) the moment that stage's
    file appears, the tmpfs is filled, the child continues into ENOSPC."""
    api = Api(full_server)
    image_id = _create(api, delivery=delivery)
    archive = request.getfixturevalue(archive)
    api.stage_import(image_id, archive)
    pid = _child_pid(full_tmpfs, image_id)
    workdir = os.path.join(full_tmpfs, _workdirs(full_tmpfs, image_id)[0])
    _wait_for(stage, lambda: _marker(stage, workdir), step=0.002)
    filler = None
    try:
        os.killpg(pid, signal.SIGSTOP)
        filler = _fill(full_tmpfs)
    finally:
        os.killpg(pid, signal.SIGCONT)
    try:
        msg = _check_queued(api, image_id, "space")
        print(stage, "->", msg)
        assert "no space left on device" in msg or "not enough free space" in msg, msg
        assert os.listdir(full_tmpfs) == ["filler"]
        assert [n for n in os.listdir(full_server.staging_dir) if image_id in n] == []
    finally:
        if filler:
            os.remove(filler)
