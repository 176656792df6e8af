"""Call the core's rootfs disk builder (docker_rootfs.disk) from the plugin.

The builder's knobs are the core's ``[docker_disk]`` options
(:class:`docker_rootfs.disk.options.DiskOptions`); the plugin only forces a
qcow2 output and puts the builder's temporary files next to its own.
"""

import dataclasses

from oslo_config import cfg

from docker_rootfs import errors

CONF = cfg.CONF
GROUP = "docker_disk"


def disk_options(tmpdir):
    from docker_rootfs.disk.options import DiskOptions
    values = {}
    group = getattr(CONF, GROUP, None) if GROUP in CONF else None
    if group is not None:
        for f in DiskOptions.fields():
            if f.name in group:
                values[f.name] = getattr(group, f.name)
    values["disk_format"] = "qcow2"
    values["tmp_dir"] = tmpdir
    return DiskOptions(**values)


def build_qcow2(tar_path, out_path, progress=None, tmpdir=None):
    """Build the qcow2 rootfs disk ``out_path`` from the flattened tar;
    returns the disk's virtual size in bytes (or None if unknown)."""
    try:
        from docker_rootfs import disk
    except ImportError:
        raise errors.ToolError("the rootfs disk builder (docker_rootfs.disk) "
                               "is not installed") from None
    build = getattr(disk, "build_disk", None)
    if build is None:
        raise errors.ToolError("docker_rootfs.disk has no build_disk()")
    result = build(tar_path, out_path, options=disk_options(tmpdir),
                   progress=progress)
    for attr in ("virtual_size", "size_bytes"):
        value = getattr(result, attr, None)
        if value:
            return int(value)
    if dataclasses.is_dataclass(result):
        return None
    return int(result) if isinstance(result, int) else None
