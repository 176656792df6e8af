"""Run one conversion in a child process under resource limits.

The child is :mod:`glance_docker_import.worker` (the core's conversion,
``python -m glance_docker_import.worker``), started through
``python -m oslo_concurrency.prlimit`` with
:class:`oslo_concurrency.processutils.ProcessLimits`, as Glance's own
image_conversion runs ``qemu-img``. It runs in its own session (so it and
everything it starts can be killed as one process group), at a lower CPU
priority if asked, with its stderr in ``converter.log`` of the import's
work directory. Progress comes back as JSON lines on its stdout.

Whatever ends the child, :meth:`Child.run` reaps it and either returns
the result or raises :class:`ConversionFailed` with one line naming what
happened (an input error, no space, a limit, a signal, a crash).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading

from oslo_concurrency import processutils

from docker_rootfs import errors

LOG = logging.getLogger(__name__)
MiB = 1024 * 1024


class ConversionFailed(errors.Docker2VMError):
    """The child reported an error or died; ``str()`` is one line."""

    def __init__(self, text, kind="internal"):
        super().__init__(text)
        self.kind = kind


class Settings:
    """Limits and priority of the child (from ``[docker_convert]``)."""

    def __init__(self, address_space_mib=None, cpu_seconds=None, open_files=None, nice=0):
        self.address_space_mib = address_space_mib or None
        self.cpu_seconds = cpu_seconds or None
        self.open_files = open_files or None
        self.nice = nice or 0

    @classmethod
    def from_conf(cls, conf):
        return cls(conf.child_address_space_mib, conf.child_cpu_seconds,
                   conf.child_open_files, conf.child_nice)

    def process_limits(self):
        return processutils.ProcessLimits(
            address_space=self.address_space_mib * MiB if self.address_space_mib else None,
            cpu_time=self.cpu_seconds, number_files=self.open_files)

    def command(self):
        return [sys.executable, "-m", "oslo_concurrency.prlimit",
                *self.process_limits().prlimit_args(), "--",
                sys.executable, "-m", "glance_docker_import.worker"]


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


class Child:
    """One conversion child. ``kill(reason)`` may be called from any thread."""

    def __init__(self, job, workdir, settings, log_path, on_start=None):
        self.on_start = on_start
        self.job = dict(job, nice=settings.nice)
        self.workdir = workdir
        self.settings = settings
        self.log_path = log_path
        self.proc = None
        self.kill_reason = None
        self._lock = threading.Lock()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def kill(self, reason):
        with self._lock:
            if self.kill_reason is None:
                self.kill_reason = reason
            if self.proc is not None and self.proc.returncode is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run(self, progress):
        """Run the child to its end; ``progress(fraction, message)`` gets
        its progress (an exception from it kills the child and is
        re-raised). Returns the child's result dict."""
        with open(self.log_path, "ab") as log:
            with self._lock:
                if self.kill_reason is not None:
                    raise ConversionFailed(self.kill_reason, "aborted")
                self.proc = subprocess.Popen(
                    self.settings.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, cwd=self.workdir, close_fds=True, start_new_session=True)
        LOG.info("docker-convert: image %s: conversion child %d started (%s)",
                 self.job.get("image_id"), self.proc.pid, " ".join(self.settings.command()[3:-4]))
        doc = {}
        try:
            if self.on_start is not None:
                self.on_start(self.proc.pid)
            self.proc.stdin.write((json.dumps(self.job) + "\n").encode())
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "progress" in msg:
                    progress(float(msg["progress"]), str(msg.get("message", "")))
                else:
                    doc = msg
        except BrokenPipeError:
            pass
        except BaseException:
            self.kill("aborted")
            self._reap()
            raise
        status, cpu = self._reap()
        return self._outcome(doc, status, cpu)

    def _reap(self):
        """Wait for the child; also kill what is left of its process group."""
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # grandchildren (qemu-img, ...)
        except (ProcessLookupError, PermissionError):
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        return status, usage.ru_utime + usage.ru_stime

    def _outcome(self, doc, status, cpu):
        s = self.settings
        if self.kill_reason is not None:
            raise ConversionFailed(self.kill_reason, "aborted")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if s.cpu_seconds and sig in (signal.SIGKILL, signal.SIGXCPU) and \
                    cpu >= s.cpu_seconds - 1:
                raise ConversionFailed("conversion exceeded the CPU-time limit of %d s"
                                       % s.cpu_seconds, "cpu")
            raise ConversionFailed("conversion killed by signal %d (%s)"
                                   % (sig, signal_name(sig)), "signal")
        if "result" in doc:
            LOG.info("docker-convert: image %s: conversion child %d done, %.1f s CPU, %s",
                     self.job.get("image_id"), self.proc.pid, cpu, doc.get("peaks", ""))
            return doc["result"]
        if "error" in doc:
            kind, text = doc.get("kind", "internal"), doc["error"]
            if kind == "memory" and s.address_space_mib:
                text = "conversion exceeded the address-space limit of %d MiB (%s)" % (
                    s.address_space_mib, text)
            elif kind == "files" and s.open_files:
                text = "conversion exceeded the open-files limit of %d (%s)" % (
                    s.open_files, text)
            raise ConversionFailed(text, kind)
        code = os.waitstatus_to_exitcode(status)
        raise ConversionFailed("conversion exited with status %d without a result%s"
                               % (code, self._log_hint()), "crash")

    def log_tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_hint(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 400))
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return ": " + lines[-1].strip() if lines else ""
