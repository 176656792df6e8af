"""[docker_convert] disk_format: raw for rbd stores (Nova clones it), else qcow2."""

import pytest
from oslo_config import cfg

from glance_docker_import import store_format


@pytest.fixture
def conf():
    c = cfg.ConfigOpts()
    c.register_opt(cfg.DictOpt("enabled_backends"))
    c.register_opt(cfg.StrOpt("default_backend"), group="glance_store")
    c([], project="test")
    store_format.register_opts(c)
    return c


@pytest.mark.parametrize("backends,default,stores,want", [
    ({"ceph": "rbd"}, "ceph", None, "raw"),            # the default store is rbd
    ({"ceph": "rbd"}, "ceph", [None], "raw"),
    ({"fs": "file", "ceph": "rbd"}, "fs", None, "qcow2"),
    ({"fs": "file", "ceph": "rbd"}, "fs", ["ceph"], "raw"),
    ({"fs": "file", "ceph": "rbd"}, "ceph", ["ceph", "fs"], "qcow2"),  # one store is not rbd
    ({}, None, None, "qcow2"),                         # single-store Glance, no default_store
    ({"fs": "file"}, "fs", ["nosuch"], "qcow2"),
])
def test_auto(conf, backends, default, stores, want):
    conf.set_override("enabled_backends", backends)
    conf.set_override("default_backend", default, group="glance_store")
    assert store_format.disk_format(conf, stores) == want


@pytest.mark.parametrize("forced", ["qcow2", "raw"])
def test_forced(conf, forced):
    conf.set_override("enabled_backends", {"ceph": "rbd"})
    conf.set_override("default_backend", "ceph", group="glance_store")
    conf.set_override("disk_format", forced, group="docker_convert")
    assert store_format.disk_format(conf, None) == forced


def test_bad_value_refused(conf):
    with pytest.raises(ValueError):
        conf.set_override("disk_format", "vmdk", group="docker_convert")


@pytest.mark.parametrize("default_store,want", [("rbd", "raw"), ("file", "qcow2"), ("swift", "qcow2")])
def test_auto_single_store(default_store, want):
    """A single-store Glance (no enabled_backends) stores in [glance_store]
    default_store, named by its type (found in review: rbd gave qcow2)."""
    import glance_store

    c = cfg.ConfigOpts()
    glance_store.register_opts(c)
    c([], project="test")
    c.set_override("default_store", default_store, group="glance_store")
    assert store_format.disk_format(c, None) == want
    assert store_format.disk_format(c, []) == want
