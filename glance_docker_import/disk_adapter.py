"""Call the core's rootfs disk builder (docker_rootfs.disk) from the plugin.

The builder's knobs are the core's ``[docker_disk]`` options
(:class:`docker_rootfs.disk.options.DiskOptions`); the plugin forces a
qcow2 output and puts the builder's temporary files next to its own.
"""

import dataclasses

from oslo_config import cfg

from docker_rootfs import opts as core_opts

CONF = cfg.CONF


def disk_options(tmpdir):
    options = core_opts.disk_options_from_conf(CONF)
    return dataclasses.replace(options, disk_format="qcow2", tmp_dir=tmpdir)


def build_qcow2(tar_path, out_path, digest=None, progress=None, tmpdir=None,
                max_entries=None, tmp_prefix=None):
    """Build the qcow2 rootfs disk ``out_path`` from the flattened tar;
    returns the disk's virtual size in bytes."""
    from docker_rootfs.disk import build_disk
    result = build_disk(tar_path, out_path, options=disk_options(tmpdir),
                        digest=digest, progress=progress,
                        max_entries=max_entries, tmp_prefix=tmp_prefix)
    return result.virtual_size
