"""What an operator installs: the wheel (with the nova/virt shim), the
entry points, the compute_driver name, the generated sample config."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from nova.virt import driver as virt_driver

from nova_image_handler import handlers
from tests.nova import novakit

pytestmark = pytest.mark.nova

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = "nova/virt/docker2vm/__init__.py"


def test_sample_config_is_generated(tmp_path):
    gen = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
    out = tmp_path / "nova.conf.docker2vm.sample"
    subprocess.run([gen, "--config-file",
                    os.path.join(TOP, "etc/oslo-config-generator/nova-docker2vm.conf"),
                    "--output-file", str(out)], check=True, cwd=TOP)
    with open(os.path.join(TOP, "etc/nova/nova.conf.docker2vm.sample")) as f:
        committed = f.read()
    assert out.read_text() == committed, (
        "regenerate: oslo-config-generator --config-file "
        "etc/oslo-config-generator/nova-docker2vm.conf")
    for option in ("[docker2vm]", "base_kernel", "base_vm_image", "share_driver",
                   "sub_virt_type", "[docker_limits]"):
        assert option in committed


def test_handlers_are_entry_points():
    assert handlers.names() == ["disk", "share"]


def test_wheel_ships_the_shim_into_nova_virt(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(TOP, name), src)
    for name in ("docker_rootfs", "glance_docker_import", "nova_image_handler",
                 "nova/virt/docker2vm"):
        shutil.copytree(os.path.join(TOP, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = dict(os.environ, PBR_VERSION="0.1.0")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "out"), str(src)],
                   check=True, env=env, capture_output=True)
    wheels = list((tmp_path / "out").glob("docker2vm-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert SHIM in names
    # never Nova's own package files
    assert "nova/__init__.py" not in names and "nova/virt/__init__.py" not in names
    assert {n for n in names if n.startswith("nova/")} == {SHIM}
    assert "nova_image_handler/handlers/share.py" in names
    assert "[docker2vm.nova.handlers]" in entry_points
    assert "docker2vm.nova = nova_image_handler.conf:list_opts" in entry_points


class TestComputeDriverName(novakit.DriverTestCase):

    def test_compute_driver_docker2vm(self):
        from nova_image_handler.driver import Docker2VMDriver
        self.flags(compute_driver="docker2vm.Docker2VMDriver")
        drv = virt_driver.load_compute_driver(None)
        self.assertIsInstance(drv, Docker2VMDriver)
        import nova.virt.docker2vm as shim
        self.assertIs(shim.Docker2VMDriver, Docker2VMDriver)
