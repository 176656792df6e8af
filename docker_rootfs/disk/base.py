"""The builder interface, and what all builders share (mke2fs, tools).

A builder turns one :class:`BuildJob` (a flattened tar already scanned,
a geometry, identifiers and times) into an ext4 filesystem written to
``job.raw_path``, a sparse raw file of exactly ``job.geometry.size_bytes``
bytes that the driver created. The driver (:mod:`docker_rootfs.disk.build`)
does everything around it: spooling, scanning, sizing, retries when space
ran out, ``e2fsck``, ``qemu-img convert`` and cleanup.
"""

import dataclasses
import logging
import os
import shutil
import subprocess

from docker_rootfs import errors

LOG = logging.getLogger(__name__)

# Filesystem features: stated explicitly (never the host's /etc/mke2fs.conf)
# so the result does not depend on the host, and chosen for the 6.1 guest
# kernel and older e2fsprogs on hypervisors (no orphan_file, no
# metadata_csum_seed, no inline_data, no casefold).
FEATURES = ("has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,"
            "extra_isize,sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr")

MKE2FS_CONF = """[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\tdefault_mntopts = acl,user_xattr
[fs_types]
\text4 = {
\t\tfeatures = %s
\t}
\tdefault = {
\t}
""" % FEATURES


@dataclasses.dataclass
class BuildJob:
    tar_path: str            # the flattened PAX tar (a regular file); None when no tar
                             # was written (only for builders that read entries)
    entries: list            # tarscan.Entry list, in stream order
    stats: object            # tarscan.TarStats
    geometry: object         # sizing.Geometry
    options: object          # DiskOptions
    raw_path: str            # where the ext4 image goes (created, sized, sparse)
    work_dir: str            # private scratch directory (removed by the driver)
    fs_uuid: str
    hash_seed: str
    fixed_time: int          # ctime/crtime of every inode, superblock times
    progress: object = None  # callable(fraction, message) or None

    def report(self, fraction, message):
        if self.progress:
            self.progress(fraction, message)


class Builder:
    """Base class: one module per builder subclasses this."""

    name = "?"
    #: works as an ordinary user
    unprivileged = True
    #: byte-identical output for the same input
    reproducible = True
    #: tenant data is only ever handled inside a VM
    isolated = False
    #: reads file data only where the job's entries say (``Entry.offset``,
    #: ``Entry.fd``), never the tar as a whole: it can build without one
    reads_entries = False

    @classmethod
    def unavailable_reason(cls):
        """None if the builder can run here, else a one-line reason."""
        return None

    def build(self, job):
        raise NotImplementedError


def need_tool(name, package):
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not path:
        raise errors.ToolError(f"{name} not found; install the {package} package")
    return path


def run_tool(argv, what, env=None, timeout=None, input=None):
    """Run a tool; ToolError with its last stderr line when it fails."""
    LOG.info("running %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, env=env, timeout=timeout, input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise errors.ToolError(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise errors.ToolError(f"{what}: {argv[0]} took longer than {timeout} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise errors.ToolError(f"{what} failed: {last[:300]}")
    return proc


def tool_env(job, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env["LC_ALL"] = "C"      # mke2fs -d sorts directory entries with strcoll()
    env["E2FSPROGS_FAKE_TIME"] = str(job.fixed_time)
    env["MKE2FS_CONFIG"] = os.path.join(job.work_dir, "mke2fs.conf")
    env["TZ"] = "UTC"
    if extra:
        env.update(extra)
    return env


def mke2fs_argv(job, extra=()):
    g = job.geometry
    journal_mib = max(4, g.journal_blocks * 4096 // (1024 * 1024))
    eopts = [f"hash_seed={job.hash_seed}", "root_owner=0:0", "nodiscard",
             "assume_storage_prezeroed=1"]
    return [need_tool("mke2fs", "e2fsprogs"), "-q", "-F", "-t", "ext4", "-T", "default",
            "-b", "4096", "-I", "256", "-N", str(g.inodes), "-m", "0",
            "-L", job.options.label, "-U", job.fs_uuid, "-E", ",".join(eopts),
            "-J", f"size={journal_mib}", *extra, job.raw_path]


def write_mke2fs_conf(job):
    with open(os.path.join(job.work_dir, "mke2fs.conf"), "w") as f:
        f.write(MKE2FS_CONF)


def make_filesystem(job, extra=(), env_extra=None):
    """mke2fs on job.raw_path with the job's geometry, ids and times."""
    write_mke2fs_conf(job)
    run_tool(mke2fs_argv(job, extra), "mke2fs", env=tool_env(job, env_extra))


def e2fsprogs_version():
    try:
        out = subprocess.run([need_tool("mke2fs", "e2fsprogs"), "-V"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
    except errors.ToolError:
        return None
    words = out.decode("ascii", "replace").split()
    if len(words) >= 2:
        try:
            return tuple(int(x) for x in words[1].split("-")[0].split("."))
        except ValueError:
            return None
    return None
