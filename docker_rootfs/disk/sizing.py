"""How big the filesystem must be, and with how many inodes.

Size = content (file data, directory blocks, long symlinks, xattr blocks)
+ inode tables + journal + per-group metadata + free space (the larger of
the absolute and the percentage knob), rounded up to a MiB, at least the
configured minimum. Inodes are counted, not defaulted: one per entry of the
tree plus the reserved ones, plus one per 16 KiB of free space (ext4's
default ratio) so the guest can create files in the free space too.
"""

import dataclasses
import math

from docker_rootfs import errors
from docker_rootfs.disk.tarscan import BLOCK

MiB = 1024 ** 2
INODE_SIZE = 256
BLOCKS_PER_GROUP = 32768
FREE_BYTES_PER_INODE = 16384
RESERVED_INODES = 11          # ext4's first usable inode number
# Smallest filesystem made whatever min_size_mib says: the smallest ext4
# journal (1024 blocks) must stay well under half the filesystem.
FLOOR_BYTES = 16 * MiB
DIRENT_BLOCK_PAYLOAD = BLOCK - 12 - 12   # "." and ".." (first block) and csum tail


@dataclasses.dataclass(frozen=True)
class Geometry:
    size_bytes: int
    inodes: int
    journal_blocks: int
    content_bytes: int       # what the tree needs, metadata included
    used_inodes: int

    @property
    def size_mib(self):
        return self.size_bytes // MiB


def dir_blocks(dir_bytes):
    total = 0
    for used in dir_bytes.values():
        # ext2fs_link packs entries linearly; leave slack for padding and for
        # the last entry of each block not fitting exactly.
        total += max(1, math.ceil(used * 1.1 / DIRENT_BLOCK_PAYLOAD))
    return total


def journal_blocks_for(total_blocks):
    """The journal mke2fs would pick (ext2fs_default_journal_size), min 4 MiB."""
    if total_blocks < 32768:
        return 1024
    if total_blocks < 256 * 1024:
        return 4096
    if total_blocks < 512 * 1024:
        return 8192
    if total_blocks < 4096 * 1024:
        return 16384
    return 32768


def _backup_groups(groups):
    n = 1 if groups > 0 else 0
    for base in (3, 5, 7):
        g = 1 if base == 3 else base   # groups 0, 1, and powers of 3, 5, 7
        while g < groups:
            n += 1
            g *= base
    return n


def _metadata_blocks(total_blocks, inodes):
    groups = max(1, math.ceil(total_blocks / BLOCKS_PER_GROUP))
    desc_blocks = math.ceil(groups * 64 / BLOCK)
    max_groups = math.ceil(min(2 ** 32, total_blocks * 1024) / BLOCKS_PER_GROUP)
    rsv_gdt = min(1024, max(0, math.ceil(max_groups * 64 / BLOCK) - desc_blocks))
    backups = _backup_groups(groups)
    itable = math.ceil(inodes * INODE_SIZE / BLOCK)
    return groups * 2 + backups * (1 + desc_blocks + rsv_gdt) + itable + 16


def compute(stats, options):
    """Geometry for a tree described by ``stats`` (a TarStats)."""
    content_blocks = (stats.data_blocks + stats.symlink_blocks + stats.xattr_blocks
                      + dir_blocks(stats.dir_bytes) + 2)          # + lost+found
    content_bytes = content_blocks * BLOCK
    used_inodes = stats.inodes + RESERVED_INODES + 1
    if options.size_mib:
        size = options.size_mib * MiB
        if size < FLOOR_BYTES or size < content_bytes:
            raise errors.LimitExceeded(
                "size_mib", options.size_mib, "smaller than needed",
                f"the image does not fit: needs at least "
                f"{max(FLOOR_BYTES, content_bytes) // MiB + 1} MiB")
        free = max(0, size - content_bytes)
    else:
        free = max(options.free_space_mib * MiB,
                   content_bytes * options.free_space_percent // 100)
    inodes = used_inodes + free // FREE_BYTES_PER_INODE + 16
    inodes = max(inodes, 256)
    if options.size_mib:
        total_blocks = size // BLOCK
        journal = journal_blocks_for(total_blocks)
        return Geometry(size, inodes, journal, content_bytes, used_inodes)
    blocks = content_blocks + free // BLOCK
    # Two rounds: metadata depends on the size, the journal on the total.
    total = blocks
    for _ in range(3):
        journal = journal_blocks_for(total)
        meta = _metadata_blocks(total, inodes)
        total = blocks + journal + meta
        total += total // 100            # 1% slack for allocation granularity
    size = math.ceil(total * BLOCK / MiB) * MiB
    size = max(size, options.min_size_mib * MiB, FLOOR_BYTES)
    return Geometry(size, inodes, journal, content_bytes, used_inodes)


def grow(geometry, factor=1.25):
    """A bigger geometry after an out-of-space retry."""
    size = math.ceil(geometry.size_bytes * factor / MiB) * MiB
    return dataclasses.replace(geometry, size_bytes=size,
                               inodes=int(geometry.inodes * factor) + 64,
                               journal_blocks=journal_blocks_for(size // BLOCK))
