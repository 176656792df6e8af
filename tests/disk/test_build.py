"""Reproducibility, unprivileged use, sizing, safety and cleanup of the disk build."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from docker_rootfs import errors
from docker_rootfs.disk import DiskOptions, build_disk, sizing, tarscan
from tests.disk.test_content import check_disk_equals_tar

DIGEST = "sha256:" + "cd" * 32


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tar(path, members):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kw in members:
            ti = tarfile.TarInfo(name)
            data = kw.pop("data", None)
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return str(path)


# -- reproducibility ------------------------------------------------------

@pytest.mark.parametrize("fmt,compress", [("qcow2", False), ("qcow2", True), ("raw", False)])
def test_same_input_gives_identical_bytes(feature_tar, tmp_path, fmt, compress):
    outs = []
    for run in ("a", "b"):
        tmpdir = tmp_path / ("tmp-" + run)
        tmpdir.mkdir()
        out = tmp_path / f"{run}.{fmt}"
        build_disk(feature_tar, str(out), DiskOptions(disk_format=fmt, qcow2_compress=compress,
                                                      tmp_dir=str(tmpdir)), digest=DIGEST)
        outs.append(sha256(out))
        time.sleep(1.1)    # a different wall-clock second must not matter
    assert outs[0] == outs[1]


def test_digest_and_epoch_change_the_disk(feature_tar, tmp_path, monkeypatch):
    a = build_disk(feature_tar, str(tmp_path / "a.raw"), DiskOptions(disk_format="raw"),
                   digest=DIGEST)
    b = build_disk(feature_tar, str(tmp_path / "b.raw"), DiskOptions(disk_format="raw"),
                   digest="sha256:" + "ee" * 32)
    assert a.fs_uuid != b.fs_uuid
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    c = build_disk(feature_tar, str(tmp_path / "c.raw"), DiskOptions(disk_format="raw"),
                   digest=DIGEST)
    assert c.fixed_time == 1234567890 and c.fs_uuid == a.fs_uuid
    assert sha256(tmp_path / "a.raw") != sha256(tmp_path / "c.raw")


def test_without_digest_the_tar_hash_seeds_the_ids(feature_tar, tmp_path):
    a = build_disk(feature_tar, str(tmp_path / "a.raw"), DiskOptions(disk_format="raw"))
    b = build_disk(feature_tar, str(tmp_path / "b.raw"), DiskOptions(disk_format="raw"))
    assert a.seed.startswith("sha256:") and a.fs_uuid == b.fs_uuid
    assert sha256(tmp_path / "a.raw") == sha256(tmp_path / "b.raw")


# -- unprivileged ---------------------------------------------------------

@pytest.fixture
def request_cleanup():
    todo = []
    yield todo
    for f in todo:
        f()


def test_fast_builder_as_unprivileged_user(feature_tar, tmp_path, request_cleanup):
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    import pathlib
    import shutil
    import tempfile
    # pytest's tmp_path lives under a 0700 directory nobody cannot traverse.
    work = pathlib.Path(tempfile.mkdtemp(prefix="d2v-nobody-"))
    request_cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    os.chmod(work, 0o777)
    tar = work / "in.tar"
    tar.write_bytes(open(feature_tar, "rb").read())
    os.chmod(tar, 0o644)
    code = ("import sys; from docker_rootfs.disk import build_disk, DiskOptions;"
            "r = build_disk(sys.argv[1], sys.argv[2], DiskOptions(tmp_dir=sys.argv[3]),"
            " digest=sys.argv[4]); print(r.builder)")
    # The checkout itself may sit under a directory nobody cannot read (a
    # clone in a mktemp -d dir is 0700): give nobody its own copy of the core.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = work / "src"
    shutil.copytree(os.path.join(root, "docker_rootfs"), src / "docker_rootfs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, dirnames, filenames in os.walk(src):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    env = dict(os.environ, PYTHONPATH=str(src), HOME=str(work))
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
         sys.executable, "-c", code, str(tar), str(work / "out.qcow2"), str(work), DIGEST],
        env=env, capture_output=True, text=True, cwd=str(work))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ext2fs"
    assert os.stat(work / "out.qcow2").st_uid == 65534
    raw = tmp_path / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(work / "out.qcow2"), str(raw)],
                   check=True)
    check_disk_equals_tar(str(raw), feature_tar)
    # and it is the very disk root builds
    build_disk(feature_tar, str(tmp_path / "root.qcow2"), DiskOptions(), digest=DIGEST)
    assert sha256(tmp_path / "root.qcow2") == sha256(work / "out.qcow2")


# -- sizing ---------------------------------------------------------------

def test_tiny_image(tmp_path):
    tar = _tar(tmp_path / "tiny.tar", [("hello", {"data": b"hi\n"})])
    r = build_disk(tar, str(tmp_path / "tiny.raw"), DiskOptions(disk_format="raw"),
                   digest=DIGEST)
    assert r.virtual_size <= 80 * 2 ** 20
    check_disk_equals_tar(str(tmp_path / "tiny.raw"), tar)
    r = build_disk(tar, str(tmp_path / "tiny2.raw"),
                   DiskOptions(disk_format="raw", free_space_mib=0, free_space_percent=0,
                               min_size_mib=1), digest=DIGEST)
    assert r.virtual_size == sizing.FLOOR_BYTES


def test_many_small_files_fit_without_retry(tmp_path, caplog):
    n = 60000
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(60):
            ti = tarfile.TarInfo(f"d{d:02d}")
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        for i in range(n):
            ti = tarfile.TarInfo(f"d{i % 60:02d}/file-{i:06d}")
            data = b"%d\n" % i if i % 2 else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    _, stats = tarscan.scan(str(path))
    geo = sizing.compute(stats, DiskOptions(free_space_mib=0, free_space_percent=0))
    assert geo.inodes >= n + 60 + 12
    r = build_disk(str(path), str(tmp_path / "many.raw"),
                   DiskOptions(disk_format="raw", free_space_mib=0, free_space_percent=0,
                               min_size_mib=1), digest=DIGEST)
    assert "retrying bigger" not in caplog.text
    assert r.virtual_size == geo.size_bytes
    out = subprocess.run(["dumpe2fs", "-h", str(tmp_path / "many.raw")], capture_output=True,
                         text=True).stdout
    free_inodes = int(out.split("Free inodes:")[1].split()[0])
    assert free_inodes < 0.2 * r.inodes + 4096     # counted, not defaulted


@pytest.mark.slow
def test_small_files_stay_contiguous_across_block_groups(tmp_path):
    """Small files (the builder allocates each one's blocks as one run,
    ext2fs_builder._write_small) are never split around a block group's
    backup superblock and descriptors, where libext2fs's block-at-a-time
    allocation split them (5 of the 100k-file bench image's files), and
    the data reads back. 2,300 files of 15 blocks cross group 1 (128 MiB)."""
    path = tmp_path / "small.tar"
    chunk = os.urandom(60000)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in range(7):
            ti = tarfile.TarInfo(f"d{d}")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        for i in range(2300):
            data = b"%06d" % i + chunk[6:]
            ti = tarfile.TarInfo(f"d{i % 7}/f{i:05d}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = tmp_path / "small.raw"
    build_disk(str(path), str(raw), DiskOptions(disk_format="raw"), digest=DIGEST)
    out = subprocess.run(["e2fsck", "-fnv", str(raw)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "0 non-contiguous files" in out.stdout
    assert "2300 regular files" in out.stdout
    check_disk_equals_tar(str(raw), str(path))


def test_free_space_options(feature_tar, tmp_path):
    _, stats = tarscan.scan(feature_tar)
    small = sizing.compute(stats, DiskOptions(free_space_mib=0, free_space_percent=0,
                                              min_size_mib=1))
    big = sizing.compute(stats, DiskOptions(free_space_mib=500, free_space_percent=0))
    pct = sizing.compute(stats, DiskOptions(free_space_mib=0, free_space_percent=100,
                                            min_size_mib=1))
    assert big.size_bytes - small.size_bytes >= 500 * 2 ** 20
    assert pct.size_bytes - small.size_bytes >= small.content_bytes * 0.9
    r = build_disk(feature_tar, str(tmp_path / "f.raw"),
                   DiskOptions(disk_format="raw", size_mib=300), digest=DIGEST)
    assert r.virtual_size == 300 * 2 ** 20


def test_fixed_size_too_small_is_one_clear_error(feature_tar, tmp_path):
    with pytest.raises(errors.LimitExceeded, match="does not fit"):
        build_disk(feature_tar, str(tmp_path / "x.raw"),
                   DiskOptions(disk_format="raw", size_mib=8), digest=DIGEST)
    # Passes the up-front estimate, runs out of blocks while writing.
    blob = os.urandom(1 << 20)
    tar = _tar(tmp_path / "30m.tar", [(f"f{i}", {"data": blob}) for i in range(30)])
    with pytest.raises(errors.LimitExceeded, match="does not fit"):
        build_disk(tar, str(tmp_path / "x.raw"),
                   DiskOptions(disk_format="raw", size_mib=31), digest=DIGEST)
    assert not os.path.exists(tmp_path / "x.raw")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".docker2vm-")] == []


# -- safety ---------------------------------------------------------------

@pytest.mark.parametrize("members,exc", [
    ([("lib", {"type": tarfile.SYMTYPE, "linkname": "/etc"}),
      ("lib/passwd", {"data": b"pwned"})], errors.UnsafeEntry),
    ([("../escape", {"data": b"x"})], errors.UnsafeEntry),
    ([("a/../../escape", {"data": b"x"})], errors.UnsafeEntry),
    ([("f", {"data": b"x"}), ("f/g", {"data": b"y"})], errors.UnsafeEntry),
    ([("h", {"type": tarfile.LNKTYPE, "linkname": "nothere"})], errors.UnsafeEntry),
    ([("d", {"type": tarfile.DIRTYPE}), ("h", {"type": tarfile.LNKTYPE, "linkname": "d"})],
     errors.UnsafeEntry),
    ([("f", {"data": b"x"}), ("f", {"data": b"y"})], errors.ArchiveError),
])
def test_hostile_entries_are_refused(tmp_path, members, exc):
    tar = _tar(tmp_path / "bad.tar", members)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with pytest.raises(exc):
        build_disk(tar, str(tmp_path / "out.qcow2"), DiskOptions(tmp_dir=str(tmpdir)),
                   digest=DIGEST)
    assert os.listdir(tmpdir) == []
    assert not os.path.exists(tmp_path / "out.qcow2")


@pytest.mark.parametrize("size", [3000, 200_000], ids=["small-file-path", "chunked-path"])
def test_tar_cut_after_the_scan_is_one_archive_error(tmp_path, monkeypatch, size):
    """The tar shrinks between the scan and the build (it is the builder's
    only input, but a file can change): the builder's read of a file's data
    comes up short, and the build fails with one line naming the file, on
    both data paths, leaving nothing behind."""
    from docker_rootfs.disk import build as build_mod
    tar = _tar(tmp_path / "t.tar", [("a", {"data": b"x" * 100}),
                                    ("big", {"data": os.urandom(size)})])
    real_scan = build_mod.tarscan.scan

    def scan_then_cut(path, **kwargs):
        result = real_scan(path, **kwargs)
        os.truncate(path, 512 * 4 + size // 2)
        return result
    monkeypatch.setattr(build_mod.tarscan, "scan", scan_then_cut)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with pytest.raises(errors.ArchiveError, match=r"^flattened tar truncated in 'big'$"):
        build_disk(tar, str(tmp_path / "out.qcow2"), DiskOptions(tmp_dir=str(tmpdir)),
                   digest=DIGEST)
    assert os.listdir(tmpdir) == []
    assert sorted(os.listdir(tmp_path)) == ["t.tar", "tmp"]


# -- cleanup --------------------------------------------------------------

def test_temporary_space_is_checked_up_front(feature_tar, tmp_path):
    # A 1 MiB tmpfs-like limit is hard to fake portably: ask for a directory
    # that cannot hold the image by pretending it has no space.
    import shutil

    from docker_rootfs.disk import build as build_mod
    real = shutil.disk_usage

    def tiny(path):
        u = real(path)
        return u._replace(free=1024 * 1024)
    build_mod.shutil.disk_usage = tiny
    try:
        with pytest.raises(errors.LimitExceeded, match="free space"):
            build_disk(feature_tar, str(tmp_path / "o.qcow2"),
                       DiskOptions(tmp_dir=str(tmp_path)), digest=DIGEST)
    finally:
        build_mod.shutil.disk_usage = real
    assert [p for p in os.listdir(tmp_path) if p.startswith("docker2vm-")] == []


def test_output_directory_failure_leaves_no_fsck_running(feature_tar, tmp_path, monkeypatch):
    """The qcow2's temporary file in the output directory cannot be made
    (EACCES, ENOSPC, EMFILE): the build fails with that error, and no
    e2fsck thread (nor its process) is left reading the deleted raw image
    (the checker used to start first; found in review, issue 15)."""
    import tempfile
    import threading

    from docker_rootfs.disk import build as build_mod
    real_mkstemp, real_fsck = tempfile.mkstemp, build_mod.fsck

    def mkstemp(*args, **kwargs):
        if kwargs.get("suffix") == ".qcow2":
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, **kwargs)

    def slow_fsck(path):
        time.sleep(1.0)
        return real_fsck(path)

    monkeypatch.setattr(build_mod.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(build_mod, "fsck", slow_fsck)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with pytest.raises(PermissionError):
        build_disk(feature_tar, str(tmp_path / "o.qcow2"), DiskOptions(tmp_dir=str(tmpdir)),
                   digest=DIGEST)
    assert [t.name for t in threading.enumerate() if t.name == "docker2vm-fsck"] == []
    assert os.listdir(tmpdir) == []


def test_sigterm_mid_build_cleans_up(tmp_path):
    # A tar big enough that the build is still running when SIGTERM comes.
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        blob = os.urandom(1 << 20)
        for i in range(400):
            ti = tarfile.TarInfo(f"f{i}")
            ti.size = len(blob)
            tf.addfile(ti, io.BytesIO(blob))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    code = ("import signal, sys\n"
            "from docker_rootfs.commands.common import sigterm_exit\n"
            "from docker_rootfs.disk import build_disk, DiskOptions\n"
            "signal.signal(signal.SIGTERM, sigterm_exit)\n"
            "print('start', flush=True)\n"
            "build_disk(sys.argv[1], sys.argv[2], DiskOptions(tmp_dir=sys.argv[3]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(tmp_path / "o.qcow2"),
                             str(tmpdir)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"start"
    deadline = time.monotonic() + 30
    while not os.listdir(tmpdir) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert os.listdir(tmpdir) == []
    assert not os.path.exists(tmp_path / "o.qcow2")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".docker2vm-")] == []
