"""The BIOS boot disk (``docker2vm base-image --boot-disk``): boot.qcow2 is
built without root (sfdisk, mkfs.vfat --offset, syslinux --offset, mcopy),
and one real guest boots from it under SeaBIOS (no -kernel) with a config
drive and a rootfs disk, exactly like the direct-boot disk guests."""

import json
import os
import shutil
import subprocess

import pytest

from docker_rootfs.guest import base_image as bi
from docker_rootfs.guest import boot_disk, configdrive, contract, qemu
from tests.guest import images

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SCRIPT = "#!/bin/sh\necho \"BOOTDISK-OK $*\"\nexit 3\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    for tool in ("qemu-system-x86_64", "buildah", "genisoimage", "gcc", "syslinux",
                 "mcopy", "mkfs.vfat", "sfdisk", "qemu-img"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (bindep.txt)", pytrace=False)
    out = tmp_path_factory.mktemp("base")
    return bi.build_base_image(out, cache_dir=images.CACHE, boot_disk=True)


def test_boot_disk_layout(base):
    assert base.boot_disk == os.path.join(os.path.dirname(base.initrd), "boot.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", base.boot_disk],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2"
    # cached: a second call reuses it
    before = os.stat(base.boot_disk).st_mtime_ns
    again = bi.build_base_image(os.path.dirname(base.initrd), cache_dir=images.CACHE,
                                boot_disk=True)
    assert again.boot_disk == base.boot_disk
    assert os.stat(base.boot_disk).st_mtime_ns == before
    assert "APPEND " + bi.KERNEL_CMDLINE in boot_disk.syslinux_cfg(bi.KERNEL_CMDLINE)


def test_guest_boots_from_boot_disk(base, tmp_path):
    archive = images.build_archive("bootdisk", {"/bin/hello": SCRIPT},
                                   {"entrypoint": ["/bin/hello"], "cmd": ["from-cmd"]})
    config = images.open_config(archive)
    disk = images.instance_disk(images.rootfs_disk(archive), tmp_path / "disk.qcow2")
    delivery = contract.RootfsDelivery.disk("d2v-root")
    files = contract.render_guest_files(config, "guest-bootdisk", {}, delivery)
    cfg = configdrive.build_config_drive(str(tmp_path / "config.iso"), files,
                                         "guest-bootdisk", meta={})
    # No -kernel/-initrd/-append: SeaBIOS -> MBR -> syslinux -> same kernel + initramfs.
    machine = qemu.Machine(kernel="", boot_disk=base.boot_disk, config_drive=cfg,
                           config_bus="ide", disks=[(str(disk), "d2v-root", "qcow2")])
    assert "-kernel" not in machine.command(str(tmp_path))
    boot = qemu.boot(machine, timeout=240)
    assert not boot.timed_out, boot.text
    assert boot.returncode == 0, boot.text
    first = boot.first(lambda l: l == "BOOTDISK-OK from-cmd")
    assert first is not None, boot.text
    status = [l for _, l in boot.lines if l.startswith("docker2vm: exit status ")]
    assert status and status[-1] == "docker2vm: exit status 3", boot.text
    assert boot.lines[-1][1] == status[-1] or boot.lines[-2][1] == status[-1], boot.text
    assert boot.exit_status() == 3, boot.text
    print(f"boot.qcow2: entrypoint output at {first:.2f}s, qemu exit at {boot.duration:.2f}s")
