"""Unpack a share image's archive once per image per compute host.

``<share_dir>/<sha1(image_id)>`` is the tree (the name Nova's image cache
gives the archive in ``_base``). It is built under an external lock
(oslo.concurrency, ``lock_path=share_dir``): of many concurrent spawns of
one new image, one unpacks and the rest wait and reuse it. The archive is
read by the shared core (:func:`docker_rootfs.archive.open_image`, the
Glance import's safety rules and ``[docker_limits]``), flattened into one
tar next to the tree, and extracted with tarfile's ``tar`` filter (no
absolute or escaping paths) keeping the image's modes but setuid/setgid,
minus device nodes and FIFOs (on a share they would be the host's devices); a half-made tree is
never renamed into place. ``share_dir`` itself is 0700.

The tree is then made a read-only bind mount of itself
(:func:`ensure_read_only`, through privsep; checked again on every use, so
also after a host reboot): the C virtiofsd of QEMU 7.2 has no read-only
mode and libvirt 9.0 refuses ``<readonly/>`` for virtiofs, so this is what
keeps a guest (root in its VM) from changing the tree every instance of
the image shares. :func:`remove_tree` unmounts before removing.
"""

import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time

from oslo_concurrency import lockutils

LOG = logging.getLogger(__name__)

DEFAULT_DIR_NAME = "_docker2vm_shares"
TMP_PREFIX = ".tmp-"


def tree_name(image_id):
    return hashlib.sha1(image_id.encode()).hexdigest()


def tree_path(share_dir, image_id):
    return os.path.join(share_dir, tree_name(image_id))


def _safe_filter(member, dest):
    """tarfile's ``tar`` filter for paths and links, but the image's own
    modes kept (a 1777 /tmp stays writable by the container's users) except
    setuid/setgid; no device nodes or FIFOs."""
    if member.ischr() or member.isblk() or member.isfifo():
        return None
    safe = tarfile.tar_filter(member, dest)
    if safe is None or member.mode is None:
        return safe
    return safe.replace(mode=member.mode & ~(stat.S_ISUID | stat.S_ISGID), deep=False)


def is_read_only(path):
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mount(path):
    """True when ``path`` is a mount point (a bind mount of a directory onto
    itself keeps st_dev, so os.path.ismount cannot tell)."""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(_unescape(line.split()[4]) == path for line in f)
    except OSError:
        return os.path.ismount(path)


def ensure_read_only(path):
    if is_read_only(path):
        return
    from nova_image_handler import errors, privileged
    try:
        privileged.run("readonly_bind_mount", path)
    except Exception as exc:
        raise errors.HostError(
            reason=f"cannot make the share tree {path} a read-only bind mount ({exc}); "
                   "set [docker2vm] share_readonly_mount = false only if the export is "
                   "read-only some other way") from None
    if not is_read_only(path):
        raise errors.HostError(reason=f"share tree {path} is still writable after the "
                                      "read-only bind mount")


def remove_tree(path):
    """Unmount (if mounted) and remove one tree (root-owned: as root)."""
    from nova_image_handler import privileged
    privileged.run("remove_tree", path)


def remove_tree_as_root(path):
    if os.path.isdir(path) and is_mount(path):
        from nova_image_handler import privileged
        privileged.umount_local(path)
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def ensure_tree(share_dir, image_id, archive_path, limits=None, read_only_mount=True):
    """The unpacked tree of ``archive_path`` for ``image_id`` (made if missing),
    a read-only bind mount unless ``read_only_mount`` is false."""
    path = _ensure_tree(share_dir, image_id, archive_path, limits)
    if read_only_mount:
        with lockutils.lock("docker2vm-share-" + tree_name(image_id), external=True,
                            lock_path=share_dir):
            ensure_read_only(path)
    return path


def _ensure_tree(share_dir, image_id, archive_path, limits=None):
    import dataclasses

    from nova_image_handler import privileged

    os.makedirs(share_dir, mode=0o700, exist_ok=True)
    path = tree_path(share_dir, image_id)
    name = tree_name(image_id)
    # always under the lock: the cache pass removes trees under it too
    with lockutils.lock("docker2vm-share-" + name, external=True, lock_path=share_dir):
        if os.path.isdir(path):
            _touch(path)
            return path
        started = time.monotonic()
        # as root (privsep unless we are root): the image's file ownership
        # is kept, and the tree is root's, so only root removes it
        privileged.run("build_tree", share_dir, name, archive_path,
                       dataclasses.asdict(limits) if limits is not None else None)
        _touch(path)
        LOG.info("docker2vm: unpacked image %s into %s in %.1f s", image_id, path,
                 time.monotonic() - started)
    return path


def build_tree_as_root(share_dir, name, archive_path, limits=None):
    """Unpack ``archive_path`` into ``share_dir/name`` (atomically: a temporary
    next to it, renamed when complete). ``limits``: a dict of
    :class:`docker_rootfs.limits.Limits` fields."""
    from docker_rootfs.archive import open_image
    from docker_rootfs.limits import Limits

    limits = Limits(**limits) if limits is not None else None
    path = os.path.join(share_dir, name)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + name + ".", dir=share_dir)
    tar_path = tmp + ".tar"
    try:
        with open_image(archive_path, limits=limits, tmpdir=share_dir,
                        tmp_prefix=TMP_PREFIX) as img, open(tar_path, "wb") as out:
            img.flatten(out)
        root = os.path.join(tmp, "root")
        os.mkdir(root)
        with tarfile.open(tar_path) as tf:
            tf.extractall(root, numeric_owner=True, filter=_safe_filter)
        os.chmod(root, 0o755)
        os.rename(root, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(tar_path):
            os.unlink(tar_path)


def _stamp(path):
    return path + ".used"


def _touch(path):
    """Record a use (the cache manager ages trees by it; the tree's own
    mtime is the image's and the tree may be read-only)."""
    with open(_stamp(path), "a"):
        pass
    os.utime(_stamp(path))


def last_used(path):
    try:
        return os.stat(_stamp(path)).st_mtime
    except FileNotFoundError:
        return os.stat(path).st_mtime


def remove_unused(share_dir, used_image_ids, min_age_seconds, now=None):
    """Remove trees of images no instance uses that were last used (mtime)
    at least ``min_age_seconds`` ago, and stale temporaries. Returns the removed paths."""
    if not os.path.isdir(share_dir):
        return []
    used = {tree_name(i) for i in used_image_ids if i}
    now = time.time() if now is None else now
    removed = []
    for entry in os.listdir(share_dir):
        path = os.path.join(share_dir, entry)
        if entry in used or not (os.path.isdir(path) or entry.startswith(TMP_PREFIX)):
            continue
        if len(entry) != 40 and not entry.startswith(TMP_PREFIX):
            continue      # lock files and anything not ours
        try:
            age = now - last_used(path)
        except FileNotFoundError:
            continue
        if age < min_age_seconds:
            continue
        name = entry[len(TMP_PREFIX):len(TMP_PREFIX) + 40] if entry.startswith(TMP_PREFIX) \
            else entry
        with lockutils.lock("docker2vm-share-" + name, external=True, lock_path=share_dir):
            try:
                if now - last_used(path) < min_age_seconds:
                    continue          # a spawn used it meanwhile
            except FileNotFoundError:
                continue
            LOG.info("docker2vm: removing unused share tree %s", path)
            remove_tree(path)
            if os.path.exists(_stamp(path)):
                os.unlink(_stamp(path))
        removed.append(path)
    return removed
