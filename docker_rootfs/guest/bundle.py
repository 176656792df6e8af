"""Approach 3: one self-contained bootable disk image per container.

``build_bundle()`` writes a disk that boots by itself on any x86-64 VM,
legacy BIOS (SeaBIOS) or UEFI (OVMF), with nothing installed on the host:

* an MBR partition table (``sfdisk``) with two primary partitions:
  1. the boot partition, FAT16, type ``0xef`` (EFI system partition) and
     marked active, holding
     - syslinux (``ldlinux.sys``/``ldlinux.c32``, ``syslinux.cfg``) for BIOS:
       syslinux's ``mbr.bin`` in the MBR boots the active partition;
     - ``EFI/BOOT/BOOTX64.EFI``, a GRUB image (``grub-mkimage -O x86_64-efi``,
       modules and its configuration embedded, no files read but the kernel
       and initrds) for UEFI: firmware boots it by the removable-media path;
     - ``vmlinuz`` and ``initrd.img`` of ``docker2vm base-image`` and
       ``d2v.cpio``: a second initrd holding the container configuration
       (``etc/d2v/bundle/``: the config drive's ``docker2vm/`` files, the
       rootfs given as ``part:<ext4 UUID>``, plus the image's own
       ``entrypoint`` and ``cmd`` for overrides in the guest);
     - ``docker2vm/config.json`` for people;
  2. the container's root filesystem (ext4, the disk builder's), last on
     the disk so the guest can grow it to the flavor's disk.

Both boot paths load the SAME kernel, initrds and command line. Built
without root or loop mounts: ``sfdisk``, ``mkfs.vfat --offset``,
``syslinux --install --offset``, ``mcopy -i IMG@@OFFSET``, ``grub-mkimage``,
then ``qemu-img convert``. The same archive gives a byte-identical bundle:
the ext4 is reproducible (doc/source/disk.md), FAT times come from the image's
fixed time (mtools honours ``SOURCE_DATE_EPOCH``, ``mkfs.vfat --invariant``
with a volume id derived from the image digest), the cpio has no times.

See doc/source/bundle.md.
"""

import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time

from docker_rootfs import errors
from docker_rootfs import output as output_mod
from docker_rootfs.guest import base_image as base_mod
from docker_rootfs.guest import boot_disk, contract
from docker_rootfs.guest.tools import run as _run

LOG = logging.getLogger(__name__)

SECTOR = 512
MIB = 1024 * 1024
ESP_START = 2048                 # sectors: 1 MiB alignment
ESP_SLACK = 4 * MIB              # FAT tables, syslinux, GRUB, cluster rounding
FAT_EPOCH_MIN = 315619200        # 1980-01-02: FAT cannot store earlier times
GRUB_DIR = "/usr/lib/grub/x86_64-efi"
GRUB_MODULES = ("part_msdos", "fat", "linux", "boot")
BUNDLE_DIR = "etc/d2v/bundle"    # in the second initrd; d2vinit looks there
CONFIG_CPIO = "d2v.cpio"
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "syslinux": "syslinux",
         "mcopy": "mtools", "grub-mkimage": "grub-common", "qemu-img": "qemu-utils"}


@dataclasses.dataclass
class BundleResult:
    path: str
    disk_format: str
    virtual_size: int        # bytes of the whole disk
    file_size: int
    rootfs_size: int         # bytes of the ext4 partition
    esp_size: int            # bytes of the boot partition
    fs_uuid: str             # the rootfs partition's ext4 UUID (d2vinit finds it by it)
    kernel_version: str
    timings: dict


def check_tools():
    for tool, pkg in TOOLS.items():
        if not shutil.which(tool):
            raise errors.ToolError(f"{tool} not found (install {pkg}, see bindep.txt)")
    if not os.path.isdir(GRUB_DIR):
        raise errors.ToolError(f"{GRUB_DIR} not found (install grub-efi-amd64-bin, see bindep.txt)")
    boot_disk.find_mbr()


def syslinux_cfg(cmdline):
    return ("DEFAULT d2v\nPROMPT 0\nTIMEOUT 0\n"
            "LABEL d2v\n"
            "  KERNEL /vmlinuz\n"
            f"  INITRD /initrd.img,/{CONFIG_CPIO}\n"
            f"  APPEND {cmdline}\n")


def grub_cfg(cmdline):
    """GRUB's embedded configuration: its root is the partition it was loaded from."""
    return (f"linux /vmlinuz {cmdline}\n"
            f"initrd /initrd.img /{CONFIG_CPIO}\n"
            "boot\n")


def guest_files(config, fs_uuid):
    """``{name: bytes}`` of the baked-in configuration (``etc/d2v/bundle/``):
    the config drive's ``docker2vm/`` files for this image with no server
    metadata, the rootfs as ``part:<UUID>``, and the image's own Entrypoint
    and Cmd (``entrypoint``, ``cmd``) so the guest can apply overrides."""
    rootfs = f"part:{fs_uuid}\n".encode()
    no_command = not config.argv()
    meta = {contract.META_CMD: json.dumps(["/bin/false"])} if no_command else {}
    # The delivery only fills docker2vm/rootfs, replaced below.
    files = contract.render_guest_files(config, "", meta, contract.RootfsDelivery.disk("bundle"))
    out = {k[len(contract.PREFIX):]: v for k, v in files.items()}
    out["rootfs"] = rootfs
    if no_command:   # the guest says so (127) unless the instance's metadata gives one
        out["argv"] = b""
    out["entrypoint"] = contract._nul_list(list(config.entrypoint or []), "Entrypoint")
    out["cmd"] = contract._nul_list(list(config.cmd or []), "Cmd")
    return out


def config_cpio(files):
    """The second initrd: ``etc/d2v/bundle/<name>`` for each file (no times, fixed inodes)."""
    buf = io.BytesIO()
    w = base_mod.CpioWriter(buf)
    w.dir(BUNDLE_DIR)
    for name in sorted(files):
        if name == "config.json":
            continue          # for people: on the boot partition instead
        w.file(f"{BUNDLE_DIR}/{name}", files[name], 0o644)
    w.close()
    return buf.getvalue()


def _volume_id(seed):
    return hashlib.sha256((seed + "|esp").encode()).hexdigest()[:8].upper()


def _copy_sparse(src, dst_fd, offset):
    """Copy the data extents of ``src`` into ``dst_fd`` at ``offset`` (holes stay holes)."""
    with open(src, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break                                 # only a hole is left
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            n, src_off = hole - data, data
            while n > 0:
                done = os.copy_file_range(fd, dst_fd, min(n, 64 * MIB), src_off, offset + src_off)
                if done <= 0:
                    raise errors.ToolError("copying the root filesystem into the bundle: "
                                           "short copy")
                n -= done
                src_off += done
            pos = hole


def _esp(raw, esp_bytes, stage, volume_id, fixed_time):
    """FAT16 boot partition at ESP_START inside ``raw``, with the files in ``stage``."""
    offset = ESP_START * SECTOR
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", SOURCE_DATE_EPOCH=str(fixed_time),
               LC_ALL="C", TZ="UTC")
    _run(["mkfs.vfat", "-F", "16", "--invariant", "-i", volume_id, "--offset", str(ESP_START),
          "-h", str(ESP_START), "-n", "D2VBOOT", raw, str(esp_bytes // 1024)], env=env)
    _run(["syslinux", "--install", "--offset", str(offset), raw], env=env)
    img = f"{raw}@@{offset}"
    for d in ("EFI", "EFI/BOOT", "docker2vm"):
        _run(["mmd", "-i", img, f"::{d}"], env=env)
    for rel in ("syslinux.cfg", "vmlinuz", "initrd.img", CONFIG_CPIO,
                "EFI/BOOT/BOOTX64.EFI", "docker2vm/config.json"):
        _run(["mcopy", "-o", "-i", img, os.path.join(stage, rel), f"::{rel}"], env=env)


def build_bundle(flatten, output, config, digest, created=None, disk_options=None,
                 base=None, base_dir=None, kernel_package=None, progress=None,
                 max_entries=None, tmp_prefix=None):
    """Write the bundle ``output`` (qcow2 or raw per ``disk_options.disk_format``).

    ``flatten(fileobj)`` writes the flattened rootfs tar (e.g. ``img.flatten``);
    ``config`` is the image's ContainerConfig and ``digest`` its config
    digest (both seed the reproducible ids); ``base`` a built
    :class:`~docker_rootfs.guest.base_image.BaseImage`, else one is built
    (or reused) in ``base_dir``. Returns a :class:`BundleResult`.
    """
    from docker_rootfs.disk import build_disk
    from docker_rootfs.disk.options import DiskOptions

    output_mod.check_replaceable(output)
    check_tools()
    t0 = time.monotonic()
    timings = {}
    progress = progress or (lambda fraction, message: None)
    options = disk_options or DiskOptions()
    fmt = options.disk_format
    if base is None:
        if not base_dir:
            raise errors.Docker2VMError("bundle: a base image directory is needed")
        progress(0.0, "base image")
        os.makedirs(base_dir, exist_ok=True)
        # One builder at a time (concurrent Glance imports share the directory).
        with open(os.path.join(base_dir, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            base = base_mod.build_base_image(base_dir, kernel_package=kernel_package)
        timings["base"] = time.monotonic() - t0
    out_dir = os.path.dirname(os.path.abspath(output)) or "."
    work = tempfile.mkdtemp(prefix=tmp_prefix or "docker2vm-bundle-",
                            dir=options.tmp_dir or tempfile.gettempdir())
    partial = None
    try:
        # 1. The root filesystem (raw ext4), by the disk builder.
        t = time.monotonic()
        rootfs_raw = os.path.join(work, "rootfs.raw")
        result = build_disk(flatten, rootfs_raw,
                            dataclasses.replace(options, disk_format="raw", tmp_dir=work),
                            digest=digest, created=created, progress=progress,
                            max_entries=max_entries)
        timings["rootfs"] = time.monotonic() - t
        t = time.monotonic()
        progress(0.9, "boot partition")
        # 2. The boot partition's files.
        stage = os.path.join(work, "esp")
        os.makedirs(os.path.join(stage, "EFI", "BOOT"))
        os.makedirs(os.path.join(stage, "docker2vm"))
        files = guest_files(config, result.fs_uuid)
        with open(os.path.join(stage, CONFIG_CPIO), "wb") as f:
            f.write(config_cpio(files))
        with open(os.path.join(stage, "docker2vm", "config.json"), "wb") as f:
            f.write(files["config.json"])
        with open(os.path.join(stage, "syslinux.cfg"), "w") as f:
            f.write(syslinux_cfg(base.cmdline))
        for src, name in ((base.kernel, "vmlinuz"), (base.initrd, "initrd.img")):
            shutil.copyfile(src, os.path.join(stage, name))
        gcfg = os.path.join(work, "grub.cfg")
        with open(gcfg, "w") as f:
            f.write(grub_cfg(base.cmdline))
        _run(["grub-mkimage", "-O", "x86_64-efi", "-d", GRUB_DIR, "-p", "/EFI/BOOT", "-c", gcfg,
              "-o", os.path.join(stage, "EFI", "BOOT", "BOOTX64.EFI"), *GRUB_MODULES])
        payload = sum(os.path.getsize(os.path.join(r, n))
                      for r, _, names in os.walk(stage) for n in names)
        esp_bytes = -(-(payload + ESP_SLACK) // MIB) * MIB
        root_start = ESP_START * SECTOR + esp_bytes
        root_bytes = os.path.getsize(rootfs_raw)
        total = root_start + root_bytes
        # 3. The disk: table, boot code, boot partition, root partition.
        raw = os.path.join(work, "bundle.raw")
        with open(raw, "wb") as f:
            f.truncate(total)
        label_id = "0x" + _volume_id(result.seed + "|mbr").lower()
        _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", raw],
             input=(f"label: dos\nlabel-id: {label_id}\n"
                    f"start={ESP_START}, size={esp_bytes // SECTOR}, type=ef, bootable\n"
                    f"start={root_start // SECTOR}, size={root_bytes // SECTOR}, type=83\n"
                    ).encode())
        with open(boot_disk.find_mbr(), "rb") as f:
            code = f.read()[:440]
        with open(raw, "r+b") as f:
            f.write(code)
        _esp(raw, esp_bytes, stage, _volume_id(result.seed),
             max(result.fixed_time, FAT_EPOCH_MIN))
        if fmt == "raw":
            with open(raw, "r+b") as f:
                _copy_sparse(rootfs_raw, f.fileno(), root_start)
            os.unlink(rootfs_raw)
        else:
            os.truncate(raw, root_start)     # the head: table + boot partition
        timings["boot"] = time.monotonic() - t
        # 4. Output, renamed into place.
        t = time.monotonic()
        fd, partial = tempfile.mkstemp(prefix=".docker2vm-", suffix="." + fmt, dir=out_dir)
        os.close(fd)
        if fmt == "raw":
            try:
                os.replace(raw, partial)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # tmp_dir on another filesystem: a sparse copy
                _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "raw", raw, partial])
        else:
            cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"]
            if options.qcow2_compress:
                cmd.append("-c")
            _run(cmd + [raw, rootfs_raw, partial])     # qemu-img concatenates its inputs
        os.chmod(partial, 0o644)
        os.replace(partial, output)
        partial = None
        timings["convert"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t0
        return BundleResult(path=output, disk_format=fmt, virtual_size=total,
                            file_size=os.stat(output).st_size, rootfs_size=root_bytes,
                            esp_size=esp_bytes, fs_uuid=result.fs_uuid,
                            kernel_version=base.version, timings=timings)
    finally:
        if partial:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
        shutil.rmtree(work, ignore_errors=True)


# Glance properties that help stock Nova boot a bundle (doc/source/properties.md).
NOVA_PROPERTIES = {
    "hw_disk_bus": "virtio",     # the guest finds its rootfs partition on virtio (or SCSI)
    "hw_vif_model": "virtio",    # d2vinit's DHCP client; the initramfs has virtio_net only
}


def bundle_properties(config):
    """The Glance properties of a bundle image (docker_delivery=bundle)."""
    from docker_rootfs.properties import image_properties
    props = image_properties(config, delivery="bundle")
    props.update(NOVA_PROPERTIES)
    return props
