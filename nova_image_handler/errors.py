"""Exceptions the driver raises from spawn.

They subclass the Nova exceptions the compute manager turns into an
instance in ERROR *without* rescheduling (``_build_and_run_instance``
catches ImageUnacceptable and InvalidInput and raises BuildAbortException
with the same message), so the fault a user sees is this message, which
names the image property, or the nova.conf option and path, to fix.
"""

from nova import exception


class ImageError(exception.ImageUnacceptable):
    """The image's docker_* properties cannot be used (malformed, unknown delivery)."""
    msg_fmt = "docker2vm image %(image_id)s: %(reason)s"


class HostError(exception.InvalidInput):
    """This compute host cannot run the container (missing base file, no share support)."""
    msg_fmt = "docker2vm on this host: %(reason)s"
