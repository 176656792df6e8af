"""Five servers of one docker image created at once, with server metadata
overriding the image's Cmd and Env, through the real ``openstack`` CLI on
the development cloud.

``openstack server create --min 5 --max 5 --property docker_cmd=...
--property docker_env=...`` on an image no server used before: the compute
host downloads it once (Nova's per-base lock in its image backend; counted
in Glance's own access log), the five containers run the overridden
command with the merged environment and exit with their own status (the
index in their hostname), all five reach SHUTOFF with
``docker2vm_exit_status`` through the API.
"""

import json
import os

import pytest

from tests.cloud.conftest import nova_cache_fname

pytestmark = [pytest.mark.cloud, pytest.mark.slow, pytest.mark.vm]

COUNT = 5
# docker run IMAGE CMD: replaces the image's Cmd (/app/run.sh, which would
# print "lifecycle: ..." and wait); the exit status is the hostname's index.
FLEET_CMD = ["/bin/sh", "-c",
             'echo "fleet: GREETING=$GREETING EXTRA=$EXTRA KEEP=$KEEP on $HOSTNAME"; '
             'n=${HOSTNAME##*-}; case "$n" in [1-9]) exit "$n";; *) exit 99;; esac']
FLEET_ENV = {"GREETING": "overridden at create", "EXTRA": "added at create"}


@pytest.fixture(scope="module")
def fleet_image(docker2vm_cloud, lifecycle_archive):
    """The lifecycle archive imported once more (a new image ID, so not in
    the compute host's image cache yet), docker_delivery=disk."""
    cloud = docker2vm_cloud
    image = cloud.import_docker(lifecycle_archive, "fleet", "--property",
                                "docker_delivery=disk")
    assert image["status"] == "active", image
    yield image
    cloud.openstack("image", "delete", image["id"], check=False)


@pytest.fixture(scope="module")
def fleet(docker2vm_cloud, fleet_image):
    """``{name: server}`` of the five servers, created by one API call."""
    cloud = docker2vm_cloud
    base = os.path.join(cloud.cloud.path("nova", "instances", "_base"),
                        nova_cache_fname(fleet_image["id"]))
    assert not os.path.exists(base)
    assert cloud.glance_downloads(fleet_image["id"]) == 0, \
        "Glance runs without its access log (a kept cloud started before it: restart it)"
    cloud.openstack("server", "create", "--image", fleet_image["id"], "--flavor", "d2v.tiny",
                    "--nic", "none", "--min", str(COUNT), "--max", str(COUNT),
                    "--property", "docker_cmd=" + json.dumps(FLEET_CMD),
                    "--property", "docker_env=" + json.dumps(FLEET_ENV),
                    "fleet", "-f", "json", timeout=300)
    servers = {s.name: s for s in cloud.conn().compute.servers(name="^fleet-")}
    try:
        yield servers
    finally:
        if servers:
            cloud.openstack("server", "delete", "--wait", *[s.id for s in servers.values()],
                            check=False, timeout=600)
            for s in servers.values():
                assert not os.path.exists(cloud.instance_dir(s.id))


def test_five_servers_at_once_one_download(docker2vm_cloud, fleet_image, fleet):
    """All five reach SHUTOFF, each with its own exit status; the compute
    host fetched the image from Glance once, into one _base file."""
    cloud = docker2vm_cloud
    assert sorted(fleet) == [f"fleet-{i}" for i in range(1, COUNT + 1)], sorted(fleet)
    for name, server in fleet.items():
        srv = cloud.wait_status(server.id, {"SHUTOFF"}, timeout=600)
        assert srv.metadata.get("docker2vm_exit_status") == name.rsplit("-", 1)[1], \
            (name, srv.metadata, cloud.console_log(server.id)[-2000:])
    listed = json.loads(cloud.openstack("server", "list", "--name", "^fleet-", "--long",
                                        "-f", "json").stdout)
    assert {s["Name"]: s["Status"] for s in listed} == {n: "SHUTOFF" for n in fleet}
    assert cloud.glance_downloads(fleet_image["id"]) == 1
    cache = cloud.cloud.path("nova", "instances", "_base")
    name = nova_cache_fname(fleet_image["id"])
    assert [f for f in os.listdir(cache) if f.startswith(name)] == [name]
    for server in fleet.values():       # each instance's root: an overlay of that one base
        info = json.loads(cloud.cli("qemu-img", "info", "-U", "--output", "json",
                                    os.path.join(cloud.instance_dir(server.id), "disk")).stdout)
        assert info["backing-filename"] == os.path.join(cache, name), info


def test_metadata_overrides_cmd_and_env(docker2vm_cloud, fleet):
    """--property docker_cmd replaced the image's Cmd (no "lifecycle:"
    line); docker_env overrode GREETING, added EXTRA and kept the image's
    KEEP; the hostname is the server's."""
    cloud = docker2vm_cloud
    for name, server in fleet.items():
        text = cloud.wait_console(server.id, "docker2vm: exit status")
        assert (f"fleet: GREETING=overridden at create EXTRA=added at create "
                f"KEEP=kept from the image on {name}") in text, text[-2000:]
        assert "lifecycle:" not in text
        assert f"docker2vm: exit status {name.rsplit('-', 1)[1]}" in text
    shown = cloud.show("server", "fleet-1")
    assert json.loads(shown["properties"]["docker_cmd"]) == FLEET_CMD


def test_image_deleted_while_servers_use_it(docker2vm_cloud, fleet_image, fleet):
    """The image is deleted from Glance while the five servers exist: they
    keep working from the compute host's copy (``openstack server start``
    runs fleet-1's container again to SHUTOFF with its exit status); what
    needs the image again fails with a clear error and changes nothing
    (rebuild of fleet-2 to it, a new server of it)."""
    cloud = docker2vm_cloud
    cloud.openstack("image", "delete", fleet_image["id"])
    assert cloud.openstack("image", "show", fleet_image["id"], check=False).returncode != 0
    first = cloud.server("fleet-1")
    console = os.path.join(cloud.instance_dir(first.id), "console.log")
    before = os.stat(console).st_mtime
    cloud.openstack("server", "start", "fleet-1")
    cloud.wait_status(first.id, {"ACTIVE"}, timeout=120)
    srv = cloud.wait_status(first.id, {"SHUTOFF"}, timeout=300)
    assert srv.metadata.get("docker2vm_exit_status") == "1", srv.metadata
    assert os.stat(console).st_mtime > before
    assert "fleet: GREETING=overridden at create" in cloud.console_log(first.id)
    for args in (("server", "rebuild", "--image", fleet_image["id"], "fleet-2"),
                 ("server", "create", "--image", fleet_image["id"], "--flavor", "d2v.tiny",
                  "--nic", "none", "fleet-after-delete")):
        res = cloud.openstack(*args, check=False)
        assert res.returncode != 0
        assert f"No Image found for {fleet_image['id']}" in res.stderr, res.stderr
    assert cloud.server("fleet-2").status == "SHUTOFF"
    assert not cloud.conn().compute.find_server("fleet-after-delete", ignore_missing=True)
