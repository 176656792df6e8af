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
import errno
import glob
import logging
import os
import shutil
import threading
import time

from glance.common import exception as glance_exc
from glance.common import utils as common_utils
from oslo_config import cfg
from taskflow import task
from taskflow.patterns import linear_flow as lf

from docker_rootfs import errors
from docker_rootfs.properties import DELIVERY, image_properties
from glance_docker_import import MARKER_KEY, MARKER_PROPERTY, METHOD_NAME, opts

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
opts.register_opts(CONF)

TEMP_TAG = "docker2vm"  # temp files: <image_id>.docker2vm-<task>.<what>


class ConversionAborted(errors.Docker2VMError):
    """The import was cancelled or its lock taken over while converting."""


class Heartbeat:
    """Saves the import task's progress message every ``interval`` seconds.

    Every save refreshes the task's ``updated_at``, which is what Glance
    checks before it lets another import steal an image's import lock (60
    minutes without an update), so the lock stays ours however long the
    conversion runs. The same loop notices a cancelled task or a lost lock
    and asks the converter to stop (``check()`` raises).
    """

    def __init__(self, task_repo, task_id, action_wrapper, interval):
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
        self.temp_paths = []
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

    def _temp_prefix(self):
        """Every scratch name of this task starts with this (also the core's
        decompressed archive and the disk builder's work directory)."""
        return "%s.%s-%s." % (self.image_id, TEMP_TAG, self.task_id[:8])

    def _temp(self, what):
        directory = CONF.docker_convert.temp_dir or os.path.dirname(
            self.src_path)
        path = os.path.join(directory, self._temp_prefix() + what)
        self.temp_paths.append(path)
        return path

    def _sweep_stale_temps(self, directory):
        """Remove what an earlier, crashed conversion of this image left.

        Glance's staging cleaner reaps only residue of deleted images and
        cannot remove directories; this import holds the image's import
        lock, so nothing else is converting it now."""
        for path in glob.glob(os.path.join(
                glob.escape(directory), "%s.%s-*" % (self.image_id, TEMP_TAG))):
            LOG.info("docker-convert: removing stale %s of image %s", path, self.image_id)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass

    def _message(self, text):
        """One line for the task message, without server-side paths."""
        if self.src_path:
            text = text.replace(self.src_path, "the uploaded archive")
        for path in self.temp_paths:
            text = text.replace(path, "a temporary file")
        dirs = {os.path.dirname(p) for p in self.temp_paths}
        if self.src_path:
            dirs.add(os.path.dirname(self.src_path))
        for directory in sorted(dirs, key=len, reverse=True):
            text = text.replace(directory, "the temporary directory")
        return _one_line(text)

    def _remove_temps(self, keep=None):
        for path in self.temp_paths:
            if path != keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

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
            with Heartbeat(self.task_repo, self.task_id, self.action_wrapper,
                           conf.progress_interval) as hb:
                result = self._convert(delivery, hb)
        except ConversionAborted as exc:
            if "lock" in str(exc):
                self.lock_lost = True
            raise glance_exc.UploadException("docker-convert: aborted: %s"
                                             % exc)
        except errors.Docker2VMError as exc:
            raise glance_exc.UploadException(
                self._message("docker-convert: %s" % exc))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise glance_exc.UploadException(
                    "docker-convert: no space left on device for the "
                    "conversion's temporary files")
            LOG.exception("docker-convert: I/O error converting %s",
                          self.image_id)
            raise glance_exc.UploadException(self._message(
                "docker-convert: I/O error: %s" % exc))
        except glance_exc.UploadException:
            raise
        except Exception as exc:
            LOG.exception("docker-convert: unexpected error converting %s",
                          self.image_id)
            raise glance_exc.UploadException(self._message(
                "docker-convert: internal error: %s: %s"
                % (type(exc).__name__, exc)))

        out_path, attrs, properties = result
        attrs["size"] = os.stat(out_path).st_size
        with self.action_wrapper as action:
            action.set_image_attribute(**attrs)
            action.set_image_extra_properties(properties)
            action.pop_extra_property(MARKER_PROPERTY)
        self.new_properties = properties
        LOG.info("docker-convert: image %s converted (%s) in %.1fs: %s",
                 self.image_id, delivery, time.monotonic() - started, attrs)
        # Like image_conversion: the staged archive is no longer needed;
        # Glance's _DeleteFromFS removes the file we return.
        if out_path != self.src_path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.src_path)
        return "file://" + out_path

    def _convert(self, delivery, hb):
        from docker_rootfs import opts as core_opts
        from docker_rootfs.archive import open_image

        conf = CONF.docker_convert
        limits = core_opts.limits_from_conf(CONF)
        tmpdir = conf.temp_dir or os.path.dirname(self.src_path)
        self._sweep_stale_temps(tmpdir)
        hb.update(0.0, "reading archive")
        with open_image(self.src_path, limits=limits, platform=conf.platform,
                        tmpdir=tmpdir, tmp_prefix=self._temp_prefix()) as img:
            properties = image_properties(img.config, delivery)
            if delivery == "share":
                out_path, attrs = self._share(img, hb)
            elif delivery == "bundle":
                out_path, attrs, properties = self._bundle(img, hb)
            else:
                out_path, attrs = self._disk(img, hb)
        hb.update(1.0, "done")
        return out_path, attrs, properties

    def _share(self, img, hb):
        from glance_docker_import import share
        if not CONF.docker_convert.normalize_share:
            # Validate the whole archive (digests, limits, hostile entries)
            # by flattening into the void; store it as uploaded.
            img.flatten(_NullWriter(), hb.update)
            out_path = self.src_path
        else:
            out_path = self._temp("tar")
            with open(out_path, "wb") as f:
                share.write_single_layer_archive(img, f, hb.update)
                f.flush()
                os.fsync(f.fileno())
        return out_path, {"disk_format": "raw", "container_format": "docker"}

    def _disk(self, img, hb):
        from glance_docker_import import disk_adapter
        tar_path = self._temp("rootfs.tar")
        with open(tar_path, "wb") as f:
            img.flatten(f, lambda fr, msg: hb.update(fr * 0.5, msg))
        out_path = self._temp("qcow2")
        virtual_size = disk_adapter.build_qcow2(
            tar_path, out_path, digest=img.config.config_digest,
            progress=lambda fr, msg: hb.update(0.5 + fr * 0.5, msg),
            tmpdir=os.path.dirname(out_path),
            max_entries=img.limits.max_entries, tmp_prefix=self._temp_prefix())
        os.remove(tar_path)
        attrs = {"disk_format": "qcow2", "container_format": "bare"}
        if virtual_size:
            attrs["virtual_size"] = virtual_size
        return out_path, attrs

    def _bundle(self, img, hb):
        """Approach 3: a bootable qcow2 stock Nova boots (doc/source/bundle.md)."""
        from docker_rootfs.commands.convert import _created
        from docker_rootfs.guest import bundle
        from glance_docker_import import disk_adapter
        out_path = self._temp("qcow2")
        base_dir = CONF.docker_convert.bundle_base_dir or os.path.join(
            os.path.expanduser("~"), ".cache", "docker2vm", "base")
        result = bundle.build_bundle(
            lambda f: img.flatten(f, lambda fr, msg: hb.update(fr * 0.5, msg)),
            out_path, img.config, img.config.config_digest, created=_created(img),
            disk_options=disk_adapter.disk_options(os.path.dirname(out_path)),
            base_dir=base_dir, progress=lambda fr, msg: hb.update(0.5 + fr * 0.5, msg),
            max_entries=img.limits.max_entries, tmp_prefix=self._temp_prefix())
        attrs = {"disk_format": "qcow2", "container_format": "bare",
                 "virtual_size": result.virtual_size}
        return out_path, attrs, bundle.bundle_properties(img.config)

    # -- revert ------------------------------------------------------------
    def revert(self, result=None, **kwargs):
        if not self.active:
            return
        self._remove_temps()
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


class _NullWriter:
    def write(self, b):
        return len(b)


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
