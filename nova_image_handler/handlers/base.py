"""The interface every image handler implements."""

import abc


class ImageHandler(abc.ABC):
    """How one ``docker_delivery`` gives the guest its container root.

    The driver calls, per instance: :meth:`check_host` (before anything is
    created: raise HostError naming the option/path), :meth:`prepare`
    (after Nova created the root disk from the image: e.g. unpack it),
    :meth:`rootfs_delivery` (what the guest is told, on its config drive),
    :meth:`guest_paths` and :meth:`configure_guest` (the domain XML:
    disks, filesystems, memory backing), and, from the image cache
    manager's periodic pass, :meth:`manage_cache`.
    """

    name = None

    def __init__(self, conf):
        self.conf = conf

    @property
    def opts(self):
        return self.conf.docker2vm

    def check_host(self):
        """Raise :class:`~nova_image_handler.errors.HostError` if this host cannot
        serve this delivery."""

    def prepare(self, context, instance, spec, root_base_path):
        """After Nova fetched the image into ``root_base_path`` (``_base``)."""

    @abc.abstractmethod
    def rootfs_delivery(self):
        """The :class:`docker_rootfs.guest.contract.RootfsDelivery` the guest reads."""

    def upper_serial(self):
        """Serial of the per-instance disk for the container's writes over a
        read-only share (``docker2vm/upper``), or None."""
        return None

    def guest_paths(self, instance, spec):
        """Host paths this handler puts into the XML (``share``: the tree)."""
        return {}

    @abc.abstractmethod
    def configure_guest(self, guest, paths):
        """Change the LibvirtConfigGuest; ``paths['root_dev']`` is Nova's root disk target."""

    def manage_cache(self, used_image_ids):
        """Remove per-host state of images no instance uses any more."""
