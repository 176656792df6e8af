"""The development cloud (devcloud/) for end-to-end tests, once per run.

``cloud`` (session): ``devcloud.cloud.Cloud`` brought up in its own state
dir (``$DEVCLOUD_TEST_STATE``, default a fresh ``/tmp/d2v-cloud-*``: short,
for libvirt's socket path) on its own ports (``$DEVCLOUD_TEST_PORT_BASE``,
default 29700), so a developer's cloud on the default ports is never
touched. At the end: ``down``, then the checks that nothing is left (no
process naming the state dir, no mount under it), then the state dir is
removed unless ``$DEVCLOUD_TEST_STATE`` was given (then it is kept, and the
next run reuses it: a fast second ``up``).

Neutron is the real API server (no agents; servers use ``--nic none``),
or the STAND-IN devcloud/neutron_standin.py with DEVCLOUD_NEUTRON=standin.

The docker2vm base VM is built once into the state dir from Debian packages
cached in ``$DEVCLOUD_CACHE`` (default ``<repo>/.cache/devcloud``).
"""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CloudClient:
    """The running cloud plus its real CLIs (openstack, glance)."""

    def __init__(self, cloud, up_seconds):
        self.cloud = cloud
        self.up_seconds = up_seconds
        self.bin = os.path.dirname(os.path.realpath(shutil.which("openstack")
                                                    or os.path.join(TOP, ".venv/bin/openstack")))

    def env(self, user="demo"):
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("OS_")]:
            del env[k]
        env.update(self.cloud.os_env(user))
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        return env

    def cli(self, *args, user="demo", check=True, timeout=300):
        res = subprocess.run(list(args), env=self.env(user), capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and res.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        return res

    def openstack(self, *args, user="demo", check=True, timeout=300):
        return self.cli("openstack", *args, user=user, check=check, timeout=timeout)

    def show(self, kind, name, user="demo"):
        import json
        return json.loads(self.openstack(kind, "show", name, "-f", "json", user=user).stdout)

    def wait_server(self, name, statuses, timeout=300, user="demo"):
        deadline = time.monotonic() + timeout
        server = None
        while time.monotonic() < deadline:
            server = self.show("server", name, user=user)
            if server["status"] in statuses:
                return server
            if server["status"] == "ERROR":
                raise AssertionError(f"server {name} in ERROR: {server.get('fault')}")
            time.sleep(2)
        raise AssertionError(f"server {name} not {statuses} after {timeout}s: "
                             f"{server and server['status']}")

    def instance_dir(self, server_id):
        return self.cloud.path("nova", "instances", server_id)


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f
                if line.split()[4] == path or line.split()[4].startswith(path + "/")]


@pytest.fixture(scope="session")
def cloud():
    from devcloud.cloud import Cloud, CloudError
    if os.geteuid() != 0:
        pytest.skip("the development cloud needs root (libvirtd, mounts)")
    given = os.environ.get("DEVCLOUD_TEST_STATE")
    state = given or tempfile.mkdtemp(prefix="d2v-cloud-", dir="/tmp")
    os.environ.setdefault("DEVCLOUD_CACHE", os.path.join(TOP, ".cache", "devcloud"))
    c = Cloud(state, port_base=int(os.environ.get("DEVCLOUD_TEST_PORT_BASE", "29700")),
              log=lambda m: print(f"[devcloud] {m}", flush=True))
    try:
        c.check_prerequisites()
    except CloudError as exc:
        pytest.skip(str(exc))
    try:
        t0 = time.monotonic()
        c.up()
        client = CloudClient(c, time.monotonic() - t0)
        yield client
    finally:
        c.down()
        left = c.leftover_processes()
        mounts = _mounts_under(c.state)
        if not given:
            shutil.rmtree(c.state, ignore_errors=True)
        assert not left, f"processes left after down: {left}"
        assert not mounts, f"mounts left after down: {mounts}"
