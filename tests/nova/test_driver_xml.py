"""Domain XML of Docker2VMDriver, through Nova's own _get_guest_xml with fakelibvirt."""

import os
import subprocess

import pytest

from nova_image_handler import guestxml, unpack
from nova_image_handler import spec as spec_mod
from tests.nova import novakit
from tests.nova.novakit import parse

pytestmark = pytest.mark.nova


def disk_by_dev(dom, dev):
    found = dom.xpath(f"devices/disk[target/@dev='{dev}']")
    assert len(found) == 1, found
    return found[0]


class TestDomainXML(novakit.DriverTestCase):

    def container_xml(self, delivery="disk", instance=None, prepare=True):
        self.images[novakit.IMAGE_ID] = novakit.container_properties(delivery)
        drv = self.make_driver()
        inst = instance or novakit.make_instance(config_drive="True")
        spec = drv.container_spec_from_image(self.context, inst)
        self.assertIsNotNone(spec)
        drv._specs[inst.uuid] = spec
        if prepare:
            os.makedirs(os.path.join(self.instances_path, inst.uuid), exist_ok=True)
            if delivery == "disk":
                drv.prepare_container(self.context, inst, spec)
            else:
                spec_mod.save(os.path.join(self.instances_path, inst.uuid), spec)
                drv.base_vm().create_overlay(os.path.join(self.instances_path, inst.uuid))
        return drv, inst, self.guest_xml(drv, inst)

    def test_plain_image_is_byte_for_byte_the_stock_xml(self):
        stock = self.make_driver(novakit.stock_driver_class())
        ours = self.make_driver()
        a = self.guest_xml(stock, novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID))
        b = self.guest_xml(ours, novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID))
        self.assertEqual(a, b)
        self.assertNotIn("docker2vm", b)
        self.assertIn("<boot dev=", b)

    def test_docker_image_with_sub_virt_type_none_is_the_stock_xml(self):
        self.flags(sub_virt_type="none", group="docker2vm")
        self.images[novakit.IMAGE_ID] = novakit.container_properties("disk")
        ours = self.make_driver()
        inst = novakit.make_instance(config_drive="True")
        self.assertIsNone(ours.container_spec_from_image(self.context, inst))
        a = self.guest_xml(self.make_driver(novakit.stock_driver_class()),
                           novakit.make_instance(config_drive="True"))
        self.assertEqual(a, self.guest_xml(ours, inst))

    def test_bundle_image_is_the_stock_xml(self):
        # Approach 3 images boot by themselves: no base VM, no rootfs disk.
        # The image carries what Glance stores for a bundle (docker_* plus
        # the hw_*/img_config_drive properties of bundle_properties).
        from docker_rootfs.guest import bundle
        props = dict(novakit.container_properties("bundle"))
        props.update(bundle.NOVA_PROPERTIES)
        self.images[novakit.IMAGE_ID] = props
        ours = self.make_driver()
        inst = novakit.make_instance(config_drive="True")
        self.assertIsNone(ours.container_spec_from_image(self.context, inst))
        a = self.guest_xml(self.make_driver(novakit.stock_driver_class()),
                           novakit.make_instance(config_drive="True"))
        b = self.guest_xml(ours, inst)
        self.assertEqual(a, b)
        # Stock Nova's XML for the bundle holds nothing of this project: no
        # docker2vm name, no direct kernel boot, no virtiofs/memfd, and
        # exactly two disks: the root disk (the bundle itself, booted by the
        # firmware) and the config drive.
        self.assertNotIn("docker2vm", a)
        dom = parse(a)
        for tag in ("kernel", "initrd", "cmdline"):
            self.assertIsNone(dom.find("os/" + tag), tag)
        self.assertEqual(dom.find("os/boot").get("dev"), "hd")
        self.assertIsNone(dom.find("devices/filesystem"))
        self.assertIsNone(dom.find("memoryBacking"))
        disks = dom.findall("devices/disk")
        self.assertEqual(len(disks), 2, a)
        sources = sorted(os.path.basename(d.find("source").get("file")) for d in disks)
        self.assertEqual(sources, ["disk", "disk.config"])
        root = disk_by_dev(dom, "vda")
        self.assertTrue(root.find("source").get("file").endswith(inst.uuid + "/disk"))
        self.assertIsNone(root.find("serial"))
        self.assertEqual(root.find("target").get("bus"), "virtio")

    def test_disk_direct_kernel_boot(self):
        _, inst, xml = self.container_xml("disk")
        dom = parse(xml)
        self.assertEqual(dom.findtext("os/kernel"), self.kernel)
        self.assertEqual(dom.findtext("os/initrd"), self.initrd)
        self.assertEqual(dom.findtext("os/cmdline"), "console=ttyS0 quiet")
        self.assertEqual(dom.findall("os/boot"), [])
        root = disk_by_dev(dom, "vda")
        self.assertEqual(root.findtext("serial"), "docker2vm-root")
        self.assertTrue(root.find("source").get("file").endswith(inst.uuid + "/disk"))
        # config drive as stock Nova attaches it (IDE cdrom on pc)
        cfg = dom.find("devices/disk[@device='cdrom']")
        self.assertTrue(cfg.find("source").get("file").endswith("/disk.config"))
        self.assertIsNone(dom.find("devices/filesystem"))
        self.assertIsNone(dom.find("memoryBacking"))
        self.assertEqual(len(dom.findall("devices/disk")), 2)
        self.assertNotIn("docker2vm-upper", xml)       # only share instances have one

    def test_disk_base_vm_image_boots_a_per_instance_overlay(self):
        self.flags(base_vm_image=self.boot_qcow2, group="docker2vm")
        _, inst, xml = self.container_xml("disk")
        dom = parse(xml)
        self.assertIsNone(dom.find("os/kernel"))
        self.assertEqual(dom.findall("os/boot"), [])
        disks = dom.findall("devices/disk")
        first = disks[0]
        overlay = os.path.join(self.instances_path, inst.uuid, "disk.docker2vm-base")
        self.assertEqual(first.find("source").get("file"), overlay)
        self.assertEqual(first.find("boot").get("order"), "1")
        self.assertEqual(first.find("driver").get("type"), "qcow2")
        self.assertIsNone(first.find("serial"))
        root = dom.find("devices/disk[serial='docker2vm-root']")
        self.assertEqual(root.find("target").get("dev"), "vda")
        targets = [d.find("target").get("dev") for d in disks]
        self.assertEqual(len(targets), len(set(targets)))
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", overlay],
                              capture_output=True, text=True, check=True).stdout
        self.assertIn(self.boot_qcow2, info)

    def test_share_virtiofs(self):
        _, inst, xml = self.container_xml("share")
        dom = parse(xml)
        fs = dom.find("devices/filesystem")
        self.assertEqual(fs.find("driver").get("type"), "virtiofs")
        # libvirt 9.0 refuses <readonly/> for virtiofs: the tree is a ro bind mount
        self.assertIsNone(fs.find("readonly"))
        self.assertEqual(fs.find("target").get("dir"), "docker2vm-root")
        share_dir = os.path.join(self.instances_path, unpack.DEFAULT_DIR_NAME)
        self.assertEqual(fs.find("source").get("dir"),
                         unpack.tree_path(share_dir, novakit.IMAGE_ID))
        self.assertEqual(fs.find("binary").get("path"), self.virtiofsd)
        self.assertEqual(fs.find("binary/sandbox").get("mode"), "chroot")
        mb = dom.find("memoryBacking")
        self.assertEqual(mb.find("source").get("type"), "memfd")
        self.assertEqual(mb.find("access").get("mode"), "shared")
        self.assertEqual(dom.findtext("os/kernel"), self.kernel)
        # Nova's root disk (the archive's overlay) carries no serial: not the rootfs
        self.assertIsNone(disk_by_dev(dom, "vda").find("serial"))
        self.assert_upper_disk(dom, inst)

    def assert_upper_disk(self, dom, inst):
        # the instance's own writable disk for the container's writes
        upper = dom.findall("devices/disk[serial='docker2vm-upper']")
        self.assertEqual(len(upper), 1)
        path = os.path.join(self.instances_path, inst.uuid, "disk.docker2vm-upper")
        self.assertEqual(upper[0].find("source").get("file"), path)
        self.assertEqual(upper[0].find("driver").get("type"), "raw")
        self.assertEqual(upper[0].find("target").get("bus"), "virtio")
        self.assertTrue(os.path.isfile(path))
        targets = [d.find("target").get("dev") for d in dom.findall("devices/disk")]
        self.assertEqual(len(targets), len(set(targets)))

    def test_share_9p(self):
        self.flags(share_driver="9p", group="docker2vm")
        _, inst, xml = self.container_xml("share")
        dom = parse(xml)
        fs = dom.find("devices/filesystem")
        self.assertEqual(fs.find("driver").get("type"), "path")
        self.assertEqual(fs.get("accessmode"), "squash")
        self.assertIsNotNone(fs.find("readonly"))
        self.assertIsNone(dom.find("memoryBacking"))
        self.assert_upper_disk(dom, inst)

    def test_xml_rebuilt_from_the_saved_spec_after_a_restart(self):
        drv, inst, xml = self.container_xml("disk")
        fresh = self.make_driver()          # a restarted nova-compute: no cache
        fresh._image_api.get.side_effect = AssertionError("no image API on reboot")
        again = self.guest_xml(fresh, inst)
        self.assertEqual(again, self.guest_xml(drv, inst))
        self.assertIn("<serial>docker2vm-root</serial>", again)
        self.assertIn("<kernel>", again)

    def test_rescue_is_stock(self):
        drv, inst, _ = self.container_xml("disk")
        meta = self.image_meta()
        from nova.virt.libvirt import blockinfo
        info = blockinfo.get_disk_info("qemu", inst, meta, rescue=True)
        guest = drv._get_guest_config(inst, [], meta, info, rescue={"kernel_id": None,
                                                                    "ramdisk_id": None})
        self.assertNotIn("docker2vm-root", guest.to_xml())


class TestStandaloneDomainXML(novakit.DriverTestCase):
    """guestxml.domain_xml: the same changes without a running Nova."""

    def test_modes(self):
        from nova_image_handler import basevm
        inst = novakit.make_instance()
        direct = basevm.BaseVM(kernel=self.kernel, initrd=self.initrd, cmdline="console=ttyS0")
        disks = {"root": "/i/disk", "config": "/i/disk.config", "console": "/i/console.log",
                 "share": "/s/tree", "base": "/i/disk.docker2vm-base"}
        d = parse(guestxml.domain_xml(inst, novakit.container_properties("disk"), direct, disks))
        self.assertEqual(d.findtext("os/kernel"), self.kernel)
        self.assertEqual(disk_by_dev(d, "vda").findtext("serial"),
                         "docker2vm-root")
        self.assertEqual(d.find("devices/serial").get("type"), "file")
        self.assertIsNotNone(d.find("features/acpi"))
        boot = basevm.BaseVM(image=self.boot_qcow2)
        b = parse(guestxml.domain_xml(inst, novakit.container_properties("disk"), boot, disks))
        self.assertEqual(b.find("devices/disk/source").get("file"), "/i/disk.docker2vm-base")
        self.assertIsNone(b.find("os/kernel"))
        for kind in ("virtiofs", "9p"):
            s = parse(guestxml.domain_xml(inst, novakit.container_properties("share"), direct,
                                          disks, share_driver=kind))
            self.assertEqual(s.find("devices/filesystem/source").get("dir"), "/s/tree")
            self.assertEqual(s.find("memoryBacking") is not None, kind == "virtiofs")
            self.assertIsNone(s.find("devices/disk[serial='docker2vm-upper']"))
            u = parse(guestxml.domain_xml(inst, novakit.container_properties("share"), direct,
                                          dict(disks, upper="/i/disk.docker2vm-upper"),
                                          share_driver=kind))
            self.assertEqual(u.find("devices/disk[serial='docker2vm-upper']/source").get("file"),
                             "/i/disk.docker2vm-upper")
