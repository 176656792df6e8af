"""Host-side guest contract: rendering, config drive, cloud-config, the
init's user resolution (busybox awk, as in the guest), initramfs pieces."""

import json
import os
import shutil
import subprocess

import pytest

from docker_rootfs import errors
from docker_rootfs.config import ContainerConfig
from docker_rootfs.guest import base_image, cloudinit, configdrive, contract

HERE = os.path.dirname(os.path.abspath(contract.__file__))


def cfg(**kw):
    return ContainerConfig(**kw)


def test_render_exec_form_and_overrides():
    c = cfg(entrypoint=["/ep"], cmd=["a"], env=["FOO=1"], user="app", working_dir="/w",
            stop_signal="SIGUSR1")
    files = contract.render_guest_files(
        c, "h1", {"docker_cmd": '["b", "c d"]', "docker_env": '{"FOO": "2", "X": "y"}'},
        contract.RootfsDelivery.disk("ser1"))
    assert files["docker2vm/argv"] == b"/ep\0b\0c d\0"
    env = files["docker2vm/env"].split(b"\0")[:-1]
    assert b"FOO=2" in env and b"X=y" in env and b"HOSTNAME=h1" in env
    assert any(e.startswith(b"PATH=") for e in env)
    assert files["docker2vm/user"] == b"app\n"
    assert files["docker2vm/workdir"] == b"/w\n"
    assert files["docker2vm/stop_signal"] == b"10\n"
    assert files["docker2vm/stop_timeout"] == b"10\n"
    assert files["docker2vm/rootfs"] == b"disk:ser1\n"
    assert files["docker2vm/hostname"] == b"h1\n"


def test_render_entrypoint_override_drops_cmd_and_shell_form():
    c = cfg(entrypoint=["/ep"], cmd=["a"])
    f = contract.render_guest_files(c, "h", {"docker_entrypoint": '["/other"]'},
                                    contract.RootfsDelivery.share_9p("t"))
    assert f["docker2vm/argv"] == b"/other\0"
    c = cfg(cmd=["/bin/sh", "-c", "echo $X"])
    f = contract.render_guest_files(c, "h", {}, contract.RootfsDelivery.virtiofs("t", private=True))
    assert f["docker2vm/argv"] == b"/bin/sh\0-c\0echo $X\0"
    assert f["docker2vm/rootfs"] == b"virtiofs:t:rw\n"
    assert f["docker2vm/workdir"] == b"/\n"


def test_render_upper_disk_for_a_read_only_share():
    c = cfg(cmd=["/x"])
    plain = contract.render_guest_files(c, "h", {}, contract.RootfsDelivery.virtiofs("t"))
    assert "docker2vm/upper" not in plain
    f = contract.render_guest_files(c, "h", {}, contract.RootfsDelivery.virtiofs("t"),
                                    upper="docker2vm-upper")
    assert f["docker2vm/upper"] == b"disk:docker2vm-upper\n"
    assert f["docker2vm/rootfs"] == b"virtiofs:t\n"
    assert {k: v for k, v in f.items() if k != "docker2vm/upper"} == plain
    f = contract.render_guest_files(c, "h", {}, contract.RootfsDelivery.share_9p("t"), upper="u")
    assert f["docker2vm/upper"] == b"disk:u\n"
    for rootfs, upper in ((contract.RootfsDelivery.disk("s"), "u"),
                          (contract.RootfsDelivery.virtiofs("t", private=True), "u"),
                          (contract.RootfsDelivery.virtiofs("t"), "bad serial"),
                          (contract.RootfsDelivery.virtiofs("t"), "x" * 21),
                          (contract.RootfsDelivery.virtiofs("t"), "")):
        with pytest.raises(contract.ContractError):
            contract.render_guest_files(c, "h", {}, rootfs, upper=upper)


@pytest.mark.parametrize("meta", [{"docker_cmd": "not json"}, {"docker_cmd": "[1]"},
                                  {"docker_env": '["NOEQUALS"]'},
                                  {"docker_stop_signal": "SIGNOPE"},
                                  {"docker_stop_timeout": "x"}])
def test_render_rejects_bad_metadata(meta):
    with pytest.raises(contract.ContractError):
        contract.render_guest_files(cfg(cmd=["x"]), "h", meta, contract.RootfsDelivery.disk("s"))


def test_render_rejects_nothing_to_run_and_bad_ids():
    with pytest.raises(contract.ContractError):
        contract.render_guest_files(cfg(), "h", {}, contract.RootfsDelivery.disk("s"))
    for bad in ("", "a b", "x" * 21, "a/b"):
        with pytest.raises(contract.ContractError):
            contract.RootfsDelivery.disk(bad)


@pytest.mark.parametrize("name,num", [("SIGTERM", 15), ("TERM", 15), ("9", 9),
                                      ("SIGRTMIN+3", 37), ("sigusr2", 12)])
def test_signal_number(name, num):
    assert contract.signal_number(name) == num


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:root,app\n"


@pytest.fixture(scope="module")
def d2vinit_host(tmp_path_factory):
    """The guest's d2vinit, compiled for the host (its resolve-user entry)."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed (bindep.txt)", pytrace=False)
    return base_image.compile_d2vinit(str(tmp_path_factory.mktemp("d2vinit") / "d2vinit"))


@pytest.mark.parametrize("spec,out", [
    ("", "0 0 3000 /root"), ("app", "1000 1000 2000,3000 /home/app"),
    ("1000", "1000 1000 2000,3000 /home/app"), ("app:other", "1000 3000 - /home/app"),
    ("1000:3000", "1000 3000 - /home/app"), ("5000", "5000 0 - /"),
    ("5000:7", "5000 7 - /"), ("root:extra", "0 2000 - /root"),
    ("nobody", None), ("app:nogroup", None)])
def test_user_resolution(tmp_path, d2vinit_host, spec, out):
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text(GROUP)
    p = subprocess.run([d2vinit_host, "resolve-user", spec, f"{tmp_path}/passwd",
                        f"{tmp_path}/group"], capture_output=True, text=True)
    if out is None:
        assert p.returncode != 0 and "unable to find" in p.stderr
    else:
        assert p.returncode == 0 and p.stdout.strip() == out


def test_user_resolution_without_passwd_or_group(tmp_path, d2vinit_host):
    p = subprocess.run([d2vinit_host, "resolve-user", "1234:55", f"{tmp_path}/none",
                        f"{tmp_path}/none"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "1234 55 - /"


def test_config_drive_layout_and_label(tmp_path):
    if not (shutil.which("genisoimage") or shutil.which("xorriso")):
        pytest.skip("genisoimage not installed")
    files = contract.render_guest_files(cfg(cmd=["x"]), "h1", {"a": "b"},
                                        contract.RootfsDelivery.disk("s"))
    iso = configdrive.build_config_drive(str(tmp_path / "c.iso"), files, "h1",
                                         instance_uuid="u-1", meta={"a": "b"})
    data = open(iso, "rb").read()
    assert data[32769:32774] == b"CD001"
    assert data[32808:32840].rstrip() == b"config-2"
    md = configdrive.metadata_files("u-1", "h1", meta={"a": "b"})
    doc = json.loads(md["openstack/latest/meta_data.json"])
    assert doc["uuid"] == "u-1" and doc["hostname"] == "h1" and doc["meta"] == {"a": "b"}
    if shutil.which("isoinfo"):
        listing = subprocess.run(["isoinfo", "-R", "-f", "-i", iso], capture_output=True,
                                 text=True).stdout.split()
        assert "/docker2vm/argv" in listing and "/openstack/latest/meta_data.json" in listing


def test_cloud_config():
    text = cloudinit.render_cloud_config(cfg(cmd=["/bin/app"], user="app"), "h1", {},
                                         contract.RootfsDelivery.share_9p("share_dir"))
    assert text.startswith(b"#cloud-config\n")
    doc = json.loads(text.split(b"\n", 1)[1])
    paths = [f["path"] for f in doc["write_files"]]
    assert "/var/lib/docker2vm/docker2vm/argv" in paths
    # run on every boot by cloud-init's scripts-per-boot, not once by runcmd
    assert "runcmd" not in doc
    launcher = [f for f in doc["write_files"] if f["path"] == cloudinit.LAUNCHER_PATH][0]
    assert launcher["path"].startswith("/var/lib/cloud/scripts/per-boot/")
    assert launcher["permissions"] == "0700"
    assert launcher["content"].startswith("#!/usr/bin/env python3\n")
    compile(launcher["content"], "launch.py", "exec")
    assert doc["bootcmd"] == [cloudinit.STOP_SERIAL_GETTY]
    subprocess.run(["sh", "-n", "-c", doc["bootcmd"][0]], check=True)


def test_config_drive_user_data():
    md = configdrive.metadata_files("u-1", "h1", user_data=b"#cloud-config\n{}\n")
    for v in configdrive.VERSIONS:
        assert md[f"openstack/{v}/user_data"] == b"#cloud-config\n{}\n"
    assert not any(p.endswith("user_data") for p in configdrive.metadata_files("u-1", "h1"))


def test_module_resolution_and_cpio(tmp_path):
    from docker_rootfs.guest import kernel
    cache = os.path.join(os.path.dirname(HERE), "..", ".cache")
    k = kernel.fetch_kernel(cache, kernel.GENERIC_PACKAGE)
    mods = [os.path.basename(p) for p in base_image.resolve_modules(k.modules_dir, base_image.MODULE_GROUPS["disk"])]
    assert mods[-1] == "ext4.ko" and "jbd2.ko" in mods and "crc32c_generic.ko" in mods
    # The cloud kernel (default) has ext4 built in, and no 9p at all.
    cloud = kernel.fetch_kernel(cache)
    assert "cloud" in cloud.version
    assert base_image.resolve_modules(cloud.modules_dir, base_image.MODULE_GROUPS["disk"]) == []
    with pytest.raises(errors.ToolError, match="9p"):
        base_image.resolve_modules(cloud.modules_dir, base_image.MODULE_GROUPS["9p"])
    missing = []
    assert base_image.resolve_modules(cloud.modules_dir, base_image.MODULE_GROUPS["9p"], missing) == []
    assert missing == ["9pnet_virtio", "9p"]
    out = tmp_path / "i.cpio"
    base_image.build_initramfs(str(out), None, shutil.which("busybox"), None,
                               init_script=base_image.FLOOR_INIT)
    listing = subprocess.run(["cpio", "-it"], stdin=open(out, "rb"), capture_output=True,
                             text=True).stdout.split()
    assert {"init", "dev/console", "bin/busybox", "bin/sh"} <= set(listing)
