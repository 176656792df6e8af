"""The base VM's other form on the development cloud: ``[docker2vm]
base_vm_image`` = the base VM's BIOS boot disk (``docker2vm base-image
--boot-disk``'s boot.qcow2), the original proposal's form, instead of the
default direct kernel boot (doc/source/nova.md). Both deliveries.

nova-compute is reconfigured and restarted for it (``COMPUTE_RECONFIG``:
tests/cloud/conftest.py runs this module after every other one). The
lifecycle image's share variant is deleted while its server exists: the
server keeps working (hard reboot, stop) from the compute host's copy.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.cloud, pytest.mark.slow, pytest.mark.vm]

COMPUTE_RECONFIG = True
DELIVERIES = ("disk", "share")


def both(fn):
    with ThreadPoolExecutor(len(DELIVERIES)) as ex:
        futures = {d: ex.submit(fn, d) for d in DELIVERIES}
    return {d: f.result() for d, f in futures.items()}


@pytest.fixture(scope="module")
def boot_disk_cloud(docker2vm_cloud):
    took = docker2vm_cloud.use_base_vm_image()
    print(f"nova-compute restarted with base_vm_image in {took:.1f}s")
    return docker2vm_cloud


@pytest.fixture(scope="module")
def servers(boot_disk_cloud, lifecycle_images):
    cloud = boot_disk_cloud

    def create(delivery):
        out = cloud.openstack("server", "create", "--image", lifecycle_images[delivery]["id"],
                              "--flavor", "d2v.tiny", "--nic", "none", f"bd-{delivery}",
                              "-f", "json", timeout=300).stdout
        return json.loads(out)["id"]

    ids = both(create)
    yield ids
    # the delete of the boot-disk form (its base VM overlay goes with the directory)
    cloud.openstack("server", "delete", "--wait", *ids.values(), timeout=300)
    for sid in ids.values():
        assert not os.path.exists(cloud.instance_dir(sid))


def test_boot_disk_form_runs_both_deliveries(boot_disk_cloud, servers):
    """Each instance boots its own copy-on-write overlay of boot.qcow2
    (disk.docker2vm-base, first disk, boot order 1; no <kernel>), SeaBIOS
    and syslinux start the base VM, the container runs."""
    cloud = boot_disk_cloud
    assert cloud.base_vm_form() == "boot-disk"
    both(lambda d: cloud.wait_status(servers[d], {"ACTIVE"}, timeout=300))
    for d, sid in servers.items():
        text = cloud.wait_console(sid, "lifecycle: ready run1")
        assert "lifecycle: fresh root (no /state/runs)" in text
        xml = cloud.cloud.libvirtd.virsh("dumpxml", sid, timeout=30).stdout
        assert "<kernel>" not in xml
        overlay = os.path.join(cloud.instance_dir(sid), "disk.docker2vm-base")
        assert f"<source file='{overlay}'" in xml, xml
        info = json.loads(cloud.cli("qemu-img", "info", "-U", "--output", "json",
                                    overlay).stdout)
        assert info["backing-filename"] == cloud.cloud.plain_image, info


def test_image_deleted_then_hard_reboot(boot_disk_cloud, servers, lifecycle_images):
    """The share image is deleted from Glance while bd-share uses it; a hard
    reboot of both (Nova re-creates missing backing files: the driver keeps
    it from fetching the container image as the base VM overlay's backing)
    runs the containers again on their kept roots."""
    cloud = boot_disk_cloud
    cloud.openstack("image", "delete", lifecycle_images["share"]["id"])
    both(lambda d: cloud.openstack("server", "reboot", "--hard", "--wait", servers[d],
                                   timeout=300))
    for d, sid in servers.items():
        text = cloud.wait_console(sid, "lifecycle: ready run2")
        assert "lifecycle: earlier runs: run1 " in text, text[-2000:]
    base = cloud.cloud.path("nova", "instances", "_base")
    assert os.path.basename(cloud.cloud.plain_image) not in os.listdir(base)


def test_stop_signal_on_boot_disk_form(boot_disk_cloud, servers):
    cloud = boot_disk_cloud
    cloud.openstack("server", "stop", *servers.values())
    both(lambda d: cloud.wait_status(servers[d], {"SHUTOFF"}, timeout=300))
    for d, sid in servers.items():
        text = cloud.console_log(sid)
        assert "lifecycle: got SIGUSR1 (the StopSignal), exiting 42" in text, text[-2000:]
        assert cloud.server(sid).metadata.get("docker2vm_exit_status") == "42"
