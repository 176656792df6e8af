"""Bounds applied to tenant archives.

One definition serves both worlds: :class:`Limits` is a plain dataclass the
core uses directly, and :func:`docker_rootfs.opts.list_opts` turns the same
fields (with their help text) into oslo.config options.
"""

import dataclasses

from docker_rootfs import errors

GiB = 1024 ** 3
MiB = 1024 ** 2


def _limit(default, help_text):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Limits:
    max_layers: int = _limit(
        256, "Most layers one image may have.")
    max_entries: int = _limit(
        2_000_000, "Most tar entries in all layers of one image together.")
    max_total_bytes: int = _limit(
        64 * GiB, "Most uncompressed bytes in all layers of one image together.")
    max_file_size: int = _limit(
        32 * GiB, "Largest single file (uncompressed) in a layer.")
    max_path_length: int = _limit(
        4096, "Longest path (bytes, UTF-8) of a layer entry or link target.")
    max_path_depth: int = _limit(
        256, "Most path components of a layer entry.")
    max_compression_ratio: int = _limit(
        250, "Largest uncompressed/compressed ratio of one compressed blob, "
             "and of all compressed layers of an image together (each checked "
             "after its first 64 MiB of output), against decompression bombs.")
    max_json_size: int = _limit(
        8 * MiB, "Largest manifest, index or config JSON document read.")
    max_archive_entries: int = _limit(
        100_000, "Most members of the outer image archive itself.")

    @classmethod
    def fields(cls):
        return dataclasses.fields(cls)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# Decompressed bytes allowed before the compression ratio is enforced: small
# layers (an empty tar is 1 KiB of zeros, 30 bytes gzipped) legitimately
# have huge ratios.
RATIO_GRACE_BYTES = 64 * MiB

# Symlinks followed while resolving one path inside the image root (Linux's
# own limit).
MAX_SYMLINK_HOPS = 40

# Device numbers Linux (and ext4's inode encoding) can hold: a 12-bit major
# and a 20-bit minor; tar's base-256 fields hold any number.
MAX_DEV_MAJOR = 0xFFF
MAX_DEV_MINOR = 0xFFFFF
# Owners ext4 can record: 32-bit uid and gid.
MAX_ID = 0xFFFFFFFF


def check_device_number(tarinfo):
    """Refuse a device entry whose number Linux cannot hold (the flattener
    and the disk builder's tar scan both apply it; found by fuzzing)."""
    if not (0 <= tarinfo.devmajor <= MAX_DEV_MAJOR and 0 <= tarinfo.devminor <= MAX_DEV_MINOR):
        raise errors.ArchiveError(f"device {tarinfo.name!r} has an invalid number "
                                  f"{tarinfo.devmajor}:{tarinfo.devminor}")
