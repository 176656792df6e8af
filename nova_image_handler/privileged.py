"""The host operations that need root, run through Nova's privsep
(``nova.privsep.sys_admin_pctxt``: its daemon has CAP_SYS_ADMIN, CAP_CHOWN,
CAP_DAC_OVERRIDE...; an entrypoint only has to live in a module whose name
starts with ``nova``).

:func:`run` calls the ``*_local`` implementation directly when this process
is root already (tests, a root nova-compute), and the privsep entrypoint
otherwise: unpacking a share keeps the image's file ownership only as root,
and the tree (root's) is then removed as root.
"""

import os

import nova.privsep
from oslo_concurrency import processutils


def readonly_bind_mount_local(path):
    """Make ``path`` a read-only bind mount of itself (what virtiofsd then exports)."""
    processutils.execute("mount", "--bind", path, path)
    try:
        processutils.execute("mount", "-o", "remount,bind,ro", path)
    except processutils.ProcessExecutionError:
        processutils.execute("umount", path)
        raise


def umount_local(path):
    processutils.execute("umount", path)


def build_tree_local(share_dir, name, archive_path, limits=None):
    from nova_image_handler import unpack
    unpack.build_tree_as_root(share_dir, name, archive_path, limits)


def remove_tree_local(path):
    from nova_image_handler import unpack
    unpack.remove_tree_as_root(path)


@nova.privsep.sys_admin_pctxt.entrypoint
def readonly_bind_mount(path):
    readonly_bind_mount_local(path)


@nova.privsep.sys_admin_pctxt.entrypoint
def umount(path):
    umount_local(path)


@nova.privsep.sys_admin_pctxt.entrypoint
def build_tree(share_dir, name, archive_path, limits=None):
    build_tree_local(share_dir, name, archive_path, limits)


@nova.privsep.sys_admin_pctxt.entrypoint
def remove_tree(path):
    remove_tree_local(path)


def is_root():
    return os.geteuid() == 0


def run(name, *args):
    """``name(*args)`` as root: in this process if it is root, else through privsep."""
    if is_root():
        return globals()[name + "_local"](*args)
    return globals()[name](*args)
