"""Unpack a share image's archive once per image per compute host.

``<share_dir>/<sha1(image_id)>`` is the tree (the name Nova's image cache
gives the archive in ``_base``). It is built under an external lock
(oslo.concurrency, ``lock_path=share_dir``): of many concurrent spawns of
one new image, one unpacks and the rest wait and reuse it. The archive is
read by the shared core (:func:`docker_rootfs.archive.open_image`, the
Glance import's safety rules and ``[docker_limits]``), flattened into one
tar next to the tree, and extracted with tarfile's ``tar`` filter (no
absolute or escaping paths, no setuid/setgid bits) minus device nodes and
FIFOs (on a share they would be the host's devices); a half-made tree is
never renamed into place. ``share_dir`` itself is 0700.
"""

import hashlib
import logging
import os
import shutil
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
    if member.ischr() or member.isblk() or member.isfifo():
        return None
    return tarfile.tar_filter(member, dest)


def ensure_tree(share_dir, image_id, archive_path, limits=None):
    """The unpacked tree of ``archive_path`` for ``image_id`` (made if missing)."""
    from docker_rootfs.archive import open_image

    os.makedirs(share_dir, mode=0o700, exist_ok=True)
    path = tree_path(share_dir, image_id)
    if os.path.isdir(path):
        os.utime(path)
        return path
    name = tree_name(image_id)
    with lockutils.lock("docker2vm-share-" + name, external=True, lock_path=share_dir):
        if os.path.isdir(path):
            os.utime(path)
            return path
        started = time.monotonic()
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
            os.utime(path)      # last use: the cache manager pass ages trees by it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.exists(tar_path):
                os.unlink(tar_path)
        LOG.info("docker2vm: unpacked image %s into %s in %.1f s", image_id, path,
                 time.monotonic() - started)
    return path


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
            age = now - os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        if age < min_age_seconds:
            continue
        name = entry[len(TMP_PREFIX):len(TMP_PREFIX) + 40] if entry.startswith(TMP_PREFIX) \
            else entry
        with lockutils.lock("docker2vm-share-" + name, external=True, lock_path=share_dir):
            LOG.info("docker2vm: removing unused share tree %s", path)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
        removed.append(path)
    return removed
