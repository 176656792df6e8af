"""Style checks, part of the one test command (tox -e pep8 runs the same):
ruff (pycodestyle, pyflakes, import order; pyproject.toml [tool.ruff]) on
all Python code, shellcheck on the shell scripts."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_SCRIPTS = ["tools/setup-env.sh", "tools/test.sh", "tools/demo.sh", ".ci/run",
                 "devstack/plugin.sh", "devstack/settings"]


def test_ruff():
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    if not os.path.exists(ruff):
        pytest.fail("ruff is not installed in the test virtualenv (test-requirements.txt)")
    proc = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=TOP, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (bindep.txt, profile test)")
    scripts = [s for s in SHELL_SCRIPTS if os.path.exists(os.path.join(TOP, s))]
    scripts += sorted(os.path.relpath(p, TOP) for p in glob.glob(os.path.join(TOP, "devcloud", "*.sh")))
    proc = subprocess.run([shellcheck, "-x", "-s", "bash"] + scripts, cwd=TOP,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


PRODUCT = ("docker_rootfs", "glance_docker_import", "nova_image_handler", "nova/virt/docker2vm")
DEV_ONLY = ("tests", "devcloud", "bench", "fuzz")


def test_product_code_imports_no_dev_code():
    """The installed packages never import the test suite, the development
    cloud (devcloud/, the local Glance included) or the benchmarks."""
    import ast
    bad = []
    for pkg in PRODUCT:
        for path in sorted(glob.glob(os.path.join(TOP, pkg, "**", "*.py"), recursive=True)):
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                bad += [f"{os.path.relpath(path, TOP)}:{node.lineno}: {n}" for n in names
                        if n.split(".")[0] in DEV_ONLY]
    assert not bad, "product code imports development code:\n" + "\n".join(bad)
