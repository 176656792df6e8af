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
"""

import pathlib
import sys

import pytest

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
