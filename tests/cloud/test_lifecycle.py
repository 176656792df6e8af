"""Server lifecycle of docker images on the development cloud, both
deliveries side by side, through the real ``openstack`` CLI:
``server stop|start|reboot --hard|rebuild|delete``.

One ``disk`` and one ``share`` server of the lifecycle image (tests/cloud/
conftest.py: its entrypoint traps the image's StopSignal SIGUSR1 and exits
42 on it, counts its runs in ``/state/runs`` in the container's root and
then waits) go through the whole sequence together; the tests run in file
order, each one step of the same two servers (a failed step makes the
next ones fail on their preconditions). The base VM is the default
direct-kernel form here; test_base_vm_image.py repeats the essentials on
the boot-disk form.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from nova_image_handler import unpack

pytestmark = [pytest.mark.cloud, pytest.mark.slow, pytest.mark.vm]

DELIVERIES = ("disk", "share")


def both(fn):
    """``fn(delivery)`` for both servers at once; the results by delivery."""
    with ThreadPoolExecutor(len(DELIVERIES)) as ex:
        futures = {d: ex.submit(fn, d) for d in DELIVERIES}
    return {d: f.result() for d, f in futures.items()}


def domain_of(cloud, server_id):
    res = cloud.cloud.libvirtd.virsh("domname", server_id, check=False, timeout=30)
    return res.stdout.strip() if res.returncode == 0 else None


def processes_naming(cloud, uuid, domain):
    """Processes of this cloud naming the instance: any naming its UUID
    (QEMU's -uuid), and those in the cloud's libvirtd namespace naming its
    domain (virtiofsd's socket path). Domain names repeat across clouds
    (other tests' libvirtds on this machine have instance-00000001 too)."""
    found = []
    ours = set(cloud.cloud.libvirtd.namespace_pids())
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        needles = (uuid, domain + ",", domain + "/") if int(p) in ours else (uuid,)
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found.append((int(p), cmd[:200]))
    return found


def virtiofsds(cloud):
    """virtiofsd processes in the cloud's libvirtd namespace."""
    out = []
    for pid in cloud.cloud.libvirtd.namespace_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"virtiofsd" in f.read().split(b"\0")[0]:
                    out.append(pid)
        except OSError:
            pass
    return out


def mounts_naming(needle):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if needle in line.split()[4]]


@pytest.fixture(scope="module")
def servers(docker2vm_cloud, lifecycle_images):
    """``{delivery: server id}``: ``lc-disk`` and ``lc-share`` (d2v.tiny,
    --nic none), created together; deleted at the end if a test left them."""
    cloud = docker2vm_cloud

    def create(delivery):
        out = cloud.openstack("server", "create", "--image", lifecycle_images[delivery]["id"],
                              "--flavor", "d2v.tiny", "--nic", "none", f"lc-{delivery}",
                              "-f", "json", timeout=300).stdout
        return json.loads(out)["id"]

    ids = both(create)
    yield ids
    left = [sid for sid in ids.values()
            if cloud.conn().compute.find_server(sid, ignore_missing=True)]
    if left:
        cloud.openstack("server", "delete", "--wait", *left, check=False, timeout=300)


def test_boot_both_deliveries(docker2vm_cloud, servers, lifecycle_images):
    """Both servers ACTIVE, the container runs in each (first run, fresh
    root); the domains are what each delivery means: the root disk with
    the docker2vm serial, or a virtiofs share plus the instance's upper disk."""
    cloud = docker2vm_cloud
    assert lifecycle_images["disk"]["properties"]["docker_stop_signal"] == "SIGUSR1"
    both(lambda d: cloud.wait_status(servers[d], {"ACTIVE"}, timeout=300))
    for d, sid in servers.items():
        text = cloud.wait_console(sid, "lifecycle: ready run1")
        assert "lifecycle: fresh root (no /state/runs)" in text
        assert "KEEP=kept from the image" in text
        xml = cloud.cloud.libvirtd.virsh("dumpxml", sid, timeout=30).stdout
        inst = cloud.instance_dir(sid)
        if d == "disk":
            assert "<serial>docker2vm-root</serial>" in xml
            assert "<filesystem" not in xml
            assert not os.path.exists(os.path.join(inst, "disk.docker2vm-upper"))
        else:
            assert "type='virtiofs'" in xml and "<serial>docker2vm-upper</serial>" in xml
            assert os.path.exists(os.path.join(inst, "disk.docker2vm-upper"))
        assert "<kernel>" in xml            # the default base VM form: direct kernel boot


def test_stop_sends_the_image_stop_signal(docker2vm_cloud, servers):
    """``openstack server stop``: Nova's clean shutdown presses the ACPI
    power button, the guest's init sends the image's StopSignal (SIGUSR1 =
    10) to the entrypoint, whose trap prints and exits 42; the VM powers
    off, SHUTOFF, ``docker2vm_exit_status`` 42 through the API."""
    cloud = docker2vm_cloud
    cloud.openstack("server", "stop", servers["disk"], servers["share"])
    both(lambda d: cloud.wait_status(servers[d], {"SHUTOFF"}, timeout=300))
    for d, sid in servers.items():
        text = cloud.console_log(sid)
        assert "docker2vm: power button: sending signal 10" in text, text[-2000:]
        assert "lifecycle: got SIGUSR1 (the StopSignal), exiting 42" in text, text[-2000:]
        assert "got SIGTERM" not in text
        assert "docker2vm: exit status 42" in text
        shown = cloud.show("server", sid)
        assert shown["status"] == "SHUTOFF"
        assert shown["properties"].get("docker2vm_exit_status") == "42", shown["properties"]
        assert domain_of(cloud, sid)                 # stopped, still defined
    out = cloud.openstack("console", "log", "show", servers["share"]).stdout
    assert "docker2vm: exit status 42" in out


def test_start_keeps_the_container_writes(docker2vm_cloud, servers):
    """``openstack server start``: the container runs again on the same
    root; its first run's write is there (disk: the instance's qcow2
    overlay; share: the instance's upper disk under the overlay)."""
    cloud = docker2vm_cloud
    cloud.openstack("server", "start", servers["disk"], servers["share"])
    both(lambda d: cloud.wait_status(servers[d], {"ACTIVE"}, timeout=300))
    for d, sid in servers.items():
        text = cloud.wait_console(sid, "lifecycle: ready run2")
        assert "lifecycle: earlier runs: run1 " in text, text[-2000:]
        assert "docker2vm_exit_status" not in cloud.server(sid).metadata


def test_hard_reboot_runs_it_again(docker2vm_cloud, servers):
    """``openstack server reboot --hard``: the domain is destroyed and
    started from XML the driver regenerates; the container starts again
    and still sees both earlier runs (its writes were synced)."""
    cloud = docker2vm_cloud
    both(lambda d: cloud.openstack("server", "reboot", "--hard", "--wait", servers[d],
                                   timeout=300))
    for d, sid in servers.items():
        assert cloud.server(sid).status == "ACTIVE"
        text = cloud.wait_console(sid, "lifecycle: ready run3")
        assert "lifecycle: earlier runs: run1 run2 " in text, text[-2000:]


def test_rebuild_gives_a_fresh_root(docker2vm_cloud, servers, lifecycle_images):
    """``openstack server rebuild`` (same image): Nova destroys the
    instance (its directory, the root overlay or upper disk with it) and
    spawns it again: the container finds no earlier run."""
    cloud = docker2vm_cloud
    both(lambda d: cloud.openstack("server", "rebuild", "--image",
                                   lifecycle_images[d]["id"], "--wait", servers[d],
                                   timeout=400))
    for d, sid in servers.items():
        text = cloud.wait_console(sid, "lifecycle: ready run1")
        assert "lifecycle: fresh root (no /state/runs)" in text, text[-2000:]
        assert "earlier runs" not in text


def test_delete_leaves_nothing_on_the_compute_host(docker2vm_cloud, servers, lifecycle_images):
    """``openstack server delete``: no instance directory (overlays, upper
    disk, config drive, console log, docker2vm.json), no libvirt domain, no
    process (QEMU, virtiofsd) and no mount naming the instance. What stays
    is the host's per-image cache: ``_base`` and, for share, the image's
    read-only tree (removed by the image cache manager's pass when unused)."""
    cloud = docker2vm_cloud
    domains = {d: domain_of(cloud, sid) for d, sid in servers.items()}
    assert all(domains.values()), domains
    for d, sid in servers.items():      # the QEMUs (and virtiofsd) run now
        assert processes_naming(cloud, sid, domains[d])
    assert virtiofsds(cloud)             # the share server's (libvirt starts it per domain)
    cloud.openstack("server", "delete", "--wait", servers["disk"], servers["share"],
                    timeout=300)
    listed = cloud.cloud.libvirtd.virsh("list", "--all", "--uuid", timeout=30).stdout
    for d, sid in servers.items():
        assert not os.path.exists(cloud.instance_dir(sid))
        assert sid not in listed
        assert not processes_naming(cloud, sid, domains[d]), \
            processes_naming(cloud, sid, domains[d])
        assert not mounts_naming(sid)
    assert not virtiofsds(cloud)         # no other share server runs in this module
    res = cloud.openstack("server", "show", servers["disk"], check=False)
    assert res.returncode != 0 and "no server" in res.stderr.lower(), res.stderr
    share_tree = unpack.tree_path(cloud.cloud.path("nova", "instances", unpack.DEFAULT_DIR_NAME),
                                  lifecycle_images["share"]["id"])
    assert os.path.isdir(share_tree)                  # the host's cache of the image
    # Nova's device metadata code (start, hard reboot) warns about every
    # <filesystem> that is not a Manila share; the driver keeps it quiet
    # about the container's root.
    with open(cloud.cloud.logfile("nova-compute"), errors="replace") as f:
        noise = [line for line in f if "not linked to any share" in line and share_tree in line]
    assert not noise, noise[0][:500]
