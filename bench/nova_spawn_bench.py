#!/usr/bin/env python3
"""Benchmark: spawn-side host work per instance, COW overlay vs per-instance copy.

    sudo .venv/bin/python bench/nova_spawn_bench.py [--counts 1,10,50] [--size-mb 1024]
        [--plot spawn.png]

What the compute host does for each new instance of one docker image
(``docker_delivery=disk``, a ~1 GB rootfs), guest boot excluded, measured on
the real driver (``Docker2VMDriver``) in one run, two ways:

* ``docker2vm`` (``[libvirt] images_type = qcow2``): Nova's image backend
  downloads the image once into ``_base`` (converted to raw, under Nova's
  lock), then each instance gets a qcow2 copy-on-write overlay ``disk``;
* ``per-instance copy`` (the original proposal: "for each new virtual
  machine boot ... copy the docker filesystem" into the instance
  directory; here through Nova's own ``images_type = flat``, whose
  ``disk`` is a full ``cp`` of ``_base``): the same download once, then
  one full copy per instance.

Per instance the driver's own steps are timed: ``_create_image`` (the
first instance includes the download into ``_base``), ``_get_guest_xml``
(host capabilities from a private real libvirtd, devcloud/libvirtd.py)
and ``_create_configdrive``. Stand-ins as in tests/nova/libvirtkit.py:
the image API serves a local file (the "download" is a local copy, so the
network is not measured), no database, no Neutron. Instances are created
one after the other from a cold ``_base``; cumulative totals are read at
each count. To keep the host's disk bounded the copy mode deletes each
instance's directory after measuring it (its disk use is reported from
the first one). Needs root (libvirtd).
"""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
CACHE = os.path.join(TOP, ".cache", "bench-nova-spawn")
MiB = 1024 * 1024


def make_rootfs(size_mb):
    """A ~size_mb rootfs qcow2 (ext4 by the project's disk builder) and its
    Glance properties, cached."""
    from docker_rootfs.config import ContainerConfig
    from docker_rootfs.disk.build import build_disk
    from docker_rootfs.disk.options import DiskOptions
    from docker_rootfs.properties import image_properties
    os.makedirs(CACHE, exist_ok=True)
    out = os.path.join(CACHE, f"rootfs-{size_mb}m.qcow2")
    if not os.path.exists(out):
        rng = random.Random(11)
        tar = out + ".tar"
        with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
            for d in ("bin", "usr", "usr/lib"):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            ti = tarfile.TarInfo("bin/true")
            ti.size, ti.mode = 0, 0o755
            tf.addfile(ti, io.BytesIO(b""))
            chunk = 16 * MiB
            for i in range(max(1, size_mb * MiB // chunk)):
                data = rng.randbytes(chunk)      # incompressible: a real copy each time
                ti = tarfile.TarInfo(f"usr/lib/blob-{i:04d}")
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
        build_disk(tar, out + ".tmp.qcow2", DiskOptions(disk_format="qcow2"))
        os.replace(out + ".tmp.qcow2", out)
        os.unlink(tar)
    config = ContainerConfig(cmd=["/bin/true"], architecture="amd64", os="linux")
    return out, image_properties(config, "disk")


def make_share_archive(size_mb):
    """A classic ``docker save`` archive whose one layer holds the same ~size_mb
    of data (what Glance stores for ``docker_delivery=share`` with
    ``normalize_share`` off), and its share properties; cached."""
    import hashlib

    from docker_rootfs.config import ContainerConfig
    from docker_rootfs.properties import image_properties
    os.makedirs(CACHE, exist_ok=True)
    out = os.path.join(CACHE, f"share-{size_mb}m.docker.tar")
    if not os.path.exists(out):
        rng = random.Random(12)
        layer = out + ".layer"
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:
            for d in ("bin", "usr", "usr/lib"):
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            chunk = 16 * MiB
            for i in range(max(1, size_mb * MiB // chunk)):
                data = rng.randbytes(chunk)
                ti = tarfile.TarInfo(f"usr/lib/blob-{i:04d}")
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
        h = hashlib.sha256()
        with open(layer, "rb") as f:
            for block in iter(lambda: f.read(MiB), b""):
                h.update(block)
        diff_id = "sha256:" + h.hexdigest()
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": ["/bin/true"]},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": config_name, "RepoTags": ["bench/share:1"],
                                "Layers": [h.hexdigest() + "/layer.tar"]}]).encode()
        with tarfile.open(out + ".tmp", "w") as tf:
            for name, data in ((config_name, config), ("manifest.json", manifest)):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            tf.add(layer, arcname=h.hexdigest() + "/layer.tar")
        os.replace(out + ".tmp", out)
        os.unlink(layer)
    config = ContainerConfig(cmd=["/bin/true"], architecture="amd64", os="linux")
    return out, image_properties(config, "share")


def du_bytes(path):
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def spawn_steps(drv, ctx, inst, image_meta):
    """The driver's spawn-side steps for one instance (``drv``: a
    Docker2VMDriver in libvirtkit's harness), each timed: a dict of seconds
    ``spec`` (container spec, disk mapping), ``image`` (``_create_image``),
    ``xml`` (``_get_guest_xml``), ``configdrive`` (``_create_configdrive``)
    and their ``total``. The instance's spec stays in ``drv._specs`` (the
    caller pops it)."""
    from nova.network import model as network_model
    from nova.virt.libvirt import blockinfo
    from nova.virt.libvirt import driver as libvirt_driver

    t0 = time.monotonic()
    drv._specs[inst.uuid] = drv.container_spec_from_image(ctx, inst)
    inst.config_drive = "True"
    disk_info = blockinfo.get_disk_info("qemu", inst, image_meta, None)
    injection = libvirt_driver.InjectionInfo(
        network_info=network_model.NetworkInfo([]), files=[], admin_pass=None)
    t1 = time.monotonic()
    drv._create_image(ctx, inst, disk_info["mapping"], injection_info=injection)
    t2 = time.monotonic()
    drv._get_guest_xml(ctx, inst, network_model.NetworkInfo([]), disk_info, image_meta)
    t3 = time.monotonic()
    drv._create_configdrive(ctx, inst, injection)
    t4 = time.monotonic()
    return {"spec": t1 - t0, "image": t2 - t1, "xml": t3 - t2, "configdrive": t4 - t3,
            "total": t4 - t0}


def run_mode(lv, base, image, props, images_type, count, workdir, root_gb, disk_format="qcow2",
             unpack_per_instance=False):
    """Spawn-side steps for ``count`` instances, one after the other; a list of
    per-instance dicts (seconds per step, disk bytes of the instance dir).
    ``unpack_per_instance``: after the driver's steps, the image is unpacked
    again into the instance directory (the proposal's per-instance copy of
    the filesystem, by the same safe unpack code)."""
    from nova.conf import CONF

    from nova_image_handler import unpack
    from tests.nova import libvirtkit as kit

    inst_path = tempfile.mkdtemp(prefix=f"spawn-{images_type}-", dir=workdir)
    rows = []
    with kit.NovaCompute(lv, inst_path, base) as nc:
        CONF.set_override("images_type", images_type, group="libvirt")
        try:
            image_id = nc.images.add(image, props, disk_format,
                                     container_format="docker" if disk_format == "raw"
                                     else "bare")
            drv = nc.driver
            for i in range(count):
                ctx, inst = nc.instance(image_id, root_gb=root_gb)
                row = spawn_steps(drv, ctx, inst, nc.images.image_meta(image_id))
                inst_dir = os.path.join(inst_path, inst.uuid)
                if unpack_per_instance:
                    t4 = time.monotonic()
                    unpack.ensure_tree(os.path.join(inst_dir, "rootfs-copy"), image_id,
                                       drv._root_base_path(image_id), read_only_mount=False)
                    unpacked = time.monotonic() - t4
                    row["image"] += unpacked
                    row["total"] += unpacked
                row["inst_bytes"] = du_bytes(inst_dir)
                rows.append(row)
                if images_type == "flat" or unpack_per_instance:
                    shutil.rmtree(inst_dir)          # bounded disk use (see docstring)
                drv._specs.pop(inst.uuid, None)
            base_bytes = du_bytes(os.path.join(inst_path, "_base"))
            share_dir = os.path.join(inst_path, unpack.DEFAULT_DIR_NAME)
            if os.path.isdir(share_dir):
                base_bytes += du_bytes(share_dir)
                # the handler's cache pass: unmount and remove the tree
                drv.handler("share").manage_cache(set())
        finally:
            CONF.clear_override("images_type", group="libvirt")
    shutil.rmtree(inst_path, ignore_errors=True)
    return rows, base_bytes


def summarize(rows, base_bytes, counts, deleted):
    out = []
    for n in counts:
        part = rows[:n]
        total = sum(r["total"] for r in part)
        rest = part[1:]
        inst_bytes = (rows[0]["inst_bytes"] * n) if deleted else sum(r["inst_bytes"] for r in part)
        out.append({
            "n": n, "total_s": total,
            "first_s": part[0]["total"],
            "rest_mean_s": (sum(r["total"] for r in rest) / len(rest)) if rest else None,
            "per_instance_s": total / n,
            "image_mean_rest_s": (sum(r["image"] for r in rest) / len(rest)) if rest else None,
            "disk_gib": (base_bytes + inst_bytes) / (1024 ** 3),
        })
    return out


def print_table(results, size_mb):
    print(f"rootfs image: ~{size_mb} MB of data (ext4 in qcow2); instances created one after "
          "the other from a cold _base; seconds of host work (spec + _create_image + "
          "_get_guest_xml + _create_configdrive)")
    print()
    print("| instances | method | total s | first instance s | each further s (mean) "
          "| disk image step, further (mean) s | host disk GiB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for n_idx in range(len(results["docker2vm"])):
        for name in results:
            r = results[name][n_idx]
            rest = "-" if r["rest_mean_s"] is None else f"{r['rest_mean_s']:.3f}"
            img = "-" if r["image_mean_rest_s"] is None else f"{r['image_mean_rest_s']:.3f}"
            print(f"| {r['n']} | {name} | {r['total_s']:.1f} | {r['first_s']:.2f} | {rest} "
                  f"| {img} | {r['disk_gib']:.2f} |")
    print()
    last = {k: v[-1] for k, v in results.items()}
    for ours, theirs in (("docker2vm", "per-instance copy"),
                         ("docker2vm share", "share, unpack per instance")):
        if ours in last and last[ours]["rest_mean_s"] and last[theirs]["rest_mean_s"]:
            print("each further instance: %s / %s = %.1fx"
                  % (theirs, ours, last[theirs]["rest_mean_s"] / last[ours]["rest_mean_s"]))


def plot(raw, path, styles=None, per_instance="total", per_instance_label="host work for this instance, s",
         per_instance_title="per instance (first: download into _base)", legend_fontsize=None):
    """The curves of ``raw`` (mode -> per-instance rows) into ``path``:
    cumulative host work, and each instance's ``per_instance`` step (log
    scale); bench/rbd_spawn_bench.py draws its modes with it too."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if styles is None:
        styles = {"docker2vm": "o-", "per-instance copy": "s-", "docker2vm share": "^-",
                  "share, unpack per instance": "v-"}
    for name in raw:
        rows, style = raw[name], styles.get(name, ".-")
        xs = list(range(1, len(rows) + 1))
        cum, acc = [], 0.0
        for r in rows:
            acc += r["total"]
            cum.append(acc)
        ax1.plot(xs, cum, style, markersize=3, label=name)
        ax2.plot(xs, [r[per_instance] for r in rows], style, markersize=3, label=name)
    ax1.set_xlabel("instances spawned")
    ax1.set_ylabel("cumulative host work, s")
    ax1.set_title("spawn-side host work (boot excluded)")
    ax2.set_xlabel("instance #")
    ax2.set_ylabel(per_instance_label)
    ax2.set_yscale("log")
    ax2.set_title(per_instance_title)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,10,50",
                    help="instance counts to report (default 1,10,50)")
    ap.add_argument("--size-mb", type=int, default=1024, help="rootfs data size (default 1024)")
    ap.add_argument("--workdir", default=None, help="where instances go (default: a temp dir "
                    "under .cache/bench-nova-spawn)")
    ap.add_argument("--share", action="store_true",
                    help="also docker_delivery=share: unpack once per host (docker2vm) against "
                         "an unpack into every instance directory")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON")
    ap.add_argument("--plot", metavar="PNG", help="also draw the curves (needs matplotlib)")
    args = ap.parse_args(argv)
    counts = sorted({int(c) for c in args.counts.split(",")})
    if os.geteuid() != 0:
        print("needs root (a private libvirtd)", file=sys.stderr)
        return 2

    os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
    import tests.nova.conftest  # noqa: F401  (Nova's threading bootstrap, the shim path)
    from devcloud.libvirtd import Libvirtd
    from tests.guest import images

    base = images.base_image()
    image, props = make_rootfs(args.size_mb)
    os.makedirs(CACHE, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="run-", dir=args.workdir or CACHE)
    vsize = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], check=True,
                                      capture_output=True, text=True).stdout)["virtual-size"]
    root_gb = -(-vsize // (1024 ** 3))           # the smallest flavor disk that fits
    raw, results = {}, {}
    lv = Libvirtd()
    try:
        lv.start()
        modes = [("docker2vm", "qcow2", image, props, "qcow2", False),
                 ("per-instance copy", "flat", image, props, "qcow2", False)]
        if args.share:
            archive, sprops = make_share_archive(args.size_mb)
            modes += [("docker2vm share", "qcow2", archive, sprops, "raw", False),
                      ("share, unpack per instance", "qcow2", archive, sprops, "raw", True)]
        for name, images_type, img, prp, fmt, per_instance in modes:
            rows, base_bytes = run_mode(lv, base, img, prp, images_type, max(counts), workdir,
                                        root_gb, disk_format=fmt,
                                        unpack_per_instance=per_instance)
            raw[name] = rows
            results[name] = summarize(rows, base_bytes, counts,
                                      images_type == "flat" or per_instance)
    finally:
        lv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results, "raw": raw}, indent=1))
    else:
        print_table(results, args.size_mb)
    if args.plot:
        return plot(raw, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
