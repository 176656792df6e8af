"""Build the container's root filesystem disk: ext4 inside qcow2 (or raw).

Public API::

    from docker_rootfs.disk import build_disk, DiskOptions
    result = build_disk("rootfs.tar", "rootfs.qcow2", DiskOptions(), digest="sha256:...")

See doc/source/disk.md for the builders, sizing and the reproducibility promise.
"""

from docker_rootfs.disk.build import DiskResult, build_disk, derive_ids  # noqa: F401
from docker_rootfs.disk.options import DiskOptions  # noqa: F401
