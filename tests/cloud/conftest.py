"""The development cloud (devcloud/) for end-to-end tests, once per run.

``cloud`` (session): ``devcloud.cloud.Cloud`` brought up in its own state
dir (``$DEVCLOUD_TEST_STATE``, default a fresh ``/tmp/d2v-cloud-*``: short,
for libvirt's socket path) on its own ports (``$DEVCLOUD_TEST_PORT_BASE``,
default 29700), so a developer's cloud on the default ports is never
touched. At the end: ``down``, then the checks that nothing is left (no
process naming the state dir, no mount under it), then the state dir is
removed unless ``$DEVCLOUD_TEST_STATE`` was given (then it is kept, and the
next run reuses it: a fast second ``up``). With ``$DEVCLOUD_TEST_STATE`` and
``DEVCLOUD_TEST_KEEP=1`` the cloud is left running after the run (for
iterating on one test; ``python -m devcloud down --state DIR`` stops it).

Tests that reconfigure nova-compute (``CloudClient.use_base_vm_image``:
the boot-disk base VM form, a nova-compute restart) are in modules setting
``COMPUTE_RECONFIG = True``: the collection hook below runs those modules
last, so the rest of the run sees the cloud's default configuration and
nova-compute is restarted at most once.

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
        self._conns = {}
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

    def conn(self, user="demo"):
        """An openstacksdk connection (cheap polling: no CLI start-up per call)."""
        if user not in self._conns:
            import openstack
            e = self.cloud.os_env(user)
            self._conns[user] = openstack.connect(
                auth_url=e["OS_AUTH_URL"], username=e["OS_USERNAME"],
                password=e["OS_PASSWORD"], project_name=e["OS_PROJECT_NAME"],
                user_domain_name="Default", project_domain_name="Default",
                region_name=e["OS_REGION_NAME"], identity_interface="public")
        return self._conns[user]

    # -- servers through openstacksdk (polling), files on the compute host --
    def server(self, ref, user="demo"):
        c = self.conn(user).compute
        return c.find_server(ref, ignore_missing=False)

    def wait_status(self, ref, statuses, timeout=300, user="demo", allow_error=False):
        """Poll until the server's status is one of ``statuses``; ERROR
        fails at once with the fault unless ``allow_error``."""
        deadline = time.monotonic() + timeout
        srv = None
        while time.monotonic() < deadline:
            srv = self.conn(user).compute.get_server(self.server(ref, user).id)
            if srv.status in statuses:
                return srv
            if srv.status == "ERROR" and not allow_error:
                raise AssertionError(f"server {ref} in ERROR: {srv.fault}")
            time.sleep(1.5)
        raise AssertionError(f"server {ref} not {statuses} after {timeout}s: "
                             f"{srv and srv.status}")

    def console_log(self, server_id):
        """The instance's console.log on the compute host (virtlogd; each
        boot of the domain starts it anew), '' when absent."""
        try:
            with open(os.path.join(self.instance_dir(server_id), "console.log"),
                      errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_console(self, server_id, needle, timeout=240):
        """Poll console.log until it contains ``needle``; its text."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.console_log(server_id)
            if needle in text:
                return text
            time.sleep(1)
        raise AssertionError(f"{needle!r} not in the console of {server_id} after "
                             f"{timeout}s:\n{text[-3000:]}")

    def import_docker(self, archive, name, *extra, timeout=300):
        """``glance image-create-via-import --import-method docker-convert``,
        then wait until the import ended: the image (``openstack image show``)."""
        self.cli("glance", "image-create-via-import", "--import-method", "docker-convert",
                 "--container-format", "docker", "--disk-format", "raw",
                 "--file", archive, "--name", name, *extra, timeout=600)
        return self.wait_import(name, timeout)

    def wait_import(self, name, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            image = self.show("image", name)
            props = image.get("properties", {})
            if image["status"] in ("active", "killed") or \
                    (image["status"] == "queued" and "os_glance_import_task" not in props):
                return image
            assert time.monotonic() < deadline, f"import not finished: {image['status']}"
            time.sleep(1)

    def glance_downloads(self, image_id):
        """How many ``GET /v2/images/ID/file`` reached Glance (its gunicorn
        access log, STATE/log/glance.out); None when Glance runs without one."""
        try:
            with open(self.cloud.path("log", "glance.out"), errors="replace") as f:
                lines = [line for line in f if '"GET /' in line or '"POST /' in line]
        except FileNotFoundError:
            return None
        if not lines:
            return None
        return sum(f"GET /v2/images/{image_id}/file " in line for line in lines)

    def base_vm_form(self):
        return "boot-disk" if "base_vm_image" in self.cloud.docker2vm_opts else "kernel"

    def use_base_vm_image(self):
        """Switch nova-compute to the base VM's boot-disk form ([docker2vm]
        base_vm_image = the base VM's boot.qcow2): rewrites nova.conf,
        restarts nova-compute (devcloud's start_compute destroys every domain
        first) and waits until the service is up again. Only from a module
        marked ``compute_reconfig`` (run last)."""
        c = self.cloud
        if self.base_vm_form() == "boot-disk":
            return 0.0
        t0 = time.monotonic()
        c.docker2vm_opts["base_vm_image"] = c.plain_image
        c.write_configs()
        c.start_compute()
        c.finish_nova()
        return time.monotonic() - t0


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f
                if line.split()[4] == path or line.split()[4].startswith(path + "/")]


def cloud_session(client_class, state_env, state_prefix, port_env, default_port,
                  check=None, skip_errors=(), access_log=False, **cloud_kwargs):
    """The body of a session fixture bringing a development cloud up (a
    generator: ``yield from`` it). State dir ``$state_env`` (kept and reused)
    or a fresh ``/tmp/<state_prefix>*`` (removed at the end, or at once on a
    skip); ports from ``$port_env`` (default ``default_port``); ``check(cloud)``
    after the cloud's prerequisites (a CloudError, or one of
    ``skip_errors``, skips); ``access_log``: gunicorn's access log in
    STATE/log/<service>.out for the services this up starts. Yields
    ``client_class(cloud, seconds up took)``. At the end: ``down`` and the
    checks that no process or mount is left (nothing is stopped with
    ``$state_env`` and ``DEVCLOUD_TEST_KEEP=1``)."""
    from devcloud.cloud import Cloud, CloudError
    if os.geteuid() != 0:
        pytest.skip("the development cloud needs root (libvirtd, mounts)")
    given = os.environ.get(state_env)
    state = given or tempfile.mkdtemp(prefix=state_prefix, dir="/tmp")
    os.environ.setdefault("DEVCLOUD_CACHE", os.path.join(TOP, ".cache", "devcloud"))
    c = Cloud(state, port_base=int(os.environ.get(port_env, str(default_port))),
              log=lambda m: print(f"[devcloud] {m}", flush=True), **cloud_kwargs)
    try:
        c.check_prerequisites()
        if check is not None:
            check(c)
    except (CloudError, *skip_errors) as exc:
        if not given:
            shutil.rmtree(state, ignore_errors=True)
        pytest.skip(str(exc))
    keep = bool(given) and os.environ.get("DEVCLOUD_TEST_KEEP") == "1"
    saved = os.environ.get("GUNICORN_CMD_ARGS")
    if access_log:
        os.environ["GUNICORN_CMD_ARGS"] = "--access-logfile -"
    try:
        t0 = time.monotonic()
        try:
            c.up()
        finally:
            if access_log:
                if saved is None:
                    del os.environ["GUNICORN_CMD_ARGS"]
                else:
                    os.environ["GUNICORN_CMD_ARGS"] = saved
        client = client_class(c, time.monotonic() - t0)
        yield client
    finally:
        left = mounts = None
        if not keep:
            c.down()
            left = c.leftover_processes()
            mounts = _mounts_under(c.state)
            if not given:
                shutil.rmtree(c.state, ignore_errors=True)
    assert not left, f"processes left after down: {left}"
    assert not mounts, f"mounts left after down: {mounts}"


@pytest.fixture(scope="session")
def cloud():
    # gunicorn's access log to stdout, i.e. STATE/log/<service>.out: which
    # requests reached Glance (CloudClient.glance_downloads). Only for
    # services this up starts; a kept cloud's running ones stay as they are.
    yield from cloud_session(CloudClient, "DEVCLOUD_TEST_STATE", "d2v-cloud-",
                             "DEVCLOUD_TEST_PORT_BASE", 29700, access_log=True)


def pytest_collection_modifyitems(session, config, items):
    """Modules with ``COMPUTE_RECONFIG = True`` (they restart nova-compute
    with other options) run after every other test, in their own order."""
    def reconfig(item):
        return bool(getattr(getattr(item, "module", None), "COMPUTE_RECONFIG", False))
    items[:] = [i for i in items if not reconfig(i)] + [i for i in items if reconfig(i)]


LIFECYCLE_SCRIPT = """\
#!/bin/sh
# The lifecycle image's entrypoint: reports its earlier runs (a file in
# the container's root), records this one, waits for its StopSignal.
trap 'echo "lifecycle: got SIGUSR1 (the StopSignal), exiting 42"; exit 42' USR1
trap 'echo "lifecycle: got SIGTERM, exiting 43"; exit 43' TERM
if [ -f /state/runs ]; then
    echo "lifecycle: earlier runs: $(tr '\\n' ' ' < /state/runs)"
else
    echo "lifecycle: fresh root (no /state/runs)"
fi
mkdir -p /state
n=$(( $(wc -l < /state/runs 2>/dev/null || echo 0) + 1 ))
echo "run$n" >> /state/runs
sync
echo "lifecycle: ready run$n as $HOSTNAME, KEEP=$KEEP"
while :; do sleep 1 & wait $!; done
"""

LIFECYCLE_CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY run.sh /app/run.sh
ENV GREETING="from the image" KEEP="kept from the image"
STOPSIGNAL SIGUSR1
CMD ["/app/run.sh"]
"""


@pytest.fixture(scope="session")
def lifecycle_archive(tmp_path_factory):
    """A real docker-archive built with podman (busybox-static payload):
    Cmd /app/run.sh (LIFECYCLE_SCRIPT: traps its StopSignal SIGUSR1, exits
    42 on it, counts its runs in /state/runs), Env GREETING and KEEP."""
    busybox = shutil.which("busybox")
    if not shutil.which("podman") or not busybox:
        pytest.skip("podman and busybox-static are needed to build the archive")
    d = tmp_path_factory.mktemp("lifecycle-archive")
    ctx = d / "ctx"
    ctx.mkdir()
    shutil.copy(busybox, ctx / "busybox")
    (ctx / "run.sh").write_text(LIFECYCLE_SCRIPT)
    os.chmod(ctx / "run.sh", 0o755)
    (ctx / "Containerfile").write_text(LIFECYCLE_CONTAINERFILE)
    runroot = tempfile.mkdtemp(prefix="d2v-cloud-run-", dir="/tmp")
    pod = ["podman", "--root", str(d / "root"), "--runroot", runroot]
    out = d / "lifecycle.tar"
    try:
        res = subprocess.run(pod + ["build", "--isolation=chroot", "-q", "-t",
                                    "localhost/cloud-lifecycle:1", str(ctx)],
                             capture_output=True, text=True)
        assert res.returncode == 0, "podman build failed: " + res.stderr[-2000:]
        subprocess.run(pod + ["save", "--format", "docker-archive", "-o", str(out),
                              "localhost/cloud-lifecycle:1"], check=True, capture_output=True)
        subprocess.run(pod + ["rmi", "-a", "-f"], capture_output=True)
    finally:
        # podman's overlay storage may leave a mount below its root
        for target in reversed(_mounts_under(str(d / "root"))):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(d / "root", ignore_errors=True)
    return str(out)


@pytest.fixture(scope="session")
def docker2vm_cloud(cloud):
    """The cloud, when its compute driver is docker2vm's."""
    if not cloud.cloud.compute_driver.startswith("docker2vm."):
        pytest.skip(f"compute_driver is {cloud.cloud.compute_driver} "
                    "(DEVCLOUD_COMPUTE_DRIVER): docker images need docker2vm.Docker2VMDriver")
    return cloud


@pytest.fixture(scope="session")
def lifecycle_images(docker2vm_cloud, lifecycle_archive):
    """The lifecycle archive imported twice (docker-convert):
    ``{"disk": image, "share": image}``; deleted at the end."""
    cloud = docker2vm_cloud
    images = {}
    try:
        for delivery in ("disk", "share"):
            images[delivery] = cloud.import_docker(
                lifecycle_archive, f"lifecycle-{delivery}",
                "--property", f"docker_delivery={delivery}")
            assert images[delivery]["status"] == "active", images[delivery]
        yield images
    finally:
        for image in images.values():
            cloud.openstack("image", "delete", image["id"], check=False)


def nova_cache_fname(image_id):
    """Nova's image cache file name for IMAGE_ID (``_base/<name>``).

    Imported here, at call time: importing ``nova.virt.libvirt`` at module
    level during collection selects oslo.service's eventlet backend before
    tests/nova/conftest.py selects the threading one, and collection fails.
    """
    from nova.virt.libvirt import imagecache
    return imagecache.get_cache_fname(image_id)
