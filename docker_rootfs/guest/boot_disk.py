"""The BIOS boot disk: kernel + initramfs + command line on a small qcow2.

For Nova's ``base_vm_image=`` (an image any BIOS boots, no ``-kernel``):
an MBR (syslinux's ``mbr.bin``), one bootable FAT partition holding
syslinux (``ldlinux.sys``/``ldlinux.c32``), ``syslinux.cfg``, ``vmlinuz``
and ``initrd.img``; the SAME kernel, initramfs and command line as the
direct-boot pair.

Built without root and without loop mounts, only with Debian tools on
the image file: ``sfdisk`` (partition table), ``mkfs.vfat --offset``
(the filesystem inside the partition), ``syslinux --install --offset``
(the mtools installer), ``mcopy -i img@@OFFSET`` (the files), then
``qemu-img convert -O qcow2``. Packages: syslinux, syslinux-common,
mtools, dosfstools, fdisk, qemu-utils.
"""

import os
import tempfile

from docker_rootfs import errors
from docker_rootfs.guest.tools import run as _run

MBR_CANDIDATES = ("/usr/lib/syslinux/mbr/mbr.bin",      # Debian syslinux-common
                  "/usr/share/syslinux/mbr.bin",        # Fedora
                  "/usr/lib/syslinux/bios/mbr.bin")     # Arch
PART_START = 2048          # sectors: 1 MiB alignment
SECTOR = 512
MIB = 1024 * 1024
SLACK = 4 * MIB            # FAT metadata, syslinux, cluster rounding




def find_mbr():
    for p in MBR_CANDIDATES:
        if os.path.exists(p):
            return p
    raise errors.ToolError("syslinux mbr.bin not found (install syslinux-common)")


def syslinux_cfg(cmdline):
    return ("DEFAULT d2v\nPROMPT 0\nTIMEOUT 0\n"
            "LABEL d2v\n"
            "  KERNEL /vmlinuz\n"
            "  INITRD /initrd.img\n"
            f"  APPEND {cmdline}\n")


def build_boot_disk(dest, kernel, initrd, cmdline):
    """Write ``dest`` (qcow2): a BIOS-bootable disk booting ``kernel`` (a bzImage)
    with ``initrd`` and ``cmdline`` through syslinux. Returns ``dest``."""
    mbr = find_mbr()
    payload = os.path.getsize(kernel) + os.path.getsize(initrd)
    part_bytes = -(-(payload + SLACK) // MIB) * MIB
    offset = PART_START * SECTOR
    out_dir = os.path.dirname(os.path.abspath(dest))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".boot-disk-") as tmp:
        raw = os.path.join(tmp, "boot.raw")
        with open(raw, "wb") as f:
            f.truncate(offset + part_bytes)
        # Partition table first (a new label clears the boot code), then the MBR code.
        _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", raw],
             input=f"label: dos\nstart={PART_START}, type=e, bootable\n".encode())
        with open(mbr, "rb") as f:
            code = f.read()[:440]
        with open(raw, "r+b") as f:
            f.write(code)
        # FAT inside the partition; hidden sectors = partition start (for the VBR).
        _run(["mkfs.vfat", "-F", "16", "--offset", str(PART_START), "-h", str(PART_START),
              "-n", "D2VBOOT", raw, str(part_bytes // 1024)])
        cfg = os.path.join(tmp, "syslinux.cfg")
        with open(cfg, "w") as f:
            f.write(syslinux_cfg(cmdline))
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        _run(["syslinux", "--install", "--offset", str(offset), raw], env=env)
        img = f"{raw}@@{offset}"
        for src, name in ((cfg, "syslinux.cfg"), (kernel, "vmlinuz"), (initrd, "initrd.img")):
            _run(["mcopy", "-o", "-i", img, src, f"::{name}"], env=env)
        tmp_q = os.path.join(tmp, "boot.qcow2")
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp_q])
        os.replace(tmp_q, dest)
    return dest
