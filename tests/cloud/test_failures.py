"""Failures a user can cause, on the development cloud, through the real
``glance`` and ``openstack`` CLIs: the error is where the user looks (the
import task's message, the server's fault) and nothing is left stuck or
half-made (no image in ``importing``, no staging residue, no instance
directory, domain or image cache entry).

(An image deleted while servers use it: test_fleet.py.)
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cloud.conftest import nova_cache_fname

pytestmark = [pytest.mark.cloud, pytest.mark.slow]


def _image_tasks(cloud, image_id):
    """GET /v2/images/ID/tasks (what ``glance image-tasks`` shows)."""
    resp = cloud.conn().image.get(f"/images/{image_id}/tasks")
    assert resp.status_code == 200, resp.text
    return resp.json().get("tasks", [])


def test_broken_archive_at_import(docker2vm_cloud, lifecycle_archive, tmp_path):
    """A truncated docker archive: the import task fails with one line
    naming the problem (no server path in it), the image is back to
    ``queued`` (not stuck in ``importing``), the staging area holds nothing
    of it, and it can be deleted."""
    cloud = docker2vm_cloud
    broken = tmp_path / "broken.tar"
    with open(lifecycle_archive, "rb") as f:
        data = f.read()
    broken.write_bytes(data[:len(data) // 2])
    name = "broken-archive"
    cloud.cli("glance", "image-create-via-import", "--import-method", "docker-convert",
              "--container-format", "docker", "--disk-format", "raw",
              "--file", str(broken), "--name", name, check=False, timeout=300)
    image_id = cloud.show("image", name)["id"]
    try:
        deadline = time.monotonic() + 300
        while True:
            tasks = _image_tasks(cloud, image_id)
            if tasks and tasks[-1]["status"] in ("success", "failure"):
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(1)
        task = tasks[-1]
        assert task["status"] == "failure", task
        msg = task["message"]
        assert msg.startswith("docker-convert: ") and "\n" not in msg, msg
        assert "archive" in msg, msg
        assert cloud.cloud.state not in msg, msg
        shown = cloud.cli("glance", "image-tasks", image_id).stdout
        assert msg[:60] in shown, shown
        deadline = time.monotonic() + 60
        while True:            # the flow's revert finishes after the task's status
            image = cloud.conn().image.get_image(image_id)
            props = image.properties or {}
            if image.status == "queued" and not props.get("os_glance_importing_to_stores"):
                break
            assert time.monotonic() < deadline, (image.status, props)
            time.sleep(1)
        assert props.get("os_glance_failed_import") == "fs", props
        assert "docker_entrypoint" not in props
        assert cloud.show("image", image_id)["status"] == "queued"
        staging = cloud.cloud.path("glance", "staging")
        assert [f for f in os.listdir(staging) if image_id in f] == []
        print(f"task message: {msg}")
    finally:
        cloud.openstack("image", "delete", image_id)
    assert cloud.conn().image.find_image(image_id, ignore_missing=True) is None


@pytest.fixture(scope="module")
def malformed_image(docker2vm_cloud):
    """A docker image whose properties were written by hand, wrongly:
    docker_env is not JSON (the data is the base VM's plain boot disk: the
    driver must refuse before it downloads anything)."""
    cloud = docker2vm_cloud
    image = json.loads(cloud.openstack(
        "image", "create", "--disk-format", "qcow2", "--container-format", "bare",
        "--file", cloud.cloud.plain_image, "--property", "docker_delivery=disk",
        "--property", 'docker_cmd=["/bin/true"]',
        "--property", "docker_env={GREETING: not json", "malformed-props",
        "-f", "json").stdout)
    yield image
    cloud.openstack("image", "delete", image["id"], check=False)


@pytest.fixture(scope="module")
def bad_servers(docker2vm_cloud, malformed_image, lifecycle_images):
    """Both failing servers, created at once: ``bad-props`` of the malformed
    image, ``bad-override`` of a good image with ``--property docker_env``
    that is not JSON."""
    cloud = docker2vm_cloud
    args = {"bad-props": ("--image", malformed_image["id"]),
            "bad-override": ("--image", lifecycle_images["disk"]["id"],
                             "--property", "docker_env=[not json")}
    with ThreadPoolExecutor(len(args)) as ex:
        for f in [ex.submit(cloud.openstack, "server", "create", *extra, "--flavor", "d2v.tiny",
                            "--nic", "none", name) for name, extra in args.items()]:
            f.result()
    yield sorted(args)
    for name in args:
        if cloud.conn().compute.find_server(name, ignore_missing=True):
            cloud.openstack("server", "delete", "--wait", name, check=False, timeout=300)


def assert_error_and_nothing_left(cloud, name, needle, image_id=None):
    server = cloud.wait_status(name, {"ERROR"}, timeout=300, allow_error=True)
    shown = cloud.show("server", server.id)
    fault = shown.get("fault") or {}
    assert shown["status"] == "ERROR"
    assert needle in fault.get("message", ""), fault
    print(f"{name}: fault {fault.get('message')!r}")
    assert not os.path.exists(cloud.instance_dir(server.id))
    listed = cloud.cloud.libvirtd.virsh("list", "--all", "--uuid", timeout=30).stdout
    assert server.id not in listed
    if image_id:
        base = os.path.join(cloud.cloud.path("nova", "instances", "_base"),
                            nova_cache_fname(image_id))
        assert not os.path.exists(base)
    cloud.openstack("server", "delete", "--wait", server.id, timeout=300)
    assert cloud.conn().compute.find_server(server.id, ignore_missing=True) is None


def test_malformed_image_property(docker2vm_cloud, malformed_image, bad_servers):
    """server create on it: ERROR, the fault names the property; no
    instance directory, domain or cached image on the compute host; the
    server deletes cleanly."""
    assert_error_and_nothing_left(docker2vm_cloud, "bad-props", "docker_env",
                                  malformed_image["id"])


def test_malformed_server_metadata_override(docker2vm_cloud, bad_servers):
    """A good image, a bad override (--property docker_env not JSON): ERROR,
    the fault names the server metadata key."""
    assert_error_and_nothing_left(docker2vm_cloud, "bad-override", "server metadata docker_env")
