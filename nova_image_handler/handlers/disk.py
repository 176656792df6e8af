"""``docker_delivery=disk`` (Approach 2): the image is the rootfs disk.

The Glance image (ext4 in qcow2) is the instance's ordinary root disk:
Nova's image backend downloads it once per host into ``_base`` (under its
per-base lock), gives each instance a copy-on-write overlay sized to the
flavor's root disk, and its image cache manager keeps and removes the base.
With ``images_type=rbd`` the same code clones it in Ceph. This handler only
gives that disk the serial the guest looks for.
"""

from docker_rootfs.guest.contract import RootfsDelivery
from nova_image_handler import guestxml
from nova_image_handler.handlers import base


class DiskHandler(base.ImageHandler):
    name = "disk"

    def rootfs_delivery(self):
        return RootfsDelivery.disk(self.opts.disk_serial)

    def configure_guest(self, guest, paths):
        guestxml.set_disk_serial(guest, paths["root_dev"], self.opts.disk_serial)
