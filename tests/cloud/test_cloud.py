"""End-to-end against the development cloud (devcloud/): real Keystone,
Glance (docker-convert), Placement, Nova (api, conductor, scheduler,
compute on a real libvirtd, TCG), Neutron (API server only, no agents:
servers use ``--nic none``; the STAND-IN devcloud/neutron_standin.py with
DEVCLOUD_NEUTRON=standin), RabbitMQ, MariaDB, through the real
``openstack`` and ``glance`` CLIs."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

pytestmark = [pytest.mark.cloud, pytest.mark.slow]

GREETING = "hello from a container in a devcloud VM"
CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING="%s"
CMD ["/bin/sh", "-c", "echo \\"$GREETING\\"; echo \\"cmd ran as $(id -u)\\"; exit 3"]
""" % GREETING


@pytest.fixture(scope="session")
def demo_archive(tmp_path_factory):
    """A real docker-archive built with podman (busybox-static payload)."""
    busybox = shutil.which("busybox")
    if not shutil.which("podman") or not busybox:
        pytest.skip("podman and busybox-static are needed to build the archive")
    d = tmp_path_factory.mktemp("cloud-archive")
    ctx = d / "ctx"
    ctx.mkdir()
    shutil.copy(busybox, ctx / "busybox")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    runroot = tempfile.mkdtemp(prefix="d2v-cloud-run-", dir="/tmp")
    pod = ["podman", "--root", str(d / "root"), "--runroot", runroot]
    try:
        res = subprocess.run(pod + ["build", "--isolation=chroot", "-q", "-t",
                                    "localhost/cloud-demo:1", str(ctx)],
                             capture_output=True, text=True)
        assert res.returncode == 0, "podman build failed: " + res.stderr[-2000:]
        out = d / "cloud-demo.tar"
        subprocess.run(pod + ["save", "--format", "docker-archive", "-o", str(out),
                              "localhost/cloud-demo:1"], check=True, capture_output=True)
        subprocess.run(pod + ["rmi", "-a", "-f"], capture_output=True)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(d / "root", ignore_errors=True)
    return str(out)


def test_token_and_catalog(cloud):
    print(f"cloud up in {cloud.up_seconds:.1f}s; RSS MiB {cloud.cloud.rss()}; "
          f"state dir {cloud.cloud.disk_usage()} MiB")
    token = json.loads(cloud.openstack("token", "issue", "-f", "json").stdout)
    assert token["id"] and token["project_id"]
    catalog = json.loads(cloud.openstack("catalog", "list", "-f", "json").stdout)
    types = {entry["Type"] for entry in catalog}
    assert {"identity", "image", "compute", "placement", "network"} <= types, types


def test_second_up_reuses_what_runs(cloud):
    before = cloud.cloud.status()
    assert all(before.values()), before
    took = cloud.cloud.up()
    assert cloud.cloud.status() == before
    assert took < 60, f"a second up took {took:.1f}s"


def test_api_servers_keep_an_idle_connection_past_the_sdk_poll_interval(cloud):
    """openstacksdk polls every 2 s on one kept-alive connection (``server
    delete --wait``). An API server that drops a connection idle for 2 s
    races that poll, and the CLI fails with "Remote end closed connection
    without response" (a CI run failed so). Each API server must answer a
    second request on a connection idle for 3 s."""
    import http.client
    import urllib.parse
    conns = {}
    for name in ("keystone", "glance", "placement", "neutron", "nova-api"):
        url = urllib.parse.urlsplit(cloud.cloud.url(name))
        conns[name] = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    for conn in conns.values():
        conn.request("GET", "/")
        conn.getresponse().read()
    time.sleep(3)
    dropped = {}
    for name, conn in conns.items():
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
        except (http.client.HTTPException, OSError) as e:
            dropped[name] = repr(e)
        finally:
            conn.close()
    assert not dropped, f"idle connections dropped within 3 s: {dropped}"


def test_neutron_answers_nova_port_calls(cloud):
    """Real neutron-server (API only) unless DEVCLOUD_NEUTRON=standin."""
    ports = json.loads(cloud.openstack("port", "list", "-f", "json").stdout)
    assert ports == []
    if cloud.cloud.real_neutron:
        exts = json.loads(cloud.openstack("extension", "list", "--network", "-f",
                                          "json").stdout)
        assert any(e["Alias"] == "binding" for e in exts)


def test_neutron_standin_app():
    """The stand-in (DEVCLOUD_NEUTRON=standin) answers reads, refuses writes."""
    from devcloud import neutron_standin
    seen = {}

    def call(method, path, query=""):
        body = b"".join(neutron_standin.application(
            {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
             "HTTP_HOST": "127.0.0.1:1"},
            lambda status, headers: seen.update(status=status)))
        return seen["status"], json.loads(body)

    assert call("GET", "/v2.0/ports", "device_id=x") == ("200 OK", {"ports": []})
    assert call("GET", "/v2.0/security-groups")[1] == {"security_groups": []}
    status, body = call("POST", "/v2.0/networks")
    assert status.startswith("501") and "stand-in" in body["NeutronError"]["message"]
    assert call("GET", "/")[1]["versions"][0]["id"] == "v2.0"


def test_image_list(cloud):
    images = json.loads(cloud.openstack("image", "list", "-f", "json").stdout)
    assert isinstance(images, list)
    info = cloud.cli("glance", "import-info").stdout
    assert "docker-convert" in info, info


def test_plain_server_active_then_deleted(cloud):
    """A plain (non-docker) image through the same compute service: the stock
    libvirt path of the driver (the base VM's BIOS boot disk as a plain qcow2)."""
    cloud.openstack("image", "create", "--disk-format", "qcow2", "--container-format", "bare",
                    "--file", cloud.cloud.plain_image, "plain-boot")
    server = json.loads(cloud.openstack(
        "server", "create", "--image", "plain-boot", "--flavor", "d2v.tiny", "--nic", "none",
        "--wait", "plain1", "-f", "json", timeout=600).stdout)
    assert server["status"] == "ACTIVE"
    assert os.path.isdir(cloud.instance_dir(server["id"]))
    cloud.openstack("server", "delete", "--wait", "plain1", timeout=300)
    servers = json.loads(cloud.openstack("server", "list", "-f", "json").stdout)
    assert "plain1" not in {s["Name"] for s in servers}
    assert not os.path.exists(cloud.instance_dir(server["id"]))
    cloud.openstack("image", "delete", "plain-boot")


def import_archive(cloud, archive, name, *extra):
    """glance image-create-via-import --import-method docker-convert, then
    wait for the import to end; the image as ``openstack image show``."""
    cloud.cli("glance", "image-create-via-import", "--import-method", "docker-convert",
              "--container-format", "docker", "--disk-format", "raw",
              "--file", archive, "--name", name, *extra, timeout=600)
    deadline = time.monotonic() + 300
    while True:
        image = cloud.show("image", name)
        if image["status"] in ("active", "killed") or \
                (image["status"] == "queued" and "os_glance_import_task" not in
                 image.get("properties", {})):
            break
        assert time.monotonic() < deadline, f"import not finished: {image['status']}"
        time.sleep(1)
    assert image["status"] == "active", image
    return image


@pytest.fixture(scope="module")
def docker_image(cloud, demo_archive):
    if not cloud.cloud.compute_driver.startswith("docker2vm."):
        pytest.skip(f"compute_driver is {cloud.cloud.compute_driver} "
                    "(DEVCLOUD_COMPUTE_DRIVER): docker images need docker2vm.Docker2VMDriver")
    image = import_archive(cloud, demo_archive, "cloud-demo")
    yield image
    cloud.openstack("image", "delete", "cloud-demo", check=False)


def test_docker_convert_import(docker_image):
    props = docker_image["properties"]
    assert props["docker_delivery"] == "disk"
    assert json.loads(props["docker_cmd"])[-1].startswith('echo "$GREETING"')
    assert f"GREETING={GREETING}" in json.loads(props["docker_env"])
    assert docker_image["disk_format"] == "qcow2"


@pytest.fixture(scope="module")
def container_server(cloud, docker_image):
    server = json.loads(cloud.openstack(
        "server", "create", "--image", "cloud-demo", "--flavor", "d2v.small", "--nic", "none",
        "--wait", "c1", "-f", "json", timeout=600).stdout)
    yield server
    cloud.openstack("server", "delete", "--wait", "c1", check=False, timeout=300)
    assert not os.path.exists(cloud.instance_dir(server["id"]))


def test_container_runs_to_shutoff_with_exit_status(cloud, container_server):
    """openstack server create -> the container runs in the VM -> SHUTOFF, its
    exit status in the server's properties, its output in the console log."""
    assert container_server["status"] == "ACTIVE"
    server = cloud.wait_server("c1", {"SHUTOFF"}, timeout=300)
    assert server["properties"].get("docker2vm_exit_status") == "3", server["properties"]
    with open(os.path.join(cloud.instance_dir(server["id"]), "console.log"),
              errors="replace") as f:
        console = f.read()
    assert GREETING in console
    assert "cmd ran as 0" in console
    assert "docker2vm: exit status 3" in console


def test_start_again_runs_the_container_again(cloud, container_server):
    """server start of the exited container (Nova lists ports in the stand-in)."""
    server = cloud.wait_server("c1", {"SHUTOFF"}, timeout=300)
    console = os.path.join(cloud.instance_dir(server["id"]), "console.log")
    started = time.time()
    cloud.openstack("server", "start", "c1")
    # Nova reports the guest's own power-off 15 s late (lifecycle event delay)
    cloud.wait_server("c1", {"ACTIVE"}, timeout=120)
    server = cloud.wait_server("c1", {"SHUTOFF"}, timeout=300)
    assert server["properties"].get("docker2vm_exit_status") == "3"
    assert os.stat(console).st_mtime >= started
    with open(console, errors="replace") as f:
        assert GREETING in f.read()


def test_console_log_show_after_shutoff(cloud, container_server):
    cloud.wait_server("c1", {"SHUTOFF"}, timeout=300)
    out = cloud.openstack("console", "log", "show", "c1").stdout
    assert GREETING in out
    assert "docker2vm: exit status 3" in out


# -- Approach 3: the bundle (doc/source/bundle.md) ----------------------------------

BUNDLE_CMD = ["/bin/sh", "-c",
              'echo "$GREETING"; echo "bundle rootfs MiB $(df -m / | awk \'NR==2 {print $2}\')"; '
              'echo "bundle override ran"; sleep 25; exit 4']


@pytest.fixture(scope="module")
def bundle_image(cloud, demo_archive):
    """The demo archive imported with --property docker_delivery=bundle: Glance
    stores one bootable qcow2 (kernel, initramfs, rootfs; [docker_convert]
    bundle_base_dir = the base VM devcloud builds). No compute driver
    needed: runs with the stock driver too."""
    image = import_archive(cloud, demo_archive, "cloud-bundle",
                           "--property", "docker_delivery=bundle")
    yield image
    cloud.openstack("image", "delete", "cloud-bundle", check=False)


def test_bundle_import(bundle_image):
    props = bundle_image["properties"]
    assert props["docker_delivery"] == "bundle"
    assert bundle_image["disk_format"] == "qcow2"
    assert bundle_image["container_format"] == "bare"
    assert props["hw_disk_bus"] == "virtio"
    assert props["img_config_drive"] == "mandatory"
    assert f"GREETING={GREETING}" in json.loads(props["docker_env"])


@pytest.fixture(scope="module")
def bundle_server(cloud, bundle_image):
    server = json.loads(cloud.openstack(
        "server", "create", "--image", "cloud-bundle", "--flavor", "d2v.tiny", "--nic", "none",
        "--property", "docker_cmd=" + json.dumps(BUNDLE_CMD),
        "--wait", "b1", "-f", "json", timeout=600).stdout)
    yield server
    cloud.openstack("server", "delete", "--wait", "b1", check=False, timeout=300)
    assert not os.path.exists(cloud.instance_dir(server["id"]))


def test_bundle_server_runs_the_container_to_shutoff(cloud, bundle_server):
    """openstack server create on the imported bundle, --nic none: the VM
    boots from its own disk (SeaBIOS -> syslinux -> kernel + initramfs from
    the bundle's boot partition), the guest reads the server metadata
    (docker_cmd replaces the image's Cmd) from the config drive Nova attaches
    (img_config_drive=mandatory), grows the rootfs partition to the flavor's
    1 GiB disk, runs the container, prints its exit status line and powers
    off: SHUTOFF.

    With DEVCLOUD_COMPUTE_DRIVER unset the cloud runs docker2vm's driver: a
    bundle is an ordinary image to it, booted the stock way (the domain XML
    is byte-identical to stock LibvirtDriver's:
    tests/nova/test_driver_xml.py::test_bundle_image_is_the_stock_xml); with
    DEVCLOUD_COMPUTE_DRIVER=libvirt.LibvirtDriver this test runs on the
    stock driver itself."""
    assert bundle_server["status"] == "ACTIVE"
    t0 = time.monotonic()
    # While the container sleeps: openstack console log show (the stock path:
    # a running domain's pty console) has its output.
    deadline = time.monotonic() + 240
    out = ""
    while "bundle override ran" not in out:
        assert time.monotonic() < deadline, "no container output in console log show:\n" \
            + out[-3000:]
        res = cloud.openstack("console", "log", "show", "b1", check=False)
        out = res.stdout
        time.sleep(2)
    print(f"container output in console log show {time.monotonic() - t0:.1f}s after ACTIVE")
    assert GREETING in out
    grown = [line for line in out.splitlines() if line.startswith("bundle rootfs MiB ")]
    assert grown and int(grown[0].split()[-1]) > 800, out[-3000:]   # ~70 MiB image, 1 GiB disk
    print(grown[0])
    server = cloud.wait_server("b1", {"SHUTOFF"}, timeout=300)
    # The whole run, exit status line included, in the log virtlogd wrote.
    with open(os.path.join(cloud.instance_dir(server["id"]), "console.log"),
              errors="replace") as f:
        console = f.read()
    assert GREETING in console
    assert "docker2vm: exit status 4" in console
    # After SHUTOFF, openstack console log show behaves as with stock Nova:
    # the stopped domain has no pty console, so 404 "Guest does not have a
    # console available". (docker2vm's driver answers from console.log only
    # for its container instances, not for an ordinary image like a bundle.)
    res = cloud.openstack("console", "log", "show", "b1", check=False)
    assert res.returncode != 0 and "does not have a console available" in res.stderr, \
        (res.returncode, res.stdout[-500:], res.stderr[-500:])
