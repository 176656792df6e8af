"""``docker2vm inspect ARCHIVE``: the image's run configuration and layers."""

import json
import sys

from docker_rootfs.archive import open_image
from docker_rootfs.commands import common


def register(sub):
    p = sub.add_parser("inspect", help="show an image archive's configuration and layers")
    common.add_archive_arguments(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON with the OCI config field names")
    p.set_defaults(func=run)


def _fmt(value):
    if isinstance(value, list):
        return json.dumps(value) if value else "(none)"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "(none)"
    return value or "(default)"


def run(args):
    with open_image(args.archive, **common.image_kwargs(args)) as img:
        summary = img.summary()
        if args.json:
            json.dump(summary, sys.stdout, indent=2, sort_keys=False)
            sys.stdout.write("\n")
            return 0
        c = img.config
        out = sys.stdout
        out.write(f"Image:        {', '.join(c.repo_tags) or '(untagged)'}\n")
        out.write(f"Config:       {c.config_digest}\n")
        if img.candidate.manifest_digest:
            out.write(f"Manifest:     {img.candidate.manifest_digest}\n")
        out.write(f"Layout:       {img.layout}\n")
        out.write(f"Platform:     {c.platform}\n")
        for label, value in (("Entrypoint", c.entrypoint), ("Cmd", c.cmd), ("Env", c.env),
                             ("WorkingDir", c.working_dir), ("User", c.user),
                             ("ExposedPorts", c.exposed_ports), ("Volumes", c.volumes),
                             ("StopSignal", c.stop_signal), ("Labels", c.labels)):
            out.write(f"{label + ':':<14}{_fmt(value)}\n")
        out.write(f"Layers:       {len(img.layers)}\n")
        for layer in img.layers:
            out.write(f"  {layer.index + 1:>3}  {layer.diff_id}  {layer.size:>12} bytes  "
                      f"{layer.media_type or 'tar'}\n")
    return 0
