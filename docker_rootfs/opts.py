"""oslo.config options of the core (limits), generated from :class:`Limits`."""

from docker_rootfs.limits import Limits

GROUP = "docker_limits"


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


def list_opts():
    return [(GROUP, _make_opts())]
