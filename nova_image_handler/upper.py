"""A ``share`` instance's own writable disk: the overlay's upper layer.

The shared tree of a ``docker_delivery=share`` image is read-only and
shared by every instance of the image on the host; each instance's writes
go to ``<instance dir>/disk.docker2vm-upper``: a sparse raw file sized to
the flavor's root disk (``[docker2vm] upper_default_gb`` when root_gb is
0), formatted here as an empty ext4 (``mke2fs`` on a file needs no root),
attached as a virtio disk with ``<serial>`` ``[docker2vm] upper_serial``.
The guest mounts it and keeps ``upper/`` and ``work/`` of its overlayfs
there (docker2vm/upper = disk:SERIAL, doc/source/guest-contract.md).

It lives in the instance directory, so it survives stop/start and hard
reboot (kept when it exists; re-created empty if it went missing) and is
removed with the directory by Nova on delete and rebuild.
"""

import os

from oslo_concurrency import processutils

from nova_image_handler import guestxml

UPPER_NAME = "disk.docker2vm-upper"
GiB = 1024 ** 3


def upper_path(instance_dir):
    return os.path.join(instance_dir, UPPER_NAME)


def size_bytes(instance, default_gb):
    flavor = getattr(instance, "flavor", None)
    root_gb = getattr(flavor, "root_gb", 0) or 0
    return int(root_gb or default_gb) * GiB


def create(instance_dir, size):
    """The instance's upper disk (kept if it exists). Returns its path."""
    path = upper_path(instance_dir)
    if os.path.exists(path):
        return path
    tmp = path + ".part"
    try:
        with open(tmp, "wb") as f:
            f.truncate(size)
        # The file is sparse, so all zeros: no need to write the journal
        # (mke2fs punches holes for the inode tables: marked zeroed too).
        processutils.execute("mke2fs", "-t", "ext4", "-F", "-q", "-m", "0",
                             "-E", "lazy_journal_init=1", tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def add_disk(guest, path, serial):
    """The upper disk as a raw virtio disk carrying ``serial``."""
    from nova.virt.libvirt import config as vconfig
    disk = vconfig.LibvirtConfigGuestDisk()
    disk.source_type = "file"
    disk.source_device = "disk"
    disk.source_path = path
    disk.driver_name = "qemu"
    disk.driver_format = "raw"
    disk.driver_cache = "none"
    disk.target_bus = "virtio"
    disk.target_dev = guestxml.free_virtio_dev(guest)
    disk.serial = serial
    guest.add_device(disk)
    return disk
