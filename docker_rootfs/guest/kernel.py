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
import re
import shutil
import subprocess
import tempfile
import zlib

from docker_rootfs import errors
from docker_rootfs.guest import tools

LOG = logging.getLogger(__name__)

# Debian's kernel for cloud VMs: ext4, jbd2 and crc32c are built in (about
# 0.2 s of module loading saved per boot under TCG), and it boots faster than
# the generic flavor. It has no 9p and no SATA AHCI: base images for 9p shares
# or q35 SATA config drives take the generic ``linux-image-amd64``.
META_PACKAGE = "linux-image-cloud-amd64"
GENERIC_PACKAGE = "linux-image-amd64"


@dataclasses.dataclass
class Kernel:
    version: str        # e.g. "6.1.0-56-amd64"
    vmlinuz: str        # bzImage (BIOS/bootloader, qemu -kernel)
    vmlinux: str        # uncompressed ELF with the PVH note (qemu -kernel, fastest)
    modules_dir: str    # .../lib/modules/<version>
    config: str         # the kernel's .config



def _run(cmd, **kw):
    return tools.run(cmd, text=True, **kw)


def _versioned(package):
    """``linux-image-6.1.0-56-amd64`` is; the meta ``linux-image-amd64`` is not."""
    return re.match(r"^linux-image-\d", package) is not None


def resolve_package(package=None):
    """The versioned linux-image package behind ``package`` (a meta package
    such as ``linux-image-amd64`` or ``linux-image-cloud-amd64``, default
    :data:`META_PACKAGE`); a versioned package is returned as it is."""
    package = package or META_PACKAGE
    if _versioned(package):
        return package
    out = _run(["apt-cache", "depends", package]).stdout
    if "Depends:" not in out:
        _run(["apt-get", "update", "-q"])
        out = _run(["apt-cache", "depends", package]).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and _versioned(line.split()[1]):
            return line.split()[1]
    raise errors.ToolError(f"cannot tell which kernel {package} depends on")


def _cached_flavor(cache_dir, meta):
    """A cached kernel of the flavor of meta package ``meta`` (offline reuse)."""
    flavor = meta[len("linux-image-"):]
    pattern = re.compile(r"^kernel-linux-image-[0-9][0-9.]*-[0-9]+-" + re.escape(flavor) + "$")
    for kdir in sorted(glob.glob(os.path.join(cache_dir, "kernel-linux-image-*")), reverse=True):
        if pattern.match(os.path.basename(kdir)):
            k = _find(kdir)
            if k:
                return k
    return None


def _xz(data):
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _zstd(data):
    import zstandard
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _gzip(data):
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _lz4_legacy(data):
    """The kernel's LZ4 (legacy frame): with the ``lz4`` tool (bindep: lz4)."""
    if not shutil.which("lz4"):
        raise errors.ToolError("this kernel is LZ4-compressed: the lz4 tool is needed (apt-get install lz4)")
    # The bzImage has bytes after the stream: lz4 decodes it, then complains.
    return subprocess.run(["lz4", "-dc"], input=data, capture_output=True).stdout


# bzImage payload formats Debian uses (generic: xz; cloud: lz4), by magic.
PAYLOADS = ((b"\xfd7zXZ\x00", _xz), (b"\x02\x21\x4c\x18", _lz4_legacy),
            (b"\x28\xb5\x2f\xfd", _zstd), (b"\x1f\x8b\x08", _gzip))


def extract_vmlinux(vmlinuz, dest):
    """Write the uncompressed ELF kernel found inside a bzImage."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    found = sorted((data.find(magic), fn) for magic, fn in PAYLOADS if data.find(magic) >= 0)
    for i, fn in found:
        try:
            out = fn(data[i:])
        except (lzma.LZMAError, zlib.error, ValueError, OSError):
            continue
        if out[:4] == b"\x7fELF":
            tmp = dest + ".tmp"
            with open(tmp, "wb") as f:
                f.write(out)
            os.replace(tmp, dest)
            return dest
    raise errors.ToolError(f"{vmlinuz}: no compressed ELF kernel (xz, lz4, zstd, gzip) inside")


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
    if not _versioned(package or META_PACKAGE):
        # Reuse a cached kernel of that flavor before asking apt (offline-friendly).
        k = _cached_flavor(cache_dir, package or META_PACKAGE)
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
