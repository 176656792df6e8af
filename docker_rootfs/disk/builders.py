"""Builder registry and the automatic choice."""

import importlib

from docker_rootfs import errors

# name -> "module:Class", in the order 'auto' tries them.
BUILDERS = {
    "ext2fs": "docker_rootfs.disk.ext2fs_builder:Ext2fsBuilder",
    "mke2fs-tar": "docker_rootfs.disk.mke2fs_builder:Mke2fsTarBuilder",
    "mke2fs-dir": "docker_rootfs.disk.mke2fs_builder:Mke2fsDirBuilder",
    "guestfs": "docker_rootfs.disk.guestfs_builder:GuestfsBuilder",
}
# 'auto' prefers the in-process builder (tested, reproducible, unprivileged);
# mke2fs -d TARBALL is only picked by name (see doc/source/disk.md).
AUTO_ORDER = ("ext2fs", "mke2fs-dir", "guestfs")


def get(name):
    if name not in BUILDERS:
        raise errors.Docker2VMError(
            f"unknown builder {name!r}; choose from auto, {', '.join(BUILDERS)}")
    module, cls = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def choose(name="auto"):
    """The builder class for ``name``; ToolError if it cannot run here."""
    if name and name != "auto":
        cls = get(name)
        reason = cls.unavailable_reason()
        if reason:
            raise errors.ToolError(f"builder {name} cannot run here: {reason}")
        return cls
    reasons = []
    for candidate in AUTO_ORDER:
        cls = get(candidate)
        reason = cls.unavailable_reason()
        if reason is None:
            return cls
        reasons.append(f"{candidate}: {reason}")
    raise errors.ToolError("no rootfs disk builder can run here (" + "; ".join(reasons) + ")")


def status():
    """[(name, reason or None)] for every builder."""
    return [(n, get(n).unavailable_reason()) for n in BUILDERS]
