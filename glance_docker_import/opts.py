"""Options of the docker_convert import plugin, group ``[docker_convert]``.

Set them in ``glance-image-import.conf``. The archive limits and the
rootfs disk builder knobs shared with the rest of docker2vm live in
``[docker_limits]`` and ``[docker_disk]`` (see :mod:`docker_rootfs.opts`);
all three groups are in the generated sample
``etc/glance-image-import.conf.d/docker-convert.conf.sample``.
"""

from oslo_config import cfg

GROUP = "docker_convert"

convert_opts = [
    cfg.StrOpt(
        "default_delivery", default="disk",
        choices=(("disk", "ext4 root filesystem in a qcow2 disk"),
                 ("share", "validated one-layer archive, shared into the "
                           "guest over 9p/virtiofs"),
                 ("bundle", "self-contained bootable qcow2 (kernel, init, "
                            "rootfs; BIOS and UEFI) for stock Nova")),
        help="How an imported image is delivered to the guest when the "
             "image has no docker_delivery property: 'disk' converts the "
             "archive into an ext4 root filesystem in a qcow2 disk; 'share' "
             "keeps it as a validated archive for the 9p/virtiofs approach."),
    cfg.ListOpt(
        "allowed_deliveries", default=["disk", "share", "bundle"],
        item_type=cfg.types.String(choices=("disk", "share", "bundle")),
        help="docker_delivery values tenants may ask for."),
    cfg.StrOpt(
        "bundle_base_dir", default=None,
        help="For docker_delivery=bundle: directory where the base VM "
             "(Debian kernel + d2vinit initramfs, docker2vm base-image) is "
             "built on first use and kept. Default: "
             "~/.cache/docker2vm/base of the glance-api user."),
    cfg.BoolOpt(
        "normalize_share", default=True,
        help="For docker_delivery=share, store a docker-archive holding one "
             "flattened layer (whiteouts applied, hostile entries refused) "
             "instead of the archive as uploaded, so compute hosts only "
             "copy one layer out."),
    cfg.StrOpt(
        "temp_dir", default=None,
        help="Directory for intermediate files (decompressed upload, "
             "flattened tree, disk image), one work directory "
             "docker2vm-<image_id>-<task_id> per import. Default: Glance's "
             "staging directory. Needs about twice the uncompressed image "
             "size free per concurrent import."),
    cfg.StrOpt(
        "platform", default=None,
        help="os/arch[/variant] picked from a multi-platform OCI archive "
             "when the upload holds several images. Default: the only "
             "image, or an error naming the choices."),
    cfg.IntOpt(
        "progress_interval", default=20, min=1, max=1800,
        help="Seconds between saves of the import task's progress message. "
             "Each save also refreshes the task, so Glance never treats a "
             "long conversion's 60-minute import lock as stale."),
    cfg.IntOpt(
        "child_address_space_mib", default=4096, min=0,
        help="Address-space limit (RLIMIT_AS, MiB) of the conversion child "
             "process (and the tools it runs, e.g. qemu-img). The "
             "conversion runs in its own process so a memory blow-up, a "
             "crash or a CPU-bound loop caused by an uploaded archive never "
             "reaches the glance-api worker. 0: no limit."),
    cfg.IntOpt(
        "child_cpu_seconds", default=3600, min=0,
        help="CPU-time limit (RLIMIT_CPU, seconds) of the conversion child; "
             "the kernel kills it when it is used up and the import fails "
             "with a message naming the limit. 0: no limit."),
    cfg.IntOpt(
        "child_open_files", default=1024, min=0,
        help="Open-files limit (RLIMIT_NOFILE) of the conversion child. "
             "0: inherit glance-api's."),
    cfg.IntOpt(
        "child_nice", default=10, min=0, max=19,
        help="Niceness added to the conversion child, so request handling "
             "in glance-api keeps the CPU it needs while images convert."),
    cfg.IntOpt(
        "sweep_interval", default=600, min=0,
        help="Seconds between sweeps for the work directories of imports "
             "whose glance-api process died (killed, crashed, host "
             "rebooted). A sweep removes such a directory and gives its "
             "image back (task failed with a one-line message, image "
             "queued, store listed in os_glance_failed_import) so it can "
             "be staged and imported again; it never touches a live "
             "import, which holds a lock on its directory. glance-api "
             "also sweeps once at start-up and before every conversion. "
             "0: only those."),
]


def register_opts(conf):
    from docker_rootfs import opts as core_opts
    from glance_docker_import import store_format
    conf.register_opts(convert_opts, group=GROUP)
    store_format.register_opts(conf)
    for register in (core_opts.register_opts, core_opts.register_disk_opts):
        try:
            register(conf)
        except cfg.DuplicateOptError:
            pass


def list_opts():
    """oslo-config-generator entry point (namespace docker2vm.glance)."""
    from docker_rootfs import opts as core_opts
    from glance_docker_import import store_format
    return [(GROUP, convert_opts + store_format.format_opts)] + core_opts.list_opts()
