"""Approach 3, ``docker2vm bundle``: one disk that boots by itself.

Built from a real buildah image; layout and reproducibility checked on the
files; two real boots under TCG from the disk alone (no -kernel): SeaBIOS
with a Nova-style config drive (server metadata and user data override the
baked-in Cmd and Env, the flavor's disk is bigger than the image), and
OVMF (UEFI) with nothing but the disk (the baked-in configuration)."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from docker_rootfs.archive import open_image
from docker_rootfs.guest import bundle, configdrive, qemu
from tests.guest import images

OVMF = "/usr/share/ovmf/OVMF.fd"
HELLO = r"""#!/bin/sh
echo "BUNDLE-OK $* FOO=$FOO BAZ=$BAZ UD=$UD"
echo "HOST=$(hostname) PWD=$(pwd)"
echo "DISK=$(df -m / | awk 'NR==2 {print $2}')"
echo written >/data/w && echo "WRITE=$(cat /data/w)"
exit ${EXIT:-3}
"""
CONFIG = {"entrypoint": ["/bin/hello"], "cmd": ["from-cmd"], "env": ["FOO=bar"],
          "workingdir": "/work"}


@pytest.fixture(scope="module")
def archive():
    for tool in ("qemu-system-x86_64", "buildah", "genisoimage", "gcc", *bundle.TOOLS):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (bindep.txt)", pytrace=False)
    return images.build_archive("bundle", {"/bin/hello": HELLO}, CONFIG)


@pytest.fixture(scope="module")
def base():
    return images.base_image()


def _build(archive, out, base, fmt="qcow2"):
    from docker_rootfs.disk.options import DiskOptions
    with open_image(str(archive)) as img:
        return bundle.build_bundle(img.flatten, str(out), img.config, img.config.config_digest,
                                   created=img.created, disk_options=DiskOptions(disk_format=fmt),
                                   base=base)


@pytest.fixture(scope="module")
def app(archive, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "app.qcow2"
    _build(archive, out, base)
    return out


@pytest.mark.tools
def test_reproducible(archive, base, app, tmp_path):
    """Same archive -> byte-identical bundle (another directory, another time)."""
    again = tmp_path / "elsewhere" / "app.qcow2"
    again.parent.mkdir()
    _build(archive, again, base)
    assert again.read_bytes() == app.read_bytes()


@pytest.mark.tools
def test_layout(archive, base, tmp_path):
    raw = tmp_path / "app.raw"
    r = _build(archive, raw, base, fmt="raw")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["label"] == "dos"
    esp, root = table["partitions"]
    assert esp["type"] == "ef" and esp.get("bootable") and esp["start"] == 2048
    assert root["type"] == "83" and (root["start"] + root["size"]) * 512 == os.path.getsize(raw)
    assert root["size"] * 512 == r.rootfs_size and esp["size"] * 512 == r.esp_size
    img = f"{raw}@@{esp['start'] * 512}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for path in ("::/EFI/BOOT/BOOTX64.EFI", "::/ldlinux.sys", "::/syslinux.cfg", "::/vmlinuz",
                 "::/initrd.img", "::/d2v.cpio", "::/docker2vm/config.json"):
        subprocess.run(["mdir", "-a", "-i", img, path], check=True, capture_output=True, env=env)
    cfg = subprocess.run(["mtype", "-i", img, "::/syslinux.cfg"], check=True,
                         capture_output=True, text=True, env=env).stdout
    assert "INITRD /initrd.img,/d2v.cpio" in cfg and base.cmdline in cfg
    cpio = subprocess.run(["mtype", "-i", img, "::/d2v.cpio"], check=True,
                          capture_output=True, env=env).stdout
    assert f"part:{r.fs_uuid}\n".encode() in cpio
    assert b"/bin/hello\0from-cmd\0" in cpio     # argv
    # The ext4 rootfs partition carries the UUID the guest looks for.
    with open(raw, "rb") as f:
        f.seek(root["start"] * 512 + 1024 + 0x68)
        assert f.read(16).hex() == r.fs_uuid.replace("-", "")


def test_bad_input_one_line_no_output(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an image archive\n" * 10)
    out = tmp_path / "out" / "app.qcow2"
    out.parent.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-m", "docker_rootfs.cli", "bundle", str(junk),
                           "-o", str(out), "--tmpdir", str(scratch), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docker2vm: error: "), proc.stderr
    assert os.listdir(out.parent) == [] and os.listdir(scratch) == []


@dataclasses.dataclass
class FirmwareMachine(qemu.Machine):
    firmware: str = ""             # -bios: OVMF for UEFI; default SeaBIOS

    def command(self, workdir, monitor=None):
        cmd = super().command(workdir, monitor)
        return cmd[:1] + (["-bios", self.firmware] if self.firmware else []) + cmd[1:]


def _status_last(boot):
    status = [line for _, line in boot.lines if line.startswith("docker2vm: exit status ")]
    assert status, boot.text
    last = max(i for i, (_, line) in enumerate(boot.lines) if line == status[-1])
    after = [line for _, line in boot.lines[last + 1:]]
    assert all("reboot: Power down" in line or not line.strip() for line in after), boot.text
    return status[-1]


@pytest.mark.vm
@pytest.mark.slow
def test_bios_boot_with_config_drive_overrides(app, tmp_path):
    """SeaBIOS -> mbr.bin -> syslinux; the config drive on an IDE cdrom as stock
    Nova attaches it, Nova's files only (no docker2vm/): server metadata
    replaces Cmd and adds Env, user data sets Env too; the rootfs partition
    grows to the (bigger) instance disk."""
    disk = images.instance_disk(app, tmp_path / "disk.qcow2", 512)
    meta = {"docker_cmd": json.dumps(["from-metadata", "two words"]),
            "docker_env": json.dumps({"BAZ": "qux"})}
    user_data = json.dumps({"docker_env": ["UD=from-user-data", "BAZ=loses"]}).encode()
    cfg = configdrive.build_config_drive(str(tmp_path / "config.iso"), {}, "bundle-bios",
                                         meta=meta, user_data=user_data)
    machine = FirmwareMachine(kernel="", boot_disk=str(disk), config_drive=cfg, config_bus="ide")
    assert "-kernel" not in machine.command(str(tmp_path))
    boot = qemu.boot(machine, timeout=300)
    assert not boot.timed_out and boot.returncode == 0, boot.text
    kv = images.console_kv(boot)
    want = "BUNDLE-OK from-metadata two words FOO=bar BAZ=qux UD="
    assert boot.first(lambda line: line == want) is not None, boot.text
    assert kv["HOST"] == "bundle-bios PWD=/work", boot.text
    assert int(kv["DISK"]) > 400, boot.text      # grown from ~70 MiB to the 512 MiB disk
    assert kv["WRITE"] == "written", boot.text
    assert _status_last(boot) == "docker2vm: exit status 3"


@pytest.mark.vm
@pytest.mark.slow
def test_uefi_boot_disk_alone(app, tmp_path):
    """OVMF -> EFI/BOOT/BOOTX64.EFI (GRUB) -> same kernel and initrds; no
    config drive at all: the baked-in Entrypoint, Cmd, Env, WorkingDir."""
    if not os.path.exists(OVMF):
        pytest.fail(f"{OVMF} is needed (ovmf, bindep.txt)", pytrace=False)
    disk = images.instance_disk(app, tmp_path / "disk.qcow2")
    machine = FirmwareMachine(kernel="", boot_disk=str(disk), firmware=OVMF)
    boot = qemu.boot(machine, timeout=300)
    assert not boot.timed_out and boot.returncode == 0, boot.text
    # (OVMF and GRUB leave terminal escape sequences on the serial line)
    first = boot.first(lambda line: line.endswith("BUNDLE-OK from-cmd FOO=bar BAZ= UD="))
    assert first is not None, boot.text
    kv = images.console_kv(boot)
    assert re.match(r"^\S+ PWD=/work$", kv["HOST"]), boot.text
    assert _status_last(boot) == "docker2vm: exit status 3"
    print(f"UEFI bundle: entrypoint output at {first:.2f}s, qemu exit at {boot.duration:.2f}s")


@pytest.mark.glance
@pytest.mark.tools
@pytest.mark.slow
def test_glance_import_bundle(archive, base, app, tmp_path_factory):
    """glance image-create-via-import --import-method docker-convert
    --property docker_delivery=bundle stores the same bytes as docker2vm bundle,
    as a qcow2/bare image with the properties stock Nova boots it with."""
    pytest.importorskip("glance")
    from devcloud.glance_dev import DevServer
    from tests.glance.conftest import Api, cli_image_id, run_glance_cli, staging_leftovers
    srv = DevServer(str(tmp_path_factory.mktemp("glance-bundle")),
                    convert_opts={"bundle_base_dir": os.path.dirname(base.initrd)})
    srv.start()
    try:
        res = run_glance_cli(srv, "image-create-via-import", "--import-method", "docker-convert",
                             "--container-format", "docker", "--disk-format", "raw",
                             "--file", str(archive), "--name", "app-bundle",
                             "--property", "docker_delivery=bundle")
        image_id = cli_image_id(res.stdout)
        api = Api(srv)
        img = api.wait(image_id)
        assert img["status"] == "active", api.task_of(image_id)
        assert (img["disk_format"], img["container_format"]) == ("qcow2", "bare")
        assert img["docker_delivery"] == "bundle"
        assert img["hw_disk_bus"] == "virtio" and img["hw_vif_model"] == "virtio"
        assert img["architecture"] == "x86_64" and img["os_type"] == "linux"
        assert "hw_firmware_type" not in img          # BIOS and UEFI both boot it
        assert json.loads(img["docker_cmd"]) == ["from-cmd"]
        stored = os.path.join(srv.store_dir, image_id)
        assert img["size"] == os.path.getsize(stored)
        assert img["virtual_size"] > img["size"] // 2
        with open(stored, "rb") as f, open(app, "rb") as g:
            assert f.read() == g.read()                  # same bytes as docker2vm bundle
        assert staging_leftovers(srv, image_id) == []
    finally:
        srv.stop()


@pytest.mark.vm
@pytest.mark.slow
def test_libvirt_domain_disk_alone(app, tmp_path):
    """A libvirt domain shaped like stock Nova's for an ordinary image
    (``<boot dev='hd'/>``, root disk vda, config drive on an IDE cdrom, pty
    serial logged by virtlogd, ACPI), on a private real libvirtd: nothing
    docker2vm-specific in the XML; the container runs, powers the domain off."""
    pytest.importorskip("libvirt")
    import libvirt

    from devcloud import libvirtd
    from tests.nova import libvirtkit
    missing = libvirtd.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} needed ({', '.join(libvirtd.PACKAGES)})", pytrace=False)
    inst = libvirtkit.Instance.new(str(tmp_path), 1, hostname="bundle-libvirt")
    disk = images.instance_disk(app, inst.path("disk"), 256)
    meta = {"docker_cmd": json.dumps(["from-libvirt"])}
    cfg = configdrive.build_config_drive(inst.path("disk.config"), {}, inst.hostname,
                                         instance_uuid=inst.uuid, meta=meta)
    xml = libvirtkit.stand_in_xml(inst, str(disk), cfg)
    assert "<kernel>" not in xml and "<serial>" not in xml and '<boot dev="hd"/>' in xml
    with libvirtd.Libvirtd() as lv:
        run = libvirtkit.run_domain(lv, xml, inst.console, timeout=300)
        text = libvirtkit.dump(run, lv, inst.name)
    assert not run.timed_out and run.state == libvirt.VIR_DOMAIN_SHUTOFF, text
    ok = run.first(lambda line: line.startswith("BUNDLE-OK from-libvirt FOO=bar"))
    assert ok is not None, text
    assert run.first(lambda line: line == "HOST=bundle-libvirt PWD=/work") is not None, text
    assert run.exit_status() == 3, text


# -- the guest's override rules against the host's (no VM) --------------------
@pytest.fixture(scope="module")
def d2vinit_host(tmp_path_factory):
    """The guest's d2vinit compiled for the host (its ``overrides`` entry)."""
    from docker_rootfs.guest import base_image
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed (bindep.txt)", pytrace=False)
    return base_image.compile_d2vinit(str(tmp_path_factory.mktemp("d2vinit") / "d2vinit"))


def _config(entrypoint, cmd, env, user="", workdir=""):
    from docker_rootfs.config import ContainerConfig
    return ContainerConfig.from_dict({"Entrypoint": entrypoint, "Cmd": cmd, "Env": env,
                                      "User": user, "WorkingDir": workdir})


def _guest_overrides(d2vinit, tmp_path, config, meta, user_data=None, hostname="vm-1"):
    cfg, md = tmp_path / "cfg", tmp_path / "md"
    cfg.mkdir()
    md.mkdir()
    for name, data in bundle.guest_files(config, "0" * 8 + "-0000-0000-0000-" + "0" * 12).items():
        (cfg / name).write_bytes(data)
    files = configdrive.metadata_files("uuid-1", hostname, meta=meta, user_data=user_data)
    (md / "meta_data.json").write_bytes(files["openstack/latest/meta_data.json"])
    if user_data is not None:
        (md / "user_data").write_bytes(user_data)
    p = subprocess.run([d2vinit, "overrides", str(cfg), str(md)], capture_output=True, text=True)
    split = lambda b: [x.decode() for x in b.split(b"\0")[:-1]]  # noqa: E731
    return p, {"argv": split((cfg / "argv").read_bytes()), "env": split((cfg / "env").read_bytes()),
               "user": (cfg / "user").read_text().rstrip("\n"),
               "workdir": (cfg / "workdir").read_text().rstrip("\n"),
               "hostname": (cfg / "hostname").read_text().rstrip("\n")}


IMAGE = (["/bin/ep", "e1"], ["c1", "c 2"], ["FOO=bar", "PATH=/bin", "X=1"])


@pytest.mark.parametrize("meta,user_data", [
    ({}, None),
    ({"docker_cmd": json.dumps(["from meta", "caf\u00e9 \"q\" \\ \U0001f600", "\t"])}, None),
    ({"docker_cmd": json.dumps("one")}, None),
    ({"docker_entrypoint": json.dumps(["/bin/other"])}, None),
    ({"docker_entrypoint": "[]", "docker_cmd": '["/bin/sh","-c","echo hi"]'}, None),
    ({"docker_env": json.dumps({"FOO": "new", "NEW": "x=y"})}, None),
    ({"docker_env": json.dumps(["X=2", "Y="])}, None),
    ({"docker_user": "app:other", "docker_workdir": "rel/dir"}, None),
    ({"docker_cmd": '["meta-wins"]'},
     json.dumps({"docker_cmd": ["loses"], "docker_env": {"UD": "1"},
                 "docker_entrypoint": "[\"/bin/ud\"]"}).encode()),
    ({}, b"#cloud-config\nruncmd: []\n"),
])
def test_guest_overrides_match_host_rules(d2vinit_host, tmp_path, meta, user_data):
    """d2vinit's overrides (JSON read in C) give what contract.resolve() gives
    host-side for the same server metadata (user data: keys the server
    metadata lacks)."""
    from docker_rootfs.guest import contract
    config = _config(*IMAGE)
    p, got = _guest_overrides(d2vinit_host, tmp_path, config, meta, user_data)
    assert p.returncode == 0, p.stderr
    merged = {}
    if user_data and user_data.startswith(b"{"):
        merged = {k: v if isinstance(v, str) else json.dumps(v)
                  for k, v in json.loads(user_data).items()}
    merged.update(meta)
    want = contract.resolve(config, "vm-1", merged)
    assert got["argv"] == want["argv"]
    assert got["env"] == [e for e in want["env"] if not e.startswith("HOSTNAME=")]
    assert got["user"] == want["user"] and got["workdir"] == want["workdir"]
    assert got["hostname"] == "vm-1"


@pytest.mark.parametrize("meta,error", [
    ({"docker_cmd": "echo hi"}, "server metadata docker_cmd must be a JSON list of strings"),
    ({"docker_cmd": "[1, 2]"}, "server metadata docker_cmd must be a JSON list of strings"),
    ({"docker_env": '["NOEQUALS"]'}, "server metadata docker_env must be a JSON object"),
    ({"docker_entrypoint": '["a"] x'}, "server metadata docker_entrypoint must be"),
])
def test_guest_bad_override_is_one_error_and_125(d2vinit_host, tmp_path, meta, error):
    p, _ = _guest_overrides(d2vinit_host, tmp_path, _config(*IMAGE), meta)
    assert p.returncode == 125
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("docker2vm: error: " + error), p.stderr
    assert lines[-1] == "docker2vm: exit status 125"


MDS_SERVER = r"""import os, sys
root = sys.argv[1]
line = sys.stdin.buffer.readline().decode()
while sys.stdin.buffer.readline() not in (b"\r\n", b"\n", b""):
    pass
path = os.path.join(root, line.split()[1].lstrip("/"))
out = sys.stdout.buffer
if line.startswith("GET ") and os.path.isfile(path):
    body = open(path, "rb").read()
    out.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
else:
    out.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
out.flush()
"""


@dataclasses.dataclass
class MetadataServiceMachine(FirmwareMachine):
    """User-mode networking on 169.254.169.0/24 with a metadata service at
    169.254.169.254:80 (a guestfwd to a tiny HTTP responder over ``root``)."""
    mds: tuple = ()                # (server script, directory)

    def command(self, workdir, monitor=None):
        cmd = super().command(workdir, monitor)
        script, root = self.mds
        i = cmd.index("user,id=n0")
        cmd[i] = (f"user,id=n0,net=169.254.169.0/24,"
                  f"guestfwd=tcp:169.254.169.254:80-cmd:{sys.executable} {script} {root}")
        return cmd


@pytest.mark.vm
@pytest.mark.slow
def test_bios_boot_metadata_service(app, tmp_path):
    """No config drive: the guest reads Nova's meta_data.json and user_data
    from the metadata service (169.254.169.254) once DHCP is up."""
    root = tmp_path / "mds"
    files = configdrive.metadata_files(
        "uuid-mds", "bundle-mds", meta={"docker_cmd": json.dumps(["from-metadata-service"])},
        user_data=json.dumps({"docker_env": {"UD": "from-mds-user-data"}}).encode())
    for rel in ("openstack/latest/meta_data.json", "openstack/latest/user_data"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(files[rel])
    script = tmp_path / "mds.py"
    script.write_text(MDS_SERVER)
    disk = images.instance_disk(app, tmp_path / "disk.qcow2")
    machine = MetadataServiceMachine(kernel="", boot_disk=str(disk), mds=(str(script), str(root)))
    boot = qemu.boot(machine, timeout=300)
    assert not boot.timed_out and boot.returncode == 0, boot.text
    assert boot.first(lambda line: line == "BUNDLE-OK from-metadata-service FOO=bar BAZ= "
                                     "UD=from-mds-user-data") is not None, boot.text
    assert images.console_kv(boot)["HOST"] == "bundle-mds PWD=/work", boot.text
    assert _status_last(boot) == "docker2vm: exit status 3"
