"""Two compute hosts against the same Ceph: no image download on either.

A second nova-compute (devcloud/compute2.py: host ``devcloud2``, its own
libvirtd in its own UTS namespace, its own instances_path) joins the Ceph
cloud; one server of the same docker image is pinned to each host. Both
root disks are RBD clones of the image in ``images``; neither host's
``_base`` gets the image. The second host is removed again at the end of
the module (file order: after test_ceph.py).
"""

import os
import time

import pytest

pytestmark = [pytest.mark.cloud, pytest.mark.ceph, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_hosts(ceph_cloud):
    from devcloud.compute2 import NAME, SecondCompute
    second = SecondCompute(ceph_cloud.cloud)
    try:
        second.up()
        yield {"devcloud": ceph_cloud.cloud.path("nova", "instances"), NAME: second.instances_path}
    finally:
        second.down()


@pytest.fixture(scope="module")
def shared_image(ceph_cloud, lifecycle_archive):
    image = ceph_cloud.import_docker(lifecycle_archive, "ceph-two-hosts",
                                     "--property", "docker_delivery=disk")
    yield image
    ceph_cloud.openstack("image", "delete", image["id"], check=False)


def _base(path):
    base = os.path.join(path, "_base")
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


def test_one_server_per_host_both_rbd_clones_no_download(ceph_cloud, two_hosts, shared_image):
    assert shared_image["status"] == "active" and shared_image["disk_format"] == "raw"
    before = {host: _base(path) for host, path in two_hosts.items()}
    servers = {}
    try:
        for host in two_hosts:
            # a host in the availability zone: admin only (the image is the demo project's)
            res = ceph_cloud.openstack(
                "server", "create", "--image", shared_image["id"], "--flavor", "d2v.tiny",
                "--nic", "none", "--availability-zone", f"nova:{host}", "--wait",
                "-f", "value", "-c", "id", f"ceph-on-{host}", user="admin", timeout=600)
            servers[host] = res.stdout.strip()
        for host, sid in servers.items():
            srv = ceph_cloud.conn("admin").compute.get_server(sid)
            assert srv.compute_host == host, (sid, srv.compute_host)
            # the console log is on the server's own host
            console = os.path.join(two_hosts[host], sid, "console.log")
            text = ""
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and "lifecycle: ready run1" not in text:
                time.sleep(1)
                with open(console, errors="replace") as f:
                    text = f.read()
            assert "lifecycle: ready run1" in text, text[-2000:]
            parent = ceph_cloud.rbd_info("vms", f"{sid}_disk")["parent"]
            assert (parent["pool"], parent["image"], parent["snapshot"]) == \
                ("images", shared_image["id"], "snap")
        for host, path in two_hosts.items():     # (a reused state dir may hold older files)
            assert _base(path) == before[host], f"{host} downloaded into _base: {_base(path)}"
    finally:
        for sid in servers.values():
            ceph_cloud.openstack("server", "delete", "--wait", sid, user="admin", check=False,
                                 timeout=300)
    for sid in servers.values():
        assert not [n for n in ceph_cloud.rbd_ls("vms") if n.startswith(sid)]
