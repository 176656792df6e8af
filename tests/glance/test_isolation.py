"""The conversion child (glance_docker_import.converter / .worker) and the
per-import work directories (glance_docker_import.workdir), without a
glance-api: real child processes under real rlimits, real signals, real
flock between processes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from docker_rootfs.disk.options import DiskOptions
from docker_rootfs.limits import Limits
from glance_docker_import import converter, workdir
from tests.glance.conftest import pid_gone
from tests.glance.slow_archive import build_zero_archive

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Glance's ids are UUIDs; the sweep only considers work directories named after them.
IMAGE = "0c6d1f8e-1b38-4f7b-9c5b-3c3d0f5f2a11"
TASK = "5d4f3c2b-aaaa-bbbb-cccc-123456789abc"
pytestmark = [pytest.mark.tools, pytest.mark.slow]


@pytest.fixture(scope="module")
def zeros(tmp_path_factory):
    """1 GiB of zeros in an 5 MiB archive: seconds of CPU, no disk."""
    return build_zero_archive(str(tmp_path_factory.mktemp("zeros") / "zeros.tar"), chunks=16)


def _job(src, wd, delivery="share", **extra):
    job = {"image_id": "img-1", "task_id": "task-1", "src": src, "workdir": str(wd),
           "delivery": delivery, "normalize_share": True,
           "limits": dataclasses.asdict(Limits(max_compression_ratio=10 ** 9)),
           "disk": dataclasses.asdict(DiskOptions())}
    job.update(extra)
    return job


def _child(src, wd, settings=None, **extra):
    wd.mkdir(exist_ok=True)
    return converter.Child(_job(src, wd, **extra), str(wd), settings or converter.Settings(),
                           str(wd / "converter.log"))


def _run(child, on_progress=None):
    seen = []

    def progress(fraction, message):
        seen.append((fraction, message))
        if on_progress:
            on_progress(fraction, message)
    try:
        return child.run(progress), seen
    except converter.ConversionFailed as exc:
        return exc, seen


def test_child_converts_and_reports_progress(tmp_path, glance_archives):
    child = _child(glance_archives["docker"], tmp_path / "wd",
                   converter.Settings(address_space_mib=4096, cpu_seconds=600, open_files=256,
                                      nice=10))
    result, seen = _run(child)
    assert not isinstance(result, Exception), result
    assert os.path.dirname(result["path"]) == str(tmp_path / "wd")
    assert result["attrs"] == {"disk_format": "raw", "container_format": "docker"}
    assert json.loads(result["properties"]["docker_cmd"]) == ["cat /app/hello.txt"]
    assert seen[0] == (0.0, "reading archive") and seen[-1] == (1.0, "done")
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)
    assert child.proc.returncode == 0 and pid_gone(child.pid)
    assert "converting image img-1" in (tmp_path / "wd" / "converter.log").read_text()


def test_input_error_is_one_line(tmp_path, glance_archives):
    exc, _ = _run(_child(glance_archives["truncated"], tmp_path / "wd"))
    assert isinstance(exc, converter.ConversionFailed) and exc.kind == "input"
    assert "\n" not in str(exc)


def test_cpu_time_limit(tmp_path, zeros):
    exc, _ = _run(_child(zeros, tmp_path / "wd", converter.Settings(cpu_seconds=1),
                         normalize_share=False))
    assert isinstance(exc, converter.ConversionFailed)
    assert str(exc) == "conversion exceeded the CPU-time limit of 1 s"


def test_address_space_limit(tmp_path, glance_archives):
    # 32 MiB is below what the interpreter and the converter map here.
    exc, _ = _run(_child(glance_archives["docker"], tmp_path / "wd",
                         converter.Settings(address_space_mib=32)))
    assert isinstance(exc, converter.ConversionFailed), exc
    assert str(exc).startswith("conversion exceeded the address-space limit of 32 MiB (out of "
                               "memory while "), exc
    assert "/" not in str(exc)          # no server paths


def test_open_files_limit(tmp_path, glance_archives):
    exc, _ = _run(_child(glance_archives["docker"], tmp_path / "wd",
                         converter.Settings(open_files=10), delivery="disk"))
    assert isinstance(exc, converter.ConversionFailed), exc
    assert str(exc).startswith("conversion exceeded the open-files limit of 10 "), exc


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_killed_or_crashed_child(tmp_path, zeros, sig):
    child = _child(zeros, tmp_path / "wd", normalize_share=False)
    exc, _ = _run(child, lambda f, m: os.kill(child.pid, sig))
    assert isinstance(exc, converter.ConversionFailed)
    assert str(exc) == "conversion killed by signal %d (%s)" % (sig, sig.name)
    assert pid_gone(child.pid)


def test_kill_stops_the_whole_process_group(tmp_path, zeros):
    # What cancellation and a lost import lock do (Heartbeat.on_abort).
    child = _child(zeros, tmp_path / "wd", normalize_share=False)
    exc, _ = _run(child, lambda f, m: child.kill("import task is failure"))
    assert isinstance(exc, converter.ConversionFailed) and exc.kind == "aborted"
    assert str(exc) == "import task is failure"
    assert pid_gone(child.pid)


PARENT = textwrap.dedent("""\
    import dataclasses, os, sys
    from docker_rootfs.limits import Limits
    from docker_rootfs.disk.options import DiskOptions
    from glance_docker_import import converter, workdir
    base, src = sys.argv[1], sys.argv[2]
    wd = workdir.WorkDir.create(base, sys.argv[3], sys.argv[4], meta={"src": src})
    job = {"image_id": sys.argv[3], "task_id": sys.argv[4], "src": src, "workdir": wd.path,
           "delivery": "share", "normalize_share": False,
           "limits": dataclasses.asdict(Limits(max_compression_ratio=10 ** 9)),
           "disk": dataclasses.asdict(DiskOptions())}
    child = converter.Child(job, wd.path, converter.Settings(), wd.file("converter.log"))
    def progress(f, m):
        print(child.pid, flush=True)
    child.run(progress)
""")


def test_parent_killed_child_dies_and_dir_is_swept(tmp_path, zeros):
    """kill -9 of the process running the import (glance-api): its child
    notices (stdin closed) and kills its process group; the work directory's
    lock is free, so a sweep removes it and reports its meta."""
    base = tmp_path / "base"
    base.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(base), zeros, IMAGE, TASK],
                              stdout=subprocess.PIPE, text=True, cwd=TOP)
    try:
        child_pid = int(parent.stdout.readline())
        assert workdir.sweep(str(base)) == []       # live: untouched
        assert len(os.listdir(base)) == 1
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while not pid_gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_gone(child_pid), "the conversion child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
    dead = []
    assert workdir.sweep(str(base), on_dead=dead.append) == [workdir.dir_name(IMAGE, TASK)]
    assert os.listdir(base) == []
    assert dead[0]["image_id"] == IMAGE and dead[0]["src"] == zeros


def test_workdir_lock_and_sweep(tmp_path):
    wd = workdir.WorkDir.create(str(tmp_path), IMAGE, TASK, meta={"x": 1})
    stale = workdir.dir_name(IMAGE, "6d4f3c2b-aaaa-bbbb-cccc-123456789abc")
    (tmp_path / stale).mkdir()                            # no lock, no meta, fresh
    (tmp_path / "other-file").write_text("not ours")
    assert workdir.sweep(str(tmp_path)) == []             # live one held, fresh one spared
    assert workdir.read_meta(wd.path)["x"] == 1
    wd.update_meta({"y": 2})
    assert workdir.read_meta(wd.path) == dict(workdir.read_meta(wd.path), x=1, y=2)
    old = time.time() - 2 * workdir.CREATION_GRACE
    os.utime(tmp_path / stale, (old, old))
    assert workdir.sweep(str(tmp_path)) == [stale]
    out = tmp_path / os.path.basename(wd.path) / "out.qcow2"
    out.write_bytes(b"x")
    wd.remove_when_gone(str(out), poll=0.05)
    time.sleep(0.2)
    assert os.path.isdir(wd.path)                         # Glance still uploading
    out.unlink()                                          # Glance's _DeleteFromFS
    deadline = time.monotonic() + 10
    while os.path.exists(wd.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(tmp_path)) == ["other-file"]
