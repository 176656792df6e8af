"""Real guests under QEMU (TCG; DOCKER2VM_TEST_KVM=1 for KVM): one boot per
semantic group, all booted up front in parallel (2 at a time), then each
test asserts on its guest's console and exit.

Inputs are built exactly as the Nova driver will: render_guest_files +
build_config_drive (label config-2), rootfs disk by serial (per-instance
qcow2 overlay on the shared base) or 9p/virtiofs share by tag.
"""

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import tempfile

import pytest

from docker_rootfs.guest import configdrive, contract, kernel, qemu
from tests.guest import images

pytestmark = [pytest.mark.vm, pytest.mark.slow]

PROBE = r"""#!/bin/sh
echo "ARGS=$*"
[ -t 1 ] && echo "STDOUT=tty" || echo "STDOUT=pipe"
echo "to-stderr" >&2
echo "PID=$$"
echo "PID1=$(cat /proc/1/comm)"
echo "ID=$(id)"
echo "PWD=$(pwd)"
echo "HOME=$HOME"
echo "PATH=$PATH"
echo "FOO=$FOO"
echo "BAZ=$BAZ"
echo "HOSTNAME_ENV=$HOSTNAME"
echo "UNAME_N=$(hostname)"
echo "ETC_HOSTNAME=$(cat /etc/hostname)"
echo "HOSTS=$(grep -c "$(hostname)" /etc/hosts)"
echo "RESOLV=$(grep -c nameserver /etc/resolv.conf)"
for m in /proc /sys /dev /dev/pts /dev/shm /tmp /run; do
    echo "MOUNT $m $(awk -v m=$m '$2 == m {print $3}' /proc/mounts)"
done
for n in /sys/class/net/eth*; do
    n=${n##*/}; echo "NET $n $(ip -4 addr show $n | awk '/inet /{print $2}')"
done
echo "ROUTE=$(ip route | grep -c default)"
# an orphan that exits: PID 1 must reap it
sh -c 'sleep 0.2 & exit 0'
sleep 1
echo "ZOMBIES=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)"
echo "DISK=$(df -m / | awk 'NR==2 {print $2}')"
echo written >/data/probe-written && echo "WRITE=$(cat /data/probe-written)"
exit ${EXIT:-0}
"""

STOPPER = r"""#!/bin/sh
trap 'echo "got-$SIG_NAME"; [ "$IGNORE" = 1 ] || exit 0' $SIG_NAME
echo "USER=$(id -u):$(id -g):$(id -G)" "HOME=$HOME"
echo hello >/data/written-by-container
echo "WRITE=$(cat /data/written-by-container)"
echo ready
while :; do sleep 1; done
"""


def _guest_specs():
    return {
        # Entrypoint+Cmd (exec form), Cmd and Env overridden by server metadata,
        # Env without PATH, user by name with supplementary groups, missing
        # WorkingDir, hostname/hosts/resolv, mounts, DHCP, PID 1, reaping,
        # disk (config drive on an IDE cdrom as stock Nova), growing, exit code.
        "disk": dict(
            files={"/bin/probe": PROBE},
            config={"entrypoint": ["/bin/probe", "from-entrypoint"], "cmd": ["from-image-cmd"],
                    "env": ["FOO=bar", "EXIT=7"], "user": "app", "workingdir": "/work/dir"},
            meta={"docker_cmd": json.dumps(["from-metadata", "two words"]),
                  "docker_env": json.dumps({"BAZ": "qux"})},
            delivery="disk", grow_mib=512, config_bus="ide"),
        # Shell-form Cmd only, uid:gid numeric, two NICs.
        "shell": dict(
            files={"/bin/probe": PROBE},
            config={"cmd": ["/bin/sh", "-c", "echo shell-form $FOO; exec /bin/probe"],
                    "env": ["FOO=sh", "PATH=/bin"], "user": "1000:3000"},
            meta={}, delivery="disk", nics=2),
        # Custom StopSignal ignored by the entrypoint: power button -> signal,
        # then SIGKILL after the stop timeout.
        "stop-kill": dict(
            files={"/bin/stopper": STOPPER},
            config={"entrypoint": ["/bin/stopper"], "env": ["SIG_NAME=USR1", "IGNORE=1"],
                    "stopsignal": "SIGUSR1"},
            meta={}, delivery="disk", stop_timeout=2, powerdown=True),
        # 9p share + tmpfs overlay; default SIGTERM handled gracefully; name:group.
        # 9p needs the generic kernel (the default cloud kernel has no 9p).
        "9p": dict(
            files={"/bin/stopper": STOPPER},
            config={"entrypoint": ["/bin/stopper"], "env": ["SIG_NAME=TERM"],
                    "user": "app:other"},
            meta={}, delivery="9p", powerdown=True, kernel=kernel.GENERIC_PACKAGE),
        # The same share with the default (cloud) kernel: a clear error, 125.
        "9p-cloud": dict(
            files={"/bin/stopper": STOPPER},
            config={"entrypoint": ["/bin/stopper"]}, meta={}, delivery="9p"),
        # virtiofs share + overlay; numeric uid absent from passwd.
        "virtiofs": dict(
            files={"/bin/stopper": STOPPER},
            config={"entrypoint": ["/bin/stopper"], "env": ["SIG_NAME=TERM"], "user": "5000"},
            meta={}, delivery="virtiofs", powerdown=True),
        # A vfat config drive (Nova's config_drive_format=vfat) on a virtio disk.
        "vfat": dict(
            files={}, config={"cmd": ["/bin/sh", "-c", "echo vfat-config-drive $FOO"],
                              "env": ["FOO=read"]},
            meta={}, delivery="disk", config_format="vfat"),
        # Setup failures: a clear line, 125, and the VM still powers off.
        "no-config-drive": dict(
            files={}, config={"cmd": ["/bin/true"]}, meta={}, delivery="disk",
            no_config_drive=True),
        "unknown-user": dict(
            files={}, config={"cmd": ["/bin/true"], "user": "nosuchuser"}, meta={},
            delivery="disk"),
        # An entrypoint that does not exist: 127, still powers off.
        "notfound": dict(
            files={}, config={"cmd": ["no-such-command"]}, meta={}, delivery="disk"),
    }


def _run_guest(name, spec, base, workdir):
    archive = images.build_archive(name, spec["files"], spec["config"])
    config = images.open_config(archive)
    result = {"name": name}
    if spec["delivery"] == "disk":
        shared = images.rootfs_disk(archive)
        before = hashlib.sha256(shared.read_bytes()).hexdigest()
        disk = images.instance_disk(shared, os.path.join(workdir, "disk.qcow2"),
                                    spec.get("grow_mib"))
        delivery = contract.RootfsDelivery.disk("d2v-root")
        machine_kw = {"disks": [(str(disk), "d2v-root", "qcow2")]}
        result["shared_unchanged"] = lambda: hashlib.sha256(shared.read_bytes()).hexdigest() == before
    else:
        tree = images.rootfs_dir(archive, os.path.join(workdir, "rootfs"))
        before = images.tree_digest(tree)
        tag = "d2vroot"
        delivery = (contract.RootfsDelivery.share_9p(tag) if spec["delivery"] == "9p"
                    else contract.RootfsDelivery.virtiofs(tag))
        machine_kw = {"share": (spec["delivery"], str(tree), tag)}
        result["shared_unchanged"] = lambda: images.tree_digest(tree) == before
    files = contract.render_guest_files(config, f"guest-{name}", spec["meta"], delivery,
                                        stop_timeout=spec.get("stop_timeout", 10))
    cfg = configdrive.build_config_drive(os.path.join(workdir, "config.iso"), files,
                                         f"guest-{name}", meta=spec["meta"],
                                         fmt=spec.get("config_format", "iso9660"))
    if spec.get("no_config_drive"):
        cfg = ""
    machine = qemu.Machine(kernel=base.vmlinux, initrd=base.initrd, cmdline=base.cmdline,
                           config_drive=cfg, config_bus=spec.get("config_bus", "virtio"),
                           nics=spec.get("nics", 1), **machine_kw)
    state = {}

    def on_line(t, line, ctl):
        if spec.get("powerdown") and line == "ready" and "pressed" not in state:
            state["pressed"] = t
            ctl.powerdown()
    boot = qemu.boot(machine, timeout=240, on_line=on_line)
    result.update(boot=boot, pressed=state.get("pressed"))
    return result


@pytest.fixture(scope="module")
def guests():
    for tool in ("qemu-system-x86_64", "buildah", "genisoimage", "gcc"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (bindep.txt)", pytrace=False)
    specs = _guest_specs()
    bases = {k: images.base_image(k) for k in {s.get("kernel") for s in specs.values()}}
    # Build images serially (buildah storage), boot in parallel.
    for name, spec in specs.items():
        archive = images.build_archive(name, spec["files"], spec["config"])
        if spec["delivery"] == "disk":
            images.rootfs_disk(archive)
        else:
            images.flatten_tar(archive)
    top = tempfile.mkdtemp(prefix="d2v-guests-")
    workers = max(1, min(len(specs), os.cpu_count() or 1))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futs = {}
            for name, spec in specs.items():
                wd = os.path.join(top, name)
                os.makedirs(wd)
                futs[name] = pool.submit(_run_guest, name, spec, bases[spec.get("kernel")], wd)
            results = {name: f.result() for name, f in futs.items()}
        # share digests must be taken before cleanup
        for r in results.values():
            r["unchanged"] = r.pop("shared_unchanged")()
        yield results
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _check_off(boot):
    assert not boot.timed_out, boot.text
    assert boot.returncode == 0, boot.text   # guest powered itself off: SHUTOFF


def test_disk_semantics(guests):
    r = guests["disk"]
    boot = r["boot"]
    _check_off(boot)
    kv = images.console_kv(boot)
    assert kv["ARGS"] == "from-entrypoint from-metadata two words"
    assert kv["STDOUT"] == "pipe"       # as docker run without -t
    assert "to-stderr" in boot.text
    assert kv["PID"] != "1" and kv["PID1"] == "d2vinit"
    assert kv["ID"] == "uid=1000(app) gid=1000(app) groups=2000(extra),3000(other)"
    assert kv["PWD"] == "/work/dir"
    assert kv["HOME"] == "/home/app"
    assert kv["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert kv["FOO"] == "bar" and kv["BAZ"] == "qux"
    assert kv["HOSTNAME_ENV"] == kv["UNAME_N"] == kv["ETC_HOSTNAME"] == "guest-disk"
    assert kv["HOSTS"] == "1" and int(kv["RESOLV"]) >= 1
    mounts = {l.split()[1]: l.split()[2:] for _, l in boot.lines if l.startswith("MOUNT ")}
    assert mounts["/proc"] == ["proc"] and mounts["/sys"] == ["sysfs"]
    assert mounts["/dev"] == ["devtmpfs"] and mounts["/dev/pts"] == ["devpts"]
    assert mounts["/dev/shm"] == ["tmpfs"] and mounts["/tmp"] == ["tmpfs"]
    assert mounts["/run"] == ["tmpfs"]
    assert any(l.startswith("NET eth0 10.0.2.15/24") for _, l in boot.lines)
    assert kv["ROUTE"] == "1"
    assert kv["ZOMBIES"] == "0"
    assert int(kv["DISK"]) > 400, "filesystem did not grow to the 512 MiB disk"
    assert kv["WRITE"] == "written"
    assert boot.lines[-2][1] == "docker2vm: exit status 7" or \
        boot.exit_status() == 7, boot.text
    assert r["unchanged"], "the shared base disk was written"


def test_shell_form_uid_gid_two_nics(guests):
    boot = guests["shell"]["boot"]
    _check_off(boot)
    kv = images.console_kv(boot)
    assert "shell-form sh" in boot.text
    assert kv["ID"] == "uid=1000(app) gid=3000(other)"   # explicit group: no supplementary
    assert kv["PWD"] == "/" and kv["PATH"] == "/bin"
    nets = [l for _, l in boot.lines if l.startswith("NET ")]
    assert len(nets) == 2 and all(re.search(r"\d+\.\d+\.\d+\.\d+/", l) for l in nets), nets
    assert boot.exit_status() == 0


def test_stop_signal_then_sigkill(guests):
    r = guests["stop-kill"]
    boot = r["boot"]
    _check_off(boot)
    assert r["pressed"], boot.text
    assert "got-USR1" in boot.text
    assert boot.exit_status() == 137
    killed_at = boot.first(lambda l: l.startswith("docker2vm: exit status"))
    assert killed_at - r["pressed"] >= 2.0   # the grace period was honoured


@pytest.mark.parametrize("kind", ["9p", "virtiofs"])
def test_share_overlay_and_graceful_stop(guests, kind):
    r = guests[kind]
    boot = r["boot"]
    _check_off(boot)
    kv = images.console_kv(boot)
    if kind == "9p":
        assert kv["USER"] == "1000:3000:3000 HOME=/home/app"
    else:
        assert kv["USER"] == "5000:0:0 HOME=/"
    assert kv["WRITE"] == "hello"              # the container sees its own writes
    assert "got-TERM" in boot.text
    assert boot.exit_status() == 0
    assert r["unchanged"], "the shared tree was written"


def test_share_kind_the_kernel_lacks(guests):
    boot = guests["9p-cloud"]["boot"]
    _check_off(boot)
    assert "docker2vm: error: the base image's kernel has no 9p support" in boot.text, boot.text
    assert boot.exit_status() == 125


def test_vfat_config_drive(guests):
    boot = guests["vfat"]["boot"]
    _check_off(boot)
    assert "vfat-config-drive read" in boot.text, boot.text
    assert boot.exit_status() == 0


@pytest.mark.parametrize("name,line", [
    ("no-config-drive", "docker2vm: error: no config drive (iso9660 or vfat labelled config-2) found"),
    ("unknown-user", "docker2vm: error: user 'nosuchuser' cannot be resolved in the image: "
                     "unable to find user nosuchuser"),
])
def test_setup_failure_is_one_line_125_and_poweroff(guests, name, line):
    boot = guests[name]["boot"]
    _check_off(boot)
    assert any(l.startswith(line) for _, l in boot.lines), boot.text
    assert boot.exit_status() == 125


def test_missing_command(guests):
    boot = guests["notfound"]["boot"]
    _check_off(boot)
    assert "docker2vm: error: exec no-such-command" in boot.text
    assert boot.exit_status() == 127
