"""Arguments shared by the subcommands that read an image archive."""

from docker_rootfs.limits import Limits


def add_archive_arguments(p):
    p.add_argument("archive", help="docker save or OCI image archive (tar, may be compressed)")
    p.add_argument("--image", metavar="TAG|DIGEST",
                   help="which image, when the archive holds several")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]",
                   help="which platform of a multi-platform index (default: this host's)")
    p.add_argument("--tmpdir", help="directory for temporary files")
    for f in Limits.fields():
        p.add_argument("--" + f.name.replace("_", "-"), type=int, default=None,
                       metavar="N", help=f"{f.metadata['help']} (default {f.default})")


def limits_from_args(args):
    changes = {f.name: getattr(args, f.name) for f in Limits.fields()
               if getattr(args, f.name, None) is not None}
    return Limits(**changes)


def image_kwargs(args):
    return {"limits": limits_from_args(args), "image": args.image,
            "platform": args.platform, "tmpdir": args.tmpdir}
