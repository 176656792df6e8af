"""A stock cloud image as ``base_vm_image``: Debian 12 with cloud-init
(tests/guest/cloudimage.py), nothing of docker2vm in it, booted under QEMU
(TCG; DOCKER2VM_TEST_KVM=1 for KVM) with a Nova-style config drive on an
IDE cdrom whose ``openstack/*/user_data`` is
``cloudinit.render_cloud_config()``, and the container root as a virtio disk
with a serial (per-instance qcow2 overlay on the shared base).

The same instance is booted twice, as ``openstack server start`` does after
the VM powered itself off: the entrypoint must run again (cloud-init
per-boot script) and see what it wrote the first time. A third instance
whose command does not exist must still report 127 and power off. Two more
are stopped with the power button (`openstack server stop`) once their
entrypoint printed "ready": it must get the image's StopSignal (SIGUSR1),
and if it ignores it be killed after the stop timeout (137), and the VM
must power off.

Under TCG systemd + four cloud-init stages are slow: the exit line came
75-115 s after QEMU started (2 vCPUs, 512 MiB), hence the long timeouts;
the whole module takes about seven minutes once the image is cached
(about two more to build it).
"""

import json
import shutil

import pytest

from docker_rootfs.guest import cloudinit, configdrive, contract, qemu
from tests.fixtures.build_fixtures import sha256_file
from tests.guest import cloudimage, images

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SERIAL = "d2v-root"
HOSTNAME = "guest-cloudinit"
PROBE = r"""#!/bin/sh
echo "ARGS=$*"
echo "GREETING=$GREETING"
echo "BAZ=$BAZ"
echo "ID=$(id)"
echo "PWD=$(pwd)"
echo "HOME=$HOME"
echo "UNAME_N=$(hostname)"
[ -t 1 ] && echo "STDOUT=tty" || echo "STDOUT=pipe"
echo "to-stderr" >&2
n=$(cat /data/boots 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" >/data/boots
echo "BOOT=$n"
exit 3
"""
# Traps its StopSignal (SIGUSR1): exits 0, or with IGNORE=1 carries on.
STOPPER = r"""#!/bin/sh
trap 'echo "got-USR1"; [ "$IGNORE" = 1 ] || exit 0' USR1
echo ready
while :; do sleep 1; done
"""
CONFIG = {"entrypoint": ["/bin/probe", "from-entrypoint"], "cmd": ["from-cmd", "two words"],
          "env": ["GREETING=hello"], "user": "app", "workingdir": "/work/dir"}
META = {"docker_env": json.dumps({"BAZ": "qux"})}


def _machine(image, wd, name, files, config, meta, stop_timeout=None):
    archive = images.build_archive(name, files, config)
    wd.mkdir()
    root = cloudimage.overlay(image, wd / "root.qcow2")
    disk = images.instance_disk(images.rootfs_disk(archive), wd / "disk.qcow2")
    user_data = cloudinit.render_cloud_config(images.open_config(archive), HOSTNAME, meta,
                                              rootfs=contract.RootfsDelivery.disk(SERIAL),
                                              stop_timeout=stop_timeout)
    # A stock image reads only user_data: no docker2vm/ files on the drive.
    cfg = configdrive.build_config_drive(str(wd / "config.iso"), {}, HOSTNAME, meta=meta,
                                         user_data=user_data)
    return qemu.Machine(kernel=str(image.kernel), initrd=str(image.initrd),
                        cmdline=image.cmdline, config_drive=cfg, config_bus="ide",
                        disks=[(str(root), "", "qcow2"), (str(disk), SERIAL, "qcow2")],
                        memory_mb=512, cpus=2)


def _boot(machine, label, on_line=None):
    boot = qemu.boot(machine, timeout=600, on_line=on_line)
    ep = boot.first(lambda l: l.startswith(("ARGS=", "docker2vm: error")) or l == "ready")
    ex = boot.first(lambda l: l.startswith("docker2vm: exit status"))
    print(f"{label}: entrypoint at {ep and round(ep, 1)}s, exit line at {ex and round(ex, 1)}s, "
          f"qemu exit at {boot.duration:.1f}s")
    return boot


@pytest.fixture(scope="module")
def boots(tmp_path_factory):
    for tool in ("qemu-system-x86_64", "qemu-img", "buildah", "genisoimage", "mke2fs",
                 "/usr/sbin/debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (bindep.txt)", pytrace=False)
    image = cloudimage.build(log=lambda m: print("[cloudimage] " + m))
    shared = images.rootfs_disk(images.build_archive("cloudinit", {"/bin/probe": PROBE}, CONFIG))
    before = {p: sha256_file(p) for p in (shared, image.disk)}
    top = tmp_path_factory.mktemp("cloudinit")
    probe = _machine(image, top / "probe", "cloudinit", {"/bin/probe": PROBE}, CONFIG, META)
    # The same instance twice: `openstack server start` after it powered off.
    results = {"first": _boot(probe, "first boot"), "second": _boot(probe, "second boot")}
    notfound = _machine(image, top / "notfound", "cloudinit-notfound", {},
                        {"cmd": ["no-such-command"]}, {})
    results["notfound"] = _boot(notfound, "missing command")
    results["unchanged"] = all(sha256_file(p) == digest for p, digest in before.items())
    return results


def _check(boot, n):
    assert not boot.timed_out, boot.text
    assert boot.returncode == 0, boot.text      # the guest powered itself off
    kv = images.console_kv(boot)
    assert kv.get("ARGS") == "from-entrypoint from-cmd two words", boot.text
    assert kv["GREETING"] == "hello" and kv["BAZ"] == "qux"
    assert kv["ID"] == "uid=1000(app) gid=1000(app) groups=2000(extra),3000(other)"
    assert kv["PWD"] == "/work/dir"
    assert kv["HOME"] == "/home/app"
    assert kv["UNAME_N"] == HOSTNAME
    assert kv["STDOUT"] == "pipe"               # as docker run without -t, and d2vinit
    assert kv["BOOT"] == str(n)
    text = [line for _, line in boot.lines]
    assert "to-stderr" in text
    status = [i for i, line in enumerate(text) if line.startswith("docker2vm: ")]
    assert [text[i] for i in status] == ["docker2vm: exit status 3"], boot.text
    assert status[0] > text.index(f"BOOT={n}")
    assert boot.exit_status() == 3
    assert not any("login:" in line for line in text), "a getty prompt on the console"


def test_stock_cloud_image_runs_the_container(boots):
    _check(boots["first"], 1)


def test_second_boot_runs_it_again(boots):
    _check(boots["second"], 2)


def test_missing_command_still_powers_off(boots):
    boot = boots["notfound"]
    assert not boot.timed_out, boot.text
    assert boot.returncode == 0, boot.text
    text = [line for _, line in boot.lines]
    assert "docker2vm: error: exec no-such-command: No such file or directory" in text, boot.text
    assert boot.exit_status() == 127


def test_shared_images_untouched(boots):
    assert boots["unchanged"], "the cached cloud image or the shared rootfs base was written"


STOP_TIMEOUT = 5


@pytest.fixture(scope="module")
def stops(tmp_path_factory):
    """`openstack server stop`: the power button once the entrypoint is up."""
    image = cloudimage.build(log=lambda m: print("[cloudimage] " + m))
    top = tmp_path_factory.mktemp("cloudinit-stop")
    results = {}
    for name, env in (("handled", []), ("ignored", ["IGNORE=1"])):
        machine = _machine(image, top / name, "cloudinit-stop", {"/bin/stopper": STOPPER},
                           {"entrypoint": ["/bin/stopper"], "env": env,
                            "stopsignal": "SIGUSR1"}, {}, stop_timeout=STOP_TIMEOUT)
        state = {}

        def on_line(t, line, ctl, state=state):
            if line == "ready" and "pressed" not in state:
                state["pressed"] = t
                ctl.powerdown()
        boot = _boot(machine, f"stop ({name})", on_line)
        pressed = state.get("pressed")
        got = boot.first(lambda l: l == "got-USR1")
        ex = boot.first(lambda l: l.startswith("docker2vm: exit status"))
        if pressed is not None:
            print(f"stop ({name}): pressed at {pressed:.1f}s, got-USR1 +{got and got - pressed:.1f}s,"
                  f" exit line +{ex and ex - pressed:.1f}s, qemu exit +{boot.duration - pressed:.1f}s")
        results[name] = (boot, pressed)
    return results


def _check_stop(boot, pressed, status):
    assert not boot.timed_out, boot.text
    assert pressed is not None, boot.text
    assert boot.returncode == 0, boot.text      # powered off, QEMU exited by itself
    text = [line for _, line in boot.lines]
    assert "got-USR1" in text, boot.text      # the image's StopSignal, not SIGTERM
    status_lines = [line for line in text if line.startswith("docker2vm: ")]
    assert status_lines == [f"docker2vm: exit status {status}"], boot.text
    assert text.index("got-USR1") < text.index(status_lines[0])
    return boot.first(lambda l: l == status_lines[0]) - pressed


def test_stop_delivers_the_stop_signal(stops):
    boot, pressed = stops["handled"]
    _check_stop(boot, pressed, 0)


def test_stop_kills_after_the_stop_timeout(stops):
    boot, pressed = stops["ignored"]
    waited = _check_stop(boot, pressed, 137)    # 128 + SIGKILL
    assert waited >= STOP_TIMEOUT, boot.text    # the grace period was given
