"""Shared set-up of the docker2vm Nova unit tests (fakelibvirt, no DB).

:class:`DriverTestCase` is a ``nova.test.NoDBTestCase`` with Nova's own
libvirt fixtures (fakelibvirt), an instances_path in a temp dir, base VM
files (a fake kernel and initrd, a real tiny qcow2 boot disk) and helpers
to make an instance, its disk_info, and the domain XML the stock and the
docker2vm driver build for it.
"""

import os
import subprocess
from unittest import mock

import fixtures
import os_vif
from lxml import etree
from nova import context as nova_context
from nova import objects, test
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import fake as fake_virt
from nova.virt.libvirt import blockinfo
from nova.virt.libvirt import driver as libvirt_driver
from oslo_utils.fixture import uuidsentinel as uuids

from docker_rootfs import properties as contract
from docker_rootfs.config import ContainerConfig
from nova_image_handler import driver as d2v_driver  # registers [docker2vm]

IMAGE_ID = "6b8e1c37-2f5c-4a0b-9d4e-0c1d2e3f4a5b"
PLAIN_IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"
FIXED_TIME = 1764547200.0


def container_properties(delivery="disk", **config):
    cfg = ContainerConfig(**({"cmd": ["/bin/echo", "hello"], "env": ["PATH=/bin"]} | config))
    cfg.architecture = "amd64"
    cfg.os = "linux"
    return contract.image_properties(cfg, delivery)


def qemu_img_create(path, size="1M", backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-F", "qcow2", "-b", backing]
    subprocess.run(argv + [path] + ([] if backing else [size]), check=True)
    return path


def make_instance(image_ref=IMAGE_ID, **kw):
    objects.register_all()
    flavor = objects.Flavor(memory_mb=512, swap=0, vcpu_weight=None, root_gb=1, id=2,
                            name="m1.tiny", ephemeral_gb=0, rxtx_factor=1.0,
                            flavorid="1", vcpus=1, extra_specs={})
    values = dict(
        id=1, uuid=uuids.instance, display_name="app", hostname="app", vcpus=1,
        project_id="fake", user_id="fake", image_ref=image_ref, root_gb=1,
        ephemeral_gb=0, system_metadata={"image_base_image_ref": image_ref,
                                         "image_disk_format": "qcow2"},
        instance_type_id=flavor.id, flavor=flavor, new_flavor=None, old_flavor=None,
        pci_devices=objects.PciDeviceList(), numa_topology=None, config_drive=None,
        vm_mode=None, vm_state=None, kernel_id=None, ramdisk_id=None, os_type="linux",
        ephemeral_key_uuid=None, vcpu_model=None, host="fake-host", node="fake-node",
        task_state=None, trusted_certs=None, resources=None, migration_context=None,
        info_cache=None, cleaned=False, metadata={}, launch_index=0, key_data=None,
        availability_zone="nova", reservation_id="r-1", created_at=None,
        access_ip_v4=None, access_ip_v6=None, device_metadata=None,
        root_device_name=None, user_data=None, locked=False, launched_at=None,
        terminated_at=None, deleted=False, display_description=None, key_name=None,
        power_state=None, security_groups=objects.SecurityGroupList(), tags=objects.TagList(),
        services=objects.ServiceList(), shares=objects.ShareMappingList(),
        keypairs=objects.KeyPairList(objects=[]),
        ec2_ids=objects.EC2Ids(instance_id="i-00000001", ami_id="ami-00000001",
                               kernel_id=None, ramdisk_id=None))
    values.update(kw)
    inst = objects.Instance(**values)
    inst.obj_reset_changes()
    return inst


class DriverTestCase(test.NoDBTestCase):

    USES_DB_SELF = False

    def _clear_attrs(self):
        # nova.test deletes every public attribute at cleanup, including the
        # one pytest's unittest runner sets (and deletes itself) per test.
        pass

    def setUp(self):
        super().setUp()
        self.context = nova_context.get_admin_context()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(self.tmp, "instances")
        os.makedirs(self.instances_path)
        self.flags(instances_path=self.instances_path)
        self.flags(sysinfo_serial="none", virt_type="qemu", group="libvirt")
        os_vif.initialize()
        self.libvirt = self.useFixture(nova_fixtures.LibvirtFixture())
        self.useFixture(nova_fixtures.CGroupsFixture())
        self.stub_out("nova.objects.InstanceList.get_by_host",
                      lambda *a, **k: objects.InstanceList(objects=[]))
        self.libvirt.mock_uname.return_value = fakelibvirt.os_uname(
            "Linux", "", "6.1.0-0-cloud-amd64", "", "x86_64")
        # base VM files
        base = os.path.join(self.tmp, "base")
        os.makedirs(base)
        self.kernel = os.path.join(base, "vmlinux")
        self.initrd = os.path.join(base, "initrd.img")
        for p in (self.kernel, self.initrd):
            with open(p, "wb") as f:
                f.write(b"\0" * 512)
        self.boot_qcow2 = qemu_img_create(os.path.join(base, "boot.qcow2"))
        self.flags(base_kernel=self.kernel, base_initrd=self.initrd,
                   base_cmdline="console=ttyS0 quiet", group="docker2vm")
        self.virtiofsd = os.path.join(base, "virtiofsd")
        with open(self.virtiofsd, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(self.virtiofsd, 0o755)
        self.flags(virtiofsd_path=self.virtiofsd, group="docker2vm")
        # mounts need root and a private mount namespace: test_share_mount.py
        self.flags(share_readonly_mount=False, group="docker2vm")
        # root-only steps (share unpack, removal) in this process, not privsep
        self.stub_out("nova_image_handler.privileged.is_root", lambda: True)
        self.images = {}       # image id -> properties (the image API)

    # -- drivers -------------------------------------------------------------
    def make_driver(self, cls=None):
        cls = cls or d2v_driver.Docker2VMDriver
        drv = cls(fake_virt.FakeVirtAPI(), False)
        if hasattr(drv, "_image_api"):
            api = mock.Mock()
            api.get.side_effect = lambda ctx, image_id: {
                "id": image_id, "properties": dict(self.images.get(image_id, {}))}
            drv._image_api = api
        return drv

    def image_meta(self, image_id=IMAGE_ID, disk_format="qcow2"):
        props = {k: v for k, v in self.images.get(image_id, {}).items()
                 if k in ("architecture", "os_type", "img_config_drive")}
        return objects.ImageMeta.from_dict({"id": image_id, "disk_format": disk_format,
                                            "container_format": "bare",
                                            "properties": props})

    def disk_info(self, instance, image_meta):
        return blockinfo.get_disk_info("qemu", instance, image_meta)

    def guest_xml(self, drv, instance, image_meta=None):
        image_meta = image_meta or self.image_meta(instance.image_ref)
        info = self.disk_info(instance, image_meta)
        with mock.patch("time.time", return_value=FIXED_TIME):
            return drv._get_guest_xml(self.context, instance, [], info, image_meta)


def parse(xml):
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml)


def stock_driver_class():
    return libvirt_driver.LibvirtDriver
