"""``docker2vm bundle ARCHIVE -o app.qcow2``: one self-contained bootable
disk (Approach 3): BIOS and UEFI boot path, the base VM's kernel and
initramfs, the container configuration baked in, the rootfs partition.
See doc/source/bundle.md."""

import os

from docker_rootfs import errors
from docker_rootfs.commands import common
from docker_rootfs.disk.options import DiskOptions


def _default_base_dir():
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                        "docker2vm", "base")


def register(sub):
    p = sub.add_parser("bundle", help="build one self-contained bootable VM disk "
                       "(BIOS and UEFI) running the container")
    common.add_archive_arguments(p)
    p.add_argument("-o", "--output", help="output disk file (required unless --print-properties)")
    p.add_argument("--format", dest="disk_format", choices=("qcow2", "raw"), default="qcow2",
                   help="output format (default qcow2)")
    d = DiskOptions()
    p.add_argument("--size", type=common.parse_size, default=None, metavar="SIZE",
                   help="fixed root filesystem size (e.g. 2G); default: content + free space")
    p.add_argument("--free-space", type=common.parse_size, default=None, metavar="SIZE",
                   help=f"free space in the root filesystem (default {d.free_space_mib}M)")
    p.add_argument("--compress", action="store_true", help="compress the qcow2 clusters")
    p.add_argument("--base-dir", default=_default_base_dir(),
                   help="where the base VM (kernel + initramfs) is built and kept")
    p.add_argument("--kernel-package", default=None, metavar="PKG",
                   help="Debian kernel package of the base VM (default linux-image-cloud-amd64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-properties", action="store_true",
                   help="print the Glance image properties of the bundle (JSON) and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args):
    from docker_rootfs.archive import open_image
    from docker_rootfs.guest import bundle

    if args.print_properties:
        with open_image(args.archive, **common.image_kwargs(args)) as img:
            props = bundle.bundle_properties(img.config)
        common.print_json(props)
        return 0
    if not args.output:
        raise errors.Docker2VMError("bundle: -o/--output is required")
    bundle.check_tools()
    changes = {"disk_format": args.disk_format, "qcow2_compress": args.compress}
    if args.size:
        changes["size_mib"] = args.size
    if args.free_space is not None:
        changes["free_space_mib"] = args.free_space
    if args.tmpdir:
        changes["tmp_dir"] = args.tmpdir
    options = DiskOptions(**changes)
    result = common.build_from_archive(args, lambda img, progress, max_entries: bundle.build_bundle(
        lambda out: img.flatten(out, progress), args.output, img.config,
        img.config.config_digest, created=img.created, disk_options=options,
        base_dir=args.base_dir, kernel_package=args.kernel_package,
        progress=progress, max_entries=max_entries))
    common.print_result(args, result,
                        f"{result.path}: {result.disk_format}, {result.virtual_size // 2**20} MiB "
                        f"(boot {result.esp_size // 2**20} MiB + rootfs {result.rootfs_size // 2**20} MiB, "
                        f"kernel {result.kernel_version}), file {result.file_size / 2**20:.1f} MiB, "
                        f"{result.timings.get('total', 0):.1f} s")
    return 0
