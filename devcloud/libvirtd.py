"""A private, real libvirtd (+ virtlogd) without systemd: the development
cloud's, and the real-VM tests' and benchmarks' (one implementation).

The daemons are started by hand, as root, inside a mount namespace of their
own (``unshare --mount --propagation private``) where every path libvirt
hard-codes for a privileged daemon is private:

* ``/etc/libvirt`` is a bind mount of our own config dir (``libvirtd.conf``,
  ``qemu.conf``, ``virtlogd.conf``; persistent domain XML under ``qemu/``);
* ``/run``, ``/var/lib``, ``/var/log`` and ``/var/cache`` are overlays whose
  upper layer is in our work dir, with an *opaque* ``libvirt/`` directory:
  libvirt's state, domain logs and capabilities cache go to our work dir,
  a host libvirt's files (if any) are invisible, and nothing, not even an
  empty mount point, is created on the host.

The client sockets are outside all of that (``unix_sock_dir`` in our work
dir), so ``virsh``/libvirt-python/nova-compute on the host reach this daemon
with ``qemu:///system?socket=...``; a system libvirtd, if one runs, is never
touched.

libvirt 9.0 resolves all of its privileged paths at compile time (there is
no ``--statedir``; only ``libvirtd --config/--pid-file``, ``unix_sock_dir``
and the log outputs can be moved), hence the namespace.

``qemu.conf``: QEMU runs as root (no ``libvirt-qemu`` user without
libvirt-daemon-system), no security driver, no cgroups (no systemd; a
cgroup left behind would be a host change), no per-domain mount namespace
(so every QEMU and virtiofsd stays in *our* namespace: stopping means
killing the processes of one namespace). TCG only: domains are
``type='qemu'`` (KVM here is a nested hypervisor that stock kernels fail
under; see NOTES).

Two lifetimes, one mechanism:

* **owned** (tests, benchmarks: ``Libvirtd()``, ``with Libvirtd() as lv``):
  a temporary work dir; the wrapper shell also watches the owning process,
  so a test run killed without calling :meth:`stop` still takes its
  daemons and QEMUs with it. :meth:`stop` destroys and undefines every
  domain, stops the daemons and removes the work dir.
* **persistent** (the development cloud: ``Libvirtd(STATE/libvirt,
  persistent=True)``): the daemons outlive the command that started them
  (``devcloud up`` returns) and are found again through the wrapper's pid
  file; :meth:`stop` leaves the work dir (domain XML, logs) for the next
  start.

Either way the wrapper shell stays in the namespace: when libvirtd exits (or
the owner dies) it terminates, then kills, every other process of the
namespace (domains' QEMUs, virtiofsd, virtlogd); the mounts disappear with
the namespace. :meth:`stop` SIGTERMs libvirtd, waits for the namespace to be
empty and kills what outlasts the wrapper: no process, socket or mount is
left.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

# Paths a privileged libvirt 9.0 uses (compile-time): each gets a private
# "libvirt" directory through an overlay of its parent.
OVERLAID = ("/run", "/var/lib", "/var/log", "/var/cache")
PACKAGES = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients")
TOOLS = ("libvirtd", "virtlogd", "virsh", "unshare", "qemu-system-x86_64")
MAX_SOCKET_PATH = 100           # AF_UNIX: 107 bytes with the terminating NUL

# $1 work dir, $2 owner pid ("" = persistent: the daemons outlive whoever started them),
# $3 host name in a private UTS namespace ("" = the machine's)
WRAPPER = r"""
set -e
W=$1; OWNER=$2
if [ -n "${{3:-}}" ]; then hostname "$3"; fi
i=0
for d in {overlaid}; do
    i=$((i+1))
    o="lowerdir=$d,upperdir=$W/ovl/$i/upper,workdir=$W/ovl/$i/work"
    mount -t overlay d2v-libvirt-$i -o "$o" "$d"
done
mount --bind "$W/etc" /etc/libvirt
# libvirt 9.0 resolves its compile-time QEMU user before reading qemu.conf
[ -f "$W/passwd" ] && mount --bind "$W/passwd" /etc/passwd
[ -f "$W/group" ] && mount --bind "$W/group" /etc/group
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt
virtlogd -d -f "$W/etc/virtlogd.conf" -p "$W/virtlogd.pid"
libvirtd -f "$W/etc/libvirtd.conf" -p "$W/libvirtd.pid" </dev/null >>"$W/libvirtd.out" 2>&1 &
LPID=$!
echo "$LPID" >"$W/libvirtd.child"
set +e
if [ -n "$OWNER" ]; then
    while kill -0 "$OWNER" 2>/dev/null && kill -0 "$LPID" 2>/dev/null; do sleep 0.5; done
    kill -TERM "$LPID" 2>/dev/null
else
    wait "$LPID"
fi
me=$(readlink /proc/$$/ns/mnt)
others() {{
    for p in /proc/[0-9]*; do
        pid=${{p#/proc/}}
        [ "$pid" = "$$" ] && continue
        [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$me" ] && echo "$pid"
    done
}}
for sig in TERM TERM TERM TERM TERM TERM KILL KILL KILL KILL; do
    others >"$W/ns.pids"     # in this shell: no subshell of ours gets listed
    pids=$(cat "$W/ns.pids")
    [ -z "$pids" ] && break
    kill -$sig $pids 2>/dev/null
    sleep 0.5
done
wait
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
log_filters = "1:qemu 1:libvirt 4:object 4:json 4:event 4:util 4:rpc"
log_outputs = "{log_level}:file:{log}"
"""

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


def missing_tools():
    return [t for t in TOOLS if not shutil.which(t)]


class LibvirtdError(RuntimeError):
    pass


class Libvirtd:
    """One private libvirtd. Owned (default): ``with Libvirtd() as lv:``;
    persistent: ``Libvirtd(workdir, persistent=True)``, ``start(wait=False)``
    then ``wait_ready()``."""

    def __init__(self, workdir=None, debug=False, persistent=False, hostname=None):
        if persistent and not workdir:
            raise ValueError("a persistent libvirtd needs its work dir")
        self.persistent = persistent
        # another host name (a UTS namespace): a second compute host on this machine
        self.hostname = hostname
        # unix socket paths are limited to 107 bytes: keep the dir short.
        self.workdir = os.path.abspath(workdir) if workdir else None
        self.debug = debug
        self.proc = None                # the wrapper, when this object started it
        self._conn = None
        self.stragglers = {}            # pid -> command line of what stop() had to kill
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="d2v-lv-", dir="/tmp")
        self.sock_dir = os.path.join(self.workdir, "sock")
        self.socket = os.path.join(self.sock_dir, "libvirt-sock")
        self.uri = f"qemu:///system?socket={self.socket}"

    # -- paths -------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    @property
    def pidfile(self):
        """The wrapper shell's PID (the namespace's first process)."""
        return self.path("wrapper.pid")

    @property
    def libvirtd_log(self):
        return self.path("libvirtd.log")

    def domain_log(self, name):
        """libvirt's per-domain log (QEMU's command line and stderr): the
        file is in the overlay's upper layer of /var/log."""
        i = OVERLAID.index("/var/log") + 1
        return self.path("ovl", str(i), "upper", "libvirt", "qemu", f"{name}.log")

    # -- configuration -----------------------------------------------------
    def write_config(self):
        etc = self.path("etc")
        os.makedirs(os.path.join(etc, "qemu"), exist_ok=True)
        os.makedirs(self.sock_dir, mode=0o700, exist_ok=True)
        for i, _ in enumerate(OVERLAID, 1):
            upper = self.path("ovl", str(i), "upper", "libvirt")
            os.makedirs(upper, exist_ok=True)
            os.makedirs(self.path("ovl", str(i), "work"), exist_ok=True)
            # opaque: whatever a host libvirt keeps there stays invisible
            os.setxattr(upper, "trusted.overlay.opaque", b"y")
        self._write_passwd()
        files = {"libvirtd.conf": LIBVIRTD_CONF.format(sock=self.sock_dir, log=self.libvirtd_log,
                                                       log_level=1 if self.debug else 3),
                 "qemu.conf": QEMU_CONF,
                 "virtlogd.conf": VIRTLOGD_CONF.format(log=self.path("virtlogd.log"))}
        for name, text in files.items():
            with open(os.path.join(etc, name), "w") as f:
                f.write(text)

    def _write_passwd(self):
        """libvirt 9.0 (Debian) looks up its built-in QEMU user and group
        ``libvirt-qemu`` before it reads ``user``/``group`` from qemu.conf,
        and fails without them; libvirt-daemon-system would create them (and
        start a system libvirtd). Inside the namespace only, /etc/passwd and
        /etc/group get them."""
        import grp
        import pwd
        for db, getter, line in (
                ("passwd", pwd.getpwnam,
                 "libvirt-qemu:x:64055:64055:docker2vm private libvirtd:/nonexistent:"
                 "/usr/sbin/nologin"),
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

    # -- state -------------------------------------------------------------
    def pid(self):
        """The running wrapper's PID, or None (a zombie child is reaped)."""
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def running(self):
        return self.pid() is not None and os.path.exists(self.socket)

    # -- lifecycle ---------------------------------------------------------
    def start(self, wait=True, timeout=120):
        """Start the daemons (nothing when this work dir's already run);
        with ``wait`` return once libvirtd answers (see :meth:`wait_ready`)."""
        if not self.pid():
            missing = missing_tools()
            if missing:
                raise LibvirtdError("missing: %s (Debian: %s; see bindep.txt)"
                                    % (", ".join(missing), " ".join(PACKAGES)))
            if os.geteuid() != 0:
                raise LibvirtdError("a privileged libvirtd needs root")
            if len(self.socket) > MAX_SOCKET_PATH:
                raise LibvirtdError(f"libvirt socket path too long for AF_UNIX: {self.socket} "
                                    "(use a shorter work dir)")
            self.write_config()
            for stale in (self.socket, self.path("libvirtd.child")):
                try:
                    os.unlink(stale)
                except FileNotFoundError:
                    pass
            out = open(self.path("wrapper.out"), "ab")
            self.proc = subprocess.Popen(
                ["unshare", "--mount"] + (["--uts"] if self.hostname else [])
                + ["--propagation", "private", "--", "sh", "-c", WRAPPER, "d2v-libvirtd",
                   self.workdir, "" if self.persistent else str(os.getpid()),
                   self.hostname or ""],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
            out.close()
            with open(self.pidfile, "w") as f:
                f.write(str(self.proc.pid))
        if wait:
            try:
                self.wait_ready(timeout)
            except LibvirtdError:
                if not self.persistent:
                    self.stop()
                raise
        return self

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.pid():
                raise LibvirtdError("libvirtd did not start: " + self.tail())
            if os.path.exists(self.socket):
                try:
                    self.virsh("version", timeout=30)
                    return
                except subprocess.CalledProcessError as exc:
                    last = exc.stderr
                except subprocess.TimeoutExpired as exc:
                    last = str(exc)
            time.sleep(0.2)
        raise LibvirtdError(f"libvirtd not ready after {timeout}s: {last} {self.tail()}")

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

    # -- clients -----------------------------------------------------------
    def virsh(self, *args, timeout=120, check=True):
        return subprocess.run(["virsh", "-q", "-c", self.uri, *args], check=check,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def connect(self):
        """A libvirt-python connection (one shared per daemon)."""
        import libvirt
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    def _close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:    # noqa: BLE001 - the daemon may be gone already
                pass
            self._conn = None

    # -- the namespace ------------------------------------------------------
    def namespace_id(self):
        """The daemons' mount namespace (``mnt:[inode]``), or None."""
        pid = self.pid()
        if not pid:
            return None
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return None
        if ns == os.readlink("/proc/self/ns/mnt"):
            return None        # not yet unshared: never list the host's processes
        return ns

    def namespace_pids(self, ns=None):
        """Every process in the daemons' mount namespace (wrapper included)."""
        ns = ns or self.namespace_id()
        if ns is None:
            return []
        pids = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if os.readlink(f"/proc/{p}/ns/mnt") == ns:
                        pids.append(int(p))
                except OSError:
                    pass
        return pids

    def destroy_all(self):
        """Destroy and undefine every domain (running or defined)."""
        if not self.pid():
            return
        try:
            for dom in self.connect().listAllDomains():
                try:
                    if dom.isActive():
                        dom.destroy()
                except Exception:      # noqa: BLE001 - best effort, stop() kills the rest
                    pass
                try:
                    dom.undefine()
                except Exception:      # noqa: BLE001
                    pass
        except Exception:              # noqa: BLE001
            pass

    def stop(self, timeout=60):
        """Stop the daemons and every process of their namespace. Owned: the
        domains are destroyed and undefined first and the work dir removed;
        persistent: the work dir stays (the caller destroys domains)."""
        wrapper = self.pid()
        if wrapper:
            if not self.persistent:
                self.destroy_all()
            self._close()
            ns = self.namespace_id()
            try:
                with open(self.path("libvirtd.child")) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(wrapper):
                time.sleep(0.2)
            # whatever the wrapper left (it gives up after ~5 s; a QEMU still
            # flushing can outlast that): kill it, and wait until it is gone
            deadline = time.monotonic() + 30
            while ns and time.monotonic() < deadline:
                pids = [p for p in self.namespace_pids(ns) if _alive(p)]
                if not pids:
                    break
                for pid in pids:
                    if pid not in self.stragglers:
                        self.stragglers[pid] = _cmdline(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.2)
            if self.proc is not None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        self._close()
        self.proc = None
        if self.persistent:
            try:
                os.unlink(self.pidfile)
            except FileNotFoundError:
                pass
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _alive(pid):
    """``pid`` exists and is not a zombie (a zombie child of ours is reaped)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


if __name__ == "__main__":   # by hand: start one, print its URI, stop on Enter
    with Libvirtd(debug=True) as lv:
        print(lv.uri)
        print(lv.virsh("version").stdout)
        input("Enter stops it> ")
