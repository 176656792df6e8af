"""What the subcommands that read an image archive share: their
arguments, sizes, the run with SIGTERM unwinding, the result's output."""

import json
import signal
import sys

from docker_rootfs import errors
from docker_rootfs.limits import Limits
from docker_rootfs.progress import terminal_progress


def add_archive_arguments(p):
    p.add_argument("archive", help="docker save or OCI image archive (tar, may be compressed)")
    p.add_argument("--image", metavar="TAG|DIGEST",
                   help="which image, when the archive holds several")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which platform of a multi-platform index (default: this host's)")
    p.add_argument("--tmpdir", help="directory for temporary files")
    for f in Limits.fields():
        p.add_argument("--" + f.name.replace("_", "-"), type=int, default=None,
                       metavar="N", help=f"{f.metadata['help']} (default {f.default})")


def limits_from_args(args):
    changes = {f.name: getattr(args, f.name) for f in Limits.fields()
               if getattr(args, f.name, None) is not None}
    return Limits(**changes)


def image_kwargs(args):
    return {"limits": limits_from_args(args), "image": args.image,
            "platform": args.platform, "tmpdir": args.tmpdir}


def parse_size(text):
    """'2G', '512M', '1024' (MiB) -> MiB."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    try:
        if t and t[-1] in mult:
            return max(1, int(float(t[:-1]) * mult[t[-1]]))
        return int(t)
    except ValueError:
        raise errors.Docker2VMError(f"bad size {text!r}: use e.g. 512M or 2G") from None


def sigterm_exit(signum, frame):
    """A SIGTERM handler: unwind like Ctrl-C, so temporary files are removed."""
    raise SystemExit(128 + signum)


def build_from_archive(args, build):
    """Open ``args.archive`` and return ``build(img, progress, max_entries)``
    (a progress bar unless ``--no-progress``), SIGTERM unwinding meanwhile."""
    from docker_rootfs.archive import open_image

    progress = terminal_progress(not args.no_progress)
    old = signal.signal(signal.SIGTERM, sigterm_exit)
    try:
        limits = limits_from_args(args)
        with open_image(args.archive, **image_kwargs(args)) as img:
            return build(img, progress, limits.max_entries)
    finally:
        signal.signal(signal.SIGTERM, old)


def print_json(doc):
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_result(args, result, summary):
    """The result as JSON on stdout with ``--json``, else ``summary`` on stderr."""
    if args.json:
        print_json(result.__dict__)
    else:
        print(summary, file=sys.stderr)
