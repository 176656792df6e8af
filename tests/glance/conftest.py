"""Fixtures for the Glance plugin tests: real archives built with podman,
and real glance-api servers (gunicorn, sqlite, file store) on 127.0.0.1."""

import contextlib
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from devcloud.glance_dev import DevServer, _venv_bin
from tests.fixtures.build_fixtures import unmount_under

CONTAINERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/sh", "-c", "mkdir -p /app /etc && echo hello > /app/hello.txt && echo gone > /app/gone.txt"]
RUN ["/bin/sh", "-c", "rm /app/gone.txt"]
ENV APP_MODE=demo
WORKDIR /app
EXPOSE 8080/tcp
VOLUME /data
LABEL org.example.name=demo
STOPSIGNAL SIGINT
USER 1000:1000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/hello.txt"]
"""


def _busybox():
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand):
            return cand
    return None


@pytest.fixture(scope="session")
def glance_archives(tmp_path_factory):
    """Real archives: ``docker`` (podman save docker-archive, 4 layers with a
    whiteout), ``oci`` (oci-archive), and tampered copies."""
    if not shutil.which("podman") or not _busybox():
        pytest.skip("podman and busybox-static are needed to build test archives")
    d = tmp_path_factory.mktemp("glance-archives")
    ctx = d / "ctx"
    ctx.mkdir()
    shutil.copy(_busybox(), ctx / "busybox")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    # podman refuses a runroot longer than 50 characters.
    runroot = tempfile.mkdtemp(prefix="d2v-glance-run-", dir="/tmp")
    pod = ["podman", "--root", str(d / "root"), "--runroot", runroot]
    res = subprocess.run(pod + ["build", "--isolation=chroot", "-q", "-t", "localhost/demo:1",
                                str(ctx)], capture_output=True, text=True)
    assert res.returncode == 0, "podman build failed: " + res.stderr[-2000:]
    out = {}
    for fmt, name in (("docker-archive", "docker"), ("oci-archive", "oci")):
        path = d / f"demo-{name}.tar"
        subprocess.run(pod + ["save", "--format", fmt, "-o", str(path), "localhost/demo:1"],
                       check=True, capture_output=True)
        out[name] = str(path)
    out["truncated"] = str(d / "truncated.tar")
    with open(out["docker"], "rb") as f:
        data = f.read()
    with open(out["truncated"], "wb") as f:
        f.write(data[:len(data) // 2])
    out["digest_mismatch"] = str(d / "digest-mismatch.tar")
    _tamper_layer(out["docker"], out["digest_mismatch"])
    subprocess.run(pod + ["rmi", "-a", "-f"], capture_output=True)
    shutil.rmtree(runroot, ignore_errors=True)
    unmount_under(str(d / "root"))     # podman's overlay storage stays mounted otherwise
    return out


def build_big_archive(directory, mib):
    """A docker-archive of busybox plus ``mib`` MiB of incompressible files
    in three layers (for timing and for imports that overlap in time)."""
    d = str(directory)
    ctx = os.path.join(d, "big-ctx")
    os.makedirs(ctx, exist_ok=True)
    shutil.copy(_busybox(), os.path.join(ctx, "busybox"))
    per = max(1, mib // 3)
    lines = ["FROM scratch", "COPY busybox /bin/busybox"]
    for i in range(3):
        with open(os.path.join(ctx, f"blob{i}"), "wb") as f:
            for _ in range(per):
                f.write(os.urandom(1 << 20))
        lines.append(f"COPY blob{i} /data/blob{i}")
    lines.append('CMD ["/bin/busybox", "sh"]')
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write("\n".join(lines) + "\n")
    runroot = tempfile.mkdtemp(prefix="d2v-glance-run-", dir="/tmp")
    pod = ["podman", "--root", os.path.join(d, "big-root"), "--runroot", runroot]
    try:
        res = subprocess.run(pod + ["build", "--isolation=chroot", "-q", "-t", "localhost/big:1",
                                    ctx], capture_output=True, text=True)
        assert res.returncode == 0, "podman build failed: " + res.stderr[-2000:]
        out = os.path.join(d, f"big-{mib}.tar")
        subprocess.run(pod + ["save", "--format", "docker-archive", "-o", out, "localhost/big:1"],
                       check=True, capture_output=True)
        subprocess.run(pod + ["rmi", "-a", "-f"], capture_output=True)
    finally:
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(ctx, ignore_errors=True)
        unmount_under(os.path.join(d, "big-root"))
    return out


@pytest.fixture(scope="session")
def big_archive(tmp_path_factory):
    if not shutil.which("podman") or not _busybox():
        pytest.skip("podman and busybox-static are needed to build test archives")
    mib = int(os.environ.get("DOCKER2VM_TEST_BIG_MIB", "24"))
    return build_big_archive(tmp_path_factory.mktemp("glance-big"), mib)


def _tamper_layer(src, dst):
    """Copy a docker-archive, flipping one byte inside the biggest layer's
    file content (same size, so only the digest check can notice)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        members = tin.getmembers()
        biggest = max((m for m in members if m.isreg() and m.name.endswith(".tar")),
                      key=lambda m: m.size)
        for m in members:
            if m.isreg():
                data = tin.extractfile(m).read()
                if m is biggest:
                    buf = bytearray(data)
                    buf[len(buf) // 2] ^= 0xFF
                    data = bytes(buf)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m)


# -- servers ---------------------------------------------------------------

def _require_glance():
    try:
        import glance  # noqa: F401
    except ImportError:
        pytest.skip("glance is not installed (see test-requirements.txt)")
    if not os.path.exists(_venv_bin("gunicorn")):
        pytest.skip("gunicorn is not installed")


@contextlib.contextmanager
def running(srv):
    """``srv`` (a DevServer) started, and stopped at the end."""
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def pid_gone(pid):
    """No process ``pid`` any more (a zombie is not gone yet)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(scope="session")
def glance_server(tmp_path_factory):
    """A glance-api with the plugin at its defaults."""
    _require_glance()
    with running(DevServer(str(tmp_path_factory.mktemp("glance")), threads=8)) as srv:
        yield srv


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    """A private MariaDB (unix socket only) for tests with concurrent
    imports: Glance on sqlite fails concurrent writes ("database is locked"
    in its own import flow). Yields a function making a database URL."""
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    if not os.path.exists(mariadbd) or not shutil.which("mariadb-install-db"):
        pytest.skip("mariadb-server is not installed (bindep profile test)")
    try:
        import pymysql  # noqa: F401
    except ImportError:
        pytest.skip("PyMySQL is not installed")
    d = tempfile.mkdtemp(prefix="d2v-db-", dir="/tmp")   # short socket path
    sock = os.path.join(d, "sock")
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/data",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--user=root"], check=True, capture_output=True)
    proc = subprocess.Popen([mariadbd, "--no-defaults", f"--datadir={d}/data",
                             f"--socket={sock}", "--skip-networking", "--user=root",
                             f"--log-error={d}/err.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counter = [0]

    def new_database():
        counter[0] += 1
        name = f"glance{counter[0]}"
        subprocess.run(["mariadb", "--no-defaults", "-S", sock, "-u", "root", "-e",
                        f"CREATE DATABASE {name} CHARACTER SET utf8mb4"], check=True)
        return f"mysql+pymysql://root@localhost/{name}?unix_socket={sock}&charset=utf8mb4"

    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, open(f"{d}/err.log").read()[-2000:]
            assert time.monotonic() < deadline, "mariadbd did not start"
            time.sleep(0.1)
        yield new_database
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def small_tmpfs(tmp_path_factory):
    """A 1 MiB tmpfs (root only), for the disk-full path."""
    path = tmp_path_factory.mktemp("tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                         capture_output=True)
    if res.returncode:
        yield None
        return
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- clients ---------------------------------------------------------------

class Api:
    """Minimal JSON client for assertions (the clients under test are the
    real glance CLI and openstacksdk)."""

    def __init__(self, server, token="demo"):
        self.server = server
        self.token = token

    def request(self, method, path, body=None, headers=None, raw=None):
        hdrs = {"X-Auth-Token": self.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if raw is not None:
            data = raw
            hdrs["Content-Type"] = "application/octet-stream"
        hdrs.update(headers or {})
        req = urllib.request.Request(self.server.url + path, data=data, method=method,
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                return r.status, dict(r.headers), (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode(errors="replace")

    def image(self, image_id):
        status, _, body = self.request("GET", f"/v2/images/{image_id}")
        assert status == 200, body
        return body

    def wait(self, image_id, statuses=("active", "queued"), timeout=120):
        """Wait until the import finished (image active, or back to queued
        with its import lock dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            img = self.image(image_id)
            if img["status"] in statuses and "os_glance_import_task" not in img:
                return img
            time.sleep(0.2)
        raise AssertionError(f"image {image_id} still {img['status']} after {timeout}s")

    def stage_import(self, image_id, archive):
        """Upload ``archive`` to the image's staging area, then start its
        ``docker-convert`` import (both calls must be accepted)."""
        with open(archive, "rb") as f:
            status, _, body = self.request("PUT", f"/v2/images/{image_id}/stage", raw=f.read())
        assert status == 204, body
        status, _, body = self.request("POST", f"/v2/images/{image_id}/import",
                                       {"method": {"name": "docker-convert"}})
        assert status == 202, body

    def task_of(self, image_id):
        admin = Api(self.server, "admin")
        status, _, body = admin.request("GET", f"/v2/images/{image_id}/tasks")
        assert status == 200, body
        tasks = sorted(body["tasks"], key=lambda t: t["created_at"])
        return tasks[-1]


@pytest.fixture
def api(glance_server):
    return Api(glance_server)


def run_glance_cli(server, *args, token="demo", check=True):
    env = dict(os.environ)
    env.update(server.cli_env(token))
    for k in ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_CLOUD"):
        env.pop(k, None)
    # A terminal on stdin, as for a user at a shell: glanceclient treats a
    # non-tty stdin as image data.
    master, slave = os.openpty()
    try:
        res = subprocess.run([_venv_bin("glance"), *args], capture_output=True, text=True,
                             env=env, stdin=slave, timeout=300)
    finally:
        os.close(master)
        os.close(slave)
    if check and res.returncode:
        raise AssertionError(f"glance {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout}\n{res.stderr}")
    return res


def cli_image_id(output):
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] == "id":
            return cells[2]
    raise AssertionError("no image id in glance output:\n" + output)


@pytest.fixture(scope="session")
def http_archives(glance_archives):
    """Serve the archives over HTTP on 127.0.0.1 (for web-download)."""
    directory = os.path.dirname(glance_archives["docker"])
    handler = functools.partial(_QuietHandler, directory=directory)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    try:
        yield {k: base + os.path.basename(v) for k, v in glance_archives.items()}
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def staging_leftovers(server, image_id=None):
    names = os.listdir(server.staging_dir)
    if image_id:
        names = [n for n in names if n.startswith(image_id)]
    return names




@contextlib.contextmanager
def started(server):
    server.start()
    try:
        yield server
    finally:
        server.stop()
