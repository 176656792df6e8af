"""Where docker2vm's output files land.

Every output (a flattened tar, a disk, a bundle) is written as a new file
beside its path and renamed over it once complete, so a failed run never
leaves a half-written output. A rename replaces whatever has the name,
though: ``-o /dev/null`` run as root used to replace the host's
``/dev/null`` with a regular file (which then filled with whatever programs
wrote to "/dev/null", and fed it to everything that read it). An output
path that exists must therefore be a regular file (or a symbolic link to
one); anything else is refused before any work starts.
"""

import os
import stat

from docker_rootfs import errors

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO"),
          (stat.S_ISSOCK, "socket"))


def check_replaceable(path, hint=""):
    """Raise a one-line :class:`~docker_rootfs.errors.Docker2VMError` if
    ``path`` exists and is not a regular file: renaming a finished file
    over it would replace a device, a FIFO or a directory's name."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise errors.Docker2VMError(f"output {path}: {exc.strerror}") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    raise errors.Docker2VMError(
        f"output {path} is a {kind}, not a regular file: docker2vm writes a new "
        f"file and renames it into place, which would replace the {kind}; "
        f"give a file path{hint}")
