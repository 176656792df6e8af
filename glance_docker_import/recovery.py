"""Give back images whose conversion died with its glance-api process.

When glance-api is killed in the middle of a conversion, Glance leaves the
image ``importing`` with its import lock held by a task that stays
``processing`` (a glance-direct import then cannot start again: the image
is not ``uploading``). The dead import's work directory
(:mod:`glance_docker_import.workdir`) is found by a sweep once its lock is
free; :func:`recover` then does what the plugin's revert would have done:
the task fails with a one-line message, the image goes back to ``queued``
with its formats and properties as before the import and the store in
``os_glance_failed_import``, the lock is dropped and the staged data is
removed, so the image can be staged and imported again. An image whose
converted data already reached a store (``active``, or with a location: a
multi-store import) keeps its status, formats and properties: only the
task fails, the stores not reached are marked failed and the lock goes.

:class:`Sweeper` runs the sweep at glance-api start-up (started by the
paste filter when the pipeline loads, or by the first import) and every
``[docker_convert] sweep_interval`` seconds.
"""

import contextlib
import logging
import os
import threading

from oslo_config import cfg

from glance_docker_import import opts, workdir

LOG = logging.getLogger(__name__)
CONF = cfg.CONF

MESSAGE = ("docker-convert: the conversion stopped because its glance-api process "
           "ended; stage the image again and re-import")


def temp_base(src_path=None):
    """The directory holding the work directories: ``temp_dir``, else the
    staging directory (where the staged upload ``src_path`` is)."""
    opts.register_opts(CONF)
    if CONF.docker_convert.temp_dir:
        return CONF.docker_convert.temp_dir
    if src_path:
        return os.path.dirname(src_path)
    try:
        from glance import housekeeping
        return housekeeping.staging_store_path()
    except Exception:
        return None


def recover(meta):
    """Undo the import recorded in ``meta`` (a dead work directory's
    meta.json) if its task is still the image's unfinished import and its
    data reached no store; if it did (the image is ``active``, or has a
    location), only fail the task, mark the stores not reached as failed
    and drop the import lock."""
    from glance import context, gateway
    from glance.async_.flows.api_image_import import ImportActionWrapper
    from glance.common import exception as glance_exc

    image_id, task_id = meta.get("image_id"), meta.get("task_id")
    if not image_id or not task_id:
        return
    ctx = context.get_admin_context()
    gw = gateway.Gateway()
    task_repo = gw.get_task_repo(ctx)
    image_repo = gw.get_repo(ctx)
    try:
        task = task_repo.get(task_id)
    except glance_exc.NotFound:
        task = None
    if task is not None and task.status in ("pending", "processing"):
        with contextlib.suppress(glance_exc.InvalidTaskStatusTransition):
            task.fail(MESSAGE)
            task_repo.save(task)
    stores = [s for s in (meta.get("stores") or []) if s]
    wrapper = ImportActionWrapper(image_repo, image_id, task_id)
    try:
        with wrapper as action:
            landed = _data_landed(action)
            if landed:
                status = action.image_status
                unreached = [s for s in stores if s in _store_list(
                    action.image_extra_properties.get(action.IMPORTING_STORES_KEY))]
                if unreached:
                    action.remove_importing_stores(unreached)
                    action.add_failed_stores(unreached)
            else:
                _roll_back(action, meta, stores)
        wrapper.drop_lock_for_task()
    except (glance_exc.TaskAbortedError, glance_exc.NotFound):
        LOG.info("docker-convert: image %s is no longer locked by task %s; "
                 "nothing to give back", image_id, task_id)
        return
    src = meta.get("src")
    if src and os.path.basename(src) == image_id:
        with contextlib.suppress(FileNotFoundError):
            os.remove(src)
    if landed:
        LOG.warning("docker-convert: image %s keeps its status %s, formats and properties: "
                    "its converted data was stored before its import task %s died with its "
                    "glance-api process; import lock dropped, stores not reached: %s",
                    image_id, status, task_id, ", ".join(unreached) or "none")
    else:
        LOG.warning("docker-convert: image %s back to queued: its import task %s died "
                    "with its glance-api process", image_id, task_id)


def _store_list(value):
    return [s for s in (value or "").split(",") if s]


def _data_landed(action):
    """Has the converted data reached a store? Then the image is ``active``
    (or another status after the import) or has a location: its formats and
    docker_* properties describe that data and must stay."""
    return action.image_status not in ("importing", "uploading") or bool(action.image_locations)


def _roll_back(action, meta, stores):
    """What the plugin's revert does: back to queued with the formats and
    properties of before the import, the target stores failed."""
    if action.image_status in ("importing", "uploading"):
        action.set_image_attribute(status="queued")
    if meta.get("old_attributes"):
        action.set_image_attribute(**meta["old_attributes"])
    old = meta.get("old_properties") or {}
    for key in meta.get("new_properties") or []:
        if key not in old:
            action.pop_extra_property(key)
    if old:
        action.set_image_extra_properties(
            {k: v for k, v in old.items() if not k.startswith("os_glance")})
    if stores:
        action.remove_importing_stores(stores)
        action.add_failed_stores(stores)


def sweep_once():
    base = temp_base()
    if not base:
        return []
    return workdir.sweep(base, on_dead=recover)


class Sweeper:
    """One daemon thread per glance-api process."""

    _started = False
    _lock = threading.Lock()

    @classmethod
    def ensure_started(cls):
        with cls._lock:
            if cls._started:
                return
            cls._started = True
        threading.Thread(target=cls._run, daemon=True, name="docker-convert-sweeper").start()

    @classmethod
    def _run(cls):
        stop = threading.Event()
        while True:
            try:
                sweep_once()
            except Exception:
                LOG.exception("docker-convert: sweeping work directories failed")
            interval = CONF.docker_convert.sweep_interval
            if not interval:
                return
            stop.wait(interval)
