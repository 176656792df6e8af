"""docker2vm on Ceph, end to end in the development cloud (real Ceph, real services).

Glance stores the ``docker-convert`` output in the ``images`` pool (raw:
``[docker_convert] disk_format = auto`` for an rbd store), Nova
(``images_type = rbd``) gives each server an RBD clone of it in ``vms``,
sized to the flavor, with no download to the compute host. Run with
``python -m pytest tests/cloud_ceph -m ceph``.
"""

import hashlib
import os
import subprocess
import time

import pytest

pytestmark = [pytest.mark.cloud, pytest.mark.ceph, pytest.mark.slow]

GIB = 1 << 30


def _base_files(cloud):
    base = cloud.cloud.path("nova", "instances", "_base")
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


@pytest.fixture(scope="module")
def rbd_image(ceph_cloud, lifecycle_archive):
    image = ceph_cloud.import_docker(lifecycle_archive, "ceph-lifecycle",
                                     "--property", "docker_delivery=disk")
    yield image
    ceph_cloud.openstack("image", "delete", image["id"], check=False)


def test_ceph_cluster_healthy(ceph_cloud):
    assert ceph_cloud.ceph.ready()
    pids = ceph_cloud.cloud.status()
    assert all(pids[d] for d in ("ceph-mon", "ceph-mgr", "ceph-osd")), pids


def test_import_stores_raw_in_rbd(ceph_cloud, rbd_image):
    """docker-convert into the rbd store: raw, in pool images with the
    protected snapshot Nova clones, its location visible to Nova."""
    assert rbd_image["status"] == "active", rbd_image
    assert rbd_image["disk_format"] == "raw"
    assert rbd_image["container_format"] == "bare"
    props = rbd_image["properties"]
    assert props["docker_delivery"] == "disk"
    assert props["stores"] == "ceph"
    fsid = ceph_cloud.ceph.fsid
    assert props["direct_url"] == f"rbd://{fsid}/images/{rbd_image['id']}/snap"
    assert rbd_image["id"] in ceph_cloud.rbd_ls("images")
    snaps = ceph_cloud.rbd_snaps("images", rbd_image["id"])
    assert [s["name"] for s in snaps] == ["snap"]
    assert ceph_cloud.rbd_info("images", rbd_image["id"])["size"] == rbd_image["size"]


def test_raw_output_is_the_rootfs_and_reproducible(ceph_cloud, rbd_image, lifecycle_archive,
                                                   tmp_path):
    """The raw image in Ceph is an ext4 rootfs holding the container's files
    (e2fsck clean, /app/run.sh as built), and a second import of the same
    archive stores the same bytes (Glance's os_hash_value)."""
    exported = tmp_path / "rootfs.raw"
    ceph_cloud.ceph.rbd("export", f"images/{rbd_image['id']}", str(exported))
    fsck = subprocess.run(["e2fsck", "-fn", str(exported)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    script = subprocess.run(["debugfs", "-R", "cat /app/run.sh", str(exported)],
                            capture_output=True, text=True, check=True).stdout
    from tests.cloud.conftest import LIFECYCLE_SCRIPT
    assert script == LIFECYCLE_SCRIPT
    with open(exported, "rb") as f:
        assert hashlib.sha512(f.read()).hexdigest() == rbd_image["properties"]["os_hash_value"]
    again = ceph_cloud.import_docker(lifecycle_archive, "ceph-lifecycle-again",
                                     "--property", "docker_delivery=disk")
    try:
        assert again["status"] == "active", again
        assert again["properties"]["os_hash_value"] == rbd_image["properties"]["os_hash_value"]
    finally:
        ceph_cloud.openstack("image", "delete", again["id"], check=False)


@pytest.fixture(scope="module")
def rbd_server(ceph_cloud, rbd_image):
    base_before = _base_files(ceph_cloud)
    res = ceph_cloud.openstack("server", "create", "--image", rbd_image["id"], "--flavor",
                               "d2v.tiny", "--nic", "none", "--wait", "-f", "value", "-c", "id",
                               "--property", 'docker_cmd=["/bin/sh", "-c", '
                               '"df -k / | sed -n 2p | sed s/^/rootfs:/; exec /app/run.sh"]',
                               "ceph-c1", timeout=600)
    server_id = res.stdout.strip()
    yield {"id": server_id, "base_before": base_before}
    ceph_cloud.openstack("server", "delete", "--wait", server_id, check=False, timeout=300)


def test_root_disk_is_an_rbd_clone_sized_to_the_flavor(ceph_cloud, rbd_image, rbd_server):
    sid = rbd_server["id"]
    info = ceph_cloud.rbd_info("vms", f"{sid}_disk")
    parent = info["parent"]
    assert (parent["pool"], parent["image"], parent["snapshot"]) == \
        ("images", rbd_image["id"], "snap"), info
    assert info["size"] == 1 * GIB          # d2v.tiny: 1 GiB root disk
    assert f"{sid}_disk.config" in ceph_cloud.rbd_ls("vms")
    # no download to the compute host: nothing new in Nova's image cache
    assert _base_files(ceph_cloud) == rbd_server["base_before"]
    # the base VM stays local: the domain boots the host's kernel
    name = ceph_cloud.conn("admin").compute.get_server(sid).instance_name
    xml = ceph_cloud.cloud.libvirtd.virsh("dumpxml", name, timeout=30).stdout
    assert "<kernel>" in xml and "protocol='rbd'" in xml
    assert f"vms/{sid}_disk" in xml


def test_container_runs_grown_rootfs(ceph_cloud, rbd_server):
    text = ceph_cloud.wait_console(rbd_server["id"], "lifecycle: ready run1", timeout=300)
    assert "lifecycle: fresh root (no /state/runs)" in text
    # the guest grew the ext4 (a few MiB as imported) to the clone's 1 GiB
    line = next(ln for ln in text.splitlines() if ln.startswith("rootfs:"))
    size_kib = int(line.split()[1])
    assert 900 * 1024 < size_kib <= 1024 * 1024, line


def test_stop_start_keeps_writes_and_exit_status(ceph_cloud, rbd_server):
    sid = rbd_server["id"]
    ceph_cloud.wait_console(sid, "lifecycle: ready run1", timeout=300)
    ceph_cloud.openstack("server", "stop", sid)
    ceph_cloud.wait_status(sid, ("SHUTOFF",), timeout=300)
    console = ceph_cloud.openstack("console", "log", "show", sid).stdout
    assert "got SIGUSR1 (the StopSignal), exiting 42" in console
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        md = ceph_cloud.conn().compute.get_server(sid).metadata or {}
        if md.get("docker2vm_exit_status"):
            break
        time.sleep(2)
    assert md.get("docker2vm_exit_status") == "42", md
    ceph_cloud.openstack("server", "start", sid)
    ceph_cloud.wait_status(sid, ("ACTIVE",), timeout=300)
    text = ceph_cloud.wait_console(sid, "lifecycle: ready run2", timeout=300)
    assert "lifecycle: earlier runs: run1" in text


def test_image_delete_refused_while_clones_exist(ceph_cloud, rbd_image, rbd_server):
    res = ceph_cloud.openstack("image", "delete", rbd_image["id"], check=False)
    assert res.returncode != 0
    assert "409" in res.stderr and "in use" in res.stderr, res.stderr
    assert ceph_cloud.show("image", rbd_image["id"])["status"] == "active"
    assert rbd_image["id"] in ceph_cloud.rbd_ls("images")


def test_rebuild_gives_a_fresh_clone(ceph_cloud, rbd_image, rbd_server):
    sid = rbd_server["id"]
    ceph_cloud.wait_console(sid, "lifecycle: ready run2", timeout=300)
    ceph_cloud.openstack("server", "rebuild", "--image", rbd_image["id"], "--wait", sid,
                         timeout=600)
    text = ceph_cloud.wait_console(sid, "lifecycle: ready run1", timeout=300)
    assert "lifecycle: fresh root (no /state/runs)" in text
    parent = ceph_cloud.rbd_info("vms", f"{sid}_disk")["parent"]
    assert parent["image"] == rbd_image["id"]


def test_delete_leaves_no_rbd_image_then_image_delete_works(ceph_cloud, rbd_image, rbd_server):
    sid = rbd_server["id"]
    ceph_cloud.openstack("server", "delete", "--wait", sid, timeout=300)
    assert not [n for n in ceph_cloud.rbd_ls("vms") if n.startswith(sid)]
    assert not os.path.exists(ceph_cloud.instance_dir(sid))
    ceph_cloud.openstack("image", "delete", rbd_image["id"])
    assert rbd_image["id"] not in ceph_cloud.rbd_ls("images")


def test_share_image_refused_on_rbd_with_a_fault(ceph_cloud, lifecycle_archive):
    """docker_delivery=share needs the archive unpacked on the compute
    host's local disk; with images_type=rbd the driver refuses it before
    creating anything, with a fault naming the option."""
    image = ceph_cloud.import_docker(lifecycle_archive, "ceph-share",
                                     "--property", "docker_delivery=share")
    try:
        assert image["status"] == "active", image
        assert image["container_format"] == "docker"
        res = ceph_cloud.openstack("server", "create", "--image", image["id"], "--flavor",
                                   "d2v.tiny", "--nic", "none", "-f", "value", "-c", "id",
                                   "ceph-share1")
        sid = res.stdout.strip()
        try:
            srv = ceph_cloud.wait_status(sid, ("ERROR", "ACTIVE"), timeout=300, allow_error=True)
            assert srv.status == "ERROR"
            assert "images_type = rbd" in str(srv.fault), srv.fault
            assert not [n for n in ceph_cloud.rbd_ls("vms") if n.startswith(sid)]
        finally:
            ceph_cloud.openstack("server", "delete", "--wait", sid, check=False, timeout=300)
    finally:
        ceph_cloud.openstack("image", "delete", image["id"], check=False)
