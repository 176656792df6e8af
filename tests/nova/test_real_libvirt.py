"""The Nova driver's domains, run for real: Docker2VMDriver on a real libvirtd.

A private libvirtd + virtlogd (devcloud/libvirtd.py: own mount
namespace, started and stopped here, TCG only: ``virt_type = qemu``) is
the driver's ``[libvirt] connection_uri``. Each test runs
``Docker2VMDriver.spawn`` itself (tests/nova/libvirtkit.py:NovaCompute):
the container spec from the image API, Nova's image backend (download into
``_base``, per-instance qcow2 overlay ``disk`` sized to the flavor), the
handler's preparation, ``_get_guest_xml`` (Nova's stock guest config from
the real libvirtd's capabilities + docker2vm's changes), the config drive
(Nova's ConfigDriveBuilder with the docker2vm/* files), define and launch
through Nova's Host/Guest. The guest is the base VM from
``docker2vm base-image``; the images are what the Glance plugin's
``docker-convert`` import stores, made by the plugin's own steps (flatten
+ ``disk_adapter.build_qcow2`` for ``disk``; ``share.write_single_layer_archive``,
the normalised single-layer archive, for ``share``) with its properties.

What is real: the driver (every method it overrides and the stock
LibvirtDriver code between them), the domain XML (nothing hand-written),
libvirtd/virtlogd/QEMU/virtiofsd, the config drive, the console log file,
``get_info``/``power_off``/``power_on``/``destroy``.

Stand-ins, because no other OpenStack service runs in these tests: the
image API (:class:`libvirtkit.LocalImageAPI` serves the converted files and
their properties), the database (instance objects in memory, no BDMs,
``instance.save`` a no-op), Neutron (no ports, no security groups), and
privsep (in-process; the tests run as root).

Asserted each time: the container's output is in ``console.log`` with
``docker2vm: exit status N`` as the last docker2vm line, the domain shuts
itself off (reason: shutdown), the driver puts N into the server metadata
(``docker2vm_exit_status``, from ``get_info``), and deleting the instance
(``destroy``) leaves neither its directory nor its domain.
"""

import os
import shutil
import subprocess
import tempfile
import time
from unittest import mock

import pytest

from devcloud import libvirtd as libvirtd_mod
from tests.guest import images
from tests.nova import libvirtkit as kit

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.nova]

BOOT_TIMEOUT = 300      # TCG on 2 shared cores: generous, never asserted on

PROBE = r"""#!/bin/sh
echo "ARGS=$*"
echo "ID=$(id -u):$(id -g)"
echo "FOO=$FOO"
echo "HOST=$(hostname)"
echo "ROOTFS=$(awk '$2 == "/" {t=$3} END {print t}' /proc/mounts)"
echo "DISK_MB=$(df -m / | awk 'NR==2 {print $2}')"
echo written >/data/probe && echo "WRITE=$(cat /data/probe)"
exit 3
"""

# StopSignal SIGUSR1, handled; a marker on the root disk tells a second run.
STOPPER = r"""#!/bin/sh
trap 'echo "got-USR1"; exit 42' USR1
if [ -f /data/marker ]; then echo "SECOND-RUN $(cat /data/marker)"; exit 5; fi
echo first-run >/data/marker
echo ready
while :; do sleep 1; done
"""

PROBE_CONFIG = {"entrypoint": ["/bin/probe"], "cmd": ["from-image"], "env": ["FOO=bar"],
                "user": "app"}
META = {"docker_cmd": '["from-server-metadata"]'}


def _tools():
    missing = libvirtd_mod.missing_tools()
    for tool in ("buildah", "genisoimage", "gcc", "qemu-img"):
        if not shutil.which(tool):
            missing.append(tool)
    try:
        import libvirt  # noqa: F401
    except ImportError:
        missing.append("libvirt-python (test-requirements.txt)")
    if missing:
        pytest.fail("real-libvirtd tests need: %s (bindep.txt, profile test)"
                    % ", ".join(missing), pytrace=False)


@pytest.fixture(scope="module")
def lv():
    _tools()
    daemon = libvirtd_mod.Libvirtd()
    try:
        daemon.start()
    except libvirtd_mod.LibvirtdError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield daemon
    finally:
        workdir = daemon.workdir
        ns = daemon.namespace_id()
        daemon.stop()
        # nothing left: no process in its namespace, no socket, no file
        alive = daemon.namespace_pids(ns) if ns else []
        if daemon.stragglers:
            print(f"libvirtd namespace: killed after its watchdog: {daemon.stragglers}")
        assert not alive, f"left running: {alive}"
        assert not os.path.exists(workdir)


def _mounts_under(top):
    from nova_image_handler import unpack
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = unpack._unescape(line.split()[4])
            if point == top or point.startswith(top + "/"):
                out.append(point)
    return out


@pytest.fixture(scope="module")
def instances_path():
    top = os.path.realpath(tempfile.mkdtemp(prefix="d2v-nova-inst-"))
    yield top
    # The share handler's read-only bind mounts are removed by the driver's
    # cache pass in the tests; whatever a failed test left is unmounted here.
    left = _mounts_under(top)
    for point in reversed(left):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(top, ignore_errors=True)
    assert not left, f"mounts left by the driver: {left}"


@pytest.fixture(scope="module")
def base():
    return images.base_image()


@pytest.fixture(scope="module")
def probe_archive():
    return images.build_archive("nova-probe", {"/bin/probe": PROBE}, PROBE_CONFIG)


def _boot(nc, lv, image_id, meta=None, press_after=None, after_stop=None):
    """spawn -> (power button after the line ``press_after``) -> shut off ->
    get_info -> destroy. Returns what the test asserts on."""
    import libvirt
    produced = []
    real = nc.driver._get_guest_xml

    def spy(*args, **kwargs):
        xml = real(*args, **kwargs)
        produced.append(xml)
        return xml
    out = {}
    with mock.patch.object(nc.driver, "_get_guest_xml", side_effect=spy):
        t0 = time.monotonic()
        ctx, inst, inst_dir = nc.spawn(image_id, metadata=meta)
        out["spawn_s"] = time.monotonic() - t0
        dom = lv.connect().lookupByUUIDString(inst.uuid)
        console = kit.Console(os.path.join(inst_dir, "console.log"))
        try:
            if press_after is not None:
                out["ready"] = console.wait_for(lambda ln: ln == press_after, BOOT_TIMEOUT,
                                                alive=dom.isActive)
                if out["ready"] is not None:
                    t1 = time.monotonic()
                    with mock.patch.object(inst, "save"):
                        # Nova's stop: ACPI power button, wait (shutdown_timeout)
                        nc.driver.power_off(inst, timeout=120, retry_interval=60)
                    out["stop_s"] = time.monotonic() - t1
            out["shutoff"] = kit.wait_shutoff(lv, inst.uuid, BOOT_TIMEOUT)
            console.poll()
            out["boot_s"] = time.monotonic() - t0
            out["console"] = console
            info = nc.driver.get_info(inst)
            out["power_state"] = info.state
            out["metadata"] = dict(inst.metadata)
            if after_stop is not None:
                after_stop(ctx, inst, inst_dir, out)
        finally:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            out["files"] = sorted(os.listdir(inst_dir)) if os.path.isdir(inst_dir) else []
            nc.destroy(ctx, inst)
    out["xml"] = produced[0] if produced else ""
    out["xmls"] = produced
    out["inst_dir_left"] = os.path.exists(inst_dir)
    try:
        lv.connect().lookupByUUIDString(inst.uuid)
        out["domain_left"] = True
    except libvirt.libvirtError:
        out["domain_left"] = False
    return out


def _assert_ran(out, status, lines=()):
    import libvirt
    from nova.compute import power_state
    console = out["console"]
    text = console.text
    for line in lines:
        assert line in [ln for _, ln in console.lines], text
    docker2vm = [ln for _, ln in console.lines if ln.startswith("docker2vm: ")]
    assert docker2vm and docker2vm[-1] == f"docker2vm: exit status {status}", text
    assert out["shutoff"] is not None, "the domain did not shut off:\n" + text
    assert out["shutoff"] == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN), \
        (kit.shutoff_reason_name(out["shutoff"][1]), text)
    assert out["power_state"] == power_state.SHUTDOWN
    assert out["metadata"].get("docker2vm_exit_status") == str(status), out["metadata"]
    assert not out["inst_dir_left"] and not out["domain_left"]


def _kv(console):
    found = {}
    for _, line in console.lines:
        if "=" in line and line.split("=", 1)[0].isupper():
            found.setdefault(*line.split("=", 1))
    return found


def test_disk_direct_kernel_boot(lv, instances_path, base, probe_archive):
    """docker_delivery=disk, base VM by direct kernel boot (the default).

    Real XML from the driver: ``<kernel>/<initrd>/<cmdline>`` from
    ``[docker2vm] base_*``, the root disk ``vda`` (Nova's qcow2 overlay of
    ``_base``) carrying ``<serial>docker2vm-root</serial>``, the config
    drive as Nova's IDE cdrom, the console as Nova's pty serial logged to
    ``console.log`` by virtlogd, ``<acpi/>``. The server metadata's
    ``docker_cmd`` reaches the guest through the driver's config drive."""
    disk, props = kit.glance_disk_image(probe_archive)
    with kit.NovaCompute(lv, instances_path, base) as nc:
        image_id = nc.images.add(disk, props, "qcow2")
        out = _boot(nc, lv, image_id, meta=META)
    xml = out["xml"]
    assert f"<kernel>{base.vmlinux}</kernel>" in xml and "<cmdline>" in xml
    assert "<serial>docker2vm-root</serial>" in xml and "<acpi/>" in xml
    assert 'type="pty"' in xml and "console.log" in xml
    assert 'domain type="qemu"' in xml
    assert {"disk", "disk.config", "console.log", "docker2vm.json"} <= set(out["files"])
    _assert_ran(out, 3, ["ARGS=from-server-metadata", "ID=1000:1000", "FOO=bar",
                         "ROOTFS=ext4", "WRITE=written"])
    kv = _kv(out["console"])
    assert kv["HOST"] == "real-vm-1" or kv["HOST"].startswith("real-vm-"), kv
    # the guest grew ext4 to the flavor's root disk (root_gb=1)
    assert int(kv["DISK_MB"]) > 900, kv
    print(f"disk+direct: spawn {out['spawn_s']:.1f}s, "
          f"shut off {out['boot_s']:.1f}s after spawn began")


def test_disk_base_vm_image(lv, instances_path, base, probe_archive):
    """docker_delivery=disk, base VM as ``[docker2vm] base_vm_image`` =
    ``docker2vm base-image --boot-disk``'s boot.qcow2.

    Real XML from the driver: no ``<kernel>``; the instance's own qcow2
    overlay ``disk.docker2vm-base`` (backing file: the configured image,
    which stays untouched) booted first (``<boot order='1'/>``) by SeaBIOS
    and syslinux, the rootfs disk with its serial beside it."""
    from docker_rootfs.guest import base_image as bi
    full = bi.build_base_image(images.CACHE / "base", cache_dir=images.CACHE, boot_disk=True)
    before = kit.sha256(full.boot_disk)
    disk, props = kit.glance_disk_image(probe_archive)
    with kit.NovaCompute(lv, instances_path, base, base_vm_image=full.boot_disk) as nc:
        image_id = nc.images.add(disk, props, "qcow2")
        out = _boot(nc, lv, image_id)
    xml = out["xml"]
    assert "<kernel>" not in xml
    assert "disk.docker2vm-base" in xml and '<boot order="1"/>' in xml
    assert "<serial>docker2vm-root</serial>" in xml
    assert "disk.docker2vm-base" in out["files"]
    _assert_ran(out, 3, ["ARGS=from-image", "ROOTFS=ext4", "WRITE=written"])
    assert kit.sha256(full.boot_disk) == before
    print(f"disk+base_vm_image: spawn {out['spawn_s']:.1f}s, shut off {out['boot_s']:.1f}s")


def _share_test(lv, instances_path, base, archive, share_driver):
    from nova_image_handler import unpack
    tarball, props = kit.glance_share_image(archive)
    with kit.NovaCompute(lv, instances_path, base, share_driver=share_driver) as nc:
        image_id = nc.images.add(tarball, props, "raw", container_format="docker")
        tree = unpack.tree_path(os.path.join(instances_path, unpack.DEFAULT_DIR_NAME), image_id)
        digests = {}

        def look(*args):
            digests["tree"] = images.tree_digest(tree)
            digests["data_mode"] = os.stat(os.path.join(tree, "data")).st_mode & 0o7777
            digests["read_only"] = unpack.is_read_only(tree)
        out = _boot(nc, lv, image_id, after_stop=look)
        out.update(tree_digest=digests.get("tree"), data_mode=digests.get("data_mode"),
                   tree_read_only=digests.get("read_only"))
        # the image cache manager's pass for the share handler: no instance
        # uses the image any more -> the tree is unmounted and removed
        nc.driver.handler("share").manage_cache(set())
        out["tree_left"] = os.path.exists(tree) or unpack.is_mount(tree)
        # the same tree unpacked again, untouched by any guest
        fresh = tempfile.mkdtemp(prefix="d2v-nova-tree-")
        try:
            ref = unpack.ensure_tree(fresh, image_id, str(tarball), read_only_mount=False)
            out["tree_expected"] = images.tree_digest(ref)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
    return out


def _assert_share_ran(out):
    _assert_ran(out, 3, ["ARGS=from-image", "ID=1000:1000", "ROOTFS=overlay"])
    assert out["tree_digest"] == out["tree_expected"]
    assert out["tree_read_only"] is True
    assert not out["tree_left"]
    lines = [ln for _, ln in out["console"].lines]
    # The image's /data is 1777 (tests/guest/images.py); the container
    # (uid 1000) writes there through the guest's overlay.
    assert out["data_mode"] == 0o1777, f"{out['data_mode']:o}"
    assert "WRITE=written" in lines, out["console"].text


def test_share_virtiofs(lv, instances_path, base, probe_archive):
    """docker_delivery=share by virtiofs: the image (the plugin's normalised
    archive) is Nova's root disk image for ``_base``; the driver's share
    handler unpacks it once per host and exports the tree read-only.

    Real XML from the driver: ``<filesystem>`` with ``<driver
    type='virtiofs'/>``, ``<binary path='/usr/lib/qemu/virtiofsd'>`` with
    the chroot sandbox (libvirtd starts virtiofsd), and the memfd
    ``<memoryBacking>`` shared access Nova itself never writes. libvirt 9.0
    refuses ``<readonly/>`` for virtiofs (and ``<cache mode='auto'/>``;
    both found by this test): the tree is a read-only bind mount instead,
    made by the driver through privsep and checked here during the run.
    The container's writes land in the guest's overlay, on the instance's
    upper disk: the host tree is unchanged; the handler's cache pass
    unmounts and removes it."""
    out = _share_test(lv, instances_path, base, probe_archive, "virtiofs")
    xml = out["xml"]
    assert 'type="virtiofs"' in xml
    assert '<source type="memfd"/>' in xml and '<access mode="shared"/>' in xml
    _assert_share_ran(out)


def test_share_9p(lv, instances_path, probe_archive):
    """docker_delivery=share by 9p (``[docker2vm] share_driver = 9p``), with a
    base VM on Debian's generic kernel (the cloud kernel has no 9p,
    doc/source/guest-contract.md). Real XML from the driver: ``<filesystem>``
    with ``<driver type='path'/>``, ``accessmode='squash'``,
    ``<readonly/>``; no memory backing."""
    generic = images.base_image("linux-image-amd64")
    out = _share_test(lv, instances_path, generic, probe_archive, "9p")
    xml = out["xml"]
    assert 'type="path"' in xml and 'accessmode="squash"' in xml and "<readonly/>" in xml
    assert "memfd" not in xml
    _assert_share_ran(out)


def test_stop_by_power_button_then_start(lv, instances_path, base):
    """``power_off`` (Nova's stop: ``virDomainShutdown``, the ACPI power
    button, then waiting up to shutdown_timeout) delivers the image's
    StopSignal (SIGUSR1) to the entrypoint, which exits 42; the VM powers
    off; the status reaches the server metadata. ``power_on`` (Nova's hard
    reboot path: the XML regenerated through the driver from
    ``docker2vm.json``, the same disks) runs the container again, and it
    sees what it wrote on its root disk the first time, like ``docker
    start``."""
    archive = images.build_archive("nova-stopper", {"/bin/stopper": STOPPER},
                                   {"entrypoint": ["/bin/stopper"], "stopsignal": "SIGUSR1"})
    disk, props = kit.glance_disk_image(archive)
    second = {}

    def start_again(ctx, inst, inst_dir, out):
        from nova.network import model as network_model
        with mock.patch.object(inst, "save"):
            nc.driver.power_on(ctx, inst, network_model.NetworkInfo([]))
        console = kit.Console(os.path.join(inst_dir, "console.log"))
        second["shutoff"] = kit.wait_shutoff(lv, inst.uuid, BOOT_TIMEOUT)
        console.poll()
        second["console"] = console
        nc.driver.get_info(inst)
        second["metadata"] = dict(inst.metadata)

    with kit.NovaCompute(lv, instances_path, base) as nc:
        image_id = nc.images.add(disk, props, "qcow2")
        out = _boot(nc, lv, image_id, press_after="ready", after_stop=start_again)
    assert out["ready"] is not None, out["console"].text
    _assert_ran(out, 42, ["ready", "got-USR1"])
    assert len(out["xmls"]) == 2          # spawn, then power_on's regeneration
    assert out["xmls"][1].count("<serial>docker2vm-root</serial>") == 1
    console = second["console"]
    assert "SECOND-RUN first-run" in [ln for _, ln in console.lines], console.text
    assert console.exit_status() == 5, console.text
    assert second["shutoff"] is not None
    assert second["metadata"].get("docker2vm_exit_status") == "5"
    print(f"stop: power_off returned {out['stop_s']:.1f}s after the press")


# A share container that remembers: the second run sees the first run's write.
REMEMBER = r"""#!/bin/sh
if [ -f /data/marker ]; then echo "SECOND-RUN $(cat /data/marker)"; exit 5; fi
echo first-run >/data/marker && sync
echo "UPPER=$(awk '$2 == "/" {print $3}' /proc/mounts)"
exit 4
"""


def test_share_writes_persist_across_stop_start(lv, instances_path, base):
    """docker_delivery=share by virtiofs: the container's writes go to the
    instance's own upper disk (``disk.docker2vm-upper`` in the instance
    directory, ``<serial>docker2vm-upper</serial>``, named to the guest by
    ``docker2vm/upper``), not a tmpfs: the first run writes /data/marker and
    exits (the VM powers itself off, the guest remounts the upper disk
    read-only), ``power_on`` (Nova's hard reboot path, XML regenerated from
    ``docker2vm.json``) runs it again on the same disk and it sees the file,
    like ``docker start``. The shared host tree never changes; deleting the
    instance removes the upper disk with the instance directory."""
    from nova_image_handler import unpack
    archive = images.build_archive("nova-remember", {"/bin/remember": REMEMBER},
                                   {"entrypoint": ["/bin/remember"]})
    tarball, props = kit.glance_share_image(archive)
    second = {}

    def start_again(ctx, inst, inst_dir, out):
        from nova.network import model as network_model
        upper = os.path.join(inst_dir, "disk.docker2vm-upper")
        second["upper_before"] = os.stat(upper).st_ino
        # the guest remounted it read-only before powering off: clean, no journal to replay
        second["upper_state"] = subprocess.run(["dumpe2fs", "-h", upper], capture_output=True,
                                               text=True, check=True).stdout
        with mock.patch.object(inst, "save"):
            nc.driver.power_on(ctx, inst, network_model.NetworkInfo([]))
        console = kit.Console(os.path.join(inst_dir, "console.log"))
        second["shutoff"] = kit.wait_shutoff(lv, inst.uuid, BOOT_TIMEOUT)
        console.poll()
        second["console"] = console
        nc.driver.get_info(inst)
        second["metadata"] = dict(inst.metadata)
        second["upper_after"] = os.stat(os.path.join(inst_dir, "disk.docker2vm-upper")).st_ino
        tree = unpack.tree_path(os.path.join(instances_path, unpack.DEFAULT_DIR_NAME),
                                image_id)
        second["marker_in_tree"] = os.path.lexists(os.path.join(tree, "data", "marker"))

    with kit.NovaCompute(lv, instances_path, base, share_driver="virtiofs") as nc:
        image_id = nc.images.add(tarball, props, "raw", container_format="docker")
        out = _boot(nc, lv, image_id, after_stop=start_again)
        nc.driver.handler("share").manage_cache(set())
    _assert_ran(out, 4, ["UPPER=overlay"])
    assert len(out["xmls"]) == 2          # spawn, then power_on's regeneration
    for xml in out["xmls"]:
        assert xml.count("<serial>docker2vm-upper</serial>") == 1
        assert "disk.docker2vm-upper" in xml and 'type="virtiofs"' in xml
    assert "disk.docker2vm-upper" in out["files"]
    console = second["console"]
    assert "SECOND-RUN first-run" in [ln for _, ln in console.lines], console.text
    assert console.exit_status() == 5, console.text
    assert second["shutoff"] is not None
    assert second["metadata"].get("docker2vm_exit_status") == "5"
    assert second["upper_before"] == second["upper_after"]
    state = second["upper_state"]
    assert "Filesystem state:         clean" in state and "needs_recovery" not in state, state
    assert second["marker_in_tree"] is False


def test_harness_stand_in_domain(lv, instances_path, base, probe_archive):
    """The harness alone, without the driver: a hand-written domain
    (libvirtkit.stand_in_xml, shaped like Nova 34's XML for virt_type=qemu)
    with the same inputs boots on the private libvirtd. When a driver test
    fails and this one passes, the driver is at fault, not libvirtd, the
    base VM or the images. Everything here is a stand-in except libvirtd,
    virtlogd, QEMU, the guest and the converted rootfs."""
    from docker_rootfs.guest import contract
    disk, _ = kit.glance_disk_image(probe_archive)
    inst = kit.Instance.new(instances_path, 99)
    try:
        root = kit.qcow2_overlay(disk, inst.path("disk"), 1024)
        cfg = kit.config_drive(inst.path("disk.config"), probe_archive, inst.hostname,
                               contract.RootfsDelivery.disk("d2v-stand-in"),
                               instance_uuid=inst.uuid)
        xml = kit.stand_in_xml(inst, root, cfg, kernel=base.vmlinux, initrd=base.initrd,
                               cmdline=base.cmdline, serial="d2v-stand-in")
        run = kit.run_domain(lv, xml, inst.console, timeout=BOOT_TIMEOUT)
    finally:
        shutil.rmtree(inst.dir, ignore_errors=True)
    assert not run.timed_out, kit.dump(run, lv, inst.name)
    assert "ARGS=from-image" in [ln for _, ln in run.lines], run.text
    assert run.exit_status() == 3, run.text
    assert kit.shutoff_reason_name(run.reason) == "shutdown"
