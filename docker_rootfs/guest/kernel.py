"""Fetch Debian's own kernel, without installing it.

``apt-get download linux-image-<abi>-amd64`` then ``dpkg-deb -x``; the
compressed ``vmlinuz`` (bzImage, boots from any BIOS loader) is kept and an
uncompressed PVH ``vmlinux`` is extracted from it, which QEMU boots directly
with ``-kernel`` noticeably faster under TCG (no in-guest decompression).

:func:`fetch_kernel` is importable on its own (other test suites use it to
boot a disk).
"""

import dataclasses
import glob
import logging
import lzma
import os
import shutil
import tempfile

from docker_rootfs import errors
from docker_rootfs.guest import tools

LOG = logging.getLogger(__name__)

META_PACKAGE = "linux-image-amd64"


@dataclasses.dataclass
class Kernel:
    version: str        # e.g. "6.1.0-56-amd64"
    vmlinuz: str        # bzImage (BIOS/bootloader, qemu -kernel)
    vmlinux: str        # uncompressed ELF with the PVH note (qemu -kernel, fastest)
    modules_dir: str    # .../lib/modules/<version>
    config: str         # the kernel's .config



def _run(cmd, **kw):
    return tools.run(cmd, text=True, **kw)


def resolve_package(package=None):
    """The versioned linux-image package the meta package depends on."""
    if package and package != META_PACKAGE:
        return package
    out = _run(["apt-cache", "depends", META_PACKAGE]).stdout
    if "Depends:" not in out:
        _run(["apt-get", "update", "-q"])
        out = _run(["apt-cache", "depends", META_PACKAGE]).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split()[1]
    raise errors.ToolError(f"cannot tell which kernel {META_PACKAGE} depends on")


def extract_vmlinux(vmlinuz, dest):
    """Write the uncompressed ELF kernel found inside a bzImage."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    for magic, fmt in ((b"\xfd7zXZ\x00", lzma.FORMAT_XZ),):
        i = data.find(magic)
        if i >= 0:
            out = lzma.LZMADecompressor(format=fmt).decompress(data[i:])
            if out[:4] == b"\x7fELF":
                tmp = dest + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(out)
                os.replace(tmp, dest)
                return dest
    raise errors.ToolError(f"{vmlinuz}: no xz-compressed ELF kernel inside")


def _find(kdir):
    vmlinuz = sorted(glob.glob(os.path.join(kdir, "root/boot/vmlinuz-*")))
    if not vmlinuz:
        return None
    version = os.path.basename(vmlinuz[-1])[len("vmlinuz-"):]
    k = Kernel(version=version, vmlinuz=vmlinuz[-1],
               vmlinux=os.path.join(kdir, f"vmlinux-{version}"),
               modules_dir=os.path.join(kdir, "root/lib/modules", version),
               config=os.path.join(kdir, "root/boot", f"config-{version}"))
    if not (os.path.exists(k.vmlinux) and os.path.isdir(k.modules_dir)):
        return None
    return k


def fetch_kernel(cache_dir, package=None):
    """Download and unpack Debian's kernel into ``cache_dir/kernel-<pkg>``.

    Returns a :class:`Kernel`. Cached: a second call does no download.
    ``package`` defaults to what ``linux-image-amd64`` depends on.
    """
    cache_dir = os.path.abspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    if package is None:
        # Reuse whatever is cached before asking apt (offline-friendly).
        for kdir in sorted(glob.glob(os.path.join(cache_dir, "kernel-linux-image-*"))):
            k = _find(kdir)
            if k:
                return k
    package = resolve_package(package)
    kdir = os.path.join(cache_dir, f"kernel-{package}")
    k = _find(kdir)
    if k:
        return k
    LOG.info("downloading %s", package)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user must be able to write
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        if not debs:
            raise errors.ToolError(f"apt-get download {package} produced no .deb")
        stage = os.path.join(tmp, "kdir")
        os.makedirs(stage)
        _run(["dpkg-deb", "-x", debs[0], os.path.join(stage, "root")])
        vmlinuz = sorted(glob.glob(os.path.join(stage, "root/boot/vmlinuz-*")))
        if not vmlinuz:
            raise errors.ToolError(f"{package} has no /boot/vmlinuz-*")
        version = os.path.basename(vmlinuz[-1])[len("vmlinuz-"):]
        extract_vmlinux(vmlinuz[-1], os.path.join(stage, f"vmlinux-{version}"))
        if os.path.exists(kdir):
            shutil.rmtree(kdir)
        os.rename(stage, kdir)
    k = _find(kdir)
    if not k:
        raise errors.ToolError(f"{package}: unpacked kernel is incomplete")
    return k
