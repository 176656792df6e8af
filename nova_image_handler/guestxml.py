"""The domain XML changes a docker2vm instance gets, as plain functions.

Both the driver (:class:`nova_image_handler.driver.Docker2VMDriver`, on top
of the stock ``LibvirtDriver._get_guest_config``) and :func:`domain_xml`
(standalone, for real-libvirtd tests and people) call the same
:func:`apply_container`, so what a real libvirtd is given by the tests is
what the driver gives Nova's ``defineXML``.

:func:`domain_xml` -- given an instance-like object (``name``, ``uuid``,
``flavor.memory_mb``, ``flavor.vcpus``), the image's properties, the base
VM (:class:`~nova_image_handler.basevm.BaseVM`) and the disk paths, returns
a complete domain XML::

    from nova_image_handler import guestxml, basevm
    xml = guestxml.domain_xml(
        instance, image_properties,
        basevm.BaseVM(kernel=".../vmlinux", initrd=".../initrd.img",
                      cmdline="console=ttyS0 ..."),      # or BaseVM(image=".../boot.qcow2")
        {"root": "/x/disk",                # disk: the rootfs qcow2 (its overlay)
         "config": "/x/disk.config",       # the config drive (iso9660)
         "base": "/x/disk.docker2vm-base", # base_vm_image only: the overlay to boot
         "share": "/x/tree",               # share: the unpacked tree
         "upper": "/x/disk.docker2vm-upper",  # share: the instance's upper disk
         "console": "/x/console.log"},
        share_driver="virtiofs")           # or "9p"
"""

from lxml import etree
from nova.virt.libvirt import config as vconfig

ROOT_DEV = "vda"


class MemfdMemoryBacking(vconfig.LibvirtConfigGuestMemoryBacking):
    """``<memoryBacking>`` with ``<source type='memfd'/>`` and shared access:
    what vhost-user-fs (virtiofs) needs; Nova has no memfd backing."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sharedaccess = True
        self.memfd = True

    def format_dom(self):
        root = super().format_dom()
        if self.memfd and not self.hugepages and not self.filesource:
            src = etree.Element("source", type="memfd")
            # <source> comes before <access> in libvirt's schema.
            access = root.find("access")
            if access is not None:
                access.addprevious(src)
            else:
                root.append(src)
        return root


class ShareFilesystem(vconfig.LibvirtConfigGuestDevice):
    """A read-only ``<filesystem>`` export of a host directory.

    9p: ``<driver type='path'/>``, ``accessmode='squash'`` (files are
    created with QEMU's credentials and no ownership change is passed
    through; nothing is written anyway: ``<readonly/>``). virtiofs:
    ``<driver type='virtiofs'/>``, libvirt starts ``<binary path=...>``
    sandboxed (``<sandbox mode='chroot'/>``) with ``xattr='off'``; no
    ``<readonly/>`` (libvirt 9.0 refuses it for virtiofs): the source is a
    read-only bind mount."""

    def __init__(self, kind, source_dir, tag, virtiofsd_path=None, **kwargs):
        super().__init__(root_name="filesystem", **kwargs)
        self.kind = kind
        self.source_dir = source_dir
        self.tag = tag
        self.virtiofsd_path = virtiofsd_path

    def format_dom(self):
        dev = super().format_dom()
        dev.set("type", "mount")
        if self.kind == "virtiofs":
            dev.set("accessmode", "passthrough")
            dev.append(etree.Element("driver", type="virtiofs", queue="1024"))
            binary = etree.Element("binary", xattr="off")
            if self.virtiofsd_path:
                binary.set("path", self.virtiofsd_path)
            binary.append(etree.Element("sandbox", mode="chroot"))
            dev.append(binary)
        else:
            dev.set("accessmode", "squash")
            dev.append(etree.Element("driver", type="path", wrpolicy="immediate"))
        dev.append(etree.Element("source", dir=self.source_dir))
        dev.append(etree.Element("target", dir=self.tag))
        if self.kind != "virtiofs":
            # libvirt 9.0 refuses <readonly/> with virtiofs ("virtiofs does
            # not yet support read-only mode"), and the C virtiofsd has no
            # read-only option: that tree is a read-only bind mount instead
            # (nova_image_handler.unpack).
            dev.append(etree.Element("readonly"))
        return dev


def disk_by_target(guest, dev):
    for d in guest.devices:
        if isinstance(d, vconfig.LibvirtConfigGuestDisk) and d.target_dev == dev:
            return d
    return None


def free_virtio_dev(guest):
    used = {d.target_dev for d in guest.devices if isinstance(d, vconfig.LibvirtConfigGuestDisk)}
    for c in "abcdefghijklmnopqrstuvwxyz":
        if "vd" + c not in used:
            return "vd" + c
    raise ValueError("no free virtio disk name")


def set_direct_boot(guest, kernel, initrd, cmdline):
    """Boot ``kernel``/``initrd`` from host paths (what Nova does only for Glance
    kernel_id/ramdisk_id): ``<kernel>``, ``<initrd>``, ``<cmdline>``, no ``<boot dev>``."""
    guest.os_kernel = kernel
    guest.os_initrd = initrd or None
    guest.os_cmdline = cmdline or None
    guest.os_boot_dev = []


def add_boot_disk(guest, overlay_path):
    """The per-instance overlay of ``base_vm_image`` as a virtio disk, booted first
    (``<boot order='1'/>``; libvirt refuses it together with ``<os><boot dev>``)."""
    disk = vconfig.LibvirtConfigGuestDisk()
    disk.source_type = "file"
    disk.source_device = "disk"
    disk.source_path = overlay_path
    disk.driver_name = "qemu"
    disk.driver_format = "qcow2"
    disk.driver_cache = "none"
    disk.target_bus = "virtio"
    disk.target_dev = free_virtio_dev(guest)
    disk.boot_order = "1"
    guest.os_boot_dev = []
    guest.os_kernel = guest.os_initrd = guest.os_cmdline = None
    # First among the devices: the BIOS's first hard disk.
    guest.devices.insert(0, disk)
    return disk


def set_disk_serial(guest, dev, serial):
    disk = disk_by_target(guest, dev)
    if disk is None:
        raise ValueError(f"the domain has no disk {dev} to carry serial {serial}")
    disk.serial = serial
    return disk


def add_share(guest, kind, source_dir, tag, virtiofsd_path=None):
    fs = ShareFilesystem(kind, source_dir, tag, virtiofsd_path)
    guest.add_device(fs)
    if kind == "virtiofs":
        if guest.membacking is None:
            guest.membacking = MemfdMemoryBacking()
        else:
            # hugepages or file backing (Nova's) also work when shared.
            guest.membacking.sharedaccess = True
    return fs


def apply_container(guest, handler, base, paths):
    """Turn the stock guest config into the docker2vm base VM running the container.

    ``handler``: the image's handler (adds the rootfs disk serial or the
    share); ``base``: a :class:`~nova_image_handler.basevm.BaseVM`;
    ``paths``: ``root_dev`` (target of Nova's root disk), ``base`` (the
    base_vm_image overlay), ``share`` (the unpacked tree), ``upper`` (a share
    instance's upper disk)."""
    handler.configure_guest(guest, paths)
    base.configure_guest(guest, paths.get("base"))
    return guest


def _standalone_guest(instance, disks, virt_type, machine_type, memory_mb, vcpus):
    flavor = getattr(instance, "flavor", None)
    guest = vconfig.LibvirtConfigGuest()
    guest.virt_type = virt_type
    guest.name = instance.name
    guest.uuid = instance.uuid
    guest.memory = int(memory_mb or flavor.memory_mb) * 1024
    guest.vcpus = int(vcpus or flavor.vcpus)
    guest.os_type = "hvm"
    guest.os_mach_type = machine_type
    guest.os_boot_dev = ["hd"]
    guest.features = [vconfig.LibvirtConfigGuestFeatureACPI(),
                      vconfig.LibvirtConfigGuestFeatureAPIC()]
    clk = vconfig.LibvirtConfigGuestClock()
    clk.offset = "utc"
    guest.set_clock(clk)

    root = vconfig.LibvirtConfigGuestDisk()
    root.source_type = "file"
    root.source_device = "disk"
    root.driver_name = "qemu"
    root.driver_format = disks.get("root_format", "qcow2")
    root.driver_cache = "none"
    root.source_path = disks["root"]
    root.target_bus = "virtio"
    root.target_dev = ROOT_DEV
    guest.add_device(root)
    if disks.get("config"):
        cfg = vconfig.LibvirtConfigGuestDisk()
        cfg.source_type = "file"
        cfg.source_device = "cdrom"
        cfg.driver_name = "qemu"
        cfg.driver_format = "raw"
        cfg.driver_cache = "none"
        cfg.source_path = disks["config"]
        cfg.target_bus = "ide"
        cfg.target_dev = "hda"
        cfg.readonly = True
        guest.add_device(cfg)
    if disks.get("console"):
        serial = vconfig.LibvirtConfigGuestSerial()
        serial.type = "file"
        serial.source_path = disks["console"]
        guest.add_device(serial)
    return guest


def domain_xml(instance, properties, base, disks, share_driver="virtiofs",
               virt_type="qemu", machine_type="pc", memory_mb=None, vcpus=None,
               conf=None, handler=None):
    """The domain XML (a string) of a docker2vm instance, without a running Nova.

    See the module docstring for the arguments. ``conf``: a ConfigOpts with
    ``[docker2vm]`` registered (default: one made here, with defaults and
    ``share_driver``); ``handler``: the image handler to use (default: the
    one named by ``properties['docker_delivery']``, loaded with stevedore).
    """
    from nova_image_handler import conf as d2v_conf
    from nova_image_handler import handlers
    from nova_image_handler import spec as spec_mod

    if conf is None:
        from oslo_config import cfg
        conf = cfg.ConfigOpts()
        d2v_conf.register_opts(conf)
        conf([], project="docker2vm-xml")
        conf.set_override("share_driver", share_driver, group=d2v_conf.GROUP)
    spec = spec_mod.from_image_properties(getattr(instance, "image_ref", "") or "-",
                                          properties, conf.docker2vm.default_delivery)
    handler = handler or handlers.load(spec.delivery, conf)
    guest = _standalone_guest(instance, disks, virt_type, machine_type, memory_mb, vcpus)
    apply_container(guest, handler, base,
                    {"root_dev": ROOT_DEV, "base": disks.get("base"),
                     "share": disks.get("share"), "upper": disks.get("upper")})
    return guest.to_xml()
