"""Helpers of the real-libvirtd Nova tests (tests/nova/test_real_libvirt.py).

* inputs made by the project's own pipeline: a container image built with
  buildah (tests/guest/images.py, cached), its rootfs disk made by the
  Glance plugin's ``docker-convert`` steps (flatten, then
  ``glance_docker_import.disk_adapter.build_qcow2``) and its Glance
  properties (``docker_rootfs.properties.image_properties``, what the
  plugin sets),
  the guest base VM from ``docker2vm base-image`` (cached, as tests/guest);
* a Nova-style instance directory (``disk`` = qcow2 overlay over the
  ``_base`` image, ``disk.config``, ``console.log``);
* :func:`stand_in_xml`: hand-written domain XML mirroring what Nova 34's
  libvirt driver emits for ``virt_type=qemu`` (used only where the driver's
  own XML is not available, see the tests' docstrings);
* :func:`run_domain`: define + start a domain on the private libvirtd,
  follow its console log file (written by virtlogd, as for Nova), press
  the ACPI power button on request (``virDomainShutdown``, what Nova's
  ``power_off`` does first), wait until it is shut off.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import time
import uuid as uuid_mod
from xml.sax.saxutils import escape, quoteattr

from docker_rootfs.guest.qemu import ConsoleLines
from tests.guest import images

TOP = images.TOP
CACHE = images.CACHE / "nova-real-vm"


# -- inputs ----------------------------------------------------------------
def glance_disk_image(archive):
    """``(rootfs.qcow2, properties)`` of ``archive`` as the ``docker-convert``
    import stores it in Glance (disk delivery): the plugin's own steps
    (``open_image(...).flatten()`` then ``glance_docker_import.disk_adapter
    .build_qcow2`` with the ``[docker_disk]`` defaults), cached by archive name."""
    import tempfile

    from oslo_config import cfg

    from docker_rootfs import opts as core_opts
    from docker_rootfs.archive import open_image
    from docker_rootfs.properties import image_properties
    from glance_docker_import import disk_adapter
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (pathlib.Path(archive).name + ".plugin.qcow2")
    if not out.exists():
        try:
            core_opts.register_disk_opts(cfg.CONF)
        except cfg.DuplicateOptError:
            pass
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            tar = os.path.join(tmp, "rootfs.tar")
            with open_image(str(archive)) as img:
                with open(tar, "wb") as f:
                    img.flatten(f)
                disk_adapter.build_qcow2(tar, os.path.join(tmp, "rootfs.qcow2"),
                                         digest=img.config.config_digest, tmpdir=tmp)
            os.replace(os.path.join(tmp, "rootfs.qcow2"), out)
    return out, image_properties(images.open_config(archive), "disk")


def share_properties(archive):
    from docker_rootfs.properties import image_properties
    return image_properties(images.open_config(archive), "share")


def qcow2_overlay(backing, dest, size_mib=None, backing_fmt="qcow2"):
    """A qcow2 overlay of ``backing``, as Nova's Qcow2 image backend creates
    ``<instance>/disk`` over ``_base/<sha1>``."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", str(backing),
           str(dest)]
    if size_mib:
        cmd.append(f"{size_mib}M")
    subprocess.run(cmd, check=True)
    return str(dest)


def config_drive(dest, archive, hostname, rootfs, meta=None, stop_timeout=None,
                 instance_uuid=None):
    """The config drive (iso9660, Nova's genisoimage options, label config-2)
    with the docker2vm/* files the driver's InstanceMetadata subclass adds."""
    from docker_rootfs.guest import configdrive, contract
    files = contract.render_guest_files(images.open_config(archive), hostname,
                                        metadata=meta or {}, rootfs=rootfs,
                                        stop_timeout=stop_timeout)
    return configdrive.build_config_drive(str(dest), files, hostname,
                                          instance_uuid=instance_uuid, meta=meta or {})


@dataclasses.dataclass
class Instance:
    """A Nova-like instance: name, uuid, and its directory under instances_path."""
    name: str
    uuid: str
    dir: str
    memory_mb: int = 256
    vcpus: int = 1
    hostname: str = ""
    image_ref: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def new(cls, instances_path, index, **kw):
        u = str(uuid_mod.uuid4())
        d = os.path.join(instances_path, u)
        os.makedirs(d)
        return cls(name="instance-%08x" % index, uuid=u, dir=d,
                   hostname=kw.pop("hostname", f"real-vm-{index}"), **kw)

    def path(self, name):
        return os.path.join(self.dir, name)

    @property
    def console(self):
        return self.path("console.log")


# -- stand-in XML ------------------------------------------------------------
def stand_in_xml(inst, root, config, kernel=None, initrd=None, cmdline=None,
                 boot_overlay=None, serial=None, share=None, share_driver=None,
                 virtiofsd=None):
    """Domain XML shaped like Nova 34's for ``virt_type=qemu`` on ``pc``:
    ``<sysinfo>``/``<smbios>``, ``<features><acpi/><apic/>``, Nova's clock
    timers, root disk ``vda`` (qcow2, cache none, virtio), config drive as
    an IDE cdrom (``hda``), the console as a ``pty`` serial whose
    ``<log file=... append='off'/>`` virtlogd writes (Nova without
    serial_console), a virtio memballoon. Plus what docker2vm adds:
    ``<serial>`` on the rootfs disk, direct kernel boot or a
    ``base_vm_image`` overlay booted first, a read-only share with memfd
    memory backing for virtiofs."""
    q = quoteattr
    osx = ['<type machine="pc">hvm</type>']
    if kernel:
        osx += [f"<kernel>{escape(kernel)}</kernel>"]
        if initrd:
            osx += [f"<initrd>{escape(initrd)}</initrd>"]
        if cmdline:
            osx += [f"<cmdline>{escape(cmdline)}</cmdline>"]
    elif not boot_overlay:
        osx += ['<boot dev="hd"/>']
    osx += ['<smbios mode="sysinfo"/>']
    devices = []

    def disk(path, fmt, dev, bus="virtio", device="disk", extra=""):
        return (f'<disk type="file" device="{device}"><driver name="qemu" type="{fmt}" '
                f'cache="none"/><source file={q(path)}/><target bus="{bus}" dev="{dev}"/>'
                f"{extra}</disk>")
    if root:
        devices.append(disk(root, "qcow2", "vda",
                            extra=f"<serial>{escape(serial)}</serial>" if serial else ""))
    if boot_overlay:
        devices.insert(0, disk(boot_overlay, "qcow2", "vdb" if root else "vda",
                               extra='<boot order="1"/>'))
    if config:
        devices.append(disk(config, "raw", "hda", bus="ide", device="cdrom",
                            extra="<readonly/>"))
    membacking = ""
    if share:
        src, tag = share
        if share_driver == "virtiofs":
            binary = f'<binary path={q(virtiofsd)} xattr="off">' if virtiofsd else \
                '<binary xattr="off">'
            devices.append(
                '<filesystem type="mount" accessmode="passthrough">'
                '<driver type="virtiofs" queue="1024"/>'
                f'{binary}<cache mode="auto"/><sandbox mode="chroot"/></binary>'
                f"<source dir={q(src)}/><target dir={q(tag)}/><readonly/></filesystem>")
            membacking = ('<memoryBacking><source type="memfd"/><access mode="shared"/>'
                          "</memoryBacking>")
        else:
            devices.append(
                '<filesystem type="mount" accessmode="squash">'
                '<driver type="path" wrpolicy="immediate"/>'
                f"<source dir={q(src)}/><target dir={q(tag)}/><readonly/></filesystem>")
    devices.append(f'<serial type="pty"><log file={q(inst.console)} append="off"/></serial>')
    devices.append('<memballoon model="virtio"><stats period="10"/></memballoon>')
    return f"""<domain type="qemu">
  <uuid>{inst.uuid}</uuid>
  <name>{inst.name}</name>
  <memory>{inst.memory_mb * 1024}</memory>
  <vcpu>{inst.vcpus}</vcpu>
  {membacking}
  <sysinfo type="smbios"><system><entry name="manufacturer">OpenStack Foundation</entry>
    <entry name="product">OpenStack Nova</entry><entry name="serial">{inst.uuid}</entry>
    <entry name="uuid">{inst.uuid}</entry><entry name="family">Virtual Machine</entry>
  </system></sysinfo>
  <os>{''.join(osx)}</os>
  <features><acpi/><apic/></features>
  <clock offset="utc"><timer name="pit" tickpolicy="delay"/>
    <timer name="rtc" tickpolicy="catchup"/><timer name="hpet" present="no"/></clock>
  <devices>
    {chr(10).join('    ' + d for d in devices).strip()}
  </devices>
</domain>
"""


# -- running a domain ----------------------------------------------------------
@dataclasses.dataclass
class DomainRun(ConsoleLines):
    lines: list                 # [(seconds since start, text)] of the console log
    state: int                  # libvirt state at the end (VIR_DOMAIN_SHUTOFF...)
    reason: int
    duration: float
    timed_out: bool
    live_xml: str               # the XML libvirt ran (inactive XML after shutoff)
    pressed: float = None       # when the power button was pressed


def _read_lines(path, offset, buf):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset, buf, []
    offset += len(data)
    buf += data
    out = []
    while b"\n" in buf:
        raw, buf = buf.split(b"\n", 1)
        out.append(raw.decode(errors="replace").rstrip("\r"))
    return offset, buf, out


def run_domain(lv, xml, console, timeout=300, press_on=None):
    """Define ``xml`` on libvirtd ``lv``, start it, follow ``console`` until the
    domain is shut off (or ``timeout``: then destroyed). ``press_on``: a
    console line after which the ACPI power button is pressed (Nova's
    ``power_off`` calls ``virDomainShutdown`` first). The domain is
    undefined at the end, whatever happens."""
    import libvirt
    conn = lv.connect()
    dom = conn.defineXML(xml)
    start = time.monotonic()
    lines, offset, buf, timed_out, pressed = [], 0, b"", False, None
    live = ""
    try:
        dom.create()
        live = dom.XMLDesc(0)
        while True:
            offset, buf, new = _read_lines(console, offset, buf)
            now = time.monotonic() - start
            for line in new:
                lines.append((now, line))
                if press_on is not None and pressed is None and line == press_on:
                    pressed = now
                    dom.shutdown()
            state, reason = dom.state()
            if state == libvirt.VIR_DOMAIN_SHUTOFF:
                break
            if now > timeout:
                timed_out = True
                dom.destroy()
                break
            time.sleep(0.2)
        # virtlogd may still be flushing the last lines
        time.sleep(0.3)
        offset, buf, new = _read_lines(console, offset, buf)
        now = time.monotonic() - start
        lines += [(now, line) for line in new]
        if buf:
            lines.append((now, buf.decode(errors="replace").rstrip("\r\n")))
        state, reason = dom.state()
        return DomainRun(lines=lines, state=state, reason=reason, duration=now,
                         timed_out=timed_out, live_xml=live, pressed=pressed)
    finally:
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass


def shutoff_reason_name(reason):
    import libvirt
    for name in dir(libvirt):
        if name.startswith("VIR_DOMAIN_SHUTOFF_") and getattr(libvirt, name) == reason:
            return name[len("VIR_DOMAIN_SHUTOFF_"):].lower()
    return str(reason)


def dump(run, lv=None, name=None):
    """Text for an assertion message: console, and libvirt's domain log."""
    text = run.text
    if lv is not None and name:
        try:
            with open(lv.domain_log(name), errors="replace") as f:
                text += "\n--- libvirt domain log ---\n" + f.read()[-3000:]
        except OSError:
            pass
    return text


def properties_json(properties):
    return json.dumps(properties, sort_keys=True)


# -- the real driver, on the real libvirtd ------------------------------------
class LocalImageAPI:
    """Stand-in for Glance (``nova.image.glance.API``): what the driver asks
    of the image API at spawn -- ``get`` (the image's full properties) and
    ``download`` (into ``_base``) -- served from local files. The images are
    what the ``docker-convert`` import stores (rootfs qcow2 or the
    normalised archive) with the properties it sets."""

    def __init__(self):
        self.images = {}

    def add(self, path, properties, disk_format, container_format="bare", image_id=None):
        image_id = image_id or str(uuid_mod.uuid4())
        self.images[image_id] = {
            "path": str(path),
            "meta": {"id": image_id, "name": pathlib.Path(path).name, "status": "active",
                     "disk_format": disk_format, "container_format": container_format,
                     "size": os.path.getsize(path), "min_disk": 0, "min_ram": 0,
                     "properties": dict(properties)}}
        return image_id

    def get(self, context, image_id, include_locations=False, show_deleted=True):
        import copy
        return copy.deepcopy(self.images[image_id]["meta"])

    def download(self, context, image_id, data=None, dest_path=None, trusted_certs=None):
        import shutil
        shutil.copyfile(self.images[image_id]["path"], dest_path)

    def image_meta(self, image_id):
        """``objects.ImageMeta`` as the compute manager passes it (docker_* are
        dropped by Nova: only declared fields stay)."""
        from nova import objects
        meta = self.get(None, image_id)
        return objects.ImageMeta.from_dict(meta)


class NovaCompute:
    """The docker2vm driver (``nova_image_handler.driver.Docker2VMDriver``)
    instantiated as a compute host would, its ``[libvirt] connection_uri``
    pointing at the private libvirtd, ``virt_type = qemu``, ``images_type
    = qcow2``, instances under ``instances_path``.

    :meth:`prepare` runs the spawn steps up to the domain XML with the
    driver's own code: ``container_spec_from_image`` (properties from the
    image API), ``blockinfo.get_disk_info``, ``_create_image`` (Nova's image
    backend: download into ``_base``, qcow2 overlay ``disk``, then the
    handler's preparation: ``base_vm_image`` overlay, share unpack),
    ``_get_guest_xml`` (the stock config + docker2vm's changes; host
    capabilities from the real libvirtd) and ``_create_configdrive``
    (Nova's ConfigDriveBuilder with the docker2vm/* files). What stands in
    for the rest of Nova: the image API (:class:`LocalImageAPI`), the
    database (instance objects are built in memory, the BDM list is empty,
    ``_build_device_metadata`` returns nothing), Neutron (no ports), and
    privsep (run in-process: the tests are root).
    """

    def __init__(self, lv, instances_path, base, base_vm_image="", share_driver="virtiofs",
                 stop_timeout=10):
        self.lv = lv
        self.instances_path = str(instances_path)
        self.base = base
        self.base_vm_image = base_vm_image
        self.share_driver = share_driver
        self.stop_timeout = stop_timeout
        self.images = LocalImageAPI()
        self._cleanups = []
        self.driver = None
        self._count = 0

    def __enter__(self):
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception:
                pass

    def _setup(self):
        from unittest import mock

        import nova.conf.neutron
        import nova.privsep
        import nova.virt.images
        from nova import objects
        from nova.conf import CONF
        from nova.virt import fake
        from oslo_config import fixture as config_fixture

        from nova_image_handler import driver as d2v_driver

        objects.register_all()
        try:
            nova.conf.neutron.register_dynamic_opts(CONF)
        except Exception:
            pass
        try:
            CONF.find_file("release")
        except Exception:          # NotInitializedError: nothing parsed CONF yet
            CONF([], project="nova", default_config_files=[])
        fx = config_fixture.Config(CONF)
        fx.setUp()
        self._cleanups.append(fx.cleanUp)
        over = [
            (None, "instances_path", self.instances_path),
            (None, "force_raw_images", True),
            ("libvirt", "virt_type", "qemu"),
            ("libvirt", "connection_uri", self.lv.uri),
            ("libvirt", "images_type", "qcow2"),
            ("vnc", "enabled", False),
            ("spice", "enabled", False),
            ("oslo_concurrency", "lock_path", os.path.join(self.instances_path, "locks")),
            ("docker2vm", "base_kernel", self.base.vmlinux),
            ("docker2vm", "base_initrd", self.base.initrd),
            ("docker2vm", "base_cmdline", self.base.cmdline),
            ("docker2vm", "base_vm_image", self.base_vm_image),
            ("docker2vm", "share_driver", self.share_driver),
            ("docker2vm", "stop_timeout", self.stop_timeout),
            # the tests run the share handler's cache pass right after use
            ("docker2vm", "share_unused_minimum_age_seconds", 0),
        ]
        for group, key, value in over:
            fx.config(**{key: value, "group": group} if group else {key: value})
        for p in (mock.patch.object(nova.privsep.sys_admin_pctxt, "client_mode", False),
                  mock.patch.object(nova.virt.images, "IMAGE_API", self.images),
                  # the database: an instance booted from its image has no BDMs here
                  mock.patch.object(objects.BlockDeviceMappingList, "get_by_instance_uuid",
                                    return_value=objects.BlockDeviceMappingList(objects=[])),
                  # Neutron: no ports, no security groups
                  mock.patch("nova.network.security_group_api.get_instance_security_groups",
                             return_value=[])):
            p.start()
            self._cleanups.append(p.stop)
        self.driver = d2v_driver.Docker2VMDriver(fake.FakeVirtAPI(), False)
        self.driver._image_api = self.images
        p = mock.patch.object(self.driver, "_build_device_metadata", return_value=None)
        p.start()
        self._cleanups.append(p.stop)

    def instance(self, image_id, memory_mb=256, root_gb=1, metadata=None, name=None):
        """An ``objects.Instance`` in memory, as the compute manager hands it over."""
        from nova import context as nova_context
        from nova import objects
        from nova.tests.unit import fake_instance
        self._count += 1
        ctx = nova_context.get_admin_context()
        flavor = objects.Flavor(id=1, flavorid="d2v", name="d2v.small", memory_mb=memory_mb,
                                vcpus=1, root_gb=root_gb, ephemeral_gb=0, swap=0,
                                extra_specs={}, rxtx_factor=1.0, is_public=True)
        hostname = name or f"real-vm-{self._count}"
        inst = fake_instance.fake_instance_obj(
            ctx, id=self._count, uuid=str(uuid_mod.uuid4()), image_ref=image_id,
            flavor=flavor, memory_mb=memory_mb, vcpus=1, root_gb=root_gb, ephemeral_gb=0,
            config_drive="", hostname=hostname, display_name=hostname, kernel_id="",
            ramdisk_id="", os_type=None)
        for key, value in dict(
                metadata=dict(metadata or {}), system_metadata={}, numa_topology=None,
                vcpu_model=None, pci_requests=None, resources=None, trusted_certs=None,
                pci_devices=objects.PciDeviceList(objects=[]), device_metadata=None,
                migration_context=None, keypairs=objects.KeyPairList(objects=[]),
                tags=objects.TagList(objects=[]), fault=None, old_flavor=None,
                new_flavor=None, services=objects.ServiceList(objects=[]),
                security_groups=objects.SecurityGroupList(objects=[]),
                ec2_ids=objects.EC2Ids(instance_id="i-%08x" % self._count, ami_id="ami-1",
                                       kernel_id=None, ramdisk_id=None)).items():
            setattr(inst, key, value)
        inst.obj_reset_changes()
        return ctx, inst

    def prepare(self, image_id, **kw):
        """Spawn up to (not including) the domain definition; returns
        ``(instance, xml, instance_dir)``."""
        from nova.conf import CONF
        from nova.network import model as network_model
        from nova.virt.libvirt import blockinfo
        from nova.virt.libvirt import driver as libvirt_driver
        drv = self.driver
        ctx, inst = self.instance(image_id, **kw)
        image_meta = self.images.image_meta(image_id)
        # Docker2VMDriver.spawn's own first steps (before super().spawn()):
        spec = drv.container_spec_from_image(ctx, inst)
        assert spec is not None, "not a docker2vm image"
        drv._specs[inst.uuid] = spec
        inst.config_drive = "True"
        # LibvirtDriver.spawn, step by step:
        disk_info = blockinfo.get_disk_info(CONF.libvirt.virt_type, inst, image_meta, None)
        injection = libvirt_driver.InjectionInfo(network_info=network_model.NetworkInfo([]),
                                                 files=[], admin_pass=None)
        drv._create_image(ctx, inst, disk_info["mapping"], injection_info=injection)
        drv._ensure_console_log_for_instance(inst)
        xml = drv._get_guest_xml(ctx, inst, network_model.NetworkInfo([]), disk_info,
                                 image_meta)
        drv._create_configdrive(ctx, inst, injection)
        inst_dir = os.path.join(self.instances_path, inst.uuid)
        return inst, xml, inst_dir

    def spawn(self, image_id, **kw):
        """``Docker2VMDriver.spawn`` itself (define + config drive + start through
        Nova's Host/Guest), returns ``(context, instance, instance_dir)``."""
        from unittest import mock

        from nova.network import model as network_model
        ctx, inst = self.instance(image_id, **kw)
        image_meta = self.images.image_meta(image_id)
        # instance.save() (the database) is a no-op here
        with mock.patch.object(inst, "save"):
            self.driver.spawn(ctx, inst, image_meta, injected_files=[], admin_password=None,
                              allocations={}, network_info=network_model.NetworkInfo([]))
        return ctx, inst, os.path.join(self.instances_path, inst.uuid)

    def destroy(self, ctx, inst):
        """``destroy`` with ``destroy_disks``: what deleting the server does here."""
        from unittest import mock

        from nova.network import model as network_model
        with mock.patch.object(inst, "save"):
            self.driver.destroy(ctx, inst, network_model.NetworkInfo([]), destroy_disks=True)


def glance_share_image(archive):
    """``(archive.tar, properties)`` as the ``docker-convert`` import stores a
    ``docker_delivery=share`` image: the plugin's normalised single-layer
    docker archive (``glance_docker_import.share``), cached."""
    from docker_rootfs.archive import open_image
    from glance_docker_import import share
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (pathlib.Path(archive).name + ".glance-share.tar")
    if not out.exists():
        tmp = str(out) + ".tmp"
        with open_image(str(archive)) as img, open(tmp, "wb") as f:
            share.write_single_layer_archive(img, f)
        os.replace(tmp, out)
    return out, share_properties(archive)


class Console:
    """Follows a console log file (virtlogd writes it) line by line."""

    def __init__(self, path):
        self.path = path
        self.start = time.monotonic()
        self.lines = []
        self._offset = 0
        self._buf = b""

    def poll(self):
        self._offset, self._buf, new = _read_lines(self.path, self._offset, self._buf)
        now = time.monotonic() - self.start
        self.lines += [(now, line) for line in new]
        return new

    def wait_for(self, predicate, timeout, alive=None):
        """Until a line matches (returns its time) or ``timeout``/``alive()`` false (None)."""
        seen = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            for t, line in self.lines[seen:]:
                if predicate(line):
                    return t
            seen = len(self.lines)
            if alive is not None and not alive():
                self.poll()
                for t, line in self.lines[seen:]:
                    if predicate(line):
                        return t
                return None
            time.sleep(0.2)
        return None

    @property
    def text(self):
        return "\n".join(t for _, t in self.lines)

    def exit_status(self):
        for _, line in reversed(self.lines):
            if line.startswith("docker2vm: exit status "):
                return int(line.split()[3])
        return None


def wait_shutoff(lv, uuid, timeout):
    """Wait until the domain is shut off; ``(state, reason)`` or None on timeout."""
    import libvirt
    dom = lv.connect().lookupByUUIDString(uuid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_SHUTOFF:
            return state, reason
        time.sleep(0.3)
    return None


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
