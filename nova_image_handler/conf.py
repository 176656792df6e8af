"""The ``[docker2vm]`` options of the Nova side (nova.conf on compute hosts).

``list_opts`` feeds oslo-config-generator (entry point
``oslo.config.opts: docker2vm.nova``); the sample is
``etc/nova/nova.conf.docker2vm.sample``.
"""

from oslo_config import cfg

from docker_rootfs.guest.base_image import KERNEL_CMDLINE

GROUP = "docker2vm"

SUB_VIRT_CONTAINER = "container"
SUB_VIRT_NONE = "none"

opts = [
    cfg.StrOpt(
        "sub_virt_type", default=SUB_VIRT_CONTAINER,
        choices=[(SUB_VIRT_CONTAINER, "images carrying docker_* properties boot "
                  "the docker2vm base VM running their container"),
                 (SUB_VIRT_NONE, "the driver behaves exactly as the stock libvirt "
                  "driver, for every image")],
        help="The switch of the original proposal: what the docker2vm driver does "
             "with images that carry docker_delivery. Images without it always "
             "take the stock libvirt path."),
    cfg.StrOpt(
        "base_kernel", default="/var/lib/docker2vm/base/vmlinux",
        help="Direct kernel boot (the default base VM): the guest kernel on this "
             "compute host, as `docker2vm base-image -o DIR` writes it (vmlinux "
             "boots faster than vmlinuz under TCG). Ignored when base_vm_image "
             "is set."),
    cfg.StrOpt(
        "base_initrd", default="/var/lib/docker2vm/base/initrd.img",
        help="Direct kernel boot: the initramfs whose /init is d2vinit "
             "(`docker2vm base-image`)."),
    cfg.StrOpt(
        "base_cmdline", default=KERNEL_CMDLINE,
        help="Direct kernel boot: the kernel command line (the contents of the "
             "base image's `cmdline` file). Add docker2vm.debug for timestamps."),
    cfg.StrOpt(
        "base_vm_image", default="",
        help="Instead of direct kernel boot: a local qcow2 BIOS boot disk "
             "(`docker2vm base-image --boot-disk`, boot.qcow2). Each instance "
             "boots from its own copy-on-write overlay of it (disk.docker2vm-base "
             "in the instance directory); the file itself is only read."),
    cfg.StrOpt(
        "disk_serial", default="docker2vm-root",
        help="Serial (at most 20 characters of [A-Za-z0-9._-]) of the virtio disk "
             "holding the container root filesystem (docker_delivery=disk); the "
             "guest finds its root by it (docker2vm/rootfs = disk:SERIAL)."),
    cfg.StrOpt(
        "share_driver", default="virtiofs",
        choices=[("virtiofs", "vhost-user-fs (virtiofsd spawned by libvirt, "
                  "sandboxed; guest memory backed by shared memfd)"),
                 ("9p", "virtio-9p (QEMU's own, read-only export; the guest "
                  "kernel needs 9p: build the base with the generic kernel)")],
        help="How a docker_delivery=share image's unpacked tree is exported to "
             "the guest."),
    cfg.StrOpt(
        "share_tag", default="docker2vm-root",
        help="Mount tag of the shared container root (9p: at most 31 characters, "
             "virtiofs: 36)."),
    cfg.StrOpt(
        "share_dir", default="",
        help="Where docker_delivery=share images are unpacked, one read-only tree "
             "per image per host. Default: $instances_path/_docker2vm_shares."),
    cfg.BoolOpt(
        "share_readonly_mount", default=True,
        help="Make each unpacked share tree a read-only bind mount of itself "
             "(through Nova's privsep, CAP_SYS_ADMIN) before a guest sees it. The C "
             "virtiofsd of QEMU 7.2 has no read-only mode and libvirt 9.0 refuses "
             "<readonly/> for virtiofs, so without it a guest (root in its VM) could "
             "change the tree all instances of the image share. 9p exports carry "
             "<readonly/> as well."),
    cfg.StrOpt(
        "upper_serial", default="docker2vm-upper",
        help="Serial (at most 20 characters of [A-Za-z0-9._-]) of the per-instance "
             "virtio disk holding a docker_delivery=share container's writes (the "
             "overlay's upper layer; docker2vm/upper = disk:SERIAL). The disk is "
             "disk.docker2vm-upper in the instance directory: an empty ext4 made by "
             "the host, kept across stop/start and hard reboot, removed with the "
             "instance directory on rebuild and delete."),
    cfg.IntOpt(
        "upper_default_gb", default=1, min=1,
        help="Size in GiB of a docker_delivery=share instance's upper disk when its "
             "flavor has no root disk (root_gb = 0); otherwise it is root_gb."),
    cfg.StrOpt(
        "virtiofsd_path", default="/usr/lib/qemu/virtiofsd",
        help="The virtiofsd binary libvirt starts for virtiofs shares (Debian 12: "
             "the C virtiofsd in qemu-system-common)."),
    cfg.IntOpt(
        "stop_timeout", default=10, min=0,
        help="Seconds between the image's StopSignal and SIGKILL when the server "
             "is stopped (server metadata docker_stop_timeout overrides it). Keep "
             "it below [DEFAULT] shutdown_timeout, or Nova destroys the VM first."),
    cfg.StrOpt(
        "default_delivery", default="disk", choices=["disk", "share"],
        help="Delivery for an image whose docker_delivery property is empty."),
    cfg.IntOpt(
        "share_unused_minimum_age_seconds", default=86400, min=0,
        help="An unpacked share tree no instance on this host uses is removed by "
             "the image cache manager pass once it has been unused this long."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)
    # The share unpacker applies the same limits as the Glance import.
    from docker_rootfs import opts as core_opts
    try:
        core_opts.register_opts(conf)
    except cfg.DuplicateOptError:
        pass


def list_opts():
    from docker_rootfs import opts as core_opts
    return [(GROUP, opts)] + [g for g in core_opts.list_opts() if g[0] == core_opts.GROUP]
