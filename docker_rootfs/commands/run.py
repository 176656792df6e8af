"""``docker2vm run ARCHIVE [CMD...]`` and ``docker2vm boot DISK --properties P``:
run a container image in a local VM.

What Nova does for a tenant, done on this machine for a quick check: the
archive becomes a rootfs disk (Approach 2), the base VM (kernel + initramfs)
boots under QEMU with it and a config drive, the container's output streams
to the terminal, and the command exits with the container's exit status.
TCG unless DOCKER2VM_TEST_KVM=1 (KVM is the faster choice where it works).
"""

import argparse
import json
import os
import sys
import tempfile

from docker_rootfs import errors
from docker_rootfs.commands import common


def register(sub):
    p = sub.add_parser("run", help="run a container image in a local VM (QEMU), like docker run")
    common.add_archive_arguments(p)
    _add_vm_arguments(p)
    p.set_defaults(func=run)
    b = sub.add_parser("boot", help="boot a converted rootfs disk with its Glance image "
                                    "properties in a local VM, as the Nova side would")
    b.add_argument("disk", help="rootfs disk (qcow2 or raw) made by convert or the Glance import")
    b.add_argument("--properties", required=True, metavar="JSON_FILE",
                   help="the image's Glance properties (a JSON object, e.g. GET /v2/images/ID)")
    b.add_argument("--tmpdir", help="directory for temporary files")
    _add_vm_arguments(b)
    b.set_defaults(func=boot)


def _add_vm_arguments(p):
    p.add_argument("cmd", nargs=argparse.REMAINDER,
                   help="replace the image's Cmd: everything after the image, as in docker run IMAGE CMD...")
    p.add_argument("--entrypoint", help="replace the image's Entrypoint (JSON list or one word)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set an environment variable in the container")
    p.add_argument("--hostname", default="docker2vm", help="the VM's hostname")
    p.add_argument("--memory", type=int, default=256, metavar="MIB", help="guest memory")
    p.add_argument("--timeout", type=int, default=300, help="seconds before the VM is killed")
    p.add_argument("--base-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "docker2vm", "base"),
        help="where the base VM (kernel + initramfs) is built and kept")


def _metadata(args):
    meta = {}
    if args.cmd:
        meta["docker_cmd"] = json.dumps(args.cmd)
    if args.entrypoint is not None:
        ep = args.entrypoint
        meta["docker_entrypoint"] = ep if ep.startswith("[") else json.dumps([ep] if ep else [])
    if args.env:
        for item in args.env:
            if "=" not in item:
                raise errors.Docker2VMError(f"--env {item!r}: expected KEY=VALUE")
        meta["docker_env"] = json.dumps(args.env)
    return meta


def run(args):
    from docker_rootfs.archive import open_image
    from docker_rootfs.disk import build_disk
    from docker_rootfs.disk.options import DiskOptions

    with tempfile.TemporaryDirectory(prefix="docker2vm-run-", dir=args.tmpdir) as tmp:
        disk = os.path.join(tmp, "rootfs.qcow2")
        with open_image(args.archive, **common.image_kwargs(args)) as img:
            config = img.config
            build_disk(lambda out: img.flatten(out), disk,
                       DiskOptions(tmp_dir=tmp, free_space_mib=256),
                       digest=config.config_digest)
        return _boot_vm(args, config, disk, "qcow2", tmp)


def boot(args):
    from docker_rootfs.guest import tools
    from docker_rootfs.properties import config_from_properties

    try:
        with open(args.properties) as f:
            props = json.load(f)
    except (OSError, ValueError) as exc:
        raise errors.Docker2VMError(f"cannot read properties {args.properties}: {exc}") from None
    if not isinstance(props, dict):
        raise errors.Docker2VMError(f"{args.properties}: expected a JSON object of properties")
    config = config_from_properties(props)
    try:
        with open(args.disk, "rb") as f:
            fmt = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    except OSError as exc:
        raise errors.Docker2VMError(f"cannot read disk {args.disk}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="docker2vm-boot-", dir=args.tmpdir) as tmp:
        # A per-boot overlay: the guest writes there, never to the given disk.
        overlay = os.path.join(tmp, "overlay.qcow2")
        tools.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                   os.path.abspath(args.disk), overlay])
        return _boot_vm(args, config, overlay, "qcow2", tmp)


def _boot_vm(args, config, disk, fmt, tmp):
    """Boot the base VM with ``disk`` as the container's rootfs; return its exit status."""
    from docker_rootfs.guest import configdrive, contract, qemu
    from docker_rootfs.guest.base_image import build_base_image

    meta = _metadata(args)
    base = build_base_image(args.base_dir)
    serial = "docker2vm-rootfs"
    files = contract.render_guest_files(config, args.hostname, meta,
                                        contract.RootfsDelivery.disk(serial))
    iso = configdrive.build_config_drive(os.path.join(tmp, "config.iso"), files,
                                         args.hostname, meta=meta)
    machine = qemu.Machine(kernel=base.vmlinux, initrd=base.initrd, cmdline=base.cmdline,
                           config_drive=iso, disks=[(disk, serial, fmt)],
                           memory_mb=args.memory)

    def show(elapsed, line, ctl):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    result = qemu.boot(machine, timeout=args.timeout, on_line=show)
    if result.timed_out:
        raise errors.Docker2VMError(f"the VM did not finish within {args.timeout} s")
    status = result.exit_status()
    if status is None:
        raise errors.Docker2VMError("the VM stopped without reporting an exit status")
    return status
