"""The wheel an operator installs: packages, package data, entry points,
extras; and (slow) that wheel installed into a FRESH venv next to Glance
33.x and Nova 34.x from the package index, its entry points loaded there as
the services load them.

The wheel is built from the git-tracked files of this working tree, as
they are now, committed into a scratch repository (pbr takes package data
from git), with PBR_VERSION set: ``pip wheel --no-deps
--no-build-isolation``.
"""

import ast
import configparser
import email.parser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("docker_rootfs", "glance_docker_import", "nova_image_handler", "nova/virt/docker2vm")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _tracked():
    r = _run(["git", "-C", TOP, "ls-files", "-z"])
    return [p for p in r.stdout.split("\0") if p and os.path.isfile(os.path.join(TOP, p))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not os.path.isdir(os.path.join(TOP, ".git")) or not shutil.which("git"):
        pytest.skip("not a git checkout (pbr needs git for package data)")
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    tracked = _tracked()
    for rel in tracked:
        os.makedirs(os.path.dirname(src / rel) or src, exist_ok=True)
        shutil.copy2(os.path.join(TOP, rel), src / rel)
    _run(GIT + ["init", "-q", str(src)])
    _run(GIT + ["-C", str(src), "add", "-A"])
    _run(GIT + ["-C", str(src), "commit", "-q", "-m", "snapshot"])
    env = dict(os.environ, PBR_VERSION="0.1.0", SKIP_GENERATE_AUTHORS="1",
               SKIP_WRITE_GIT_CHANGELOG="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(dist), str(src)], env=env, cwd=src, timeout=300)
    wheels = list(dist.glob("docker2vm-*.whl"))
    assert len(wheels) == 1, wheels
    return {"wheel": wheels[0], "tracked": tracked}


def _dist_info(zf, name):
    (path,) = [n for n in zf.namelist() if n.endswith(".dist-info/" + name)]
    return zf.read(path).decode()


def _entry_points(wheel):
    with zipfile.ZipFile(wheel) as zf:
        text = _dist_info(zf, "entry_points.txt")
    p = configparser.RawConfigParser(delimiters=("=",), interpolation=None)
    p.optionxform = str
    p.read_string(text)
    return {g: dict(p.items(g)) for g in p.sections()}


def _generator_namespaces():
    d = os.path.join(TOP, "etc", "oslo-config-generator")
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name)) as f:
            out[name] = [line.split("=", 1)[1].strip() for line in f
                         if line.split("=", 1)[0].strip() == "namespace"]
    return out


def test_packages_and_package_data(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        names = set(zf.namelist())
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in names, pkg
    # Every tracked file of the packages (Python and the guest's C sources).
    missing = [p for p in built["tracked"] if p.startswith(tuple(f"{pkg}/" for pkg in PACKAGES))
               and p not in names]
    assert missing == []
    # etc/ (samples, paste snippet, metadefs) as data: <prefix>/share/docker2vm/etc/
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    etc = [p for p in built["tracked"] if p.startswith("etc/")]
    assert etc and sorted(data) == sorted("share/docker2vm/" + p for p in etc)
    # The Nova shim is one sub-package: Nova's own packages stay Nova's.
    assert "nova/__init__.py" not in names and "nova/virt/__init__.py" not in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "devstack/"))]


def test_entry_points(built):
    eps = _entry_points(built["wheel"])
    assert eps["console_scripts"] == {"docker2vm": "docker_rootfs.cli:main"}
    assert eps["glance.image_import.plugins"] == {
        "docker_convert": "glance_docker_import.plugin:get_flow"}
    assert {"disk", "share"} <= set(eps["docker2vm.nova.handlers"])
    # One oslo.config.opts entry point for every namespace a generator file
    # of etc/oslo-config-generator/ names (others: oslo.* libraries).
    ours = {ns for nss in _generator_namespaces().values() for ns in nss
            if ns.startswith("docker2vm.")}
    assert ours and ours <= set(eps["oslo.config.opts"])
    assert {"docker2vm.core", "docker2vm.glance", "docker2vm.nova"} <= set(eps["oslo.config.opts"])


def test_entry_points_resolve_in_the_wheel(built):
    """Each entry point names a module of the wheel defining that name."""
    eps = _entry_points(built["wheel"])
    with zipfile.ZipFile(built["wheel"]) as zf:
        for group, items in eps.items():
            for name, target in items.items():
                module, _, attr = target.partition(":")
                path = module.replace(".", "/")
                candidates = [path + ".py", path + "/__init__.py"]
                (src,) = [c for c in candidates if c in zf.namelist()] or [None]
                assert src, f"{group} {name}: no module {module} in the wheel"
                tree = ast.parse(zf.read(src))
                top = {n.name for n in tree.body
                       if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
                top |= {t.id for n in tree.body if isinstance(n, ast.Assign)
                        for t in n.targets if isinstance(t, ast.Name)}
                top |= {a.asname or a.name for n in tree.body
                        if isinstance(n, ast.ImportFrom) for a in n.names}
                assert attr.split(".")[0] in top, f"{group} {name}: {target}"


def test_extras(built):
    with zipfile.ZipFile(built["wheel"]) as zf:
        meta = email.parser.Parser().parsestr(_dist_info(zf, "METADATA"))
    assert {"glance", "nova"} <= set(meta.get_all("Provides-Extra") or [])
    reqs = meta.get_all("Requires-Dist") or []

    def extra(name):
        return {r.split(";")[0].strip().split(">")[0].split("=")[0].strip().lower()
                for r in reqs if f'extra == "{name}"' in r}
    assert "glance" in extra("glance")
    assert "nova" in extra("nova")
    # The core stays OpenStack-service-free.
    core = {r.split(";")[0].strip() for r in reqs if "extra ==" not in r}
    assert not [r for r in core if r.lower().startswith(("glance", "nova"))]


# --- a fresh venv next to the real services (slow: installs from the index) -----
# One venv holding Glance 33, Nova 34 and the wheel with both extras, as
# devstack's default global venv (GLOBAL_VENV=True) holds them: one install
# instead of two (~1-3 min here, most of it pip).

@pytest.fixture(scope="module")
def fresh_venv(built, tmp_path_factory):
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # NOT --system-site-packages
    _run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
          "glance>=33.0.0,<34", "nova>=34.0.0,<35", f"{built['wheel']}[glance,nova]"],
         timeout=1200)
    return venv


GLANCE_CHECK = r"""
import importlib.metadata as md, subprocess, sys
eps = md.entry_points()
plugin, = [e for e in eps.select(group="glance.image_import.plugins") if e.name == "docker_convert"]
assert plugin.load().__name__ == "get_flow"
# What glance does: stevedore's named extension manager over that namespace.
from stevedore import named
mgr = named.NamedExtensionManager("glance.image_import.plugins", names=["docker_convert"],
                                  name_order=True, invoke_on_load=False)
assert mgr.names() == ["docker_convert"], mgr.names()
for name in ("docker2vm.core", "docker2vm.glance"):
    ep, = [e for e in eps.select(group="oslo.config.opts") if e.name == name]
    assert ep.load()(), name
import glance_docker_import.paste_filter as pf
assert callable(pf.filter_factory({}))
import glance
print("glance", md.version("glance"))
"""

NOVA_CHECK = r"""
import importlib.metadata as md, os
os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
from oslo_utils import importutils
# nova.virt.driver.load_compute_driver: import_object_ns('nova.virt', compute_driver, ...)
cls = importutils.import_class("nova.virt.docker2vm.Docker2VMDriver")
from nova.virt.libvirt.driver import LibvirtDriver
assert issubclass(cls, LibvirtDriver), cls.__mro__
eps = md.entry_points()
handlers = {e.name: e.load() for e in eps.select(group="docker2vm.nova.handlers")}
assert {"disk", "share"} <= set(handlers), handlers
ep, = [e for e in eps.select(group="oslo.config.opts") if e.name == "docker2vm.nova"]
assert ep.load()()
print("nova", md.version("nova"))
"""


@pytest.mark.slow
def test_fresh_venv_glance_side(fresh_venv):
    r = _run([str(fresh_venv / "bin" / "python"), "-c", GLANCE_CHECK], timeout=300)
    assert r.stdout.strip().splitlines()[-1].startswith("glance 33.")
    r = _run([str(fresh_venv / "bin" / "oslo-config-generator"),
              "--namespace", "docker2vm.glance"])
    assert "[docker_convert]" in r.stdout and "[docker_limits]" in r.stdout
    r = _run([str(fresh_venv / "bin" / "docker2vm"), "--help"])
    assert "base-image" in r.stdout
    etc = fresh_venv / "share" / "docker2vm" / "etc"
    assert (etc / "metadefs" / "docker2vm-container.json").is_file()
    assert (etc / "glance-api-paste.docker-convert.ini").is_file()


@pytest.mark.slow
def test_fresh_venv_nova_side(fresh_venv):
    r = _run([str(fresh_venv / "bin" / "python"), "-c", NOVA_CHECK], timeout=300)
    assert r.stdout.strip().splitlines()[-1].startswith("nova 34.")
    r = _run([str(fresh_venv / "bin" / "oslo-config-generator"), "--namespace", "docker2vm.nova"])
    assert "[docker2vm]" in r.stdout
