import os
import shutil

import pytest

from tests.disk import featuretar

BUILDERS_FAST = ["ext2fs"]


def _have_guestfs():
    return shutil.which("guestfish") is not None


@pytest.fixture(scope="session")
def feature_tar(tmp_path_factory):
    d = tmp_path_factory.mktemp("feature")
    return featuretar.write_feature_tar(str(d / "feature.tar"))


@pytest.fixture(scope="session")
def sparse_tar(tmp_path_factory):
    d = tmp_path_factory.mktemp("sparse")
    return featuretar.write_sparse_tar(str(d / "sparse.tar"), str(d))


@pytest.fixture
def guestfs_env(monkeypatch):
    if not _have_guestfs():
        pytest.skip("libguestfs-tools not installed")
    # KVM is unusable on the project's machines; opt into it with DOCKER2VM_TEST_KVM=1.
    if not os.environ.get("DOCKER2VM_TEST_KVM"):
        monkeypatch.setenv("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
