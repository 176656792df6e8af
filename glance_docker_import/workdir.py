"""Per-import work directories, locked while their import lives, swept after.

Every conversion keeps all of its scratch files (the decompressed copy of a
compressed upload, the flattened tree, the raw filesystem, the qcow2, the
converter's log) in one directory ``docker2vm-<image_id>-<task_id>`` under
``[docker_convert] temp_dir`` (default: Glance's staging directory). The
glance-api process running the import holds an exclusive ``flock`` on the
directory's ``.lock`` file from creation until the directory is removed;
the kernel drops that lock when the process dies, however it dies
(``kill -9`` included). :func:`sweep` removes exactly the directories
whose lock is free, so it never touches a live import, in this process or
in any other glance-api worker sharing the directory. A directory is made
(locked, meta.json written) under a hidden name and renamed when complete,
and renamed to a hidden name before it is deleted, so a sweep never finds
one half made or half removed (without its ``.lock``) and takes it for a
dead import; a directory without ``.lock`` counts as dead only after
``CREATION_GRACE``. A failed creation (a full file system) leaves nothing.

``meta.json`` in the directory names the image and task and what the
import changed on the image, so the sweeper can also give the image back
(:mod:`glance_docker_import.recovery`).

The name does not start with ``<image_id>.``: Glance's own staging
cleaner would try to ``os.remove`` it (it only removes files).
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time

LOG = logging.getLogger(__name__)

PREFIX = "docker2vm-"
LOCK = ".lock"
META = "meta.json"
# A directory without meta.json younger than this may be in creation.
CREATION_GRACE = 60.0
# Glance's image and task ids are UUIDs: the sweep only considers names made
# by dir_name(), never the CLI's docker2vm-disk-*, docker2vm-bundle-* or
# docker2vm-run-* directories that may share temp_dir.
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_NAME = re.compile(r"%s%s-%s\Z" % (re.escape(PREFIX), _UUID, _UUID))
# A work directory is made under CREATING + its name + "." + a random
# suffix, and renamed to REMOVING + ... before it is deleted: hidden names the
# recovery never looks at; the sweep deletes them once they are older than
# CREATION_GRACE and unlocked (their process died half way).
CREATING = ".creating-"
REMOVING = ".removing-"
_HIDDEN = re.compile(r"\.(creating|removing)-%s%s-%s\.[A-Za-z0-9_]+\Z"
                     % (re.escape(PREFIX), _UUID, _UUID))


def dir_name(image_id, task_id):
    return "%s%s-%s" % (PREFIX, image_id, task_id)


def is_work_dir_name(name):
    """Is ``name`` what :func:`dir_name` makes from an image and a task id?"""
    return _NAME.match(name) is not None


class WorkDir:
    """The locked work directory of one import (create with :meth:`create`)."""

    def __init__(self, path, lock_fd):
        self.path = path
        self._lock_fd = lock_fd
        self._meta = {}
        self._mutex = threading.Lock()

    @classmethod
    def create(cls, base, image_id, task_id, meta=None):
        """Make, lock and describe the directory under a hidden name (see
        ``CREATING``), then rename it: a sweep never sees it unlocked or
        without meta.json, and nothing is left if any step fails."""
        name = dir_name(image_id, task_id)
        path = os.path.join(base, name)
        if os.path.lexists(path):
            # Left by an earlier run of this very task (it cannot be live:
            # the task is ours now); remove it only if its lock is free.
            if not _remove_if_unlocked(path):
                raise OSError(errno.EBUSY, "work directory is in use", path)
        tmp = tempfile.mkdtemp(prefix="%s%s." % (CREATING, name), dir=base)
        fd = None
        try:
            fd = os.open(os.path.join(tmp, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            wd = cls(tmp, fd)
            wd.update_meta(dict(meta or {}, image_id=image_id, task_id=task_id,
                                pid=os.getpid(), created=time.time()))
            os.rename(tmp, path)
            wd.path = path
        except BaseException:
            if fd is not None:
                os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return wd

    def file(self, what):
        return os.path.join(self.path, what)

    def update_meta(self, changes):
        with self._mutex:
            self._meta.update(changes)
            tmp = self.file(META + ".tmp")
            with open(tmp, "w") as f:
                json.dump(self._meta, f)
            os.replace(tmp, self.file(META))

    @property
    def alive(self):
        return self._lock_fd is not None

    def remove(self):
        """Remove the directory and everything in it, then drop the lock
        (see :func:`_discard`: a sweep never sees it half removed)."""
        with self._mutex:
            if self._lock_fd is None:
                return
            _discard(self.path)
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove_when_gone(self, path, poll=0.2):
        """Keep the directory (and its lock) until ``path`` is deleted, then
        remove it: Glance uploads the file the plugin returns and deletes it
        afterwards, or reverts the plugin (which calls :meth:`remove`)."""
        def wait():
            while self.alive and os.path.exists(path):
                time.sleep(poll)
            self.remove()
        threading.Thread(target=wait, daemon=True,
                         name="docker-convert-cleanup-%s" % os.path.basename(self.path)).start()


def read_meta(path):
    try:
        with open(os.path.join(path, META)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _age(path):
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _discard(path):
    """Delete the directory ``path``: first rename it to a hidden name in
    the same directory (one atomic step: a sweep sees either the whole work
    directory, locked, or nothing), then delete that. If the rename fails,
    delete in place, meta.json first (without it and without .lock a young
    directory is left alone by the sweep)."""
    parent, name = os.path.split(path)
    if _HIDDEN.match(name):
        shutil.rmtree(path, ignore_errors=True)     # hidden already
        return
    hidden = os.path.join(parent, "%s%s.%s" % (REMOVING, name, os.urandom(6).hex()))
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    except OSError as exc:
        LOG.warning("docker-convert: cannot rename %s before removing it: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(path, META))
        hidden = path
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_if_unlocked(path, on_dead=None):
    """Remove ``path`` if no live process holds its lock. Returns True if
    removed (or already gone)."""
    lock = os.path.join(path, LOCK)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        LOG.warning("docker-convert: cannot open %s: %s", lock, exc)
        return False
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False          # a live import
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if not same:
                return False          # removed meanwhile (by its import or another sweep)
        elif _age(path) < CREATION_GRACE:
            # No lock: being created or removed right now (never a dead
            # import's directory before the grace period is over).
            return False
        meta = read_meta(path)
        if meta is None and _age(path) < CREATION_GRACE:
            return False              # being created right now
        if on_dead is not None and meta:
            try:
                on_dead(meta)
            except Exception:
                LOG.exception("docker-convert: recovering the import in %s failed", path)
        _discard(path)
        return not os.path.lexists(path)
    finally:
        if fd is not None:
            os.close(fd)


def sweep(base, on_dead=None):
    """Remove every work directory in ``base`` (a name :func:`dir_name`
    makes; anything else is left alone) that no live import holds.

    ``on_dead(meta)`` is called first for each one (with its meta.json).
    Returns the names removed."""
    removed = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return removed
    for name in sorted(names):
        path = os.path.join(base, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        if _HIDDEN.match(name):
            # Left half made or half removed by a process that died (or
            # still being made): nothing to recover.
            if _age(path) >= CREATION_GRACE and _remove_if_unlocked(path):
                LOG.info("docker-convert: removed %s, left by a process that died", path)
                removed.append(name)
            continue
        if not is_work_dir_name(name):
            continue
        if _remove_if_unlocked(path, on_dead):
            LOG.warning("docker-convert: removed the work directory %s of an import "
                        "that is no longer running", path)
            removed.append(name)
    return removed
