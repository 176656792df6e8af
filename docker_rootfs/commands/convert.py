"""``docker2vm convert ARCHIVE -o rootfs.qcow2``: the container's rootfs disk.

Composes ``open_image(...).flatten()`` -> a builder (docker_rootfs.disk) ->
``qemu-img convert``. ``--print-properties`` prints the Glance image
properties the import plugin sets for the archive (doc/source/properties.md).
"""


from docker_rootfs import errors
from docker_rootfs.commands import common
from docker_rootfs.disk import builders
from docker_rootfs.disk.options import DiskOptions


def register(sub):
    p = sub.add_parser("convert", help="build the container's root filesystem disk "
                       "(ext4 in qcow2 or raw)")
    common.add_archive_arguments(p)
    p.add_argument("-o", "--output", help="output disk file (required unless --print-properties)")
    p.add_argument("--format", dest="disk_format", choices=("qcow2", "raw"), default="qcow2",
                   help="output format (default qcow2)")
    p.add_argument("--builder", default="auto", choices=("auto",) + tuple(builders.BUILDERS),
                   help="filesystem builder (default auto: ext2fs when available)")
    p.add_argument("--size", type=common.parse_size, default=None, metavar="SIZE",
                   help="fixed filesystem size (e.g. 2G); default: content + free space")
    d = DiskOptions()
    p.add_argument("--free-space", type=common.parse_size, default=None, metavar="SIZE",
                   help=f"free space left on top of the content (default {d.free_space_mib}M)")
    p.add_argument("--free-percent", type=int, default=None, metavar="PCT",
                   help=f"free space as a percentage of the content; the larger wins "
                        f"(default {d.free_space_percent})")
    p.add_argument("--min-size", type=common.parse_size, default=None, metavar="SIZE",
                   help=f"smallest filesystem (default {d.min_size_mib}M)")
    p.add_argument("--label", default=None, help=f"ext4 label (default {d.label})")
    p.add_argument("--compress", action="store_true", help="compress the qcow2 clusters")
    p.add_argument("--no-fsck", action="store_true", help="skip the e2fsck -fn check")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-properties", action="store_true",
                   help="print the Glance image properties for ARCHIVE (JSON) and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def options_from_args(args):
    changes = {"builder": args.builder, "disk_format": args.disk_format,
               "qcow2_compress": args.compress, "fsck": not args.no_fsck}
    if args.size:
        changes["size_mib"] = args.size
    if args.free_space is not None:
        changes["free_space_mib"] = args.free_space
    if args.free_percent is not None:
        changes["free_space_percent"] = args.free_percent
    if args.min_size is not None:
        changes["min_size_mib"] = args.min_size
    if args.label is not None:
        if len(args.label.encode()) > 16:
            raise errors.Docker2VMError("--label: at most 16 bytes")
        changes["label"] = args.label
    if args.tmpdir:
        changes["tmp_dir"] = args.tmpdir
    return DiskOptions(**changes)


def run(args):
    from docker_rootfs.archive import open_image
    from docker_rootfs.disk import build_disk

    if args.print_properties:
        from docker_rootfs.properties import image_properties
        with open_image(args.archive, **common.image_kwargs(args)) as img:
            props = image_properties(img.config, delivery="disk")
        common.print_json(props)
        return 0
    if not args.output:
        raise errors.Docker2VMError("convert: -o/--output is required")
    options = options_from_args(args)
    result = common.build_from_archive(args, lambda img, progress, max_entries: build_disk(
        lambda out: img.flatten(out, progress), args.output, options,
        digest=img.config.config_digest, created=img.created, progress=progress,
        max_entries=max_entries))
    common.print_result(args, result,
                        f"{result.path}: {result.disk_format}, {result.virtual_size // 2**20} MiB "
                        f"ext4 (label {result.label}, UUID {result.fs_uuid}), file "
                        f"{result.file_size / 2**20:.1f} MiB, builder {result.builder}, "
                        f"{result.timings.get('total', 0):.1f} s")
    return 0
