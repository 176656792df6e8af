"""Nova's in-process services (API, conductor, scheduler, placement, compute)
with compute_driver = docker2vm.Docker2VMDriver on fakelibvirt: the
lifecycle through the compute API, asserting on the XML given to
defineXML (fakelibvirt's XMLDesc drops <serial>, <kernel>, ...)."""

import os
import sys
import warnings

import fixtures
import pytest
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base
from sqlalchemy import exc as sqlalchemy_exc

from tests.nova import novakit
from tests.nova.novakit import parse

pytestmark = [pytest.mark.nova, pytest.mark.slow]

DOCKER_IMAGE = "d0c2e2a1-5b6c-4d7e-8f90-a1b2c3d4e5f6"
SHARE_IMAGE = "5a4e3c2b-1d0f-4e9a-8b7c-6d5e4f3a2b1c"


class Docker2VMServersTest(base.ServersTestBase):

    def _clear_attrs(self):
        pass      # see novakit.DriverTestCase

    def _setup_compute_service(self):
        self.flags(compute_driver="docker2vm.Docker2VMDriver")

    def _setup_services(self):
        # pip installs Nova's data files under sys.prefix, not next to the
        # package where nova.tests' ConfFixture looks for api-paste.ini
        paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
        if os.path.exists(paste):
            self.flags(api_paste_config=paste, group="wsgi")
        super()._setup_services()

    def setUp(self):
        super().setUp()
        # Nova's WarningsFixture makes SQLAlchemy deprecations errors; the
        # SQLAlchemy pip resolves for Nova 34 here (2.1) deprecates noload(),
        # which Nova's DB API still uses.
        warnings.filterwarnings("ignore", category=sqlalchemy_exc.SADeprecationWarning)
        basedir = self.useFixture(fixtures.TempDir()).path
        self.kernel = os.path.join(basedir, "vmlinux")
        self.initrd = os.path.join(basedir, "initrd.img")
        for p in (self.kernel, self.initrd):
            with open(p, "wb") as f:
                f.write(b"\0" * 64)
        self.flags(base_kernel=self.kernel, base_initrd=self.initrd, group="docker2vm")
        self.flags(share_readonly_mount=False, group="docker2vm")
        self.stub_out("nova_image_handler.privileged.is_root", lambda: True)
        props = novakit.container_properties("disk")
        self.glance.create(None, {"id": DOCKER_IMAGE, "name": "app", "disk_format": "qcow2",
                                  "container_format": "bare", "status": "active",
                                  "properties": props})
        self.glance.create(None, {"id": SHARE_IMAGE, "name": "app-share", "disk_format": "raw",
                                  "container_format": "docker", "status": "active",
                                  "properties": novakit.container_properties("share")})
        self.defined = []
        real = fakelibvirt.Connection.defineXML

        def define(conn, xml):
            self.defined.append(xml)
            return real(conn, xml)
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Connection.defineXML", define))
        self.start_compute()

    def inst_dir(self, server):
        return os.path.join(self.flags_instances_path(), server["id"])

    def flags_instances_path(self):
        from nova.conf import CONF
        return CONF.instances_path

    def last_dom(self):
        return parse(self.defined[-1])

    def assert_container_dom(self, dom):
        self.assertEqual(dom.findtext("os/kernel"), self.kernel)
        serials = [d.findtext("serial") for d in dom.findall("devices/disk")]
        self.assertIn("docker2vm-root", serials)
        self.assertIsNotNone(dom.find("devices/disk[@device='cdrom']"))

    def test_lifecycle(self):
        server = self._create_server(image_uuid=DOCKER_IMAGE)
        self.assertEqual(len(self.defined), 1)
        self.assert_container_dom(self.last_dom())
        inst_dir = self.inst_dir(server)
        self.assertTrue(os.path.isfile(os.path.join(inst_dir, "docker2vm.json")))
        # (the config drive's content: test_driver_spawn.TestConfigDrive; here
        # Nova's LibvirtImageBackendFixture fakes the disks)

        # the container exits: its status reaches the API on the power-off sync
        with open(os.path.join(inst_dir, "console.log"), "wb") as f:
            f.write(b"hello\r\ndocker2vm: exit status 3\r\n")
        server = self._stop_server(server)
        md = self.api.get_server(server["id"])["metadata"]
        self.assertEqual(md.get("docker2vm_exit_status"), "3")

        server = self._start_server(server)
        server = self._wait_for_state_change(server, "ACTIVE")
        self.assertNotIn("docker2vm_exit_status", self.api.get_server(server["id"])["metadata"])
        self.assert_container_dom(self.last_dom())

        self.flags(wait_soft_reboot_seconds=1, group="libvirt")
        self._reboot_server(server, hard=False)
        self.assertEqual(self.api.get_server(server["id"])["status"], "ACTIVE")

        n = len(self.defined)
        self._reboot_server(server, hard=True)
        self.assertGreater(len(self.defined), n)
        self.assert_container_dom(self.last_dom())

        # rebuild to a docker image (the same one): a fresh container instance
        n = len(self.defined)
        self._rebuild_server(server, DOCKER_IMAGE)
        self.assertGreater(len(self.defined), n)
        self.assert_container_dom(self.last_dom())

        # rebuild to a plain image: the stock XML again
        plain = self.glance.auto_disk_config_enabled_image["id"]
        self._rebuild_server(server, plain)
        dom = self.last_dom()
        self.assertIsNone(dom.find("os/kernel"))
        self.assertNotIn("docker2vm", self.defined[-1])
        self.assertFalse(os.path.exists(os.path.join(inst_dir, "docker2vm.json")))

        self._delete_server(server)
        self.assertFalse(os.path.exists(inst_dir))

    def test_missing_base_kernel_is_an_error_fault(self):
        self.flags(base_kernel="/nonexistent/vmlinux", group="docker2vm")
        server = self._create_server(image_uuid=DOCKER_IMAGE,
                                     expected_state="ERROR")
        fault = self.api.get_server(server["id"])["fault"]["message"]
        self.assertIn("[docker2vm] base_kernel", fault)
        self.assertIn("/nonexistent/vmlinux", fault)
        self.assertEqual(self.defined, [])
        self.assertFalse(os.path.exists(self.inst_dir(server)))

    def test_share_lifecycle(self):
        from nova.conf import CONF
        from nova.virt.libvirt import imagecache

        from nova_image_handler import unpack
        from tests.nova.test_driver_spawn import hostile_entries, oci_archive
        virtiofsd = os.path.join(self.useFixture(fixtures.TempDir()).path, "virtiofsd")
        with open(virtiofsd, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(virtiofsd, 0o755)
        self.flags(virtiofsd_path=virtiofsd, group="docker2vm")
        # what Nova's (here faked) image backend would have downloaded into _base
        base_dir = os.path.join(CONF.instances_path, "_base")
        os.makedirs(base_dir, exist_ok=True)
        oci_archive(os.path.join(base_dir, imagecache.get_cache_fname(SHARE_IMAGE)),
                    hostile_entries())
        server = self._create_server(image_uuid=SHARE_IMAGE)
        dom = self.last_dom()
        tree = unpack.tree_path(os.path.join(CONF.instances_path, unpack.DEFAULT_DIR_NAME),
                                SHARE_IMAGE)
        self.assertEqual(dom.find("devices/filesystem/source").get("dir"), tree)
        self.assertEqual(dom.find("memoryBacking/source").get("type"), "memfd")
        self.assertTrue(os.path.isfile(os.path.join(tree, "bin/sh")))
        self._reboot_server(server, hard=True)
        self.assertEqual(self.last_dom().find("devices/filesystem/source").get("dir"), tree)
        self._delete_server(server)
        self.assertFalse(os.path.exists(self.inst_dir(server)))
        self.assertTrue(os.path.isdir(tree))           # the host's cache, shared
        self.flags(share_unused_minimum_age_seconds=0, group="docker2vm")
        compute = self.computes["compute1"]
        from nova import context as nova_context
        compute.driver.manage_image_cache(nova_context.get_admin_context(), [])
        self.assertFalse(os.path.exists(tree))

    def test_share_with_a_bad_archive_fails_cleanly(self):
        from nova.conf import CONF
        from nova.virt.libvirt import imagecache

        from nova_image_handler import unpack
        self.flags(share_driver="9p", group="docker2vm")
        base_dir = os.path.join(CONF.instances_path, "_base")
        os.makedirs(base_dir, exist_ok=True)
        with open(os.path.join(base_dir, imagecache.get_cache_fname(SHARE_IMAGE)), "wb") as f:
            f.write(b"not a docker archive\n" * 64)
        server = self._create_server(image_uuid=SHARE_IMAGE, expected_state="ERROR")
        fault = self.api.get_server(server["id"])["fault"]["message"]
        self.assertIn("cannot be unpacked", fault)
        self.assertEqual(self.defined, [])
        self.assertFalse(os.path.exists(self.inst_dir(server)))
        share_dir = os.path.join(CONF.instances_path, unpack.DEFAULT_DIR_NAME)
        self.assertEqual([n for n in os.listdir(share_dir)
                          if not n.startswith("docker2vm-share")], [])
