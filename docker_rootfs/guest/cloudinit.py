"""Cloud-config for a stock cloud image used as ``base_vm_image``.

The original proposal's approach, for images with cloud-init (the user data
of a Nova config drive, ``openstack/*/user_data``): ``write_files`` puts the
same guest files as the docker2vm init reads under /var/lib/docker2vm and a
small Python launcher (cloud images carry python3 for cloud-init itself) in
cloud-init's per-boot scripts directory, so it runs at the end of every
boot (final stage) and the container starts again after a stop/start. The
launcher mounts the root (disk by serial, or 9p/virtiofs share by tag with
a tmpfs overlay), sets up /proc, /sys, /dev, binds /etc/hosts,
/etc/resolv.conf, /etc/hostname, resolves the user in the container's own
passwd/group, runs the entrypoint with its env, workdir and user, its
stdout and stderr on /dev/console (not through cloud-init's
``tee``/journald, which prefix and reorder lines), prints
``docker2vm: exit status N`` there and powers off. Under systemd the
per-boot script re-runs itself as a transient unit (``systemd-run``,
``KillMode=mixed``) so that a stop (power button -> poweroff) reaches the
launcher, which sends the image's StopSignal and SIGKILLs the entrypoint's
process group after the stop timeout, as the docker2vm init does; without
systemd it runs directly. ``bootcmd`` stops the
serial getty each boot, before it starts, so no login prompt lands in the
middle of the container's output. Booted in tests/guest/test_cloudinit_vm.py
on a Debian 12 image built by tests/guest/cloudimage.py.

The result is JSON, which is valid YAML: ``#cloud-config`` + JSON.
"""

import base64
import json

from docker_rootfs.guest import contract

GUEST_DIR = "/var/lib/docker2vm"
# run by cloud-init's scripts-per-boot module (write_files runs once per
# instance; the file stays)
LAUNCHER_PATH = "/var/lib/cloud/scripts/per-boot/docker2vm"
STOP_SERIAL_GETTY = ("if [ -d /run/systemd/system ]; then "
                     "systemctl stop --no-block 'serial-getty@*.service'; fi")

LAUNCHER = r'''#!/usr/bin/env python3
import os, signal, subprocess, sys, threading
D = "/var/lib/docker2vm/docker2vm"
R = "/mnt/docker2vm/root"
class Fail(Exception):
    pass
def rd(n, d=""):
    try:
        return open(os.path.join(D, n), "rb").read()
    except OSError:
        return d.encode()
def sh(*a):
    r = subprocess.run(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode:
        raise Fail("%s: %s" % (" ".join(a), r.stderr.decode(errors="replace").strip()), 125)
def console(msg):
    try:
        with open("/dev/console", "w") as f:
            f.write(msg + "\n")
    except OSError:
        print(msg, flush=True)
def mount_root():
    spec = rd("rootfs").decode().strip().split(":")
    kind, ident, mode = spec[0], spec[1], (spec[2] if len(spec) > 2 else "overlay")
    os.makedirs(R, exist_ok=True)
    if kind == "disk":
        dev = None
        for b in sorted(os.listdir("/sys/block")):
            for s in ("/sys/block/%s/serial" % b, "/sys/block/%s/device/serial" % b):
                if os.path.exists(s) and open(s).read().strip() == ident:
                    dev = "/dev/" + b
        if not dev:
            raise Fail("no disk with serial " + ident, 125)
        part = dev + "1" if os.path.exists(dev + "1") else dev
        sh("mount", part, R)
        if part == dev:
            subprocess.run(["resize2fs", dev], capture_output=True)
    else:
        low = "/mnt/docker2vm/lower"
        os.makedirs(low, exist_ok=True)
        if kind == "9p":
            sh("mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144", ident, low)
        else:
            sh("mount", "-t", "virtiofs", ident, low)
        if mode == "rw":
            sh("mount", "--bind", low, R)
        else:
            rw = "/mnt/docker2vm/rw"
            os.makedirs(rw, exist_ok=True)
            sh("mount", "-t", "tmpfs", "tmpfs", rw)
            os.makedirs(rw + "/upper"); os.makedirs(rw + "/work")
            sh("mount", "-t", "overlay", "-o",
               "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (low, rw, rw), "overlay", R)
    for d, t, o in (("proc", "proc", ""), ("sys", "sysfs", "ro"), ("dev", "devtmpfs", ""),
                    ("dev/pts", "devpts", "newinstance,ptmxmode=0666"), ("dev/shm", "tmpfs", "mode=1777")):
        os.makedirs(os.path.join(R, d), exist_ok=True)
        sh("mount", "-t", t, *(["-o", o] if o else []), t, os.path.join(R, d))
    for f in ("hosts", "resolv.conf", "hostname"):
        dst = os.path.join(R, "etc", f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(dst):
            os.unlink(dst)
        if not os.path.exists(dst):
            open(dst, "w").close()
        if os.path.exists("/etc/" + f):
            sh("mount", "--bind", "/etc/" + f, dst)
def table(path):
    try:
        return [l.split(":") for l in open(os.path.join(R, path.lstrip("/"))).read().splitlines()]
    except OSError:
        return []
def resolve_user():
    u, _, g = rd("user").decode().strip().partition(":")
    u = u or "0"
    uid, gid, home, name, sg = None, 0, "/", None, []
    for e in table("/etc/passwd"):
        if len(e) >= 4 and ((u.isdigit() and e[2] == u) or e[0] == u):
            name, uid, gid, home = e[0], int(e[2]), int(e[3]), (e[5] if len(e) > 5 else "") or "/"
            break
    if uid is None:
        if not u.isdigit():
            raise Fail("unable to find user " + u, 125)
        uid = int(u)
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            m = [e for e in table("/etc/group") if len(e) >= 3 and e[0] == g]
            if not m:
                raise Fail("unable to find group " + g, 125)
            gid = int(m[0][2])
    elif name:
        sg = [int(e[2]) for e in table("/etc/group") if len(e) >= 4 and name in e[3].split(",")]
    return uid, gid, sg, home
def run():
    mount_root()
    uid, gid, sg, home = resolve_user()
    argv = [a.decode() for a in rd("argv").split(b"\0")[:-1]]
    if not argv:
        raise Fail("no command to run (empty Entrypoint and Cmd)", 127)
    env = dict(e.decode().split("=", 1) for e in rd("env").split(b"\0")[:-1])
    env.setdefault("HOME", home)
    wd = rd("workdir", "/").decode().strip() or "/"
    stopsig = int(rd("stop_signal", "15") or 15)
    def child():
        os.chroot(R); os.chdir("/")
        os.makedirs(wd, exist_ok=True)
        os.setgroups(sg); os.setgid(gid); os.setuid(uid)
        os.chdir(wd)
        os.setsid()
    # stdout and stderr are pipes (as with docker run without -t, and as
    # under the docker2vm init), copied to the console by two threads: not
    # through cloud-init's tee and journald.
    try:
        out = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        out = 1
    try:
        p = subprocess.Popen(argv, env=env, preexec_fn=child, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise Fail("exec %s: %s" % (argv[0], e.strerror), 127)
    except OSError as e:
        raise Fail("exec %s: %s" % (argv[0], e.strerror), 126)
    except subprocess.SubprocessError:
        raise Fail("cannot chroot, chdir %s or become uid %d gid %d" % (wd, uid, gid), 126)
    def relay(src):
        while True:
            b = os.read(src.fileno(), 65536)
            if not b:
                return
            while b:
                b = b[os.write(out, b):]
    relays = [threading.Thread(target=relay, args=(f,), daemon=True) for f in (p.stdout, p.stderr)]
    for t in relays:
        t.start()
    stop_timeout = int(rd("stop_timeout", "10") or 10)
    def kill():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    def stop(n, f):
        # SIGTERM = stop (systemd stopping the unit, e.g. after the power
        # button): the image's StopSignal, SIGKILL after the stop timeout.
        if n != signal.SIGTERM:
            p.send_signal(n)
            return
        p.send_signal(stopsig)
        if not stopping:
            stopping.append(threading.Timer(stop_timeout, kill))
            stopping[0].daemon = True
            stopping[0].start()
    stopping = []
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    rc = p.wait()
    for t in stopping:
        t.cancel()
    # from here on a stop only waits for the exit line (the process is gone)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for t in relays:        # the rest of the output, before the exit line
        t.join(2)
    return rc if rc >= 0 else 128 - rc
def as_unit():
    # Under systemd, run as our own transient service rather than inside
    # cloud-final.service (KillMode=process): a stop (power button ->
    # poweroff) then sends SIGTERM to this launcher only (KillMode=mixed),
    # which turns it into the StopSignal and the grace period; SIGKILL to
    # what is left after TimeoutStopSec. --no-block: cloud-init goes on.
    if os.environ.get("DOCKER2VM_UNIT") or not os.path.exists("/run/systemd/system"):
        return False
    t = int(rd("stop_timeout", "10") or 10)
    try:
        r = subprocess.run(["systemd-run", "--quiet", "--no-block", "--collect",
                            "--unit=docker2vm-container", "--setenv=DOCKER2VM_UNIT=1",
                            "--property=KillMode=mixed", "--property=KillSignal=SIGTERM",
                            "--property=TimeoutStopSec=%d" % (t + 5),
                            sys.executable, os.path.realpath(sys.argv[0])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError:
        return False
    if r.returncode:
        console("docker2vm: systemd-run failed (%s), running in cloud-init" %
                r.stderr.decode(errors="replace").strip())
        return False
    return True
if as_unit():
    sys.exit(0)
ran = False
try:
    code = run()
    ran = True
except Fail as e:
    console("docker2vm: error: " + e.args[0])
    code = e.args[1]
except Exception as e:
    console("docker2vm: error: %s: %s" % (type(e).__name__, e))
    code = 125
console("docker2vm: exit status %d" % code)
os.sync()
if os.path.exists("/run/systemd/system"):
    # Already shutting down (stopped by the power button): nothing to do.
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True).stdout
    if state.strip() != b"stopping":
        subprocess.run(["systemctl", "poweroff"], capture_output=True)
else:
    subprocess.run(["poweroff"])
sys.exit(0 if ran else 1)
'''


def render_cloud_config(config, hostname, metadata=None, rootfs=None, stop_timeout=None):
    """``#cloud-config`` text (bytes) for a stock cloud image.

    Same inputs as :func:`docker_rootfs.guest.contract.render_guest_files`;
    the same ``docker2vm/*`` files are written under /var/lib/docker2vm.
    """
    files = contract.render_guest_files(config, hostname, metadata, rootfs, stop_timeout)
    write_files = [{
        "path": f"{GUEST_DIR}/{path}",
        "encoding": "b64",
        "content": base64.b64encode(data).decode(),
        "permissions": "0600",
    } for path, data in sorted(files.items())]
    write_files.append({"path": LAUNCHER_PATH, "permissions": "0700", "content": LAUNCHER})
    doc = {
        "hostname": hostname,
        "write_files": write_files,
        # Every boot (bootcmd), before the gettys start: no login prompt on
        # the serial console, which carries the container's output.
        "bootcmd": [STOP_SERIAL_GETTY],
    }
    return ("#cloud-config\n" + json.dumps(doc, indent=1) + "\n").encode()
