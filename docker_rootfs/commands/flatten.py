"""``docker2vm flatten ARCHIVE -o rootfs.tar``: the merged root filesystem."""

import os
import sys
import tempfile

from docker_rootfs import errors, output
from docker_rootfs.archive import open_image
from docker_rootfs.commands import common
from docker_rootfs.progress import terminal_progress


def register(sub):
    p = sub.add_parser("flatten", help="write the image's merged root filesystem as one tar")
    common.add_archive_arguments(p)
    p.add_argument("-o", "--output", required=True,
                   help="output tar file ('-' for standard output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args):
    progress = terminal_progress(not args.no_progress)
    with open_image(args.archive, **common.image_kwargs(args)) as img:
        if args.output == "-":
            img.flatten(sys.stdout.buffer, progress)
            return 0
        write_atomically(args.output, lambda f: img.flatten(f, progress))
    return 0


def write_atomically(path, writer):
    """Write through a temporary file beside ``path``; rename on success,
    remove it on any failure, so a failed run leaves nothing behind."""
    output.check_replaceable(path, " (or '-o -' for standard output)")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".docker2vm-", dir=directory)
    except OSError as exc:
        raise errors.Docker2VMError(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
