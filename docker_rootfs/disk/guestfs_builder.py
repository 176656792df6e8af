"""The libguestfs builder: the tenant's tar is unpacked inside a throw-away
appliance VM, so hostile data only ever meets the appliance's kernel and tar.

The empty filesystem is made on the host by the same ``mke2fs`` call as the
other builders (no tenant data involved: same geometry, label, UUID, hash
seed, features); the appliance mounts it and runs ``tar-in`` with xattrs and
ACLs. Slow (an ~18 s appliance boot under TCG, then guest-kernel I/O) and not
byte-reproducible (the guest kernel stamps ctimes and the journal), but the
strongest isolation. ``virt-make-fs`` is the same thing with less control
(no UUID, label or inode count), hence guestfish.

Tests on machines where KVM is unusable set
``LIBGUESTFS_BACKEND_SETTINGS=force_tcg``; it is never forced here.
"""

import os
import shutil
import subprocess

from docker_rootfs import errors
from docker_rootfs.disk import base


class GuestfsBuilder(base.Builder):
    name = "guestfs"
    unprivileged = True
    reproducible = False
    isolated = True
    timeout = 6 * 3600

    @classmethod
    def unavailable_reason(cls):
        if not shutil.which("guestfish"):
            return "guestfish not found; install libguestfs-tools"
        return None

    def build(self, job):
        base.make_filesystem(job)
        job.report(0.0, "unpacking in the libguestfs appliance")
        script = (
            "run\n"
            "mount /dev/sda /\n"
            # Numeric owners: guestfs' tar-in has no --numeric-owner option and
            # the appliance's /etc/passwd is not the image's; see below.
            f"tar-in {_quote(job.tar_path)} / xattrs:true acls:true\n"
            + "".join(_fixups(job.entries)) +
            "umount-all\n"
        )
        env = dict(os.environ)
        argv = ["guestfish", "--rw", "--format=raw", "-a", job.raw_path]
        try:
            proc = subprocess.run(argv, input=script.encode(), env=env, timeout=self.timeout,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise errors.ToolError(f"guestfish took longer than {self.timeout} s") from None
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise errors.ToolError(f"guestfish failed: {lines[-1] if lines else proc.returncode}")
        job.report(1.0, "unpacked")


def _gf(data):
    """A guestfish double-quoted string for arbitrary bytes (\\xHH escapes)."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+"
    return '"' + "".join(chr(c) if c in safe else "\\x%02x" % c for c in data) + '"'


def _fixups(entries):
    """What tar-in does not restore: directory mtimes (set last, deepest
    first, after every child exists).

    Known gap: ACLs carried as ``SCHILY.xattr.system.posix_acl_*`` are dropped
    by the appliance's GNU tar (it applies only ``SCHILY.acl.*``), and
    guestfish cannot pass an xattr value containing NUL bytes, so they are
    not restored by this builder (doc/source/disk.md)."""
    from docker_rootfs.disk import tarscan
    out = []
    dirs = [e for e in entries if e.kind == tarscan.DIR]
    dirs.sort(key=lambda e: -e.path.count(b"/") - (1 if e.path else 0))
    for e in dirs:
        out.append(f"utimens {_gf(b'/' + e.path)} {e.mtime} {e.mtime_ns} "
                   f"{e.mtime} {e.mtime_ns}\n")
    return out


def _quote(path):
    if any(c in path for c in "\"\n"):
        raise errors.ToolError(f"unusable path for guestfish: {path!r}")
    return f'"{path}"'
