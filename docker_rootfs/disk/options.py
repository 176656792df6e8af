"""Knobs of the rootfs disk builders.

One definition serves both worlds, like :mod:`docker_rootfs.limits`:
:class:`DiskOptions` is a plain dataclass the core uses directly, and
:func:`docker_rootfs.opts.list_opts` turns its fields (type, default, help
text, allowed choices) into oslo.config options of the ``docker_disk`` group.
"""

import dataclasses

MiB = 1024 ** 2

BUILDER_CHOICES = ("auto", "ext2fs", "mke2fs-dir", "mke2fs-tar", "guestfs")
FORMAT_CHOICES = ("qcow2", "raw")


def _opt(default, help_text, choices=None):
    meta = {"help": help_text}
    if choices:
        meta["choices"] = choices
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class DiskOptions:
    builder: str = _opt(
        "auto", "How to build the ext4 filesystem: 'ext2fs' (in-process libext2fs, "
        "unprivileged, no host extraction; the default), 'mke2fs-dir' (extract then "
        "mke2fs -d; needs root or fakeroot), 'mke2fs-tar' (mke2fs -d TARBALL, "
        "e2fsprogs >= 1.47.1 built with libarchive), 'guestfs' (libguestfs appliance "
        "VM, strongest isolation, slow) or 'auto'.", BUILDER_CHOICES)
    disk_format: str = _opt(
        "qcow2", "Format of the produced disk: qcow2 or raw.", FORMAT_CHOICES)
    qcow2_compress: bool = _opt(
        False, "Compress qcow2 clusters (smaller upload, slower conversion and reads).")
    size_mib: int = _opt(
        0, "Fixed filesystem size in MiB; 0 computes it from the content plus free space.")
    free_space_mib: int = _opt(
        64, "Free space (MiB) left in the filesystem on top of the content.")
    free_space_percent: int = _opt(
        10, "Free space as a percentage of the content size; the larger of this and "
        "free_space_mib is used.")
    min_size_mib: int = _opt(
        32, "Smallest filesystem made, in MiB.")
    tmp_dir: str = _opt(
        "", "Directory for temporary files (the raw filesystem image, a spooled tar); "
        "empty means the system default. Free space is checked before starting.")
    label: str = _opt(
        "docker-rootfs", "ext4 volume label (at most 16 bytes).")
    fsck: bool = _opt(
        True, "Check the built filesystem with 'e2fsck -fn' before converting it.")

    @classmethod
    def fields(cls):
        return dataclasses.fields(cls)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)
