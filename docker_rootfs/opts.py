"""oslo.config options of the core, generated from dataclasses: the limits
(:class:`Limits`, group ``docker_limits``) and the rootfs disk builder knobs
(:class:`DiskOptions`, group ``docker_disk``). One field, one option, with
the field's help text; the dataclasses stay usable without oslo.config."""

from docker_rootfs.disk.options import DiskOptions
from docker_rootfs.limits import Limits

GROUP = "docker_limits"
DISK_GROUP = "docker_disk"

# dataclass -> (group, smallest value of its integer options)
_SOURCES = {Limits: (GROUP, 1), DiskOptions: (DISK_GROUP, 0)}


def _opts_for(cls):
    from oslo_config import cfg
    int_min = _SOURCES[cls][1]
    opts = []
    for f in cls.fields():
        kw = {"default": f.default, "help": f.metadata["help"]}
        if f.type in (bool, "bool"):
            opts.append(cfg.BoolOpt(f.name, **kw))
        elif f.type in (int, "int"):
            opts.append(cfg.IntOpt(f.name, min=int_min, **kw))
        elif f.metadata.get("choices"):
            opts.append(cfg.StrOpt(f.name, choices=f.metadata["choices"], **kw))
        else:
            opts.append(cfg.StrOpt(f.name, **kw))
    return opts


def _from_conf(cls, conf, group):
    section = getattr(conf, group)
    return cls(**{f.name: getattr(section, f.name) for f in cls.fields()})


def register_opts(conf, group=GROUP):
    conf.register_opts(_opts_for(Limits), group=group)


def limits_from_conf(conf, group=GROUP):
    return _from_conf(Limits, conf, group)


def register_disk_opts(conf, group=DISK_GROUP):
    conf.register_opts(_opts_for(DiskOptions), group=group)


def disk_options_from_conf(conf, group=DISK_GROUP):
    return _from_conf(DiskOptions, conf, group)


def list_opts():
    return [(cls_group, _opts_for(cls)) for cls, (cls_group, _) in _SOURCES.items()]
