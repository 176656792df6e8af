"""Build the docker2vm base VM: kernel + initramfs, and a BIOS boot disk.

Everything comes from Debian's own packages: the kernel (see
:mod:`docker_rootfs.guest.kernel`), busybox-static (the host's
``/bin/busybox`` from the ``busybox-static`` package, or one fetched with
``apt-get download``), plus ``d2vinit``, a small static C supervisor
compiled here with ``gcc -static`` (why C: see ``d2vinit.c``).

The initramfs holds only the modules the guest contract needs, resolved
with their dependencies from the modules' own ``.modinfo`` (no depmod), in
load groups that ``d2vinit`` (the initramfs's /init) loads on demand.
"""

import dataclasses
import glob
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tempfile

from docker_rootfs import errors
from docker_rootfs.guest import boot_disk as boot_disk_mod
from docker_rootfs.guest import kernel as kernel_mod
from docker_rootfs.guest.tools import run as _run

LOG = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))

# Load groups: modules d2vinit loads (with their dependencies) on demand.
MODULE_GROUPS = {
    # Always: PCI virtio disks/NICs, power button. (d2vinit reads an
    # iso9660 config drive's Joliet tree itself.)
    "base": ["virtio_pci", "virtio_blk", "virtio_net", "button", "evdev"],
    # An iso9660 config drive without Joliet: mounted.
    "iso9660": ["isofs"],
    # A config drive on an IDE (pc) or SATA (q35) cdrom, as stock Nova attaches it.
    "cdrom": ["ata_piix", "ahci", "sr_mod"],
    # A vfat config drive (Nova's config_drive_format=vfat).
    "vfat": ["vfat", "nls_cp437", "nls_ascii", "nls_utf8"],
    "disk": ["crc32c_generic", "ext4"],
    "9p": ["9pnet_virtio", "9p"],
    "virtiofs": ["virtiofs"],
    "overlay": ["overlay"],
}

KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 acpi=noirq"

BUSYBOX_APPLETS = None  # all of them: busybox --list




# -- cpio (newc) writer: no root needed for /dev/console ----------------------
class CpioWriter:
    def __init__(self, fileobj):
        self.f = fileobj
        self.ino = 1000
        self.seen = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        self.ino += 1
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
            len(name_b), 0))
        self.f.write(hdr.encode() + name_b)
        self.f.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        self.f.write(data)
        self.f.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dir(self, name):
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.seen:
                self.seen.add(p)
                self._entry(p, 0o040755, nlink=2)

    def file(self, name, data, mode=0o644):
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target):
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def close(self):
        self._entry("TRAILER!!!", 0)
        pad = (512 - self.f.tell() % 512) % 512 if hasattr(self.f, "tell") else 0
        self.f.write(b"\0" * pad)


# -- modules -------------------------------------------------------------------
def _modinfo(path):
    with open(path, "rb") as f:
        data = f.read()
    info = {}
    for key in (b"depends=", b"softdep="):
        i = data.find(b"\0" + key)
        if i >= 0:
            end = data.index(b"\0", i + 1)
            info[key[:-1].decode()] = data[i + 1 + len(key):end].decode()
    return info


def _module_index(modules_dir):
    index = {}
    for path in glob.glob(os.path.join(modules_dir, "kernel", "**", "*.ko"), recursive=True):
        index[os.path.basename(path)[:-3].replace("-", "_")] = path
    return index


SOFTDEP_ALIASES = {"crypto-crc32c": "crc32c_generic"}

MODULE_SIG_MAGIC = b"~Module signature appended~\n"


def strip_module_signature(data):
    """The module without its appended signature (struct module_signature:
    algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len).

    The kernel does not enforce signatures (MODULE_SIG_FORCE unset, no
    lockdown), and verifying them (SHA-256 over the whole module, RSA) is
    about 0.2 s of the guest's boot under TCG; an unsigned module only sets
    the kernel's taint flag E."""
    if not data.endswith(MODULE_SIG_MAGIC) or len(data) < len(MODULE_SIG_MAGIC) + 12:
        return data
    info = data[-len(MODULE_SIG_MAGIC) - 12:-len(MODULE_SIG_MAGIC)]
    signer_len, key_id_len = info[3], info[4]
    sig_len = int.from_bytes(info[8:12], "big")
    end = len(data) - len(MODULE_SIG_MAGIC) - 12 - sig_len - signer_len - key_id_len
    return data[:end] if end > 0 else data


# Sections the guest never needs, dropped from every module with objcopy:
# BTF (BPF type info; parsed and checked at load), ORC unwind tables and
# their relocations (only for stack traces through module code; sorted at
# load), and local symbols (kallsyms). Loading ext4 and its dependencies
# went from about 0.43 s to 0.29 s under TCG.
SLIM_OBJCOPY_ARGS = ("--remove-section=.BTF", "--remove-section=.orc_unwind",
                     "--remove-section=.orc_unwind_ip", "--remove-section=.rela.orc_unwind_ip",
                     "--strip-unneeded")


def slim_module(data, tmp_dir):
    """``data`` (a module without its signature) minus what the guest never
    needs (:data:`SLIM_OBJCOPY_ARGS`)."""
    fd, path = tempfile.mkstemp(suffix=".ko", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _run(["objcopy", *SLIM_OBJCOPY_ARGS, path])
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _builtin(modules_dir):
    """Names of the modules built into the kernel (``modules.builtin``)."""
    try:
        with open(os.path.join(modules_dir, "modules.builtin")) as f:
            return {os.path.basename(l.strip())[:-3].replace("-", "_") for l in f if l.strip()}
    except OSError:
        return set()


def resolve_modules(modules_dir, names, missing=None):
    """Module paths for ``names`` and their dependencies, in load order.

    Modules built into the kernel need no file and are left out. A name the
    kernel has neither way raises, unless ``missing`` (a list) is given: then
    it is appended there and skipped."""
    index = _module_index(modules_dir)
    builtin = _builtin(modules_dir)
    order, seen = [], set()

    def visit(name, chain=()):
        name = SOFTDEP_ALIASES.get(name, name).replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin:
                return
            if missing is not None and not chain:
                missing.append(name)
                return
            raise errors.ToolError(f"kernel module {name} not found in {modules_dir}")
        info = _modinfo(index[name])
        for dep in filter(None, info.get("depends", "").split(",")):
            visit(dep, chain + (name,))
        order.append(index[name])

    for n in names:
        visit(n)
    return order


# -- pieces --------------------------------------------------------------------
D2VINIT_SOURCES = ("d2vinit.c", "dhcp.c", "d2vutil.c")


def compile_d2vinit(dest):
    _run(["gcc", "-static", "-Os", "-s", "-Wall", "-pthread", "-o", dest,
          *(os.path.join(HERE, n) for n in D2VINIT_SOURCES)])
    return dest


def find_busybox(cache_dir):
    """A static busybox: the host's (busybox-static) or one from apt."""
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand):
            out = subprocess.run(["file", "-L", cand], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically linked"
            if "statically linked" in out or "static-pie" in out:
                return cand
    dest = os.path.join(cache_dir, "busybox-static", "bin", "busybox")
    if os.path.exists(dest):
        return dest
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        os.chmod(tmp, 0o755)
        _run(["apt-get", "download", "-q", "busybox-static"], cwd=tmp)
        deb = glob.glob(os.path.join(tmp, "*.deb"))[0]
        _run(["dpkg-deb", "-x", deb, os.path.join(cache_dir, "busybox-static")])
    return dest


def _applets(busybox):
    out = _run([busybox, "--list"]).stdout.decode()
    return [a for a in out.split() if a and a != "busybox"]


FLOOR_INIT = """#!/bin/sh
/bin/busybox echo docker2vm-floor
/bin/busybox poweroff -f
"""


@dataclasses.dataclass
class BaseImage:
    kernel: str        # compressed bzImage (vmlinuz)
    vmlinux: str       # uncompressed PVH ELF, fastest for qemu -kernel
    initrd: str
    cmdline: str
    version: str
    boot_disk: str = ""  # qcow2 BIOS boot disk (extlinux), if built


def _inputs_digest(busybox, k):
    h = hashlib.sha256()
    for p in (*(os.path.join(HERE, n) for n in D2VINIT_SOURCES + ("dhcp.h", "d2vutil.h")),
              os.path.join(HERE, "boot_disk.py"),
              os.path.abspath(__file__), busybox):
        with open(p, "rb") as f:
            h.update(f.read())
    h.update(k.version.encode())
    return h.hexdigest()[:16]


def build_initramfs(dest, k, busybox, d2vinit, init_script=None):
    """Write the initramfs (uncompressed newc cpio: fastest to unpack under TCG)."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "mnt", "etc/d2v", "lib/modules"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    with open(busybox, "rb") as f:
        w.file("bin/busybox", f.read(), 0o755)
    for a in _applets(busybox):
        w.symlink(f"bin/{a}", "busybox")
    if init_script is None:
        # /init is d2vinit itself (DHCP client included); busybox stays for
        # people debugging a guest (docker2vm.debug, rdinit=/bin/sh).
        with open(d2vinit, "rb") as f:
            w.file("bin/d2vinit", f.read(), 0o755)
        w.symlink("init", "bin/d2vinit")
        added = set()
        for group, names in MODULE_GROUPS.items():
            lines, missing = [], []
            paths = resolve_modules(k.modules_dir, names, missing)
            if missing:
                LOG.warning("kernel %s has no %s: %s", k.version, ", ".join(missing),
                            "left out" if len(missing) < len(names) else
                            f"guests of this base image cannot use '{group}'")
                if len(missing) == len(names):
                    continue      # no list file: d2vinit says the kernel lacks it
            for path in paths:
                base = os.path.basename(path)
                lines.append(base)
                if base not in added:
                    added.add(base)
                    with open(path, "rb") as f:
                        data = slim_module(strip_module_signature(f.read()),
                                           os.path.dirname(os.path.abspath(dest)))
                    w.file(f"lib/modules/{base}", data)
            w.file(f"lib/modules/{group}.list", ("\n".join(lines) + "\n").encode())
    else:
        w.file("init", init_script if isinstance(init_script, bytes) else init_script.encode(), 0o755)
    w.close()
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, dest)
    return dest


def build_floor_initramfs(dest, busybox):
    """The benchmark floor: same kernel, an init that prints one line and powers off."""
    return build_initramfs(dest, None, busybox, None, init_script=FLOOR_INIT)


def build_base_image(out_dir, cache_dir=None, boot_disk=False, kernel_package=None):
    """Build (or reuse) the kernel + initramfs pair in ``out_dir`` (and, with
    ``boot_disk``, ``boot.qcow2``: the same pair on a BIOS boot disk)."""
    out_dir = os.path.abspath(out_dir)
    cache_dir = os.path.abspath(cache_dir or out_dir)
    os.makedirs(out_dir, exist_ok=True)
    k = kernel_mod.fetch_kernel(cache_dir, kernel_package)
    busybox = find_busybox(cache_dir)
    digest = _inputs_digest(busybox, k)
    stamp = os.path.join(out_dir, ".inputs")
    initrd = os.path.join(out_dir, "initrd.img")
    img = BaseImage(kernel=os.path.join(out_dir, "vmlinuz"),
                    vmlinux=os.path.join(out_dir, "vmlinux"),
                    initrd=initrd, cmdline=KERNEL_CMDLINE, version=k.version)
    boot = os.path.join(out_dir, "boot.qcow2")
    fresh = (os.path.exists(stamp) and open(stamp).read() == digest
             and all(os.path.exists(p) for p in (img.kernel, img.vmlinux, initrd)))
    if not fresh:
        if os.path.exists(boot):
            os.unlink(boot)    # stale: other kernel, initramfs or builder
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            d2vinit = compile_d2vinit(os.path.join(tmp, "d2vinit"))
            build_initramfs(initrd, k, busybox, d2vinit)
        for src, dst in ((k.vmlinuz, img.kernel), (k.vmlinux, img.vmlinux)):
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        with open(os.path.join(out_dir, "cmdline"), "w") as f:
            f.write(KERNEL_CMDLINE + "\n")
        with open(stamp, "w") as f:
            f.write(digest)
    if boot_disk:
        if not os.path.exists(boot):
            boot_disk_mod.build_boot_disk(boot, img.kernel, initrd, KERNEL_CMDLINE)
        img.boot_disk = boot
    return img
