"""Which disk format ``docker_delivery=disk`` stores: qcow2, or raw for rbd.

Nova's rbd image backend (``[libvirt] images_type = rbd``) gives an
instance a copy-on-write RBD clone of the Glance image only when the image
is ``disk_format=raw`` and stored in Ceph; a qcow2 image is downloaded to
the compute host, converted to raw and imported into Ceph for every
instance. So with ``[docker_convert] disk_format = auto`` (the default) the
plugin stores raw when every store the import writes to is an rbd store
(glance_store's ``rbd`` driver, ``enabled_backends = NAME:rbd``), and qcow2
otherwise (files, swift, ...: qcow2 is smaller to store and to download).
The rootfs is the same ext4 either way (same content, same bytes for the
same archive); raw is written sparse, and Ceph stores only what is written.
"""

from oslo_config import cfg

GROUP = "docker_convert"
AUTO, QCOW2, RAW = "auto", "qcow2", "raw"
CLONABLE_STORE_TYPES = ("rbd",)

format_opts = [
    cfg.StrOpt(
        "disk_format", default=AUTO,
        choices=((AUTO, "raw when every target store is an rbd store (Nova "
                        "clones it), else qcow2"),
                 (QCOW2, "always qcow2"),
                 (RAW, "always raw")),
        help="Disk format of a docker_delivery=disk image. Nova's rbd "
             "image backend clones only raw images stored in Ceph (no "
             "download to the compute host); any other store is better "
             "served by qcow2."),
]


def register_opts(conf):
    try:
        conf.register_opts(format_opts, group=GROUP)
    except cfg.DuplicateOptError:
        pass


def _store_opt(conf, name):
    try:
        return getattr(conf.glance_store, name)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return None


def store_types(conf, stores):
    """The glance_store driver type of each store named (``enabled_backends``
    maps name -> type); ``None`` is the default store. A single-store Glance
    (no ``enabled_backends``) has one store, ``[glance_store] default_store``,
    named by its type."""
    backends = dict(getattr(conf, "enabled_backends", None) or {})
    if not backends:
        return [_store_opt(conf, "default_store")]
    default = _store_opt(conf, "default_backend")
    names = [s or default for s in (stores or [None])]
    return [backends.get(n) for n in names]


def disk_format(conf, stores):
    """``qcow2`` or ``raw`` for an import that writes to ``stores``."""
    register_opts(conf)
    wanted = conf.docker_convert.disk_format
    if wanted != AUTO:
        return wanted
    types = store_types(conf, stores)
    if types and all(t in CLONABLE_STORE_TYPES for t in types):
        return RAW
    return QCOW2


def list_opts():
    return [(GROUP, format_opts)]
