"""The development cloud with a real Ceph (devcloud/ceph.py), once per run.

``ceph_cloud`` (session): ``devcloud.cloud.Cloud(ceph=True)`` in its own
state dir (``$DEVCLOUD_CEPH_TEST_STATE``, default a fresh
``/tmp/d2v-ceph-*``) on its own ports (``$DEVCLOUD_CEPH_TEST_PORT_BASE``,
default 29200: the plain cloud tests use 29700, a developer's cloud 28700),
so it never meets the local-disk test cloud; Glance stores in the ``images``
pool, Nova's instances are RBD clones in ``vms``. At the end: ``down``, then
the checks that no process or mount is left, then the state dir is removed
(kept, and reused by the next run, when ``$DEVCLOUD_CEPH_TEST_STATE`` is
given; ``DEVCLOUD_TEST_KEEP=1`` with it leaves the cloud running).

The podman-built ``lifecycle_archive``, the CLI helpers and the fixture's
body (``cloud_session``) are the local-disk cloud tests'
(tests/cloud/conftest.py).
"""

import json
import os

import pytest

from tests.cloud.conftest import (
    CloudClient,
    cloud_session,
    lifecycle_archive,  # noqa: F401  (a fixture, used by name)
)


class CephCloudClient(CloudClient):
    """CloudClient plus the cluster (rbd/ceph CLIs as client.admin)."""

    @property
    def ceph(self):
        return self.cloud.ceph

    def rbd_ls(self, pool):
        return [i["image"] for i in self.ceph.images(pool)]

    def rbd_info(self, pool, name):
        return self.ceph.info(pool, name)

    def rbd_snaps(self, pool, name):
        return json.loads(self.ceph.rbd("snap", "ls", "--format=json", f"{pool}/{name}"))


def _check_ceph(cloud):
    from devcloud.ceph import Ceph
    cloud.ceph.check_prerequisites()
    assert isinstance(cloud.ceph, Ceph)


@pytest.fixture(scope="session")
def ceph_cloud():
    yield from cloud_session(CephCloudClient, "DEVCLOUD_CEPH_TEST_STATE", "d2v-ceph-",
                             "DEVCLOUD_CEPH_TEST_PORT_BASE", 29200, check=_check_ceph,
                             skip_errors=(RuntimeError,), ceph=True)


def pytest_collection_modifyitems(session, config, items):
    """The Ceph tier is opt-in: a second whole cloud plus Ceph does not fit
    in the default test command's time (doc/source/ceph.md). It runs when
    asked for: ``-m ceph`` (any marker expression naming ceph) or
    ``DEVCLOUD_CEPH_TESTS=1``."""
    here = os.path.dirname(os.path.abspath(__file__))
    if "ceph" in (config.getoption("-m") or "") or os.environ.get("DEVCLOUD_CEPH_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="the Ceph tier (a second cloud, with a real Ceph: ~10 min): "
                                   "run with -m ceph or DEVCLOUD_CEPH_TESTS=1")
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(skip)
