"""A stock-like Debian 12 cloud image with cloud-init, built from Debian's
own packages for the cloud-init guest test (``base_vm_image`` = a stock
cloud image, the original proposal's path).

Built with ``debootstrap --variant=minbase`` from http://deb.debian.org
(suite bookworm, component main) plus what a Debian genericcloud image has
that matters here: systemd as init, udev, dbus (systemd-logind, which turns
the ACPI power button into a power-off, needs it), cloud-init and python3,
ifupdown (cloud-init's ENI renderer; isc-dhcp-client comes with cloud-init),
e2fsprogs, the cloud kernel and initramfs-tools. Nothing of docker2vm is in
the image: only the config drive (``openstack/*/user_data``) tells it what
to run.

Differences from the published genericcloud image, stated honestly:

* cloud-init's datasource list is ``[ConfigDrive, None]``
  (``/etc/cloud/cloud.cfg.d/95_datasource.cfg``); the stock image lists
  every datasource and lets ds-identify pick, which finds the config drive
  the same way (by its ``config-2`` label).
* No bootloader is installed and the disk has no partition table: the test
  boots the image's OWN kernel and initramfs (``/boot/vmlinuz-*``,
  ``/boot/initrd.img-*``, copied out at build time) with QEMU's direct
  kernel boot and ``root=LABEL=cloudimg-rootfs``. What is under test is
  cloud-init and our cloud-config, not GRUB; direct boot keeps a TCG boot
  shorter and the build free of loop devices and grub-install.
* No security suite, no ssh server, no users: the guest is only watched
  through its serial console.

The result is cached under ``.cache/cloudimage/debian12-<digest>/``, the
digest covering this file (the package list, the configuration and the
build steps are all in it). It is built in a temporary directory next to
the cache and renamed into place only when complete; on failure anything
left mounted in the build tree by debootstrap is unmounted and the tree is
removed. Boot an overlay (:func:`overlay`), never the cached disk itself.
"""

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

from tests.fixtures.build_fixtures import mounts_under
from tests.guest import images

CACHE = images.CACHE / "cloudimage"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "udev", "dbus",
    "cloud-init", "python3",
    # debootstrap's resolver cannot see virtual packages: python3-cryptography
    # (cloud-init -> python3-oauthlib) needs python3-cffi-backend-api-*,
    # which python3-cffi-backend provides.
    "python3-cffi-backend",
    "ifupdown", "e2fsprogs",
    "linux-image-cloud-amd64", "initramfs-tools",
)
LABEL = "cloudimg-rootfs"
DISK_SIZE = "2G"                     # virtual size, as Debian's genericcloud image
# panic=-1: a guest that cannot mount its root reboots, and -no-reboot makes
# QEMU exit at once instead of waiting for the test's timeout.
CMDLINE = f"root=LABEL={LABEL} ro console=ttyS0 panic=-1"

CONFIG_FILES = {
    "etc/cloud/cloud.cfg.d/95_datasource.cfg":
        "# docker2vm test image: the config drive is the only datasource.\n"
        "datasource_list: [ConfigDrive, None]\n",
    "etc/fstab": f"LABEL={LABEL} / ext4 rw,discard,errors=remount-ro 0 1\n",
    "etc/hostname": "localhost\n",
    # as Debian's cloud images: cloud-init's locale module then has nothing
    # to generate (without it, it fails trying en_US.UTF-8)
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
                 "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n",
    # first boot generates it, as in any image meant to be cloned
    "etc/machine-id": "",
}


@dataclasses.dataclass
class CloudImage:
    dir: pathlib.Path
    disk: pathlib.Path       # qcow2, ext4 labelled cloudimg-rootfs, no partition table
    kernel: pathlib.Path     # the image's own /boot/vmlinuz-*
    initrd: pathlib.Path     # the image's own /boot/initrd.img-*
    cmdline: str
    info: dict               # kernel version, build seconds, sizes, package count


def digest():
    return hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:16]


def _run(cmd, log=None):
    """Run ``cmd`` in its own process group, output to ``log`` (or captured);
    if we are interrupted, the whole group (debootstrap's dpkg and
    maintainer scripts too) is stopped before the tree is removed."""
    out = open(log, "ab") if log is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            captured, _ = proc.communicate()
        except BaseException:
            _stop_group(proc)
            raise
    finally:
        if log is not None:
            out.close()
    if proc.returncode:
        if log is not None:
            captured = pathlib.Path(log).read_bytes()
        tail = (captured or b"").decode(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n" + "\n".join(tail))


def _stop_group(proc):
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)       # anyone left in the group?
            except ProcessLookupError:
                proc.wait()
                return
            proc.poll()
            time.sleep(0.2)
    proc.wait()


def _remove_tree(path):
    """Unmount whatever is mounted under ``path`` (deepest first), then
    remove it; refuse to remove a tree that still has a mount in it."""
    for mnt in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", mnt], capture_output=True)
    left = mounts_under(path)
    for mnt in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"still mounted, not removing {path}: {left}")
    shutil.rmtree(path, ignore_errors=True)


def _debootstrap(root, log):
    cmd = ["/usr/sbin/debootstrap", "--variant=minbase", "--components=main",
           "--include=" + ",".join(PACKAGES), SUITE, str(root), MIRROR]
    try:
        _run(cmd, log=log)
    except RuntimeError as exc:
        detail = ""
        dlog = root / "debootstrap" / "debootstrap.log"
        if dlog.exists():
            detail = "\n".join(dlog.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{exc}\n{detail}") from None
    if mounts_under(root):
        raise RuntimeError(f"debootstrap left mounts: {mounts_under(root)}")


def _configure(root):
    for rel, text in CONFIG_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    # debootstrap copies the build host's resolv.conf; cloud-init/DHCP write it
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
        dbus_id.symlink_to("/etc/machine-id")
    # what `apt-get clean` and image builders drop
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*", "var/log/*.log", "var/log/apt/*"):
        for p in glob.glob(str(root / pattern)):
            if os.path.isfile(p):
                os.unlink(p)
    shutil.rmtree(root / "debootstrap", ignore_errors=True)


def _kernel_files(root, out):
    kernels = sorted(glob.glob(str(root / "boot/vmlinuz-*")))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in /boot, found {kernels}")
    version = os.path.basename(kernels[0])[len("vmlinuz-"):]
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise RuntimeError(f"no {initrd} (initramfs-tools did not run?)")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    return version


def _make_disk(root, out, log):
    raw = out / "root.raw"
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", LABEL, "-d", str(root), str(raw), DISK_SIZE],
         log=log)
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "disk.qcow2")], log=log)
    raw.unlink()


def _packages(root):
    out = subprocess.run(["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W",
                          "-f", "${Package} ${Version}\n"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(out.splitlines())


def _load(final):
    info = json.loads((final / "info.json").read_text())
    return CloudImage(dir=final, disk=final / "disk.qcow2", kernel=final / "vmlinuz",
                      initrd=final / "initrd.img", cmdline=CMDLINE, info=info)


@contextlib.contextmanager
def _lock():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build(log=None):
    """The cached image, built first if needed. Needs root (debootstrap,
    ``mke2fs -d`` keeping ownership) and the Debian mirror."""
    final = CACHE / f"debian12-{digest()}"
    if (final / "info.json").exists():
        return _load(final)
    for tool in ("/usr/sbin/debootstrap", "mke2fs", "qemu-img", "dpkg-query"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is needed (bindep.txt, profile test)")
    if os.geteuid() != 0:
        raise RuntimeError("building the cloud image needs root (debootstrap)")
    with _lock():
        if (final / "info.json").exists():
            return _load(final)
        start = time.monotonic()
        tmp = pathlib.Path(tempfile.mkdtemp(dir=CACHE, prefix=".build-"))
        try:
            root, out = tmp / "root", tmp / "out"
            out.mkdir()
            blog = tmp / "build.log"
            if log:
                log(f"debootstrap {SUITE} into {root}")
            _debootstrap(root, blog)
            t_bootstrap = time.monotonic() - start
            _configure(root)
            version = _kernel_files(root, out)
            packages = _packages(root)
            (out / "packages.txt").write_text("\n".join(packages) + "\n")
            tree_mib = int(subprocess.run(["du", "-sxm", str(root)], check=True,
                                          capture_output=True, text=True).stdout.split()[0])
            if log:
                log("mke2fs -d + qemu-img convert")
            _make_disk(root, out, blog)
            _remove_tree(root)
            info = {
                "suite": SUITE, "mirror": MIRROR, "kernel": version,
                "packages": len(packages), "tree_mib": tree_mib,
                "disk_bytes": (out / "disk.qcow2").stat().st_size,
                "debootstrap_seconds": round(t_bootstrap, 1),
                "build_seconds": round(time.monotonic() - start, 1),
            }
            (out / "info.json").write_text(json.dumps(info, indent=1) + "\n")
            os.rename(out, final)
        finally:
            _remove_tree(tmp)
        for old in CACHE.glob("debian12-*"):      # builds of earlier versions of this file
            if old != final:
                _remove_tree(old)
    return _load(final)


def overlay(image, dest):
    """A per-instance qcow2 overlay on the cached disk, as Nova's instance
    disk over its ``_base`` image: the cache stays pristine."""
    return images.instance_disk(image.disk, dest)
