"""The ``docker_convert`` Glance image-import plugin.

Enabled with ``image_import_plugins = [docker_convert]`` in
``glance-image-import.conf``; Glance loads :func:`get_flow` from the
``glance.image_import.plugins`` entry-point namespace and runs its task after
the data is staged (glance-direct) or downloaded (web-download).

The task acts only on imports that asked for it: the ``docker-convert``
import method (translated by :mod:`glance_docker_import.paste_filter`, which
leaves a marker in the import request) or the image property
``docker_import_method=docker-convert``. Anything else, including plain
``docker save`` tarballs other tools store with ``container_format=docker``,
goes through untouched.

``docker_delivery=disk`` (default, see ``[docker_convert] default_delivery``)
stores an ext4 root filesystem in a qcow2 disk (``disk_format=qcow2``,
``container_format=bare``); ``share`` stores a validated one-layer
docker-archive (``container_format=docker``) for the 9p/virtiofs approach;
``bundle`` stores a self-contained bootable qcow2 (doc/source/bundle.md).
Either way the image gains the docker_* properties of the property contract.

Failure of any kind puts the image back to ``queued`` with the store listed
in ``os_glance_failed_import`` (as Glance's own image_conversion plugin
does), the task message set to one line naming the cause, and every
temporary file and the staged data removed, so the image can be staged and
imported again.
"""

import contextlib
import dataclasses
import errno
import logging
import os
import threading
import time

from glance.common import exception as glance_exc
from glance.common import utils as common_utils
from oslo_config import cfg
from taskflow import task
from taskflow.patterns import linear_flow as lf

from docker_rootfs import errors
from docker_rootfs.properties import DELIVERY
from glance_docker_import import (
    MARKER_KEY,
    MARKER_PROPERTY,
    METHOD_NAME,
    converter,
    opts,
    recovery,
    store_format,
    workdir,
)

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
opts.register_opts(CONF)

class ConversionAborted(errors.Docker2VMError):
    """The import was cancelled or its lock taken over while converting."""


class Heartbeat:
    """Saves the import task's progress message every ``interval`` seconds.

    Every save refreshes the task's ``updated_at``, which is what Glance
    checks before it lets another import steal an image's import lock (60
    minutes without an update), so the lock stays ours however long the
    conversion runs. The same loop notices a cancelled task or a lost lock
    and stops the converter: ``on_abort(reason)`` (kills the conversion
    child) and ``check()`` raises.
    """

    def __init__(self, task_repo, task_id, action_wrapper, interval, on_abort=None):
        self.on_abort = on_abort
        self.task_repo = task_repo
        self.task_id = task_id
        self.action_wrapper = action_wrapper
        self.interval = interval
        self.message = "docker-convert: starting"
        self.abort_reason = None
        self._saved = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="docker-convert-%s" % task_id)

    def update(self, fraction, message):
        pct = max(0, min(100, int(fraction * 100)))
        self.message = "docker-convert: %d%% %s" % (pct, message)
        self.check()

    def check(self):
        if self.abort_reason:
            raise ConversionAborted(self.abort_reason)

    def save(self):
        if self.task_repo is None:
            return
        try:
            t = self.task_repo.get(self.task_id)
            if t.status != "processing":
                self.abort_reason = "import task is %s" % t.status
                return
            t.message = self.message
            common_utils.retry_on_db_lock(lambda: self.task_repo.save(t))
            self._saved = self.message
            self.action_wrapper.assert_task_lock()
        except glance_exc.TaskAbortedError:
            self.abort_reason = "import lock taken over by another task"
        except glance_exc.NotFound:
            self.abort_reason = "import task or image deleted"
        except Exception:  # a DB hiccup must not kill the conversion
            LOG.warning("docker-convert: could not save progress of task %s",
                        self.task_id, exc_info=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.save()
            if self.abort_reason and self.on_abort is not None:
                self.on_abort(self.abort_reason)

    def __enter__(self):
        self.save()
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.save()   # the final message, and a fresh lock for the upload


class _DockerConvert(task.Task):

    default_provides = "file_path"

    def __init__(self, task_id, task_type, task_repo, action_wrapper,
                 import_req, stores):
        self.task_id = task_id
        self.task_type = task_type
        self.task_repo = task_repo
        self.action_wrapper = action_wrapper
        self.image_id = action_wrapper.image_id
        self.import_req = import_req or {}
        self.stores = [s for s in (stores or []) if s]
        self.active = False
        self.src_path = None
        self.workdir = None
        self.old_attributes = None
        self.old_properties = None
        self.new_properties = {}
        self.lock_lost = False
        super().__init__(name="%s-DockerConvert-%s" % (task_type, task_id))

    # -- helpers -----------------------------------------------------------
    def _requested(self, action):
        method = self.import_req.get("method") or {}
        if isinstance(method, dict) and method.get(MARKER_KEY):
            return True
        props = action.image_extra_properties
        return props.get(MARKER_PROPERTY) == METHOD_NAME

    def _message(self, text):
        """One line for the task message, without server-side paths."""
        if self.src_path:
            text = text.replace(self.src_path, "the uploaded archive")
        dirs = set()
        if self.workdir is not None:
            dirs.add(self.workdir.path)
            dirs.add(os.path.dirname(self.workdir.path))
        if self.src_path:
            dirs.add(os.path.dirname(self.src_path))
        for directory in sorted(dirs, key=len, reverse=True):
            text = text.replace(directory, "the temporary directory")
        return _one_line(text)

    def _job(self, delivery):
        """What the conversion child needs (see glance_docker_import.worker)."""
        from docker_rootfs import opts as core_opts
        conf = CONF.docker_convert
        return {
            "image_id": self.image_id, "task_id": self.task_id, "src": self.src_path,
            "workdir": self.workdir.path, "delivery": delivery,
            "limits": dataclasses.asdict(core_opts.limits_from_conf(CONF)),
            "disk": dataclasses.asdict(core_opts.disk_options_from_conf(CONF)),
            "disk_format": self.disk_format(delivery),
            "platform": conf.platform, "normalize_share": conf.normalize_share,
            "bundle_base_dir": conf.bundle_base_dir,
        }

    def disk_format(self, delivery):
        """Format of the produced disk (disk and bundle deliveries): a disk
        image bound for rbd stores is raw, so Nova can clone it
        (glance_docker_import.store_format, [docker_convert] disk_format)."""
        if delivery == "disk":
            return store_format.disk_format(CONF, self.stores)
        return "qcow2"

    # -- execute -----------------------------------------------------------
    def execute(self, file_path):
        with self.action_wrapper as action:
            if not self._requested(action):
                LOG.debug("docker-convert: import of %s not requested, "
                          "nothing to do", self.image_id)
                return file_path
            self.active = True
            props = action.image_extra_properties
            self.old_properties = props
            self.old_attributes = {
                "disk_format": action.image_disk_format,
                "container_format": action.image_container_format,
            }
            delivery = props.get(DELIVERY) or \
                CONF.docker_convert.default_delivery
        self.src_path = file_path.split("file://", 1)[-1]
        conf = CONF.docker_convert
        if delivery not in conf.allowed_deliveries:
            raise glance_exc.UploadException(
                "docker-convert: docker_delivery=%s is not one of %s"
                % (delivery, ", ".join(conf.allowed_deliveries)))

        started = time.monotonic()
        try:
            result = self._convert(delivery)
            out_path = result["path"]
            attrs = dict(result["attrs"])
            properties = result["properties"]
            attrs["size"] = os.stat(out_path).st_size
            self.new_properties = properties
            self.workdir.update_meta({"new_properties": sorted(properties)})
        except ConversionAborted as exc:
            if "lock" in str(exc):
                self.lock_lost = True
            raise glance_exc.UploadException("docker-convert: aborted: %s" % exc)
        except converter.ConversionFailed as exc:
            raise glance_exc.UploadException(self._message("docker-convert: %s" % exc))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise glance_exc.UploadException(
                    "docker-convert: no space left on device for the "
                    "conversion's temporary files")
            LOG.exception("docker-convert: I/O error converting %s", self.image_id)
            raise glance_exc.UploadException(self._message(
                "docker-convert: I/O error: %s" % exc))
        except Exception as exc:
            LOG.exception("docker-convert: unexpected error converting %s", self.image_id)
            raise glance_exc.UploadException(self._message(
                "docker-convert: internal error: %s: %s" % (type(exc).__name__, exc)))

        with self.action_wrapper as action:
            action.set_image_attribute(**attrs)
            action.set_image_extra_properties(properties)
            action.pop_extra_property(MARKER_PROPERTY)
        LOG.info("docker-convert: image %s converted (%s) in %.1fs: %s",
                 self.image_id, delivery, time.monotonic() - started, attrs)
        if out_path == self.src_path:
            self.workdir.remove()
        else:
            # Like image_conversion: the staged archive is no longer needed.
            # Glance uploads the file we return and then deletes it; the
            # work directory (and its lock) goes when it does.
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.src_path)
            self.workdir.remove_when_gone(out_path)
        return "file://" + out_path

    def _convert(self, delivery):
        """Convert in a child process (glance_docker_import.worker) under the
        [docker_convert] child_* limits, in a locked work directory."""
        conf = CONF.docker_convert
        base = recovery.temp_base(self.src_path)
        recovery.Sweeper.ensure_started()
        workdir.sweep(base, on_dead=recovery.recover)
        self.workdir = workdir.WorkDir.create(
            base, self.image_id, self.task_id,
            meta={"src": self.src_path, "stores": self.stores,
                  "old_attributes": self.old_attributes,
                  "old_properties": {k: v for k, v in self.old_properties.items()
                                     if not k.startswith("os_glance")}})
        child = converter.Child(self._job(delivery), self.workdir.path,
                                converter.Settings.from_conf(conf),
                                self.workdir.file("converter.log"),
                                on_start=lambda pid: self.workdir.update_meta({"child_pid": pid}))
        with Heartbeat(self.task_repo, self.task_id, self.action_wrapper,
                       conf.progress_interval, on_abort=child.kill) as hb:
            try:
                return child.run(hb.update)
            except converter.ConversionFailed as exc:
                if exc.kind == "aborted" and hb.abort_reason:
                    raise ConversionAborted(hb.abort_reason)
                LOG.warning("docker-convert: image %s: conversion failed (%s): %s; "
                            "end of the converter's log:\n%s", self.image_id, exc.kind, exc,
                            child.log_tail())
                raise

    # -- revert ------------------------------------------------------------
    def revert(self, result=None, **kwargs):
        if not self.active:
            return
        if self.workdir is not None:
            self.workdir.remove()
        if self.lock_lost:
            # Another task owns the image (and its staging file) now.
            LOG.warning("docker-convert: lost the import lock of %s; leaving "
                        "the image to its new owner", self.image_id)
            return
        try:
            with self.action_wrapper as action:
                action.set_image_attribute(status="queued")
                if self.old_attributes:
                    action.set_image_attribute(**self.old_attributes)
                for key in self.new_properties:
                    if key not in self.old_properties:
                        action.pop_extra_property(key)
                if self.old_properties:
                    action.set_image_extra_properties(
                        {k: v for k, v in self.old_properties.items()
                         if not k.startswith("os_glance")})
                if self.stores:
                    action.remove_importing_stores(self.stores)
                    action.add_failed_stores(self.stores)
        except glance_exc.TaskAbortedError:
            LOG.warning("docker-convert: import lock of %s lost before "
                        "revert", self.image_id)
            return
        if self.src_path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.src_path)


def _one_line(text, limit=400):
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def get_flow(**kwargs):
    """Glance import plugin entry point (``glance.image_import.plugins``)."""
    task_type = kwargs.get("task_type")
    return lf.Flow(task_type).add(_DockerConvert(
        kwargs.get("task_id"), task_type, kwargs.get("task_repo"),
        kwargs.get("action_wrapper"), kwargs.get("import_req"),
        kwargs.get("backend")))
