"""A tiny TCG guest for the boot check: Debian's 6.1 kernel + a busybox
initramfs that loads virtio/ext4 modules, finds a virtio disk by its serial
(/sys/block/vd*/serial), mounts it and runs a command in a chroot of it.

Kernel: the host's /boot/vmlinuz-* with its /lib/modules when present,
otherwise ``apt-get download linux-image-6.1.0-NN-amd64`` + ``dpkg -x`` into
the cache (.cache/disk-boot). Small on purpose; the guest-init work in
docker_rootfs/guest/ has its own, fuller boot harness.
"""

import glob
import os
import re
import shutil
import subprocess

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(TOP, ".cache", "disk-boot")
WANT = ("crc32c_generic", "ext4", "virtio_pci", "virtio_blk")


def find_kernel():
    """(vmlinuz path, modules dir) of a Debian 6.1 amd64 kernel."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-6.1.*-amd64"), reverse=True):
        ver = vmlinuz.split("vmlinuz-", 1)[1]
        mods = f"/lib/modules/{ver}"
        if os.path.exists(os.path.join(mods, "modules.dep")):
            return vmlinuz, mods
    os.makedirs(CACHE, exist_ok=True)
    found = sorted(glob.glob(os.path.join(CACHE, "root", "boot", "vmlinuz-6.1.*-amd64")))
    if not found:
        out = subprocess.run(["apt-cache", "search", "--names-only",
                              r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
                             capture_output=True, text=True).stdout
        names = sorted(re.findall(r"^(linux-image-6\.1\.0-(\d+)-amd64) ", out, re.M),
                       key=lambda m: int(m[1]))
        if not names:
            raise RuntimeError("no linux-image-6.1.0-NN-amd64 package known to apt")
        pkg = names[-1][0]
        subprocess.run(["apt-get", "download", pkg], cwd=CACHE, check=True,
                       capture_output=True)
        deb = glob.glob(os.path.join(CACHE, pkg + "_*.deb"))[0]
        subprocess.run(["dpkg", "-x", deb, os.path.join(CACHE, "root")], check=True)
        found = sorted(glob.glob(os.path.join(CACHE, "root", "boot", "vmlinuz-6.1.*-amd64")))
    vmlinuz = found[-1]
    ver = vmlinuz.split("vmlinuz-", 1)[1]
    mods = os.path.join(CACHE, "root", "lib", "modules", ver)
    if not os.path.exists(os.path.join(mods, "modules.dep")):
        subprocess.run(["depmod", "-b", os.path.join(CACHE, "root"), ver], check=True)
    return vmlinuz, mods


def module_order(mods_dir, wanted=WANT):
    deps = {}
    with open(os.path.join(mods_dir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    by_name = {os.path.basename(m).split(".ko")[0].replace("-", "_"): m for m in deps}
    order = []

    def visit(path):
        if path in order:
            return
        for d in reversed(deps[path]):
            visit(d)
        order.append(path)
    for name in wanted:
        if name in by_name:       # built-in ones are not in modules.dep
            visit(by_name[name])
    return order


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


def make_initramfs(out, mods_dir, serial, command):
    work = out + ".d"
    shutil.rmtree(work, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "modules", "mnt"):
        os.makedirs(os.path.join(work, d))
    shutil.copy(shutil.which("busybox", path="/bin:/usr/bin"), os.path.join(work, "bin", "busybox"))
    order = module_order(mods_dir)
    for m in order:
        shutil.copy(os.path.join(mods_dir, m), os.path.join(work, "modules", os.path.basename(m)))
    with open(os.path.join(work, "modules.order"), "w") as f:
        f.write("\n".join(os.path.basename(m) for m in order) + "\n")
    init = os.path.join(work, "init")
    with open(init, "w") as f:
        f.write(INIT.replace("@SERIAL@", serial).replace("@COMMAND@", command))
    os.chmod(init, 0o755)
    with open(out, "wb") as f:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=work, stdout=subprocess.PIPE)
        subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=work,
                       stdin=find.stdout, stdout=f, check=True)
        find.wait()
    shutil.rmtree(work)
    return out


def boot(disk, disk_format, serial, command, workdir, timeout=240):
    """Boot the tiny guest with ``disk`` attached; return its console output."""
    vmlinuz, mods = find_kernel()
    initrd = make_initramfs(os.path.join(workdir, "initrd.cpio"), mods, serial, command)
    accel = "kvm" if os.environ.get("DOCKER2VM_TEST_KVM") else "tcg"
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", "512", "-nodefaults",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", vmlinuz, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 quiet",
            "-drive", f"if=none,id=d1,file={disk},format={disk_format},readonly=on",
            "-device", f"virtio-blk-pci,drive=d1,serial={serial}"]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    return proc.stdout.decode("utf-8", "replace")
