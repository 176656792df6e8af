"""The cloud's own libvirtd + virtlogd (no systemd; a private mount namespace).

Same technique as tests/nova/libvirtd.py (read it for the why): libvirt 9.0
hard-codes its privileged paths at compile time, so the daemons run inside
``unshare --mount --propagation private`` where ``/run``, ``/var/lib``,
``/var/log`` and ``/var/cache`` are overlays whose upper layer (an opaque
``libvirt/`` directory) is in the cloud's state dir and ``/etc/libvirt`` is
a bind mount of our config. A system libvirtd or the test harness's private
one is never touched; nothing (not even an empty mount point) is created
outside the state dir. The client socket is ``STATE/libvirt/sock/
libvirt-sock``; nova-compute connects with ``qemu:///system?socket=...``.

Unlike the test harness, the daemons outlive the command that started them
(``devcloud up`` returns): the wrapper shell waits for libvirtd only, then
terminates every other process of the namespace (QEMUs, virtlogd).
``stop`` SIGTERMs libvirtd (domains are destroyed by Nova or by the
namespace kill), then kills whatever is left in the namespace; the mounts
disappear with the namespace.
"""

import os
import signal
import subprocess
import time

OVERLAID = ("/run", "/var/lib", "/var/log", "/var/cache")

WRAPPER = r"""
set -e
W=$1
i=0
for d in {overlaid}; do
    i=$((i+1))
    mount -t overlay devcloud-libvirt-$i -o "lowerdir=$d,upperdir=$W/ovl/$i/upper,workdir=$W/ovl/$i/work" "$d"
done
mount --bind "$W/etc" /etc/libvirt
[ -f "$W/passwd" ] && mount --bind "$W/passwd" /etc/passwd
[ -f "$W/group" ] && mount --bind "$W/group" /etc/group
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt
virtlogd -d -f "$W/etc/virtlogd.conf" -p "$W/virtlogd.pid"
libvirtd -f "$W/etc/libvirtd.conf" -p "$W/libvirtd.pid" </dev/null >>"$W/libvirtd.out" 2>&1 &
LPID=$!
echo "$LPID" >"$W/libvirtd.child"
set +e
wait "$LPID"
me=$(readlink /proc/$$/ns/mnt)
others() {{
    for p in /proc/[0-9]*; do
        pid=${{p#/proc/}}
        [ "$pid" = "$$" ] && continue
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$me" ] && echo "$pid"
    done
}}
for sig in TERM TERM TERM TERM TERM TERM KILL KILL KILL KILL; do
    others >"$W/ns.pids"
    pids=$(cat "$W/ns.pids")
    [ -z "$pids" ] && break
    kill -$sig $pids 2>/dev/null
    sleep 0.5
done
exit 0
""".format(overlaid=" ".join(OVERLAID))

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
log_outputs = "3:file:{log}"
"""

# QEMU as root, no security driver, no cgroups (no systemd), no per-domain
# mount namespace: every QEMU stays in our namespace. TCG (virt_type=qemu).
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
"""

VIRTLOGD_CONF = """\
log_outputs = "3:file:{log}"
max_clients = 64
"""

TOOLS = ("libvirtd", "virtlogd", "virsh", "unshare", "qemu-system-x86_64")


class Libvirtd:
    def __init__(self, workdir):
        self.workdir = workdir
        self.sock_dir = os.path.join(workdir, "sock")
        self.socket = os.path.join(self.sock_dir, "libvirt-sock")
        self.uri = f"qemu:///system?socket={self.socket}"
        if len(self.socket) > 100:
            raise RuntimeError(f"libvirt socket path too long for AF_UNIX: {self.socket} "
                               "(set DEVCLOUD_STATE to a shorter directory)")

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def pidfile(self):
        return self.path("wrapper.pid")

    def write_config(self):
        etc = self.path("etc")
        os.makedirs(os.path.join(etc, "qemu"), exist_ok=True)
        os.makedirs(self.sock_dir, mode=0o700, exist_ok=True)
        for i, _ in enumerate(OVERLAID, 1):
            upper = self.path("ovl", str(i), "upper", "libvirt")
            os.makedirs(upper, exist_ok=True)
            os.makedirs(self.path("ovl", str(i), "work"), exist_ok=True)
            os.setxattr(upper, "trusted.overlay.opaque", b"y")
        self._write_passwd()
        files = {"libvirtd.conf": LIBVIRTD_CONF.format(sock=self.sock_dir,
                                                       log=self.path("libvirtd.log")),
                 "qemu.conf": QEMU_CONF,
                 "virtlogd.conf": VIRTLOGD_CONF.format(log=self.path("virtlogd.log"))}
        for name, text in files.items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)

    def _write_passwd(self):
        """libvirt 9.0 looks up ``libvirt-qemu`` before reading qemu.conf;
        only inside the namespace, /etc/passwd and /etc/group get it."""
        import grp
        import pwd
        for db, getter, line in (
                ("passwd", pwd.getpwnam,
                 "libvirt-qemu:x:64055:64055:devcloud libvirtd:/nonexistent:/usr/sbin/nologin"),
                ("group", grp.getgrnam, "libvirt-qemu:x:64055:")):
            try:
                getter("libvirt-qemu")
                continue
            except KeyError:
                pass
            with open(f"/etc/{db}") as f:
                text = f.read()
            if text and not text.endswith("\n"):
                text += "\n"
            with open(self.path(db), "w") as f:
                f.write(text + line + "\n")

    def pid(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def running(self):
        return self.pid() is not None and os.path.exists(self.socket)

    def start(self):
        """Start the daemons (returns at once; see wait_ready)."""
        if self.pid():
            return
        if os.geteuid() != 0:
            raise RuntimeError("the cloud's libvirtd needs root")
        self.write_config()
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass
        out = open(self.path("wrapper.out"), "ab")
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", WRAPPER,
             "devcloud-libvirtd", self.workdir],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        out.close()
        with open(self.pidfile, "w") as f:
            f.write(str(proc.pid))

    def virsh(self, *args, timeout=60, check=True):
        return subprocess.run(["virsh", "-q", "-c", self.uri, *args], check=check,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.pid():
                raise RuntimeError("libvirtd did not start: " + self.tail())
            if os.path.exists(self.socket):
                try:
                    self.virsh("version", timeout=30)
                    return
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    last = str(getattr(exc, "stderr", exc))
            time.sleep(0.2)
        raise RuntimeError(f"libvirtd not ready after {timeout}s: {last} {self.tail()}")

    def tail(self, n=3000):
        text = ""
        for name in ("wrapper.out", "libvirtd.out", "libvirtd.log", "virtlogd.log"):
            try:
                with open(self.path(name), errors="replace") as f:
                    data = f.read()
                if data.strip():
                    text += f"\n--- {name} ---\n" + data[-n:]
            except OSError:
                pass
        return text

    def namespace_pids(self):
        pid = self.pid()
        if not pid:
            return []
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return []
        if ns == os.readlink("/proc/self/ns/mnt"):
            return []          # not yet unshared: never list the host's
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if os.readlink(f"/proc/{p}/ns/mnt") == ns:
                        out.append(int(p))
                except OSError:
                    pass
        return out

    def stop(self, timeout=60):
        wrapper = self.pid()
        if not wrapper:
            return
        try:
            with open(self.path("libvirtd.child")) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(wrapper, 0)
            except ProcessLookupError:
                break
            _reap(wrapper)
            time.sleep(0.2)
        else:
            for pid in self.namespace_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
