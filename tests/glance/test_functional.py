"""docker-convert against a real glance-api (gunicorn, sqlite, file store),
driven by the real glance CLI, openstacksdk and plain HTTP."""

import concurrent.futures
import json
import os
import tarfile
import tempfile
import threading

import pytest

from devcloud.glance_dev import DevServer
from docker_rootfs.archive import open_image
from tests.glance.conftest import Api, cli_image_id, run_glance_cli, running, staging_leftovers

pytestmark = [pytest.mark.glance, pytest.mark.tools]


def _disk_builder_available():
    try:
        from docker_rootfs.disk import build_disk  # noqa: F401
    except ImportError:
        return False
    return True


needs_disk = pytest.mark.skipif(not _disk_builder_available(),
                                reason="docker_rootfs.disk.build_disk not available yet")

EXPECTED = {
    "docker_entrypoint": ["/bin/sh", "-c"],
    "docker_cmd": ["cat /app/hello.txt"],
    "docker_exposed_ports": ["8080/tcp"],
    "docker_volumes": ["/data"],
    "docker_repo_tags": ["localhost/demo:1"],
}


def check_properties(img, delivery):
    assert img["docker_delivery"] == delivery
    for key, value in EXPECTED.items():
        assert json.loads(img[key]) == value, key
    assert "APP_MODE=demo" in json.loads(img["docker_env"])
    assert json.loads(img["docker_labels"])["org.example.name"] == "demo"
    assert img["docker_workdir"] == "/app"
    assert img["docker_user"] == "1000:1000"
    assert img["docker_stop_signal"] == "SIGINT"
    assert img["docker_image_digest"].startswith("sha256:")
    assert img["architecture"] == "x86_64"
    assert img["os_type"] == "linux"
    assert "docker_import_method" not in img
    assert img.get("os_glance_failed_import", "") == ""
    assert img.get("os_glance_importing_to_stores", "") == ""


def stored_file(server, image_id):
    return os.path.join(server.store_dir, image_id)


def check_share_content(path, digest):
    with open_image(path) as img:
        assert len(img.layers) == 1
        assert img.config.cmd == ["cat /app/hello.txt"]
        assert img.config.repo_tags == ["localhost/demo:1"]
    names = _rootfs_names(path)
    assert "app/hello.txt" in names
    assert "app/gone.txt" not in names
    assert "bin/busybox" in names


def _rootfs_names(path):
    with tarfile.open(path) as outer:
        layer = outer.extractfile("rootfs/layer.tar")
        with tarfile.open(fileobj=layer, mode="r|") as t:
            return {m.name.lstrip("./").rstrip("/") for m in t}


# -- success paths -----------------------------------------------------------

def test_import_info_advertises_docker_convert(glance_server):
    res = run_glance_cli(glance_server, "import-info")
    assert "docker-convert" in res.stdout
    status, headers, body = Api(glance_server).request(
        "POST", "/v2/images", {"name": "x", "container_format": "bare", "disk_format": "raw"})
    assert status == 201
    assert "docker-convert" in headers["OpenStack-image-import-methods"].split(",")
    assert "glance-direct" in headers["OpenStack-image-import-methods"].split(",")


def test_cli_staged_share(glance_server, glance_archives, api):
    res = run_glance_cli(
        glance_server, "image-create-via-import", "--import-method", "docker-convert",
        "--container-format", "docker", "--disk-format", "raw",
        "--file", glance_archives["docker"], "--name", "app-share",
        "--property", "docker_delivery=share")
    image_id = cli_image_id(res.stdout)
    img = api.wait(image_id)
    assert img["status"] == "active", api.task_of(image_id)
    assert img["container_format"] == "docker"
    assert img["disk_format"] == "raw"
    check_properties(img, "share")
    path = stored_file(glance_server, image_id)
    assert img["size"] == os.path.getsize(path)
    check_share_content(path, img["docker_image_digest"])
    task = api.task_of(image_id)
    assert task["status"] == "success"
    assert staging_leftovers(glance_server, image_id) == []


def test_cli_staged_oci_share(glance_server, glance_archives, api):
    res = run_glance_cli(
        glance_server, "image-create-via-import", "--import-method", "docker-convert",
        "--container-format", "docker", "--disk-format", "raw",
        "--file", glance_archives["oci"], "--name", "app-oci",
        "--property", "docker_delivery=share")
    img = api.wait(cli_image_id(res.stdout))
    assert img["status"] == "active"
    check_properties(img, "share")


@needs_disk
def test_cli_staged_disk(glance_server, glance_archives, api):
    res = run_glance_cli(
        glance_server, "image-create-via-import", "--import-method", "docker-convert",
        "--container-format", "docker", "--disk-format", "raw",
        "--file", glance_archives["docker"], "--name", "app-disk")
    image_id = cli_image_id(res.stdout)
    img = api.wait(image_id)
    assert img["status"] == "active", api.task_of(image_id)
    assert img["disk_format"] == "qcow2"
    assert img["container_format"] == "bare"
    assert img["img_config_drive"] == "mandatory"
    check_properties(img, "disk")
    path = stored_file(glance_server, image_id)
    assert img["size"] == os.path.getsize(path)
    assert img["virtual_size"] and img["virtual_size"] > img["size"] // 2
    with open(path, "rb") as f:
        assert f.read(4) == b"QFI\xfb"
    _check_disk_content(path)
    assert staging_leftovers(glance_server, image_id) == []
    # The same disk, byte for byte, as `docker2vm convert` of the archive
    # (same builder path, same fixed times from the image's created time).
    import subprocess
    import sys
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cli.qcow2")
        subprocess.run([sys.executable, "-m", "docker_rootfs.cli", "convert", "--no-progress",
                        "--tmpdir", d, "-o", out, glance_archives["docker"]], check=True,
                       capture_output=True)
        assert _sha256(out) == _sha256(path)


def _sha256(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_disk_content(qcow2):
    """Read the ext4 filesystem inside the qcow2 with e2fsprogs' debugfs."""
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("qemu-img") or not shutil.which("debugfs"):
        return
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "disk.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw", qcow2, raw], check=True)
        out = subprocess.run(["debugfs", "-R", "cat /app/hello.txt", raw],
                             capture_output=True, text=True).stdout
        assert out.strip() == "hello"
        out = subprocess.run(["debugfs", "-R", "ls -l /app", raw],
                             capture_output=True, text=True).stdout
        assert "gone.txt" not in out


def test_sdk_staged_share(glance_server, glance_archives, api):
    conn = glance_server.sdk_connection()
    image = conn.image.create_image(name="sdk-share", container_format="docker",
                                    disk_format="raw", docker_delivery="share")
    with open(glance_archives["docker"], "rb") as f:
        conn.image.stage_image(image, data=f)
    conn.image.import_image(image, method="docker-convert")
    img = api.wait(image.id)
    assert img["status"] == "active", api.task_of(image.id)
    check_properties(img, "share")
    got = conn.image.get_image(image.id)
    assert got.status == "active"
    assert got.properties["docker_delivery"] == "share"


def test_web_download_api(glance_server, http_archives, api):
    """The raw API form: method docker-convert with a uri."""
    status, _, img = api.request("POST", "/v2/images", {
        "name": "web-api", "container_format": "docker", "disk_format": "raw",
        "docker_delivery": "share"})
    assert status == 201
    status, _, body = api.request("POST", f"/v2/images/{img['id']}/import", {
        "method": {"name": "docker-convert", "uri": http_archives["docker"]}})
    assert status == 202, body
    img = api.wait(img["id"])
    assert img["status"] == "active", api.task_of(img["id"])
    check_properties(img, "share")


def test_web_download_cli_with_property(glance_server, http_archives, api):
    """Clients that send a uri only with web-download ask with the property."""
    res = run_glance_cli(
        glance_server, "image-create-via-import", "--import-method", "web-download",
        "--uri", http_archives["oci"], "--container-format", "docker",
        "--disk-format", "raw", "--name", "web-cli",
        "--property", "docker_delivery=share",
        "--property", "docker_import_method=docker-convert")
    image_id = cli_image_id(res.stdout)
    img = api.wait(image_id)
    assert img["status"] == "active", api.task_of(image_id)
    check_properties(img, "share")


def test_sdk_web_download_with_property(glance_server, http_archives, api):
    conn = glance_server.sdk_connection()
    image = conn.image.create_image(name="sdk-web", container_format="docker",
                                    disk_format="raw", docker_delivery="share",
                                    docker_import_method="docker-convert")
    conn.image.import_image(image, method="web-download", uri=http_archives["docker"])
    img = api.wait(image.id)
    assert img["status"] == "active", api.task_of(image.id)
    check_properties(img, "share")


def test_without_marker_archive_untouched(glance_server, glance_archives, api):
    """A docker save tarball imported with plain glance-direct stays as is."""
    res = run_glance_cli(
        glance_server, "image-create-via-import", "--import-method", "glance-direct",
        "--container-format", "docker", "--disk-format", "raw",
        "--file", glance_archives["docker"], "--name", "plain")
    image_id = cli_image_id(res.stdout)
    img = api.wait(image_id)
    assert img["status"] == "active"
    assert img["container_format"] == "docker"
    assert "docker_delivery" not in img
    assert img["size"] == os.path.getsize(glance_archives["docker"])
    with open(glance_archives["docker"], "rb") as a, \
            open(stored_file(glance_server, image_id), "rb") as b:
        assert a.read() == b.read()


@pytest.fixture(scope="module")
def mysql_server(tmp_path_factory, mariadb):
    with running(DevServer(str(tmp_path_factory.mktemp("glance-mysql")), database=mariadb())) as srv:
        yield srv


def test_parallel_imports(mysql_server, glance_archives, big_archive):
    """4 imports converting at the same time do not interfere. (Against
    MariaDB: Glance's own import flow fails concurrent writes on sqlite.)"""
    glance_server = mysql_server
    api = Api(mysql_server)
    conn = glance_server.sdk_connection()
    list(conn.image.images())   # version discovery once, before the threads
    sources = [big_archive, glance_archives["docker"], big_archive, glance_archives["oci"]]
    barrier = threading.Barrier(len(sources))

    def one(i):
        image = conn.image.create_image(name=f"par-{i}", container_format="docker",
                                        disk_format="raw", docker_delivery="share")
        barrier.wait(timeout=30)
        with open(sources[i], "rb") as f:
            conn.image.stage_image(image, data=f)
        conn.image.import_image(image, method="docker-convert")
        return image

    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        images = list(pool.map(one, range(len(sources))))
    ids = [i.id for i in images]
    imgs = [api.wait(i, timeout=300) for i in ids]
    assert [i["status"] for i in imgs] == ["active"] * 4, [api.task_of(i) for i in ids]
    for img, src in zip(imgs, sources):
        if src == big_archive:
            assert json.loads(img["docker_cmd"]) == ["/bin/busybox", "sh"]
        else:
            check_properties(img, "share")
            check_share_content(stored_file(glance_server, img["id"]),
                                img["docker_image_digest"])
    assert imgs[1]["checksum"] == imgs[3]["checksum"]   # both layouts flatten alike
    assert imgs[0]["checksum"] == imgs[2]["checksum"]
    for i in ids:
        assert staging_leftovers(glance_server, i) == []


# -- failure paths -------------------------------------------------------------

def _stage_and_import(api, archive, delivery="share", image_id=None, extra=None):
    if image_id is None:
        body = {"name": "failing", "container_format": "docker", "disk_format": "raw",
                "docker_delivery": delivery}
        body.update(extra or {})
        status, _, img = api.request("POST", "/v2/images", body)
        assert status == 201, img
        image_id = img["id"]
    api.stage_import(image_id, archive)
    return image_id


def check_failed(server, api, image_id, needle):
    img = api.wait(image_id)
    assert img["status"] == "queued"
    assert img["os_glance_failed_import"] == "fs"
    assert img.get("os_glance_importing_to_stores", "") == ""
    assert "docker_entrypoint" not in img
    assert img["container_format"] == "docker" and img["disk_format"] == "raw"
    task = api.task_of(image_id)
    assert task["status"] == "failure"
    msg = task["message"]
    assert "\n" not in msg and msg.startswith("docker-convert: "), msg
    assert needle in msg, msg
    assert server.dir not in msg, msg   # no server paths leak to tenants
    assert staging_leftovers(server, image_id) == []
    return msg


def test_corrupt_archive_then_retry(glance_server, glance_archives, api):
    image_id = _stage_and_import(api, glance_archives["truncated"])
    check_failed(glance_server, api, image_id, "the uploaded archive")
    # The same image can be staged and imported again.
    _stage_and_import(api, glance_archives["docker"], image_id=image_id)
    img = api.wait(image_id)
    assert img["status"] == "active", api.task_of(image_id)
    check_properties(img, "share")
    assert img["os_glance_failed_import"] == ""


def test_digest_mismatch(glance_server, glance_archives, api):
    image_id = _stage_and_import(api, glance_archives["digest_mismatch"])
    check_failed(glance_server, api, image_id, "sha256")


def test_bad_delivery(glance_server, glance_archives, api):
    image_id = _stage_and_import(api, glance_archives["docker"], delivery="floppy")
    check_failed(glance_server, api, image_id, "docker_delivery=floppy")


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, small_tmpfs):
    """Tight limits, and a temp dir on a 1 MiB tmpfs when root can mount one."""
    opts = {"progress_interval": 1}
    if small_tmpfs:
        opts["temp_dir"] = small_tmpfs
    with running(DevServer(str(tmp_path_factory.mktemp("glance-strict")), convert_opts=opts,
                           limits={"max_layers": 2})) as srv:
        yield srv


def test_limit_exceeded(strict_server, glance_archives):
    api = Api(strict_server)
    image_id = _stage_and_import(api, glance_archives["docker"])
    msg = check_failed(strict_server, api, image_id, "max_layers")
    assert "limit max_layers exceeded" in msg


def test_disk_full(tmp_path_factory, small_tmpfs, glance_archives):
    if not small_tmpfs:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    srv = DevServer(str(tmp_path_factory.mktemp("glance-full")),
                    convert_opts={"temp_dir": small_tmpfs})
    with srv:
        api = Api(srv)
        image_id = _stage_and_import(api, glance_archives["docker"])
        check_failed(srv, api, image_id, "no space left on device")
        assert os.listdir(small_tmpfs) == []


FAKE_MKE2FS = """#!/bin/sh
# Test double: answers version queries like the real mke2fs, crashes on a build.
case "$1" in -V) exec /sbin/mke2fs "$@" ;; esac
echo "mke2fs: simulated crash" >&2
kill -SEGV $$
"""


@needs_disk
def test_builder_crash(tmp_path_factory, glance_archives):
    if not os.path.exists("/sbin/mke2fs"):
        pytest.skip("e2fsprogs not installed")
    fakebin = tmp_path_factory.mktemp("fakebin")
    (fakebin / "mke2fs").write_text(FAKE_MKE2FS)
    (fakebin / "mke2fs").chmod(0o755)
    srv = DevServer(str(tmp_path_factory.mktemp("glance-crash")),
                    disk={"builder": "mke2fs-dir"},
                    env={"PATH": f"{fakebin}:{os.environ['PATH']}"})
    with srv:
        api = Api(srv)
        image_id = _stage_and_import(api, glance_archives["docker"], delivery="disk")
        check_failed(srv, api, image_id, "mke2fs")
        assert [n for n in os.listdir(srv.staging_dir) if "docker2vm" in n] == []
