"""Errors raised by docker_rootfs.

Every error a tenant's archive can cause is a :class:`Docker2VMError`
whose ``str()`` is one line naming the problem; callers (the CLI, the
Glance plugin) show that line and never a traceback.
"""


class Docker2VMError(Exception):
    """Base class: a problem with the input or the environment, told in one line."""


class ArchiveError(Docker2VMError):
    """The archive is malformed: bad JSON, missing blob, truncated tar, ..."""


class UnsupportedMediaType(ArchiveError):
    """A manifest, config or layer has a media type we do not read."""


class DigestMismatch(ArchiveError):
    """A blob's content does not hash to the digest that names it."""


class ImageSelectionError(ArchiveError):
    """The archive holds several images (or platforms) and none or many match."""


class UnsafeEntry(ArchiveError):
    """A layer entry tries to reach outside the image root or is otherwise hostile."""


class LimitExceeded(Docker2VMError):
    """A configurable limit was exceeded; names the limit and the value seen."""

    def __init__(self, limit, value, maximum, where=None):
        self.limit = limit
        self.value = value
        self.maximum = maximum
        self.where = where
        msg = f"limit {limit} exceeded: {value} > {maximum}"
        if where:
            msg += f" ({where})"
        super().__init__(msg)


class ToolError(Docker2VMError):
    """An external tool (mke2fs, qemu-img, ...) is missing or failed."""
