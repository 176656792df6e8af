"""``docker2vm base-image``: build the base VM; ``docker2vm guest-files``:
render a config drive for one container (what the Nova driver does)."""

import json
import os

from docker_rootfs import config as config_mod
from docker_rootfs import errors


def _base_image(args):
    from docker_rootfs.guest import base_image
    img = base_image.build_base_image(args.output, cache_dir=args.cache_dir,
                                      boot_disk=args.boot_disk,
                                      kernel_package=args.kernel_package)
    print(json.dumps({k: v for k, v in vars(img).items() if v}, indent=1))
    return 0


def _config_drive(args):
    from docker_rootfs.guest import configdrive, contract
    with open(args.config) as f:
        doc = json.load(f)
    cfg = (config_mod.ContainerConfig.from_dict(doc) if "Entrypoint" in doc or "Cmd" in doc
           else config_mod.ContainerConfig.from_image_config(doc))
    meta = {}
    for item in args.property or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise errors.Docker2VMError(f"--property {item!r}: expected KEY=VALUE")
        meta[k] = v
    kind, _, ident = args.rootfs.partition(":")
    private = ident.endswith(":rw")
    ident = ident[:-3] if private else ident
    rootfs = contract.RootfsDelivery(kind, ident, private)
    files = contract.render_guest_files(cfg, args.hostname, meta, rootfs, args.stop_timeout)
    configdrive.build_config_drive(args.output, files, args.hostname, meta=meta)
    print(os.path.abspath(args.output))
    return 0


def register(subparsers):
    p = subparsers.add_parser(
        "base-image", help="build the base VM (kernel + initramfs, optional BIOS boot disk)",
        description="Build the docker2vm base VM from Debian packages: kernel, initramfs "
                    "with the docker2vm init, and optionally a qcow2 BIOS boot disk.")
    p.add_argument("-o", "--output", default="base-image", help="output directory")
    p.add_argument("--cache-dir", default=None, help="download cache (default: output)")
    p.add_argument("--boot-disk", action="store_true",
                   help="also build boot.qcow2: the same kernel, initramfs and command line "
                        "on a BIOS-bootable qcow2 (syslinux), for base_vm_image=")
    p.add_argument("--kernel-package", default=None,
                   help="Debian kernel package or meta package (default: linux-image-cloud-amd64, "
                        "fastest; linux-image-amd64 for 9p shares and q35 SATA config drives)")
    p.set_defaults(func=_base_image)

    q = subparsers.add_parser(
        "config-drive", help="render a config drive for one container (testing, manual runs)",
        description="Write a Nova-style config drive (label config-2) carrying the docker2vm "
                    "guest files for a container configuration.")
    q.add_argument("config", help="image config JSON (OCI/Docker) or ContainerConfig JSON")
    q.add_argument("-o", "--output", required=True, help="ISO file to write")
    q.add_argument("--hostname", default="container")
    q.add_argument("--rootfs", required=True,
                   help="disk:SERIAL, 9p:TAG[:rw] or virtiofs:TAG[:rw]")
    q.add_argument("--property", action="append",
                   help="server metadata KEY=VALUE (docker_cmd, docker_env, ...)")
    q.add_argument("--stop-timeout", type=int, default=None)
    q.set_defaults(func=_config_drive)
