"""The share tree's read-only bind mount, for real, in a private mount
namespace (``unshare --mount``: nothing is mounted on the host), through
the same privsep entrypoints Nova's daemon would run (in-process here)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.nova

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import errno, os, sys
    sys.path.insert(0, {root!r})
    import tests.nova.conftest
    import nova.privsep
    nova.privsep.sys_admin_pctxt.client_mode = False     # we are root already
    from nova_image_handler import unpack
    tree = sys.argv[1]
    assert not unpack.is_read_only(tree)
    unpack.ensure_read_only(tree)
    unpack.ensure_read_only(tree)                          # idempotent: one mount
    assert unpack.is_read_only(tree) and unpack.is_mount(tree)
    for attempt in (lambda: open(os.path.join(tree, "new"), "w"),
                    lambda: os.symlink("/etc", os.path.join(tree, "link")),
                    lambda: os.unlink(os.path.join(tree, "file")),
                    lambda: os.chmod(os.path.join(tree, "file"), 0o777),
                    lambda: open(os.path.join(tree, "file"), "a")):
        try:
            attempt()
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("a write went through")
    mounts = open("/proc/self/mounts").read().count(" " + tree + " ")
    assert mounts == 1, mounts
    unpack.remove_tree(tree)
    assert not os.path.exists(tree)
    assert (" " + tree + " ") not in open("/proc/self/mounts").read()
    print("ok")
""")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare (mount namespace)")
def test_read_only_bind_mount_in_private_namespace(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text("content")
    env = dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING="1")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-W", "ignore",
         "-c", SCRIPT.format(root=ROOT), str(tree)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), \
        proc.stdout[-2000:] + proc.stderr[-3000:]
    # outside the namespace nothing was mounted, and the tree is gone
    assert (" " + str(tree) + " ") not in open("/proc/self/mounts").read()
    assert not tree.exists()
