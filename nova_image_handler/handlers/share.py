"""``docker_delivery=share`` (Approach 1): the unpacked image, shared read-only.

The Glance image is a docker archive. Nova's image backend downloads it
once per host into ``_base`` like any root disk (its per-base lock: one
download for many concurrent spawns); this handler then unpacks it, once
per image per host under a lock (:mod:`nova_image_handler.unpack`, the
shared core's flattener with the import's limits), and exports the tree
read-only to the guest by virtiofs (libvirt starts virtiofsd sandboxed;
guest memory becomes shared memfd) or 9p. The guest puts an overlay on
top (doc/source/guest-contract.md) whose upper layer is the instance's own disk
(:mod:`nova_image_handler.upper`, ``disk.docker2vm-upper`` in the instance
directory, serial ``[docker2vm] upper_serial``): the container's writes
persist across stop/start and hard reboot and go with the instance
directory on rebuild and delete.
The tree is a read-only bind mount (``[docker2vm] share_readonly_mount``):
virtiofs itself cannot export read-only with QEMU 7.2 / libvirt 9.0.
"""

import os

from nova.conf import CONF as NOVA_CONF
from nova.virt.libvirt import utils as libvirt_utils

from docker_rootfs.guest.contract import RootfsDelivery
from nova_image_handler import errors, guestxml, unpack, upper
from nova_image_handler.handlers import base


class ShareHandler(base.ImageHandler):
    name = "share"

    @property
    def kind(self):
        return self.opts.share_driver

    @property
    def share_dir(self):
        return self.opts.share_dir or os.path.join(NOVA_CONF.instances_path,
                                                   unpack.DEFAULT_DIR_NAME)

    def check_host(self):
        if self.kind == "virtiofs":
            path = self.opts.virtiofsd_path
            if not path or not os.access(path, os.X_OK):
                raise errors.HostError(
                    reason=f"docker_delivery=share with [docker2vm] share_driver = virtiofs "
                           f"needs virtiofsd: [docker2vm] virtiofsd_path = {path} is not an "
                           "executable on this host (Debian: qemu-system-common), or set "
                           "share_driver = 9p")
        if NOVA_CONF.libvirt.images_type not in ("default", "qcow2", "raw", "flat"):
            raise errors.HostError(
                reason="docker_delivery=share needs the archive on local disk: "
                       f"[libvirt] images_type = {NOVA_CONF.libvirt.images_type} is not "
                       "supported for share images (use docker_delivery=disk)")

    def rootfs_delivery(self):
        if self.kind == "virtiofs":
            return RootfsDelivery.virtiofs(self.opts.share_tag)
        return RootfsDelivery.share_9p(self.opts.share_tag)

    def upper_serial(self):
        return self.opts.upper_serial

    def _upper(self, instance):
        """Create the instance's upper disk unless it exists; its path."""
        return upper.create(libvirt_utils.get_instance_path(instance),
                            upper.size_bytes(instance, self.opts.upper_default_gb))

    def prepare(self, context, instance, spec, root_base_path):
        from docker_rootfs import errors as core_errors
        from docker_rootfs import opts as core_opts
        try:
            unpack.ensure_tree(self.share_dir, spec.image_id, root_base_path,
                               core_opts.limits_from_conf(self.conf),
                               read_only_mount=self.opts.share_readonly_mount)
        except core_errors.Docker2VMError as exc:
            # unsafe entry, limit exceeded, not an archive: the image's fault
            raise errors.ImageError(
                image_id=spec.image_id,
                reason=f"docker_delivery=share: the image's archive cannot be unpacked: "
                       f"{exc}") from None
        self._upper(instance)

    def guest_paths(self, instance, spec):
        path = unpack.tree_path(self.share_dir, spec.image_id)
        if self.opts.share_readonly_mount and os.path.isdir(path):
            # again at every (re)boot: a host reboot drops the bind mount
            unpack.ensure_read_only(path)
        paths = {"share": path}
        if os.path.isdir(libvirt_utils.get_instance_path(instance)):
            # kept by stop/start and hard reboot; re-created (empty) if it
            # went missing, before Nova stats the XML's disks
            paths["upper"] = self._upper(instance)
        return paths

    def configure_guest(self, guest, paths):
        guestxml.add_share(guest, self.kind, paths["share"], self.opts.share_tag,
                           self.opts.virtiofsd_path if self.kind == "virtiofs" else None)
        if paths.get("upper"):
            upper.add_disk(guest, paths["upper"], self.opts.upper_serial)

    def manage_cache(self, used_image_ids):
        return unpack.remove_unused(self.share_dir, used_image_ids,
                                    self.opts.share_unused_minimum_age_seconds)
