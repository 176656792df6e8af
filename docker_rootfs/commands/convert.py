"""``docker2vm convert ARCHIVE -o rootfs.qcow2``: the container's rootfs disk.

Composes ``open_image(...).flatten()`` -> a builder (docker_rootfs.disk) ->
``qemu-img convert``. ``--print-properties`` prints the Glance image
properties the import plugin sets for the archive (doc/source/properties.md).
"""

import json
import signal
import sys

from docker_rootfs import errors
from docker_rootfs.commands import common
from docker_rootfs.disk import builders
from docker_rootfs.disk.options import DiskOptions
from docker_rootfs.progress import terminal_progress


def _size(text):
    """'2G', '512M', '1024' (MiB) -> MiB."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    try:
        if t and t[-1] in mult:
            return max(1, int(float(t[:-1]) * mult[t[-1]]))
        return int(t)
    except ValueError:
        raise errors.Docker2VMError(f"bad size {text!r}: use e.g. 512M or 2G") from None


def register(sub):
    p = sub.add_parser("convert", help="build the container's root filesystem disk "
                       "(ext4 in qcow2 or raw)")
    common.add_archive_arguments(p)
    p.add_argument("-o", "--output", help="output disk file (required unless --print-properties)")
    p.add_argument("--format", dest="disk_format", choices=("qcow2", "raw"), default="qcow2",
                   help="output format (default qcow2)")
    p.add_argument("--builder", default="auto", choices=("auto",) + tuple(builders.BUILDERS),
                   help="filesystem builder (default auto: ext2fs when available)")
    p.add_argument("--size", type=_size, default=None, metavar="SIZE",
                   help="fixed filesystem size (e.g. 2G); default: content + free space")
    d = DiskOptions()
    p.add_argument("--free-space", type=_size, default=None, metavar="SIZE",
                   help=f"free space left on top of the content (default {d.free_space_mib}M)")
    p.add_argument("--free-percent", type=int, default=None, metavar="PCT",
                   help=f"free space as a percentage of the content; the larger wins "
                        f"(default {d.free_space_percent})")
    p.add_argument("--min-size", type=_size, default=None, metavar="SIZE",
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


def _created(img):
    doc = getattr(img, "config_document", None)
    if isinstance(doc, (bytes, str)):
        try:
            doc = json.loads(doc)
        except ValueError:
            doc = None
    if isinstance(doc, dict) and isinstance(doc.get("created"), str):
        return doc["created"]
    return None


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run(args):
    from docker_rootfs.archive import open_image
    from docker_rootfs.disk import build_disk

    if args.print_properties:
        from docker_rootfs.properties import image_properties
        with open_image(args.archive, **common.image_kwargs(args)) as img:
            props = image_properties(img.config, delivery="disk")
        json.dump(props, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if not args.output:
        raise errors.Docker2VMError("convert: -o/--output is required")
    options = options_from_args(args)
    progress = terminal_progress(not args.no_progress)
    # SIGTERM unwinds like Ctrl-C, so temporary files are removed.
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        limits = common.limits_from_args(args)
        with open_image(args.archive, **common.image_kwargs(args)) as img:
            result = build_disk(lambda out: img.flatten(out, progress), args.output,
                                options, digest=img.config.config_digest,
                                created=_created(img), progress=progress,
                                max_entries=limits.max_entries)
    finally:
        signal.signal(signal.SIGTERM, old)
    if args.json:
        json.dump(result.__dict__, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(f"{result.path}: {result.disk_format}, {result.virtual_size // 2**20} MiB "
              f"ext4 (label {result.label}, UUID {result.fs_uuid}), file "
              f"{result.file_size / 2**20:.1f} MiB, builder {result.builder}, "
              f"{result.timings.get('total', 0):.1f} s", file=sys.stderr)
    return 0
