"""oslo.config options of the core, generated from dataclasses: the limits
(:class:`Limits`, group ``docker_limits``) and the rootfs disk builder knobs
(:class:`DiskOptions`, group ``docker_disk``)."""

from docker_rootfs.disk.options import DiskOptions
from docker_rootfs.limits import Limits

GROUP = "docker_limits"
DISK_GROUP = "docker_disk"


def _make_opts():
    from oslo_config import cfg
    opts = []
    for f in Limits.fields():
        opts.append(cfg.IntOpt(f.name, default=f.default, min=1,
                               help=f.metadata["help"]))
    return opts


def register_opts(conf, group=GROUP):
    conf.register_opts(_make_opts(), group=group)


def limits_from_conf(conf, group=GROUP):
    section = getattr(conf, group)
    return Limits(**{f.name: getattr(section, f.name) for f in Limits.fields()})


def _make_disk_opts():
    from oslo_config import cfg
    opts = []
    for f in DiskOptions.fields():
        kw = {"default": f.default, "help": f.metadata["help"]}
        if f.type in (bool, "bool"):
            opts.append(cfg.BoolOpt(f.name, **kw))
        elif f.type in (int, "int"):
            opts.append(cfg.IntOpt(f.name, min=0, **kw))
        elif f.metadata.get("choices"):
            opts.append(cfg.StrOpt(f.name, choices=f.metadata["choices"], **kw))
        else:
            opts.append(cfg.StrOpt(f.name, **kw))
    return opts


def register_disk_opts(conf, group=DISK_GROUP):
    conf.register_opts(_make_disk_opts(), group=group)


def disk_options_from_conf(conf, group=DISK_GROUP):
    section = getattr(conf, group)
    return DiskOptions(**{f.name: getattr(section, f.name) for f in DiskOptions.fields()})


def list_opts():
    return [(GROUP, _make_opts()), (DISK_GROUP, _make_disk_opts())]
