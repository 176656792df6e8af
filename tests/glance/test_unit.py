"""Unit tests of the plugin pieces, with Glance's real ImportActionWrapper
over an in-memory image repository (no server)."""

import json
import os
import subprocess
import sys
import threading
import time
import types

import pytest
import webob

glance = pytest.importorskip("glance")

from glance.async_.flows.api_image_import import ImportActionWrapper  # noqa: E402
from glance.common import exception as glance_exc  # noqa: E402

from glance_docker_import import (  # noqa: E402
    metadefs,  # noqa: E402
    paste_filter,
    plugin,
    workdir,
)

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- paste filter --------------------------------------------------------------

class _Recorder:
    def __init__(self, response=None):
        self.seen = None
        self.response = response

    def __call__(self, environ, start_response):
        req = webob.Request(environ)
        self.seen = (req.path_info, req.body)
        resp = self.response or webob.Response(status=202)
        return resp(environ, start_response)


def _post(app, path, body):
    req = webob.Request.blank(path, method="POST")
    req.body = json.dumps(body).encode()
    req.content_type = "application/json"
    return req.get_response(app)


@pytest.mark.parametrize("method, expected", [
    ({"name": "docker-convert"}, "glance-direct"),
    ({"name": "docker-convert", "uri": "http://x/a.tar"}, "web-download"),
])
def test_filter_rewrites_docker_convert(method, expected):
    inner = _Recorder()
    app = paste_filter.filter_factory({})(inner)
    resp = _post(app, "/v2/images/abc/import", {"method": method, "stores": ["fs"]})
    assert resp.status_int == 202
    body = json.loads(inner.seen[1])
    assert body["method"]["name"] == expected
    assert body["method"]["docker_convert"] == {"requested_method": "docker-convert"}
    assert body["stores"] == ["fs"]
    assert body["method"].get("uri") == method.get("uri")


@pytest.mark.parametrize("raw", [
    json.dumps({"method": {"name": "glance-direct"}}).encode(),
    json.dumps({"method": "docker-convert"}).encode(),
    b"not json", b"",
])
def test_filter_leaves_other_requests_alone(raw):
    inner = _Recorder()
    app = paste_filter.filter_factory({})(inner)
    req = webob.Request.blank("/v2/images/abc/import", method="POST")
    req.body = raw
    req.get_response(app)
    assert inner.seen[1] == raw


def test_filter_advertises_in_info_and_header():
    info = webob.Response(json_body={"import-methods": {
        "description": "x", "type": "array", "value": ["glance-direct", "web-download"]}})
    app = paste_filter.filter_factory({})(_Recorder(info))
    resp = webob.Request.blank("/v2/info/import").get_response(app)
    assert resp.json["import-methods"]["value"] == ["glance-direct", "web-download",
                                                     "docker-convert"]

    created = webob.Response(status=201)
    created.headers["OpenStack-image-import-methods"] = "glance-direct,web-download"
    app = paste_filter.filter_factory({})(_Recorder(created))
    resp = _post(app, "/v2/images", {"name": "x"})
    assert resp.headers["OpenStack-image-import-methods"] == \
        "glance-direct,web-download,docker-convert"


def test_filter_does_not_advertise_without_a_carrier():
    info = webob.Response(json_body={"import-methods": {"value": ["copy-image"]}})
    app = paste_filter.filter_factory({})(_Recorder(info))
    resp = webob.Request.blank("/v2/info/import").get_response(app)
    assert resp.json["import-methods"]["value"] == ["copy-image"]


# -- the task, with Glance's ImportActionWrapper ---------------------------------

class FakeImageRepo:
    def __init__(self, image):
        self.image = image
        self.saves = 0

    def get(self, image_id):
        assert image_id == self.image.image_id
        return self.image

    def save(self, image, from_state=None):
        self.saves += 1

    def delete_property_atomic(self, image, name, value):
        if image.extra_properties.get(name) != value:
            raise glance_exc.NotFound()
        del image.extra_properties[name]


class FakeTaskRepo:
    def __init__(self, task_id):
        self.task = types.SimpleNamespace(task_id=task_id, status="processing", message="")
        self.messages = []

    def get(self, task_id):
        return self.task

    def save(self, task):
        self.messages.append(task.message)


def _setup(tmp_path, props=None, marker=True):
    image_id = "0c6d1f8e-1b38-4f7b-9c5b-3c3d0f5f2a11"
    task_id = "5d4f3c2b-aaaa-bbbb-cccc-123456789abc"
    image = types.SimpleNamespace(
        image_id=image_id, status="importing", disk_format="raw",
        container_format="docker", size=10, virtual_size=None, locations=[],
        extra_properties={"os_glance_import_task": task_id,
                          "os_glance_importing_to_stores": "fs",
                          **(props or {})})
    repo = FakeImageRepo(image)
    wrapper = ImportActionWrapper(repo, image_id, task_id)
    tasks = FakeTaskRepo(task_id)
    method = {"name": "glance-direct"}
    if marker:
        method["docker_convert"] = {"requested_method": "docker-convert"}
    flow = plugin.get_flow(task_id=task_id, task_type="api_image_import",
                           task_repo=tasks, action_wrapper=wrapper,
                           import_req={"method": method}, backend=["fs"],
                           image_id=image_id)
    task = list(flow)[0]
    staged = tmp_path / image_id
    return task, image, tasks, staged


def test_no_marker_no_change(tmp_path, glance_archives):
    task, image, tasks, staged = _setup(tmp_path, marker=False)
    staged.write_bytes(open(glance_archives["docker"], "rb").read())
    uri = "file://" + str(staged)
    assert task.execute(uri) == uri
    assert image.disk_format == "raw" and "docker_delivery" not in image.extra_properties
    assert staged.exists()
    task.revert(result=None)   # a later failure: nothing of ours to undo
    assert image.status == "importing" and staged.exists()


def test_share_then_revert_restores(tmp_path, glance_archives):
    task, image, tasks, staged = _setup(tmp_path, {"docker_delivery": "share"})
    staged.write_bytes(open(glance_archives["docker"], "rb").read())
    out = task.execute("file://" + str(staged))
    path = out[len("file://"):]
    # In the import's locked work directory (glance_docker_import.workdir).
    assert os.path.basename(os.path.dirname(path)) == \
        f"docker2vm-{image.image_id}-{tasks.task.task_id}"
    assert image.size == os.path.getsize(path)
    assert image.extra_properties["docker_cmd"] == '["cat /app/hello.txt"]'
    assert not staged.exists()
    assert tasks.messages and tasks.messages[-1].startswith("docker-convert: 100%")
    # A later task (upload to the store) fails: everything is undone.
    task.revert(result="file://" + path)
    assert image.status == "queued"
    assert "docker_cmd" not in image.extra_properties
    assert image.extra_properties["docker_delivery"] == "share"
    assert image.extra_properties["os_glance_failed_import"] == "fs"
    assert image.extra_properties["os_glance_importing_to_stores"] == ""
    assert os.listdir(tmp_path) == []


def test_failure_message_and_cleanup(tmp_path, glance_archives):
    task, image, tasks, staged = _setup(tmp_path, {"docker_delivery": "share"})
    staged.write_bytes(open(glance_archives["truncated"], "rb").read())
    with pytest.raises(glance_exc.UploadException) as ei:
        task.execute("file://" + str(staged))
    msg = str(ei.value)
    assert msg.startswith("docker-convert: ") and "\n" not in msg
    assert str(tmp_path) not in msg
    task.revert(result=None)
    assert image.status == "queued"
    assert os.listdir(tmp_path) == []


def test_dead_work_directory_is_swept_live_one_is_not(tmp_path, glance_archives):
    # Work directories of imports whose process died (lock free) go before a
    # conversion starts; a live import's (lock held) stays.
    task, image, tasks, staged = _setup(tmp_path, {"docker_delivery": "share"})
    staged.write_bytes(open(glance_archives["docker"], "rb").read())
    dead = tmp_path / "docker2vm-11111111-2222-3333-4444-555555555555-deadbeef-2222-3333-4444-555555555555"
    dead.mkdir()
    (dead / ".lock").write_bytes(b"")
    (dead / "rootfs.tar").write_bytes(b"x")
    (dead / "meta.json").write_text("{}")
    live = workdir.WorkDir.create(str(tmp_path), "22222222-2222-3333-4444-555555555555", "t")
    try:
        out = task.execute("file://" + str(staged))
        names = sorted(os.listdir(tmp_path))
        assert not dead.exists()
        assert os.path.basename(live.path) in names
        assert os.path.dirname(out[len("file://"):]) in [str(tmp_path / n) for n in names]
    finally:
        live.remove()


def test_heartbeat_saves_and_aborts_when_lock_is_lost():
    task_id = "t-1"
    image = types.SimpleNamespace(image_id="i-1", status="importing",
                                  extra_properties={"os_glance_import_task": task_id})
    wrapper = ImportActionWrapper(FakeImageRepo(image), "i-1", task_id)
    tasks = FakeTaskRepo(task_id)
    killed = []
    with plugin.Heartbeat(tasks, task_id, wrapper, interval=0.05, on_abort=killed.append) as hb:
        hb.update(0.5, "copying")
        time.sleep(0.2)
        assert "docker-convert: 50% copying" in tasks.messages
        n = len(tasks.messages)
        time.sleep(0.2)
        assert len(tasks.messages) > n           # saved again and again
        image.extra_properties["os_glance_import_task"] = "someone-else"
        time.sleep(0.2)
        with pytest.raises(plugin.ConversionAborted, match="lock"):
            hb.update(0.6, "more")
    assert killed and "lock" in killed[0]        # the conversion child is killed


def test_heartbeat_stops_on_cancelled_task():
    tasks = FakeTaskRepo("t-2")
    image = types.SimpleNamespace(image_id="i", extra_properties={"os_glance_import_task": "t-2"})
    wrapper = ImportActionWrapper(FakeImageRepo(image), "i", "t-2")
    killed = []
    with plugin.Heartbeat(tasks, "t-2", wrapper, interval=0.05, on_abort=killed.append) as hb:
        tasks.task.status = "failure"
        time.sleep(0.2)
        with pytest.raises(plugin.ConversionAborted, match="failure"):
            hb.check()
    # The heartbeat itself kills the conversion child (Child.kill), also
    # when the child sends no progress.
    assert killed and killed[0] == "import task is failure"
    assert not any(t.name.startswith("docker-convert-t-2") for t in threading.enumerate())


# -- generated files are up to date ---------------------------------------------

def test_metadefs_file_is_generated():
    with open(os.path.join(TOP, "etc/metadefs/docker2vm-container.json")) as f:
        assert json.load(f) == metadefs.namespace()


def test_sample_config_is_generated(tmp_path):
    out = tmp_path / "sample"
    gen = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
    subprocess.run([gen, "--config-file",
                    os.path.join(TOP, "etc/oslo-config-generator/glance-docker-import.conf"),
                    "--output-file", str(out)], check=True, cwd=TOP)
    with open(os.path.join(TOP, "etc/glance-image-import.conf.d/docker-convert.conf.sample")) as f:
        assert out.read_text() == f.read()
