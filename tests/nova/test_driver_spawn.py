"""Docker2VMDriver spawn-side behaviour with fakelibvirt: errors, storage,
config drive, share unpacking, cleanup, cache, exit status."""

import hashlib
import os
import subprocess
import threading
import time
from unittest import mock

import pytest
from nova import exception, objects
from nova.compute import power_state
from nova.virt import hardware
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import imagecache

from docker_rootfs.guest import contract
from nova_image_handler import errors, unpack, upper
from nova_image_handler import spec as spec_mod
from tests.core import layerkit, ocikit
from tests.nova import novakit

pytestmark = pytest.mark.nova


def oci_archive(path, entries, cfg=None):
    b = ocikit.OCIBuilder()
    b.image([layerkit.layer_tar(entries)], cfg=cfg or {"Cmd": ["/bin/sh"]})
    return b.write(path)


def hostile_entries():
    e = layerkit.entry
    return [e("bin", "dir"), e("bin/sh", data=b"#!shell\n", mode=0o755),
            e("bin/su", data=b"su", mode=0o4755),
            e("etc", "dir"), e("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
            e("home", "dir"), e("home/app", "dir", uid=1234, gid=1234, mode=0o700),
            e("tmp", "dir", mode=0o1777), e("shared", data=b"w", mode=0o666),
            e("abs", "sym", link="/etc/passwd"),
            e("up", "sym", link="../../../../etc"),
            e("dev", "dir"), e("dev/sda", "chr", major=8, minor=0),
            e("dev/fifo", "fifo")]


class SpawnTestCase(novakit.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.stub_out("nova.objects.BlockDeviceMappingList.get_by_instance_uuid",
                      lambda *a, **k: objects.BlockDeviceMappingList(objects=[]))
        image_api = mock.Mock()
        image_api.get.side_effect = lambda ctx, image_id, **kw: {
            "id": image_id, "disk_format": "qcow2", "container_format": "bare",
            "properties": {}}
        self.stub_out("nova.virt.images.IMAGE_API", image_api)
        self.stub_out("nova.privsep.path.utime", lambda path: os.utime(path))
        self.stub_out("nova.network.security_group_api.get_instance_security_groups",
                      lambda *a, **k: [])
        self.stub_out("nova.objects.BlockDeviceMappingList.bdms_by_instance_uuid",
                      lambda *a, **k: {})
        self.flags(force_raw_images=False)
        self.drv = self.make_driver()
        self.inst = novakit.make_instance(config_drive="True")

    def inst_dir(self, inst=None):
        return os.path.join(self.instances_path, (inst or self.inst).uuid)

    def spawn(self, inst=None):
        inst = inst or self.inst
        return self.drv.spawn(self.context, inst, self.image_meta(inst.image_ref), [], None, {})

    def listing(self):
        return sorted(os.listdir(self.instances_path))


class TestErrors(SpawnTestCase):
    """Bad images and hosts fail before anything is created, naming what to fix."""

    def assert_spawn_fails(self, exc_class, *needles):
        with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn") as stock:
            exc = self.assertRaises(exc_class, self.spawn)
            stock.assert_not_called()
        msg = exc.format_message()
        for needle in needles:
            self.assertIn(needle, msg)
        self.assertEqual(self.listing(), [])
        return msg

    def test_missing_base_kernel(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        self.flags(base_kernel="/nonexistent/vmlinux", group="docker2vm")
        self.assert_spawn_fails(errors.HostError, "[docker2vm] base_kernel",
                                "/nonexistent/vmlinux")

    def test_missing_base_initrd(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        self.flags(base_initrd="/nonexistent/initrd.img", group="docker2vm")
        self.assert_spawn_fails(errors.HostError, "[docker2vm] base_initrd",
                                "/nonexistent/initrd.img")

    def test_missing_base_vm_image(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        self.flags(base_vm_image="/nonexistent/boot.qcow2", group="docker2vm")
        self.assert_spawn_fails(errors.HostError, "[docker2vm] base_vm_image",
                                "/nonexistent/boot.qcow2")

    def test_malformed_property(self):
        props = novakit.container_properties()
        props["docker_cmd"] = '["/bin/echo", '
        self.images[novakit.IMAGE_ID] = props
        self.assert_spawn_fails(errors.ImageError, "docker_cmd", novakit.IMAGE_ID)

    def test_unknown_delivery(self):
        props = novakit.container_properties()
        props["docker_delivery"] = "floppy"
        self.images[novakit.IMAGE_ID] = props
        self.assert_spawn_fails(errors.ImageError, "docker_delivery", "floppy")

    def test_unknown_contract_version(self):
        props = novakit.container_properties()
        props["docker_contract_version"] = "7"
        self.images[novakit.IMAGE_ID] = props
        self.assert_spawn_fails(errors.ImageError, "docker_contract_version")

    def test_share_without_virtiofsd(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        self.flags(virtiofsd_path="/nonexistent/virtiofsd", group="docker2vm")
        self.assert_spawn_fails(errors.HostError, "virtiofsd_path", "/nonexistent/virtiofsd")

    def test_share_on_rbd_refused(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        self.flags(images_type="rbd", group="libvirt")
        self.assert_spawn_fails(errors.HostError, "images_type = rbd")

    def test_bad_server_metadata_override(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        self.inst.metadata = {"docker_cmd": "not json"}
        self.assert_spawn_fails(errors.ImageError, "docker_cmd")

    def test_no_command_at_all(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties(cmd=[])
        self.assert_spawn_fails(errors.ImageError, "no command")

    def test_foreign_architecture(self):
        props = novakit.container_properties()
        props["architecture"] = "aarch64"
        self.images[novakit.IMAGE_ID] = props
        self.assert_spawn_fails(errors.ImageError, "aarch64", "x86_64", "architecture")

    def test_errors_abort_the_build_without_reschedule(self):
        # the compute manager's _build_and_run_instance turns these two
        # (and subclasses) into BuildAbortException with the same message
        from nova import exception
        self.assertTrue(issubclass(errors.ImageError, exception.ImageUnacceptable))
        self.assertTrue(issubclass(errors.HostError, exception.InvalidInput))

    def test_plain_image_goes_to_the_stock_spawn(self):
        self.images[novakit.PLAIN_IMAGE_ID] = {"os_distro": "debian"}
        inst = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn") as stock:
            self.spawn(inst)
        stock.assert_called_once()
        self.assertNotIn(inst.uuid, self.drv._specs)

    def test_plain_spawn_drops_a_stale_container_state(self):
        self.images[novakit.PLAIN_IMAGE_ID] = {}
        inst = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID)
        os.makedirs(self.inst_dir(inst))
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        spec_mod.save(self.inst_dir(inst), self.drv.container_spec_from_image(
            self.context, novakit.make_instance()))
        with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn"):
            self.spawn(inst)
        self.assertIsNone(self.drv._spec_for(inst))

    def test_config_drive_forced(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        inst = novakit.make_instance(config_drive=None)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "spawn"):
            self.spawn(inst)
        self.assertEqual(inst.config_drive, "True")


class TestRootDisk(SpawnTestCase):
    """disk delivery: the rootfs is Nova's root disk (_base once, COW overlay per instance)."""

    def fake_fetch(self, count):
        src = novakit.qemu_img_create(os.path.join(self.tmp, "rootfs.qcow2"), "64M")

        def fetch(context, image_href, path, trusted_certs=None):
            count.append(image_href)
            time.sleep(0.05)       # widen the race window; correctness does not depend on it
            with open(src, "rb") as f, open(path, "wb") as out:
                out.write(f.read())
        return fetch

    def create(self, inst):
        meta = self.image_meta(inst.image_ref)
        info = self.disk_info(inst, meta)
        return self.drv._create_image(self.context, inst, info["mapping"])

    def test_one_download_per_host_overlays_per_instance(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        fetched = []
        insts = [novakit.make_instance(config_drive="True", uuid=u, id=i + 1)
                 for i, u in enumerate(("11111111-1111-4111-8111-111111111111",
                                        "22222222-2222-4222-8222-222222222222",
                                        "33333333-3333-4333-8333-333333333333"))]
        for inst in insts:
            self.drv._specs[inst.uuid] = self.drv.container_spec_from_image(self.context, inst)
        errs = []

        def run(inst):
            try:
                self.create(inst)
            except Exception as exc:      # reported below
                errs.append(exc)
        with mock.patch("nova.virt.images.fetch", side_effect=self.fake_fetch(fetched)):
            threads = [threading.Thread(target=run, args=(i,)) for i in insts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.assertEqual(errs, [])
        self.assertEqual(fetched, [novakit.IMAGE_ID])
        base = os.path.join(self.instances_path, "_base",
                            imagecache.get_cache_fname(novakit.IMAGE_ID))
        self.assertTrue(os.path.isfile(base))
        for inst in insts:
            disk = os.path.join(self.inst_dir(inst), "disk")
            info = subprocess.run(["qemu-img", "info", "-U", "--output=json", disk],
                                  capture_output=True, text=True, check=True).stdout
            self.assertIn('"backing-filename": "%s"' % base, info)
            self.assertIn('"virtual-size": %d' % (1024 ** 3), info)    # flavor root_gb=1
            self.assertLess(os.path.getsize(disk), 1024 * 1024)          # an overlay, not a copy
            self.assertTrue(os.path.isfile(os.path.join(self.inst_dir(inst),
                                                        spec_mod.STATE_FILE)))

    def test_image_cache_manager_counts_the_base_as_in_use(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        self.drv._specs[self.inst.uuid] = self.drv.container_spec_from_image(
            self.context, self.inst)
        with mock.patch("nova.virt.images.fetch", side_effect=self.fake_fetch([])):
            self.create(self.inst)
        mgr = self.drv.image_cache_manager
        running = mgr._list_running_instances(self.context, [self.inst])
        self.assertIn(novakit.IMAGE_ID, running["used_images"])
        base_dir = os.path.join(self.instances_path, "_base")
        used = os.path.join(base_dir, imagecache.get_cache_fname(novakit.IMAGE_ID))
        unused = os.path.join(base_dir, imagecache.get_cache_fname("unused-image"))
        with open(unused, "wb") as f:
            f.write(b"x")
        old = time.time() - 2 * 86400
        for p in (used, unused):
            os.utime(p, (old, old))
        self.flags(remove_unused_original_minimum_age_seconds=3600, group="image_cache")
        mgr.update(self.context, [self.inst])
        self.assertTrue(os.path.exists(used))
        self.assertFalse(os.path.exists(unused))
        self.assertFalse(os.path.exists(unused + ".used"))


class TestShare(SpawnTestCase):

    def setUp(self):
        super().setUp()
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        self.spec = self.drv.container_spec_from_image(self.context, self.inst)
        self.drv._specs[self.inst.uuid] = self.spec
        base_dir = os.path.join(self.instances_path, "_base")
        os.makedirs(base_dir)
        self.archive = os.path.join(base_dir, imagecache.get_cache_fname(novakit.IMAGE_ID))
        self.share_dir = os.path.join(self.instances_path, unpack.DEFAULT_DIR_NAME)

    def test_unpacked_once_read_only_and_without_host_devices(self):
        oci_archive(self.archive, hostile_entries())
        from docker_rootfs import archive
        calls = []
        real = archive.open_image

        def counting(*a, **k):
            calls.append(a)
            return real(*a, **k)
        with mock.patch.object(archive, "open_image", side_effect=counting):
            threads = [threading.Thread(target=unpack.ensure_tree,
                                        args=(self.share_dir, novakit.IMAGE_ID, self.archive),
                                        kwargs={"read_only_mount": False})
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.assertEqual(len(calls), 1)
        tree = unpack.tree_path(self.share_dir, novakit.IMAGE_ID)
        names = {n for n in os.listdir(self.share_dir) if not n.startswith("docker2vm-share")}
        self.assertEqual(names, {os.path.basename(tree), os.path.basename(tree) + ".used"})
        with open(os.path.join(tree, "bin/sh"), "rb") as f:
            self.assertEqual(f.read(), b"#!shell\n")
        self.assertEqual(os.readlink(os.path.join(tree, "abs")), "/etc/passwd")
        self.assertFalse(os.path.exists(os.path.join(tree, "dev/sda")))
        self.assertFalse(os.path.exists(os.path.join(tree, "dev/fifo")))
        self.assertFalse(os.stat(os.path.join(tree, "bin/su")).st_mode & 0o4000)
        # The image's own modes otherwise: sticky and group/other write kept.
        self.assertEqual(os.stat(os.path.join(tree, "tmp")).st_mode & 0o7777, 0o1777)
        self.assertEqual(os.stat(os.path.join(tree, "shared")).st_mode & 0o7777, 0o666)
        if os.geteuid() == 0:         # ownership is kept (unpacked as root)
            st = os.stat(os.path.join(tree, "home/app"))
            self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o777), (1234, 1234, 0o700))
        self.assertEqual(os.stat(self.share_dir).st_mode & 0o777, 0o700)

    def test_prepare_then_xml_points_at_the_tree(self):
        oci_archive(self.archive, hostile_entries())
        os.makedirs(self.inst_dir())
        self.drv.prepare_container(self.context, self.inst, self.spec)
        xml = self.guest_xml(self.drv, self.inst)
        self.assertIn(unpack.tree_path(self.share_dir, novakit.IMAGE_ID), xml)

    def test_failed_unpack_leaves_nothing(self):
        with open(self.archive, "wb") as f:
            f.write(b"this is not an archive" * 100)

        def stock_create_image(context, instance, *a, **k):
            os.makedirs(self.inst_dir(instance))
            with open(os.path.join(self.inst_dir(instance), "disk"), "wb"):
                pass
            return True, True
        meta = self.image_meta()
        info = self.disk_info(self.inst, meta)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "_create_image",
                               side_effect=stock_create_image):
            exc = self.assertRaises(Exception, self.drv._create_image, self.context, self.inst,
                                    info["mapping"])
        self.assertIn("archive", str(exc).lower())
        self.assertFalse(os.path.exists(self.inst_dir()))
        leftovers = [n for n in os.listdir(self.share_dir) if not n.startswith("docker2vm")]
        self.assertEqual(leftovers, [])

    def test_read_only_mount_failure_names_the_option(self):
        oci_archive(self.archive, hostile_entries())
        from nova_image_handler import privileged
        real_run = privileged.run

        def run(name, *args):
            if name == "readonly_bind_mount":
                raise OSError("mount: permission denied")
            return real_run(name, *args)
        with mock.patch.object(privileged, "run", side_effect=run):
            exc = self.assertRaises(errors.HostError, unpack.ensure_tree, self.share_dir,
                                    novakit.IMAGE_ID, self.archive)
        self.assertIn("share_readonly_mount", exc.format_message())
        self.assertIn("permission denied", exc.format_message())

    def test_root_steps_go_through_privsep_when_not_root(self):
        from nova_image_handler import privileged
        self.stub_out("nova_image_handler.privileged.is_root", lambda: False)
        with mock.patch.object(privileged, "build_tree") as entry, \
                mock.patch.object(privileged, "build_tree_local") as local:
            privileged.run("build_tree", "/s", "n", "/a", None)
        entry.assert_called_once_with("/s", "n", "/a", None)
        local.assert_not_called()
        # and the entrypoints are Nova's sys_admin privsep context's
        import nova.privsep
        from oslo_privsep import priv_context
        for name in ("build_tree", "remove_tree", "readonly_bind_mount", "umount"):
            self.assertIs(getattr(getattr(privileged, name), priv_context._ENTRYPOINT_ATTR),
                          nova.privsep.sys_admin_pctxt)

    def test_read_only_mount_checked_at_every_xml_build(self):
        self.flags(share_readonly_mount=True, group="docker2vm")
        tree = unpack.tree_path(self.share_dir, novakit.IMAGE_ID)
        os.makedirs(tree)
        os.makedirs(self.inst_dir())
        spec_mod.save(self.inst_dir(), self.spec)
        with mock.patch.object(unpack, "ensure_read_only") as ro:
            self.guest_xml(self.drv, self.inst)
            self.guest_xml(self.make_driver(), self.inst)     # e.g. after a host reboot
        self.assertEqual(ro.call_count, 2)
        ro.assert_called_with(tree)

    def test_unused_trees_removed_on_the_cache_schedule(self):
        oci_archive(self.archive, hostile_entries())
        used = unpack.ensure_tree(self.share_dir, novakit.IMAGE_ID, self.archive,
                                  read_only_mount=False)
        other_id = "aaaaaaaa-0000-4000-8000-000000000000"
        unused = unpack.ensure_tree(self.share_dir, other_id, self.archive,
                                    read_only_mount=False)
        old = time.time() - 2 * 86400
        for p in (used, unused):
            os.utime(p + ".used", (old, old))
        with mock.patch.object(self.drv.image_cache_manager, "update"):
            self.drv.manage_image_cache(self.context, [self.inst])
        self.assertTrue(os.path.isdir(used))
        self.assertFalse(os.path.exists(unused))
        self.assertFalse(os.path.exists(unused + ".used"))
        # recently used trees stay even when unused now
        fresh = unpack.ensure_tree(self.share_dir, other_id, self.archive,
                                   read_only_mount=False)
        with mock.patch.object(self.drv.image_cache_manager, "update"):
            self.drv.manage_image_cache(self.context, [self.inst])
        self.assertTrue(os.path.isdir(fresh))


def ext4_magic(path):
    with open(path, "rb") as f:
        f.seek(1024 + 0x38)
        return f.read(2) == b"\x53\xef"


class TestShareUpperDisk(SpawnTestCase):
    """A share instance's writes go to its own disk in the instance directory:
    created empty (ext4) at spawn, sized to the flavor, kept by stop/start and
    hard reboot, removed with the instance directory."""

    def setUp(self):
        super().setUp()
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        self.spec = self.drv.container_spec_from_image(self.context, self.inst)
        self.drv._specs[self.inst.uuid] = self.spec
        base_dir = os.path.join(self.instances_path, "_base")
        os.makedirs(base_dir)
        self.archive = os.path.join(base_dir, imagecache.get_cache_fname(novakit.IMAGE_ID))
        oci_archive(self.archive, hostile_entries())
        self.upper = os.path.join(self.inst_dir(), "disk.docker2vm-upper")

    def create_image(self):
        """The driver's _create_image over a stand-in of Nova's (the root disk)."""
        def stock_create_image(context, instance, *a, **k):
            os.makedirs(self.inst_dir(instance), exist_ok=True)
            with open(os.path.join(self.inst_dir(instance), "disk"), "wb"):
                pass
            return True, True
        info = self.disk_info(self.inst, self.image_meta())
        with mock.patch.object(libvirt_driver.LibvirtDriver, "_create_image",
                               side_effect=stock_create_image):
            return self.drv._create_image(self.context, self.inst, info["mapping"])

    def test_created_empty_ext4_sized_to_the_root_disk(self):
        self.create_image()
        st = os.stat(self.upper)
        self.assertEqual(st.st_size, 1024 ** 3)             # flavor root_gb=1
        self.assertLess(st.st_blocks * 512, 64 * 1024 ** 2)  # sparse
        self.assertTrue(ext4_magic(self.upper))
        listing = subprocess.run(["debugfs", "-R", "ls -l /", self.upper],
                                 capture_output=True, text=True, check=True).stdout
        names = {ln.split()[-1] for ln in listing.splitlines() if ln.strip()}
        self.assertEqual(names, {".", "..", "lost+found"})
        self.assertFalse(os.path.exists(self.upper + ".part"))

    def test_default_size_without_a_root_disk(self):
        self.flags(upper_default_gb=2, group="docker2vm")
        self.inst.flavor.root_gb = 0
        self.inst.root_gb = 0
        self.create_image()
        self.assertEqual(os.path.getsize(self.upper), 2 * 1024 ** 3)

    def test_survives_power_on_and_hard_reboot_xml_rebuilds(self):
        self.create_image()
        with open(self.upper, "r+b") as f:        # the guest's writes
            f.seek(1024 ** 3 - 4096)
            f.write(b"container writes")
        ino = os.stat(self.upper).st_ino
        fresh = self.make_driver()                # nova-compute restarted, power_on
        fresh._image_api.get.side_effect = AssertionError("no image API on power_on")
        xml = self.guest_xml(fresh, self.inst)
        self.assertEqual(xml.count("<serial>docker2vm-upper</serial>"), 1)
        # hard reboot: Nova re-creates missing files of the XML's disks
        from nova.virt.libvirt import config as vconfig
        conf = vconfig.LibvirtConfigGuest()
        conf.parse_str(xml)
        # (this test's stand-in root disk and config drive are empty files)
        conf.devices = [d for d in conf.devices if getattr(d, "source_path", "") == self.upper]
        info = fresh._get_instance_disk_info_from_config(conf, None)
        self.assertIn(self.upper, [i["path"] for i in info])
        with mock.patch.object(fresh, "_try_fetch_image_cache") as fetch, \
                mock.patch.object(fresh, "_fetch_instance_kernel_ramdisk"):
            fresh._create_images_and_backing(self.context, self.inst, self.inst_dir(),
                                             [i for i in info if i["path"] == self.upper])
        fetch.assert_not_called()
        self.assertEqual(os.stat(self.upper).st_ino, ino)
        with open(self.upper, "rb") as f:
            f.seek(1024 ** 3 - 4096)
            self.assertEqual(f.read(16), b"container writes")
        # lost meanwhile: the next XML build makes a new empty one, Nova never
        # gets a missing disk
        os.unlink(self.upper)
        self.guest_xml(fresh, self.inst)
        self.assertTrue(ext4_magic(self.upper))

    def test_gone_with_the_instance_directory(self):
        self.create_image()
        self.assertTrue(os.path.isfile(self.upper))
        self.drv.delete_instance_files(self.inst)
        self.assertFalse(os.path.exists(self.inst_dir()))

    def test_failed_format_leaves_nothing(self):
        from oslo_concurrency import processutils
        with mock.patch.object(upper.processutils, "execute",
                               side_effect=processutils.ProcessExecutionError("mke2fs: no")):
            self.assertRaises(processutils.ProcessExecutionError, self.create_image)
        self.assertFalse(os.path.exists(self.inst_dir()))

    def test_rebuild_gets_a_new_empty_one(self):
        # rebuild = destroy (instance directory removed) + spawn
        self.create_image()
        with open(self.upper, "r+b") as f:
            f.seek(1024 ** 3 - 4096)
            f.write(b"old")
        self.drv.delete_instance_files(self.inst)
        self.create_image()
        with open(self.upper, "rb") as f:
            f.seek(1024 ** 3 - 4096)
            self.assertEqual(f.read(3), b"\0\0\0")

    def test_disk_delivery_has_none(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties("disk")
        self.drv._specs[self.inst.uuid] = self.drv.container_spec_from_image(
            self.context, self.inst)
        self.create_image()
        self.assertFalse(os.path.exists(self.upper))
        self.assertNotIn("docker2vm-upper", self.guest_xml(self.drv, self.inst))


class TestConfigDrive(SpawnTestCase):

    def read_iso(self, iso, path):
        return subprocess.run(["isoinfo", "-J", "-i", iso, "-x", path],
                              capture_output=True, check=True).stdout

    def test_guest_files_on_the_config_drive(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties(
            cmd=["/bin/echo", "hello"], env=["PATH=/bin", "A=1"])
        self.inst.metadata = {"docker_env": '{"B": "2"}'}
        self.drv._specs[self.inst.uuid] = self.drv.container_spec_from_image(
            self.context, self.inst)
        os.makedirs(self.inst_dir())
        info = libvirt_driver.InjectionInfo(network_info=[], files=[], admin_pass=None)
        with mock.patch.object(self.drv, "_build_device_metadata", return_value=None):
            self.drv._create_configdrive(self.context, self.inst, info)
        iso = os.path.join(self.inst_dir(), "disk.config")
        self.assertEqual(self.read_iso(iso, "/docker2vm/argv"), b"/bin/echo\0hello\0")
        self.assertEqual(self.read_iso(iso, "/docker2vm/rootfs"), b"disk:docker2vm-root\n")
        listing = subprocess.run(["isoinfo", "-J", "-f", "-i", iso],
                                 capture_output=True, text=True, check=True).stdout
        self.assertNotIn("docker2vm/upper", listing)        # disk delivery: no upper
        env = self.read_iso(iso, "/docker2vm/env").split(b"\0")
        self.assertIn(b"A=1", env)
        self.assertIn(b"B=2", env)
        self.assertEqual(self.read_iso(iso, "/docker2vm/stop_timeout"), b"10\n")
        self.assertIn(b'"uuid"', self.read_iso(iso, "/openstack/latest/meta_data.json"))

    def test_share_guest_files_name_the_upper_disk(self):
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        self.drv._specs[self.inst.uuid] = self.drv.container_spec_from_image(
            self.context, self.inst)
        os.makedirs(self.inst_dir())
        info = libvirt_driver.InjectionInfo(network_info=[], files=[], admin_pass=None)
        with mock.patch.object(self.drv, "_build_device_metadata", return_value=None):
            self.drv._create_configdrive(self.context, self.inst, info)
        iso = os.path.join(self.inst_dir(), "disk.config")
        self.assertEqual(self.read_iso(iso, "/docker2vm/rootfs"), b"virtiofs:docker2vm-root\n")
        self.assertEqual(self.read_iso(iso, "/docker2vm/upper"), b"disk:docker2vm-upper\n")

    def test_plain_instance_config_drive_has_no_guest_files(self):
        inst = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID, config_drive="True")
        os.makedirs(self.inst_dir(inst))
        info = libvirt_driver.InjectionInfo(network_info=[], files=[], admin_pass=None)
        with mock.patch.object(self.drv, "_build_device_metadata", return_value=None):
            self.drv._create_configdrive(self.context, inst, info)
        listing = subprocess.run(["isoinfo", "-J", "-f", "-i",
                                  os.path.join(self.inst_dir(inst), "disk.config")],
                                 capture_output=True, text=True, check=True).stdout
        self.assertNotIn("docker2vm", listing)
        self.assertIn("meta_data.json", listing)


class TestExitStatus(SpawnTestCase):

    def setUp(self):
        super().setUp()
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        spec = self.drv.container_spec_from_image(self.context, self.inst)
        os.makedirs(self.inst_dir())
        spec_mod.save(self.inst_dir(), spec)
        with open(os.path.join(self.inst_dir(), "console.log"), "wb") as f:
            f.write(b"booting\r\ndocker2vm: exit status 3\r\nhello\r\n"
                    b"docker2vm: exit status 137 (killed by signal 9)\r\n")

    def test_shutoff_state_query_records_the_exit_status(self):
        shut = hardware.InstanceInfo(state=power_state.SHUTDOWN)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "get_info", return_value=shut):
            self.drv.get_info(self.inst)
        self.assertEqual(self.inst.metadata["docker2vm_exit_status"], "137")

    def test_running_state_query_does_not(self):
        run = hardware.InstanceInfo(state=power_state.RUNNING)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "get_info", return_value=run):
            self.drv.get_info(self.inst)
        self.assertNotIn("docker2vm_exit_status", self.inst.metadata)

    def test_power_off_records_and_power_on_clears(self):
        with mock.patch.object(libvirt_driver.LibvirtDriver, "power_off"):
            self.drv.power_off(self.inst)
        self.assertEqual(self.inst.metadata["docker2vm_exit_status"], "137")
        with mock.patch.object(libvirt_driver.LibvirtDriver, "power_on"):
            self.drv.power_on(self.context, self.inst, [])
        self.assertNotIn("docker2vm_exit_status", self.inst.metadata)

    def test_plain_instance_untouched(self):
        inst = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID,
                                     uuid="44444444-4444-4444-8444-444444444444")
        self.assertIsNone(self.drv.record_exit_status(inst))
        self.assertEqual(inst.metadata, {})

    def test_console_log_of_a_shut_off_container(self):
        # The stopped domain has no console for the stock driver to find.
        def last_bytes(path, num):      # privsep's, in-process
            with open(path, "rb") as f:
                data = f.read()
            return data[-num:], max(0, len(data) - num)

        with mock.patch.object(libvirt_driver.LibvirtDriver, "get_console_output",
                               side_effect=exception.ConsoleNotAvailable()), \
                mock.patch("nova.privsep.path.last_bytes", side_effect=last_bytes):
            out = self.drv.get_console_output(self.context, self.inst)
            self.assertIn(b"docker2vm: exit status 137", out)
            plain = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID,
                                          uuid="55555555-5555-4555-8555-555555555555")
            self.assertRaises(exception.ConsoleNotAvailable,
                              self.drv.get_console_output, self.context, plain)


def test_guest_files_validate_like_the_contract():
    # the rootfs spec the guest reads for each handler
    assert contract.RootfsDelivery.disk("docker2vm-root").spec() == "disk:docker2vm-root"
    assert hashlib.sha1(b"x").hexdigest() == unpack.tree_name("x")


class TestMigration(SpawnTestCase):

    def test_hard_reboot_never_fetches_the_image_for_the_base_overlay(self):
        # Nova re-creates missing backing files of the XML's disks on hard
        # reboot / power-on, fetching image_ref for a qcow2 backing
        self.flags(base_vm_image=self.boot_qcow2, group="docker2vm")
        os.makedirs(self.inst_dir())
        overlay = os.path.join(self.inst_dir(), "disk.docker2vm-base")
        disk = os.path.join(self.inst_dir(), "disk")
        info = [{"path": overlay, "type": "qcow2", "backing_file": self.boot_qcow2,
                 "virt_disk_size": 1048576},
                {"path": disk, "type": "qcow2", "backing_file": "/x/_base/abc",
                 "virt_disk_size": 1073741824}]
        with mock.patch.object(self.drv, "_try_fetch_image_cache") as fetch, \
                mock.patch.object(self.drv, "_fetch_instance_kernel_ramdisk"):
            self.drv._create_images_and_backing(self.context, self.inst, self.inst_dir(), info)
        self.assertEqual([c.args[3] for c in fetch.call_args_list], ["abc"])
        self.assertTrue(os.path.isfile(overlay))       # re-created from base_vm_image

    def test_finish_migration_path_reads_the_image_again(self):
        # resize / cold migration / unshelve: _create_image in a fresh instance
        # directory, no spec cached, no docker2vm.json copied
        self.images[novakit.IMAGE_ID] = novakit.container_properties()
        meta = self.image_meta()
        info = self.disk_info(self.inst, meta)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "_create_image",
                               return_value=(True, True)):
            self.drv._create_image(self.context, self.inst, info["mapping"])
        self.assertTrue(os.path.isfile(os.path.join(self.inst_dir(), spec_mod.STATE_FILE)))
        self.assertIn("<serial>docker2vm-root</serial>", self.guest_xml(self.drv, self.inst))

    def test_plain_instance_gets_no_state(self):
        inst = novakit.make_instance(image_ref=novakit.PLAIN_IMAGE_ID,
                                     uuid="55555555-5555-4555-8555-555555555555")
        meta = self.image_meta(inst.image_ref)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "_create_image",
                               return_value=(True, True)):
            self.drv._create_image(self.context, inst, self.disk_info(inst, meta)["mapping"])
        self.assertFalse(os.path.exists(os.path.join(self.inst_dir(inst), spec_mod.STATE_FILE)))

    def test_live_migration_of_share_refused(self):
        from nova import exception
        self.images[novakit.IMAGE_ID] = novakit.container_properties("share")
        os.makedirs(self.inst_dir())
        spec_mod.save(self.inst_dir(), self.drv.container_spec_from_image(self.context,
                                                                          self.inst))
        exc = self.assertRaises(exception.MigrationPreCheckError,
                                self.drv.check_can_live_migrate_source,
                                self.context, self.inst, None)
        self.assertIn("docker_delivery=share", exc.format_message())
