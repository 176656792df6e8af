"""Cloud-config for a stock cloud image used as ``base_vm_image``.

The original proposal's approach: cloud-init's ``runcmd`` mounts the
container root and chroots into the entrypoint. Here runcmd starts a small
Python launcher (cloud images carry python3 for cloud-init itself) that
reads the same guest files as the docker2vm init (written by
``write_files``), mounts the root (disk by serial, or 9p/virtiofs share by
tag with a tmpfs overlay), sets up /proc, /sys, /dev, resolves the user in
the container's own passwd/group, runs the entrypoint with its env, workdir
and user, prints ``docker2vm: exit status N`` on the console and powers off.

The result is JSON, which is valid YAML: ``#cloud-config`` + JSON.
"""

import base64
import json

from docker_rootfs.guest import contract

GUEST_DIR = "/var/lib/docker2vm"

LAUNCHER = r'''
import os, signal, subprocess, sys, time
D = "/var/lib/docker2vm/docker2vm"
R = "/mnt/docker2vm/root"
def rd(n, d=""):
    try:
        return open(os.path.join(D, n), "rb").read()
    except OSError:
        return d.encode()
def sh(*a):
    subprocess.run(a, check=True)
def console(msg):
    for p in ("/dev/console", "/dev/ttyS0"):
        try:
            with open(p, "w") as f:
                f.write(msg + "\n")
        except OSError:
            pass
    print(msg, flush=True)
def finish(code):
    console("docker2vm: exit status %d" % code)
    os.sync()
    subprocess.run(["systemctl", "poweroff"]) if os.path.exists("/run/systemd/system") else subprocess.run(["poweroff"])
    sys.exit(code)
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
        console("docker2vm: error: no disk with serial " + ident); finish(125)
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
        sh("mount", "-t", "overlay", "-o", "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (low, rw, rw), "overlay", R)
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
user = rd("user").decode().strip()
u, _, g = user.partition(":")
u = u or "0"
uid, gid, home, name, sg = None, 0, "/", None, []
for e in table("/etc/passwd"):
    if len(e) >= 4 and ((u.isdigit() and e[2] == u) or e[0] == u):
        name, uid, gid, home = e[0], int(e[2]), int(e[3]), (e[5] if len(e) > 5 else "") or "/"
        break
if uid is None:
    if not u.isdigit():
        console("docker2vm: error: unable to find user " + u); finish(125)
    uid = int(u)
if g:
    if g.isdigit():
        gid = int(g)
    else:
        m = [e for e in table("/etc/group") if len(e) >= 3 and e[0] == g]
        if not m:
            console("docker2vm: error: unable to find group " + g); finish(125)
        gid = int(m[0][2])
elif name:
    sg = [int(e[2]) for e in table("/etc/group") if len(e) >= 4 and name in e[3].split(",")]
argv = [a.decode() for a in rd("argv").split(b"\0")[:-1]]
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
p = subprocess.Popen(argv, env=env, preexec_fn=child, stdin=subprocess.DEVNULL)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, lambda n, f: p.send_signal(stopsig if n == signal.SIGTERM else n))
rc = p.wait()
finish(rc if rc >= 0 else 128 - rc)
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
    write_files.append({"path": f"{GUEST_DIR}/launch.py", "permissions": "0700",
                        "content": LAUNCHER.lstrip()})
    doc = {
        "hostname": hostname,
        "write_files": write_files,
        "runcmd": [["python3", f"{GUEST_DIR}/launch.py"]],
    }
    return ("#cloud-config\n" + json.dumps(doc, indent=1) + "\n").encode()
