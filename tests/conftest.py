"""Shared pytest fixtures.

``fixture_archives``: {name: Path} of the real-tool image archives built by
tests/fixtures/build_fixtures.py (podman, buildah, skopeo, umoci), cached
under ``$DOCKER2VM_FIXTURE_CACHE`` (default ``~/.cache/docker2vm-fixtures``)
in a directory keyed by a hash of the build script, so only the first run
pays for the build (~1 minute on 2 cores).

``fixture_index``: the whole build index: per fixture its archive, what it
covers, the expected config fields, the image/platform to select, and the
reference flattenings (umoci rootfs dir, podman export tar) or why a tool
could not make one.

``/dev/null`` is checked before the session and after every test: a run
of ``docker2vm flatten -o /dev/null`` as root once replaced it with a
regular file, and every guest test after it failed (QEMU read the zeros
written to "/dev/null" as console input, which the guest echoed as ``^@``).
"""

import os
import pathlib
import stat
import sys

import pytest


def _dev_null_problem():
    """None if /dev/null is the null character device (1, 3), else what it is."""
    try:
        st = os.lstat("/dev/null")
    except OSError as exc:
        return f"missing ({exc.strerror})"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
        return None
    return f"{stat.filemode(st.st_mode)}, {st.st_size} bytes, not the character device 1:3"


def pytest_sessionstart(session):
    problem = _dev_null_problem()
    if problem:
        pytest.exit(f"/dev/null on this machine is {problem}: something replaced it "
                    "(guest consoles and tools read it). Restore it as root with "
                    "'rm -f /dev/null && mknod -m 666 /dev/null c 1 3' and rerun.",
                    returncode=3)


@pytest.fixture(autouse=True)
def _dev_null_untouched():
    yield
    problem = _dev_null_problem()
    if problem:
        # Put it back so the tests after this one see a sane machine.
        os.unlink("/dev/null")
        os.mknod("/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod("/dev/null", 0o666)
        pytest.fail(f"this test left /dev/null {problem} (restored)", pytrace=False)

FIXTURES_DIR = pathlib.Path(__file__).parent / "fixtures"


def _build_module():
    from tests.fixtures import build_fixtures
    return build_fixtures


@pytest.fixture(scope="session")
def fixture_index():
    bf = _build_module()
    missing = bf.missing_tools()
    if missing:
        pytest.fail("real-tool image fixtures need: %s (Debian: podman buildah skopeo "
                    "umoci busybox-static zstd; see bindep.txt, profile test)"
                    % ", ".join(missing), pytrace=False)
    try:
        top, index = bf.ensure_fixtures(
            log=lambda m: print("[build_fixtures] " + m, file=sys.stderr))
    except bf.FixtureBuildError as exc:
        pytest.fail("building image fixtures failed: %s" % exc, pytrace=False)
    top = pathlib.Path(top)
    index = dict(index)
    index["dir"] = top
    for fx in index["fixtures"].values():
        for key in ("archive", "umoci", "podman_export", "podman_inspect"):
            if key in fx:
                fx[key + "_path"] = top / fx[key]
    for name, rel in index.get("layouts", {}).items():
        index.setdefault("layout_paths", {})[name] = top / rel
    return index


@pytest.fixture(scope="session")
def fixture_archives(fixture_index):
    return {name: fx["archive_path"] for name, fx in fixture_index["fixtures"].items()}
