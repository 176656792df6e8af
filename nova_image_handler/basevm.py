"""The base VM every container boots: direct kernel boot or a boot disk.

* direct kernel boot (default): ``[docker2vm] base_kernel``, ``base_initrd``
  and ``base_cmdline`` on the compute host become ``<kernel>``,
  ``<initrd>``, ``<cmdline>``;
* ``[docker2vm] base_vm_image``: a qcow2 BIOS boot disk (``docker2vm
  base-image --boot-disk``); each instance boots its own qcow2 overlay
  ``<instance dir>/disk.docker2vm-base`` (backing file: the configured
  image, only read), removed with the instance directory.

:meth:`BaseVM.check` raises :class:`~nova_image_handler.errors.HostError`
naming the option and the path when a file is missing, before anything is
created for the instance.
"""

import dataclasses
import os

from oslo_concurrency import processutils

from nova_image_handler import errors, guestxml

OVERLAY_NAME = "disk.docker2vm-base"


@dataclasses.dataclass
class BaseVM:
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    image: str = ""

    @classmethod
    def from_conf(cls, conf):
        c = conf.docker2vm
        if c.base_vm_image:
            return cls(image=c.base_vm_image)
        return cls(kernel=c.base_kernel or "", initrd=c.base_initrd or "",
                   cmdline=c.base_cmdline or "")

    @property
    def direct(self):
        return not self.image

    def check(self):
        if self.image:
            wanted = [("base_vm_image", self.image)]
        else:
            wanted = [("base_kernel", self.kernel)]
            if self.initrd:
                wanted.append(("base_initrd", self.initrd))
        for option, path in wanted:
            if not path:
                raise errors.HostError(reason=f"[docker2vm] {option} is not set")
            if not os.path.isfile(path):
                raise errors.HostError(
                    reason=f"[docker2vm] {option} = {path}: no such file on this compute "
                           "host (make it with `docker2vm base-image`)")
            if not os.access(path, os.R_OK):
                raise errors.HostError(reason=f"[docker2vm] {option} = {path} is not readable")

    def overlay_path(self, instance_dir):
        return os.path.join(instance_dir, OVERLAY_NAME) if self.image else None

    def create_overlay(self, instance_dir):
        """The instance's overlay of ``base_vm_image`` (kept if it exists: hard
        reboot, start). Returns its path, or None for direct kernel boot."""
        path = self.overlay_path(instance_dir)
        if path is None or os.path.exists(path):
            return path
        tmp = path + ".part"
        try:
            processutils.execute("qemu-img", "create", "-f", "qcow2", "-F", "qcow2",
                                 "-b", os.path.abspath(self.image), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def configure_guest(self, guest, overlay_path=None):
        if self.image:
            if not overlay_path:
                raise ValueError("base_vm_image needs the instance's overlay path")
            guestxml.add_boot_disk(guest, overlay_path)
        else:
            guestxml.set_direct_boot(guest, self.kernel, self.initrd, self.cmdline)
