"""Boot a docker2vm guest under QEMU the way Nova's libvirt driver would.

Used by the tests and the benchmark (and handy by hand): kernel + initramfs
direct boot (or the BIOS boot disk), the config drive, the root filesystem
as a virtio disk with a serial or a 9p/virtiofs share with a tag, user-mode
NICs, the serial console captured line by line with timestamps.

TCG unless ``DOCKER2VM_TEST_KVM=1`` (or ``accel="kvm"``).
"""

import dataclasses
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time

from docker_rootfs import errors

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def default_accel():
    return "kvm" if os.environ.get("DOCKER2VM_TEST_KVM") == "1" else "tcg"


class ConsoleLines:
    """Queries over ``self.lines``, ``[(seconds, text)]`` of a guest console."""

    @property
    def text(self):
        return "\n".join(t for _, t in self.lines)

    def first(self, predicate):
        for t, line in self.lines:
            if predicate(line):
                return t
        return None

    def exit_status(self):
        for _, line in reversed(self.lines):
            if line.startswith("docker2vm: exit status "):
                return int(line.split()[3])
        return None


@dataclasses.dataclass
class Boot(ConsoleLines):
    lines: list            # [(seconds since qemu start, text)]
    returncode: int
    duration: float
    timed_out: bool = False


@dataclasses.dataclass
class Machine:
    kernel: str
    initrd: str = ""
    cmdline: str = ""
    boot_disk: str = ""            # BIOS boot (qcow2) instead of -kernel
    config_drive: str = ""
    config_bus: str = "virtio"     # "virtio" (disk) or "ide" (cdrom, stock Nova on pc)
    # (path, serial, fmt): virtio disks in this order; an empty serial
    # gives the disk none (a root disk as Nova attaches it)
    disks: list = dataclasses.field(default_factory=list)
    share: tuple = ()              # ("9p"|"virtiofs", directory, tag)
    nics: int = 1
    memory_mb: int = 256
    cpus: int = 1
    accel: str = ""

    def command(self, workdir, monitor=None):
        accel = self.accel or default_accel()
        cmd = ["qemu-system-x86_64", "-accel", accel, "-M", "pc", "-m", str(self.memory_mb),
               "-smp", str(self.cpus), "-nodefaults", "-no-user-config", "-display", "none",
               "-serial", "stdio", "-no-reboot"]
        if accel == "kvm":
            cmd += ["-cpu", "host"]
        if self.boot_disk:
            cmd += ["-drive", f"if=none,id=boot,file={self.boot_disk},format=qcow2,snapshot=on",
                    "-device", "virtio-blk-pci,drive=boot,bootindex=0"]
        else:
            cmd += ["-kernel", self.kernel, "-append", self.cmdline]
            if self.initrd:
                cmd += ["-initrd", self.initrd]
        if self.config_drive:
            if self.config_bus == "ide":
                cmd += ["-drive", f"file={self.config_drive},format=raw,media=cdrom,if=ide,readonly=on"]
            else:
                cmd += ["-drive", f"if=none,id=cfg,file={self.config_drive},format=raw,readonly=on",
                        "-device", "virtio-blk-pci,drive=cfg"]
        for i, (path, serial, fmt) in enumerate(self.disks):
            cmd += ["-drive", f"if=none,id=d{i},file={path},format={fmt},cache=unsafe",
                    "-device", f"virtio-blk-pci,drive=d{i}" + (f",serial={serial}" if serial else "")]
        if self.share:
            kind, directory, tag = self.share
            if kind == "9p":
                cmd += ["-fsdev", f"local,id=fs0,path={directory},security_model=passthrough",
                        "-device", f"virtio-9p-pci,fsdev=fs0,mount_tag={tag}"]
            else:
                sock = os.path.join(workdir, "virtiofs.sock")
                cmd += ["-chardev", f"socket,id=vfs,path={sock}",
                        "-device", f"vhost-user-fs-pci,chardev=vfs,tag={tag}",
                        "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                        "-numa", "node,memdev=mem"]
        for i in range(self.nics):
            cmd += ["-netdev", f"user,id=n{i}", "-device", f"virtio-net-pci,netdev=n{i}"]
        if monitor:
            cmd += ["-monitor", f"unix:{monitor},server=on,wait=off"]
        return cmd


def _start_virtiofsd(directory, sock):
    proc = subprocess.Popen([VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={directory}",
                             "-o", "cache=auto", "-o", "sandbox=chroot"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(sock):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("virtiofsd did not create its socket")


def monitor_command(path, command):
    """Send one HMP command (e.g. ``system_powerdown``) to a running guest."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(command.encode() + b"\n")
    time.sleep(0.2)
    s.close()


def boot(machine, timeout=180, on_line=None, pss_after=None):
    """Run ``machine`` until QEMU exits; return a :class:`Boot`.

    ``on_line(elapsed, line, ctl)`` is called for each console line; ``ctl``
    has ``powerdown()`` (an ACPI power-button press, what ``openstack server
    stop`` sends) and ``pss()`` (the QEMU process's PSS in KiB now).
    """
    workdir = tempfile.mkdtemp(prefix="d2v-qemu-")
    monitor = os.path.join(workdir, "mon.sock")
    vfsd = None
    try:
        if machine.share and machine.share[0] == "virtiofs":
            vfsd = _start_virtiofsd(machine.share[1], os.path.join(workdir, "virtiofs.sock"))
        start = time.monotonic()
        cmd = machine.command(workdir, monitor)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise errors.ToolError(f"{cmd[0]} not found (install qemu-system-x86, "
                                   "see bindep.txt)") from None

        class Ctl:
            @staticmethod
            def powerdown():
                monitor_command(monitor, "system_powerdown")

            @staticmethod
            def pss():
                return process_pss_kib(proc.pid)

        lines, buf, timed_out = [], b"", False
        fd = proc.stdout.fileno()
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                proc.kill()
                break
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                t = time.monotonic() - start
                lines.append((t, line))
                if on_line:
                    on_line(t, line, Ctl)
        if buf:
            lines.append((time.monotonic() - start, buf.decode(errors="replace").rstrip("\r\n")))
        rc = proc.wait()
        return Boot(lines=lines, returncode=rc, duration=time.monotonic() - start,
                    timed_out=timed_out)
    finally:
        if vfsd:
            vfsd.terminate()
            try:
                vfsd.wait(5)
            except subprocess.TimeoutExpired:
                vfsd.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def process_pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
