"""A config drive as Nova builds it, with the docker2vm guest files added.

Nova's layout (``openstack/latest/meta_data.json`` with uuid, hostname,
name and meta, plus ``vendor_data.json`` and ``network_data.json``), made
with the same ``genisoimage`` options Nova uses and volume label
``config-2``; ``user_data`` (what ``openstack server create --user-data``
gives, e.g. a ``#cloud-config``) goes to ``openstack/<version>/user_data``
as Nova writes it. The Nova driver adds the same ``docker2vm/`` files through its
InstanceMetadata subclass; tests and ``docker2vm`` use
:func:`build_config_drive` directly.
"""

import json
import os
import shutil
import subprocess
import tempfile
import uuid as uuid_mod

from docker_rootfs import errors
from docker_rootfs.guest import tools

LABEL = "config-2"
VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
            "2016-10-06", "2017-02-22", "2018-08-27", "2020-10-14", "latest")


def metadata_files(instance_uuid, hostname, name=None, meta=None, extra=None, user_data=None):
    """``{path: bytes}`` of an OpenStack config drive (Nova's layout).

    ``user_data`` (bytes), if given, is written as ``openstack/<version>/user_data``
    for every version, as Nova does (cloud-init's ConfigDrive datasource
    reads ``openstack/latest/user_data``).
    """
    md = {
        "uuid": instance_uuid,
        "hostname": hostname,
        "name": name or hostname,
        "meta": dict(meta or {}),
        "launch_index": 0,
        "availability_zone": "nova",
        "project_id": "docker2vm",
        "devices": [],
    }
    files = {}
    for v in VERSIONS:
        files[f"openstack/{v}/meta_data.json"] = json.dumps(md).encode()
        if user_data is not None:
            files[f"openstack/{v}/user_data"] = bytes(user_data)
        files[f"openstack/{v}/vendor_data.json"] = b"{}"
        if v >= "2015-10-15" or v == "latest":
            files[f"openstack/{v}/network_data.json"] = json.dumps(
                {"links": [], "networks": [], "services": []}).encode()
    files.update(extra or {})
    return files


def _mkisofs():
    for tool in ("genisoimage", "mkisofs", "xorrisofs"):
        path = shutil.which(tool)
        if path:
            return [path]
    if shutil.which("xorriso"):
        return [shutil.which("xorriso"), "-as", "mkisofs"]
    raise errors.ToolError("genisoimage not found (apt-get install genisoimage)")


def _stage(tmp, files):
    for rel, data in files.items():
        rel = rel.lstrip("/")
        if ".." in rel.split("/"):
            raise errors.Docker2VMError(f"config drive path {rel!r} escapes the drive")
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


VFAT_SIZE_KIB = 64 * 1024      # Nova's CONFIGDRIVESIZE_BYTES


def write_vfat(dest, files, label=LABEL):
    """Write ``files`` into a vfat image, as Nova's ``config_drive_format=vfat``
    (64 MiB, ``mkfs.vfat -n config-2``), without root: mtools copies the files."""
    with tempfile.TemporaryDirectory() as tmp:
        _stage(tmp, files)
        tmp_dest = dest + ".tmp"
        try:
            if os.path.exists(tmp_dest):
                os.unlink(tmp_dest)
            tools.run(["mkfs.vfat", "-C", "-n", label, tmp_dest, str(VFAT_SIZE_KIB)])
            tools.run(["mcopy", "-s", "-i", tmp_dest] + [os.path.join(tmp, n) for n in sorted(os.listdir(tmp))]
                      + ["::/"])
            os.replace(tmp_dest, dest)
        finally:
            if os.path.exists(tmp_dest):
                os.unlink(tmp_dest)
    return dest


def write_iso(dest, files, label=LABEL):
    """Write ``files`` ({path: bytes}) into an ISO9660 image with Nova's options."""
    with tempfile.TemporaryDirectory() as tmp:
        _stage(tmp, files)
        cmd = _mkisofs() + ["-o", dest, "-ldots", "-allow-lowercase", "-allow-multidot",
                            "-l", "-publisher", "docker2vm", "-quiet", "-J", "-r",
                            "-V", label, tmp]
        try:
            subprocess.run(cmd, check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            raise errors.ToolError(f"{cmd[0]} failed: {exc.stderr.decode(errors='replace').strip()}") from None
    return dest


def build_config_drive(dest, guest_files, hostname, instance_uuid=None, name=None, meta=None,
                       user_data=None, fmt="iso9660"):
    """Nova-style config drive at ``dest`` with ``guest_files`` at its root.

    ``guest_files`` is what :func:`docker_rootfs.guest.contract.render_guest_files`
    returns (may be empty: a stock cloud image gets everything from
    ``user_data``, e.g. :func:`docker_rootfs.guest.cloudinit.render_cloud_config`).
    ``fmt`` is Nova's ``config_drive_format``: ``iso9660`` (default) or
    ``vfat``. Returns ``dest``.
    """
    files = metadata_files(instance_uuid or str(uuid_mod.uuid4()), hostname, name, meta,
                           extra=guest_files, user_data=user_data)
    if fmt == "vfat":
        return write_vfat(dest, files)
    if fmt != "iso9660":
        raise errors.Docker2VMError(f"config drive format {fmt!r}: iso9660 or vfat")
    return write_iso(dest, files)
