"""The driver: flattened tar -> ext4 -> qcow2 (or raw), whatever the builder.

``build_disk(source, output, options)`` where ``source`` is either the path
of a flattened PAX tar or a callable ``writer(fileobj)`` producing one (e.g.
``img.flatten``); a callable's stream is spooled to the temporary directory
first (sizing needs the totals before mke2fs runs). When the image digest
is given and the builder reads only what the entries point at (ext2fs), a
writer that can (``Flattener.write`` with ``member_at``) writes no tar at
all: the entries point at the data in the layers' verified spools.

Everything temporary lives in one private directory under
``options.tmp_dir``, created mode 0700 and removed on success, failure,
``KeyboardInterrupt`` or ``SystemExit`` (the CLI turns SIGTERM into one).
"""

import calendar
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

from docker_rootfs import errors
from docker_rootfs import output as output_mod
from docker_rootfs.disk import base, builders, sizing, tarscan
from docker_rootfs.disk.options import DiskOptions

LOG = logging.getLogger(__name__)

MiB = 1024 ** 2
# Namespace of the UUIDs derived from an image digest (uuid5).
UUID_NAMESPACE = uuid.UUID("4c1bd4f4-5a8a-4b9e-9a55-6f0c2d2f7d10")
MAX_GROW_RETRIES = 3


@dataclasses.dataclass
class DiskResult:
    path: str
    disk_format: str
    builder: str
    virtual_size: int        # bytes (the filesystem size)
    file_size: int           # bytes of the produced file
    fs_uuid: str
    label: str
    inodes: int
    fixed_time: int
    seed: str                # what the UUID and hash seed were derived from
    timings: dict


def derive_ids(seed):
    """(filesystem UUID, directory hash seed) from an image digest."""
    return (str(uuid.uuid5(UUID_NAMESPACE, seed + "|fs-uuid")),
            str(uuid.uuid5(UUID_NAMESPACE, seed + "|hash-seed")))


def fixed_time_for(created=None, stats=None):
    """SOURCE_DATE_EPOCH, else the image's creation time, else its newest mtime."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return int(sde)
        except ValueError:
            raise errors.Docker2VMError(f"SOURCE_DATE_EPOCH is not an integer: {sde!r}") from None
    if created:
        t = parse_rfc3339(created)
        if t is not None:
            return t
    return stats.max_mtime if stats else 0


def parse_rfc3339(text):
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$",
                 text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    t = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    tz = m.group(8)
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        t -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return max(0, t)


def check_free_space(directory, needed, what):
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise errors.ToolError(f"cannot use {what} {directory}: {exc.strerror}") from None
    if free < needed:
        raise errors.LimitExceeded(f"free space in {what} {directory}", f"{needed // MiB} MiB",
                                   f"{free // MiB} MiB available")


class _Sink:
    """What ``build_disk`` hands a writer: a file (the tar spool, hashed
    when the seed needs it) with ``member_written`` (a writer that reports
    its members feeds the scanner as it goes, see ``Flattener.write``) and,
    when ``in_place``, ``member_at``: the writer then writes no tar and
    reports where each member's data already lies (``RefWriter``)."""

    def __init__(self, f, scanner, want_hash, in_place, scratch_dir):
        self.f = f
        self.scanner = scanner
        self.hash = hashlib.sha256() if want_hash else None
        self.fed = False
        self.in_place = False
        self._scratch = None
        self._scratch_dir = scratch_dir
        if not in_place:
            self.member_at = None   # the writer writes a tar

    def write(self, b):
        if self.hash:
            self.hash.update(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()

    def member_written(self, tarinfo, data_offset):
        self.fed = True
        self.scanner.add(tarinfo, data_offset)

    def member_at(self, tarinfo, fd, offset):
        self.fed = self.in_place = True
        self.scanner.add(tarinfo, offset, fd)

    def scratch(self):
        """A file for data that has no place yet (expanded sparse files)."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryFile(dir=self._scratch_dir, prefix="data-")
        return self._scratch

    def close(self):
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None


def _spool(writer, path, want_hash, scanner):
    """Run ``writer(fileobj)`` into ``path``; a writer that reports its
    members (see ``Flattener.write``) feeds ``scanner`` as it goes. Returns
    (sha256 hex or "", whether the scanner was fed)."""
    return _run_writer(writer, path, want_hash, scanner)[:2]


def _run_writer(writer, path, want_hash, scanner, in_place=False):
    """:func:`_spool`; with ``in_place`` the writer may write nothing and
    report where the data lies instead. Returns (sha256 hex or "", whether
    the scanner was fed, the sink or None when a tar was written; the
    caller closes the sink)."""
    with open(path, "wb") as f:
        sink = _Sink(f, scanner, want_hash, in_place, os.path.dirname(path))
        try:
            writer(sink)
        except BaseException:
            sink.close()
            raise
    if sink.in_place:
        os.unlink(path)
        return "", True, sink
    sink.close()
    return (sink.hash.hexdigest() if sink.hash else ""), sink.fed, None


def build_disk(source, output, options=None, digest=None, created=None, progress=None,
               max_entries=None, tmp_prefix=None):
    """Build the rootfs disk for a flattened tree; return a :class:`DiskResult`.

    Scratch space is one directory in ``options.tmp_dir`` whose name starts
    with ``tmp_prefix`` (the Glance plugin's conversion child passes
    ``disk-``: the directory is then inside the import's work directory)."""
    options = options or DiskOptions()
    output_mod.check_replaceable(output)
    progress = progress or (lambda fraction, message: None)
    timings = {}
    t0 = time.monotonic()
    builder_cls = builders.choose(options.builder)
    tmp_parent = options.tmp_dir or tempfile.gettempdir()
    if not os.path.isdir(tmp_parent):
        raise errors.Docker2VMError(f"temporary directory {tmp_parent} does not exist")
    out_dir = os.path.dirname(os.path.abspath(output)) or "."
    work = tempfile.mkdtemp(prefix=tmp_prefix or "docker2vm-disk-", dir=tmp_parent)
    partial = None
    sink = None
    try:
        # 1. The tar, as a file we can pread; or, when the image digest seeds
        # the ids and the builder reads only what the entries point at, no
        # tar: the entries point into the layers' verified spools (which
        # live as long as the image the writer flattens stays open).
        seed_hash = ""
        scanned = None
        if callable(source):
            progress(0.0, "flattening")
            tar_path = os.path.join(work, "rootfs.tar")
            scanner = tarscan.Scanner(max_entries)
            seed_hash, fed, sink = _run_writer(source, tar_path, not digest, scanner,
                                               in_place=bool(digest) and builder_cls.reads_entries)
            if sink is not None:
                tar_path = None
            if fed:
                scanned = scanner.entries, scanner.stats
            timings["flatten"] = time.monotonic() - t0
        else:
            tar_path = source
        # 2. Scan (unless the writer reported its members) and size.
        t = time.monotonic()
        progress(0.0, "scanning")
        entries, stats = scanned or tarscan.scan(tar_path, max_entries=max_entries,
                                                 want_sha256=not digest and not seed_hash)
        seed = digest or ("sha256:" + (seed_hash or stats.sha256))
        geometry = sizing.compute(stats, options)
        timings["scan"] = time.monotonic() - t
        fs_uuid, hash_seed = derive_ids(seed)
        fixed_time = fixed_time_for(created, stats)
        # Raw image: allocated space ~ content + metadata; the qcow2 is at most that.
        need = geometry.content_bytes + geometry.journal_blocks * 4096 + 64 * MiB
        check_free_space(work, need, "temporary directory")
        if options.disk_format == "qcow2":
            check_free_space(out_dir, geometry.content_bytes + 16 * MiB, "output directory")
        # 3. Build, growing on ENOSPC unless the size was fixed.
        if options.disk_format == "raw":
            fd, raw_path = tempfile.mkstemp(prefix=".docker2vm-", suffix=".raw", dir=out_dir)
            os.close(fd)
            partial = raw_path
        else:
            raw_path = os.path.join(work, "rootfs.raw")
        builder = builder_cls()
        t = time.monotonic()
        for attempt in range(MAX_GROW_RETRIES + 1):
            _fresh_file(raw_path, geometry.size_bytes)
            job = base.BuildJob(tar_path=tar_path, entries=entries, stats=stats,
                                geometry=geometry, options=options, raw_path=raw_path,
                                work_dir=work, fs_uuid=fs_uuid, hash_seed=hash_seed,
                                fixed_time=fixed_time,
                                progress=lambda f, m: progress(f, m))
            try:
                builder.build(job)
                break
            except errors.ToolError as exc:
                if not _is_no_space(exc) or options.size_mib or attempt == MAX_GROW_RETRIES:
                    if _is_no_space(exc):
                        raise errors.LimitExceeded(
                            "filesystem size", "content", f"{geometry.size_mib} MiB",
                            "the image does not fit; raise size_mib") from None
                    raise
                LOG.warning("filesystem of %d MiB too small (%s); retrying bigger",
                            geometry.size_mib, exc)
                geometry = sizing.grow(geometry)
        timings["build"] = time.monotonic() - t
        # 4. Check and output: for qcow2, e2fsck reads the raw image while
        # qemu-img converts it (both only read it; two cores); the output is
        # renamed into place only once both succeeded.
        checker = None
        try:
            if options.disk_format != "raw":
                fd, partial = tempfile.mkstemp(prefix=".docker2vm-", suffix=".qcow2", dir=out_dir)
                os.close(fd)
            if options.fsck:
                progress(0.0, "checking (e2fsck -fn)")
                checker = _Background(fsck, raw_path)
                if options.disk_format == "raw":
                    timings["fsck"] = checker.wait()
                    checker = None
            t = time.monotonic()
            if options.disk_format == "raw":
                os.chmod(raw_path, 0o644)
                os.replace(raw_path, output)
                partial = None
            else:
                qemu_img_convert(raw_path, partial, compress=options.qcow2_compress,
                                 progress=progress)
                if checker is not None:
                    timings["fsck"] = checker.wait()
                    checker = None
                os.chmod(partial, 0o644)
                os.replace(partial, output)
                partial = None
        finally:
            if checker is not None:     # an error is on its way: e2fsck's would hide it
                checker.join()
        timings["convert"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t0
        return DiskResult(path=output, disk_format=options.disk_format,
                          builder=builder_cls.name, virtual_size=geometry.size_bytes,
                          file_size=os.stat(output).st_size, fs_uuid=fs_uuid,
                          label=options.label, inodes=geometry.inodes,
                          fixed_time=fixed_time, seed=seed, timings=timings)
    finally:
        if sink is not None:
            sink.close()
        if partial:
            _unlink(partial)
        shutil.rmtree(work, ignore_errors=True)


class _Background:
    """``fn(*args)`` in a thread; :meth:`wait` joins it, raises what it
    raised, else returns how long it ran."""

    def __init__(self, fn, *args):
        self._error = None
        self._seconds = 0.0

        def run():
            t = time.monotonic()
            try:
                fn(*args)
            except BaseException as exc:   # raised in wait()
                self._error = exc
            self._seconds = time.monotonic() - t

        self._thread = threading.Thread(target=run, name="docker2vm-fsck", daemon=True)
        self._thread.start()

    def join(self):
        """Wait for the thread, whatever it raised."""
        self._thread.join()

    def wait(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._seconds


def _is_no_space(exc):
    from docker_rootfs.disk import ext2fs_lib
    if isinstance(exc, ext2fs_lib.NoSpace):
        return True
    text = str(exc).lower()
    return "no space" in text or "could not allocate" in text or "not enough space" in text


def _fresh_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsck(raw_path):
    """``e2fsck -fn``: raise ToolError unless the filesystem is clean."""
    e2fsck = base.need_tool("e2fsck", "e2fsprogs")
    proc = subprocess.run([e2fsck, "-fn", raw_path], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"})
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
        LOG.error("e2fsck output:\n%s", "\n".join(lines[-40:]))
        raise errors.ToolError(
            f"built filesystem is not clean (e2fsck exit {proc.returncode}): "
            f"{lines[2] if len(lines) > 2 else ''}".strip())


def qemu_img_convert(raw_path, out_path, compress=False, progress=None):
    """raw -> qcow2. Uncompressed, the data clusters are copied in the
    kernel (``-C``: copy_file_range, no trip through qemu-img's buffers;
    same clusters in the same order, so the same file); where the kernel
    or the filesystems cannot, the ordinary copy runs instead."""
    if not compress:
        try:
            return _qemu_img_convert(raw_path, out_path, ["-C"], progress)
        except errors.ToolError as exc:
            LOG.info("qemu-img convert -C (copy offloading) failed (%s); copying through qemu-img",
                     exc)
    return _qemu_img_convert(raw_path, out_path, ["-c"] if compress else [], progress)


def _qemu_img_convert(raw_path, out_path, extra, progress):
    qemu_img = base.need_tool("qemu-img", "qemu-utils")
    argv = [qemu_img, "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", *extra]
    if progress:
        argv.append("-p")
    argv += [raw_path, out_path]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        buf = b""
        while True:
            chunk = proc.stdout.read1(256) if hasattr(proc.stdout, "read1") else proc.stdout.read(256)
            if not chunk:
                break
            buf = (buf + chunk)[-256:]
            m = re.findall(rb"\((\d+(?:\.\d+)?)/100%\)", buf)
            if m and progress:
                progress(float(m[-1]) / 100, "converting to qcow2")
        err = proc.stderr.read()
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()
        raise errors.ToolError(f"qemu-img convert failed: {last[-1] if last else rc}")
