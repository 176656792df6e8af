"""A tiny TCG guest for the boot check: the base image's kernel (Debian's,
from :mod:`docker_rootfs.guest.kernel`, shared cache with the guest tests)
and a busybox initramfs that loads the virtio/ext4 modules it needs (those
not built in), finds a virtio disk by its serial (/sys/block/vd*/serial),
mounts it read-only and runs a command in a chroot of it.

Everything but the init script comes from ``docker_rootfs.guest``: kernel,
module resolution, the cpio writer and the QEMU runner.
"""

import os

from docker_rootfs.guest import base_image as bi
from docker_rootfs.guest import kernel as kernel_mod
from docker_rootfs.guest import qemu

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(TOP, ".cache")        # the guest tests' cache: one kernel download
WANT = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m 2>/dev/null; done
dev=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for b in /sys/block/vd*; do
    [ -e "$b/serial" ] && [ "$(cat $b/serial)" = "@SERIAL@" ] && dev=/dev/${b##*/}
  done
  [ -n "$dev" ] && break
  sleep 0.5
done
echo "BOOTCHECK disk=$dev"
mkdir -p /mnt
if mount -t ext4 -o ro "$dev" /mnt; then
  chroot /mnt @COMMAND@
  echo "BOOTCHECK rc=$?"
else
  echo "BOOTCHECK mount failed"
fi
umount /mnt
poweroff -f
"""


def make_initramfs(out, k, serial, command):
    busybox = bi.find_busybox(CACHE)
    with open(out, "wb") as f:
        w = bi.CpioWriter(f)
        for d in ("bin", "proc", "sys", "dev", "modules", "mnt"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        with open(busybox, "rb") as b:
            w.file("bin/busybox", b.read(), 0o755)
        names = []
        for path in bi.resolve_modules(k.modules_dir, WANT, []):
            with open(path, "rb") as m:
                w.file("modules/" + os.path.basename(path), m.read())
            names.append(os.path.basename(path))
        w.file("modules.order", ("\n".join(names) + "\n").encode())
        w.file("init", INIT.replace("@SERIAL@", serial).replace("@COMMAND@", command).encode(), 0o755)
        w.close()
    return out


def boot(disk, disk_format, serial, command, workdir, timeout=240):
    """Boot the tiny guest with ``disk`` attached; return its console output."""
    k = kernel_mod.fetch_kernel(CACHE)
    initrd = make_initramfs(os.path.join(workdir, "initrd.cpio"), k, serial, command)
    machine = qemu.Machine(kernel=k.vmlinux, initrd=initrd, memory_mb=512, nics=0,
                           cmdline="console=ttyS0 panic=-1 quiet",
                           disks=[(disk, serial, disk_format)])
    result = qemu.boot(machine, timeout=timeout)
    return result.text
