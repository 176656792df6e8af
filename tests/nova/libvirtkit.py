"""Helpers of the real-libvirtd Nova tests (tests/nova/test_real_libvirt.py).

* inputs made by the project's own pipeline: a container image built with
  buildah (tests/guest/images.py, cached), its rootfs disk made by
  ``docker2vm convert`` (the same flattener + disk builder the Glance
  plugin's ``docker-convert`` import runs) and its Glance properties
  (``docker_rootfs.properties.image_properties``, what the plugin sets),
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
import sys
import time
import uuid as uuid_mod
from xml.sax.saxutils import escape, quoteattr

from tests.guest import images

TOP = images.TOP
CACHE = images.CACHE / "nova-real-vm"


# -- inputs ----------------------------------------------------------------
def docker2vm_cli():
    exe = pathlib.Path(sys.executable).with_name("docker2vm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "docker_rootfs.cli"]


def glance_disk_image(archive):
    """``(rootfs.qcow2, properties)`` of ``archive`` as the ``docker-convert``
    import stores it in Glance (disk delivery), cached by archive name."""
    from docker_rootfs.properties import image_properties
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / (pathlib.Path(archive).name + ".glance.qcow2")
    if not out.exists():
        tmp = str(out) + ".tmp.qcow2"
        subprocess.run(docker2vm_cli() + ["convert", str(archive), "-o", tmp, "--no-progress"],
                       check=True, capture_output=True)
        os.replace(tmp, out)
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
class DomainRun:
    lines: list                 # [(seconds since start, text)] of the console log
    state: int                  # libvirt state at the end (VIR_DOMAIN_SHUTOFF...)
    reason: int
    duration: float
    timed_out: bool
    live_xml: str               # the XML libvirt ran (inactive XML after shutoff)
    pressed: float = None       # when the power button was pressed

    @property
    def text(self):
        return "\n".join(t for _, t in self.lines)

    def first(self, predicate):
        for t, line in self.lines:
            if predicate(line):
                return t
        return None

    def exit_status(self):
        for _, line in reversed(self.lines):
            if line.startswith("docker2vm: exit status "):
                return int(line.split()[3])
        return None


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
