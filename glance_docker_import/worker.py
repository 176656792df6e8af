"""The conversion child: ``python -m glance_docker_import.worker``.

glance-api (:mod:`glance_docker_import.converter`) starts this under the
operator's resource limits, writes one JSON job on its stdin and reads
JSON lines from its stdout:

* ``{"progress": 0.42, "message": "flattening"}`` now and then;
* at the end either ``{"result": {"path": ..., "attrs": {...},
  "properties": {...}}}`` or ``{"error": "one line", "kind": "..."}``
  (``kind``: ``input``, ``nospace``, ``memory``, ``files``, ``io``,
  ``internal``).

Everything else the conversion prints or logs goes to stderr (the
``converter.log`` file in the import's work directory). The conversion is
the core's (:mod:`docker_rootfs`), as in the docker2vm command line.

The child keeps stdin open and dies (with everything it started) when it
reads end-of-file there, i.e. as soon as glance-api goes away, whatever
killed it.
"""

import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time

from docker_rootfs import errors

LOG = logging.getLogger("glance_docker_import.worker")


class _Protocol:
    def __init__(self, f):
        self.f = f
        self.lock = threading.Lock()
        self.last = 0.0
        self.last_text = None
        self.stage = "starting"

    def send(self, doc):
        with self.lock:
            self.f.write(json.dumps(doc) + "\n")
            self.f.flush()

    def progress(self, fraction, message):
        self.stage = message or self.stage
        now = time.monotonic()
        text = "%d %s" % (int(fraction * 100), message)
        if text != self.last_text and (now - self.last >= 0.5 or fraction >= 1.0):
            self.last, self.last_text = now, text
            self.send({"progress": round(float(fraction), 4), "message": message})


def _watch_parent():
    """Exit, taking the process group along, when glance-api closes stdin
    (or dies: the kernel closes it then)."""
    try:
        while os.read(0, 4096):
            pass
    finally:
        if os.getpgrp() == os.getpid():     # started in its own session
            os.killpg(0, signal.SIGKILL)
        os._exit(1)


def _read_line(fd):
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)       # byte by byte: nothing read past the job
        if not chunk:
            break
        data += chunk
    return data


def convert(job, proto):
    from docker_rootfs.archive import open_image
    from docker_rootfs.disk.options import DiskOptions
    from docker_rootfs.limits import Limits
    from docker_rootfs.properties import image_properties

    limits = Limits(**job["limits"])
    disk = DiskOptions(**dict(job["disk"], disk_format=job.get("disk_format", "qcow2"),
                              tmp_dir=job["workdir"]))
    workdir = job["workdir"]
    delivery = job["delivery"]
    proto.progress(0.0, "reading archive")
    with open_image(job["src"], limits=limits, platform=job.get("platform"),
                    tmpdir=workdir, tmp_prefix="archive-") as img:
        properties = image_properties(img.config, delivery)
        if delivery == "share":
            path, attrs = _share(job, img, proto)
        elif delivery == "bundle":
            path, attrs, properties = _bundle(job, img, disk, proto)
        else:
            path, attrs = _disk(job, img, disk, proto)
    proto.progress(1.0, "done")
    return {"path": path, "attrs": attrs, "properties": properties}


def _share(job, img, proto):
    from glance_docker_import import share
    if not job.get("normalize_share", True):
        # Validate the whole archive (digests, limits, hostile entries)
        # by flattening into the void; store it as uploaded.
        img.flatten(_NullWriter(), proto.progress)
        return job["src"], {"disk_format": "raw", "container_format": "docker"}
    path = os.path.join(job["workdir"], "share.tar")
    with open(path, "wb") as f:
        share.write_single_layer_archive(img, f, proto.progress)
        f.flush()
        os.fsync(f.fileno())
    return path, {"disk_format": "raw", "container_format": "docker"}


def _disk(job, img, disk, proto):
    """As ``docker2vm convert``: with the ext2fs builder no flattened tar is
    written (the builder reads each file where it lies in the verified
    layers); other builders get the tar in the build's scratch directory."""
    from docker_rootfs.disk import build_disk
    workdir = job["workdir"]
    out_path = os.path.join(workdir, "rootfs." + disk.disk_format)

    def build_progress(fraction, message):
        if message != "flattening":      # the flattener reports its own, below
            proto.progress(0.5 + fraction * 0.5, message)

    result = build_disk(lambda out: img.flatten(out, lambda fr, msg: proto.progress(fr * 0.5, msg)),
                        out_path, options=disk, digest=img.config.config_digest,
                        created=img.created, progress=build_progress,
                        max_entries=img.limits.max_entries, tmp_prefix="disk-")
    attrs = {"disk_format": disk.disk_format, "container_format": "bare"}
    if result.virtual_size:
        attrs["virtual_size"] = result.virtual_size
    return out_path, attrs


def _bundle(job, img, disk, proto):
    """Approach 3: a bootable qcow2 stock Nova boots (doc/source/bundle.md)."""
    from docker_rootfs.guest import bundle
    workdir = job["workdir"]
    out_path = os.path.join(workdir, "bundle." + disk.disk_format)
    base_dir = job.get("bundle_base_dir") or os.path.join(
        os.path.expanduser("~"), ".cache", "docker2vm", "base")
    result = bundle.build_bundle(
        lambda f: img.flatten(f, lambda fr, msg: proto.progress(fr * 0.5, msg)),
        out_path, img.config, img.config.config_digest, created=img.created,
        disk_options=disk, base_dir=base_dir,
        progress=lambda fr, msg: proto.progress(0.5 + fr * 0.5, msg),
        max_entries=img.limits.max_entries, tmp_prefix="bundle-")
    attrs = {"disk_format": disk.disk_format, "container_format": "bare",
             "virtual_size": result.virtual_size}
    return out_path, attrs, bundle.bundle_properties(img.config)


class _NullWriter:
    def write(self, b):
        return len(b)


NO_SPACE = "no space left on device for the conversion's temporary files while %s"
_MEMORY_SIGNS = ("cannot allocate memory", "memory allocation failed", "out of memory",
                 "can't start new thread", "failed to map segment")


def classify(exc, stage):
    """(kind, one-line text) for an exception of the conversion."""
    text = str(exc)
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return "memory", "out of memory while %s" % stage
    if any(sign in text.lower() for sign in _MEMORY_SIGNS):
        # An allocation failed in C code (a tool, a thread stack, a
        # shared object): the address-space limit, most likely.
        return "memory", "out of memory while %s" % stage
    if isinstance(exc, errors.LimitExceeded) and str(exc.limit).startswith("free space"):
        return "nospace", "not enough free space for the conversion's temporary files " \
            "while %s (%s needed, %s)" % (stage, exc.value, exc.maximum)
    if isinstance(exc, errors.Docker2VMError):
        if "no space left" in text.lower():
            return "nospace", NO_SPACE % stage
        return "input", text
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "nospace", NO_SPACE % stage
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "files", "too many open files while %s" % stage
        return "io", "I/O error while %s: %s" % (stage, exc)
    return "internal", "internal error while %s: %s: %s" % (stage, type(exc).__name__, exc)


def _full(directory):
    """Is the file system of ``directory`` (nearly) full? Below 1% free, at
    most 1 MiB, at least one page."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return False
    return usage.free < max(4096, min(1 << 20, usage.total // 100))


def main():
    # The protocol gets the real stdout; anything else printed goes to stderr.
    proto = _Protocol(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    job = json.loads(_read_line(0))
    try:
        threading.Thread(target=_watch_parent, daemon=True).start()
        if job.get("nice"):
            os.nice(int(job["nice"]))
        LOG.info("converting image %s (task %s, delivery %s) in %s", job.get("image_id"),
                 job.get("task_id"), job["delivery"], job["workdir"])
        result = convert(job, proto)
    except BaseException as exc:  # noqa: B902 - everything becomes one line
        kind, text = classify(exc, proto.stage)
        if kind in ("input", "io", "internal") and _full(job["workdir"]):
            # A tool or library reporting a failed write its own way while
            # the temporary file system is full: say what happened.
            kind, text = "nospace", NO_SPACE % proto.stage
        LOG.error("conversion of image %s failed (%s): %s (%s: %s)", job.get("image_id"), kind,
                  text, type(exc).__name__, exc, exc_info=kind in ("internal", "io", "memory"))
        proto.send({"error": text, "kind": kind})
        return 3
    LOG.info("conversion of image %s done; %s", job.get("image_id"), _peaks())
    proto.send({"result": result, "peaks": _peaks()})
    return 0


def _peaks():
    """Peak memory of this process, to size child_address_space_mib."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmPeak", "VmHWM"):
                    out[key] = value.strip()
    except OSError:
        pass
    return "peak address space (VmPeak) %s, peak resident (VmHWM) %s" % (
        out.get("VmPeak", "?"), out.get("VmHWM", "?"))


if __name__ == "__main__":
    sys.exit(main())
