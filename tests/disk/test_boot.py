"""Boot check: a tiny TCG guest (Debian 6.1 kernel, busybox initramfs) finds
the built disk as a second virtio disk by its serial, mounts it and runs a
command in a chroot of it: the disk is something a real kernel accepts."""

import io
import shutil
import tarfile

import pytest

from docker_rootfs.disk import DiskOptions, build_disk
from tests.disk import bootkit


def _rootfs_tar(path):
    busybox = shutil.which("busybox", path="/bin:/usr/bin")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        def add(name, type=tarfile.REGTYPE, data=None, mode=0o755, **kw):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = type, mode, 1600000000
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        for d in ("bin", "etc", "dev", "tmp"):
            add(d, tarfile.DIRTYPE)
        add("bin/busybox", data=open(busybox, "rb").read())
        for applet in ("sh", "cat", "stat", "ls"):
            add("bin/" + applet, tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        add("etc/hello", data=b"hello from the rootfs disk\n", mode=0o644)
        add("bin/suid", data=b"x", mode=0o4711, uid=1000, gid=1001)
        add("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    return path


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86 missing")
@pytest.mark.parametrize("fmt", ["qcow2"])
def test_guest_mounts_disk_by_serial_and_chroots(tmp_path, fmt):
    tar = _rootfs_tar(str(tmp_path / "rootfs.tar"))
    disk = str(tmp_path / ("rootfs." + fmt))
    build_disk(tar, disk, DiskOptions(disk_format=fmt), digest="sha256:" + "12" * 32)
    command = ("/bin/sh -c 'cat /etc/hello; stat -c \"%a %u %g %F\" /bin/suid /dev/null'")
    out = bootkit.boot(disk, fmt, "docker-rootfs", command, str(tmp_path))
    assert "BOOTCHECK disk=/dev/vd" in out, out[-3000:]
    assert "hello from the rootfs disk" in out, out[-3000:]
    assert "4711 1000 1001 regular file" in out, out[-3000:]
    assert "666 0 0 character special file" in out, out[-3000:]
    assert "BOOTCHECK rc=0" in out, out[-3000:]
    assert "EXT4-fs error" not in out
