#!/usr/bin/env python3
"""Benchmark: spawn-side cost per instance on Ceph, RBD clones vs local qcow2 overlays vs copies.

    sudo .venv/bin/python bench/rbd_spawn_bench.py [--counts 1,10,50] [--size-mb 1024]
        [--plot doc/source/rbd-spawn-bench.png] [--port-base 29300]

What the compute host does for each new instance of one docker image
(``docker_delivery=disk``, a ~1 GB rootfs), guest boot excluded, with the
real driver (``Docker2VMDriver``, through tests/nova/libvirtkit.py's
harness as bench/nova_spawn_bench.py uses it) against a real single-node
Ceph (devcloud/ceph.py, started and stopped by this script), in one run:

* ``rbd clone`` (``[libvirt] images_type = rbd``, the image raw in the
  ``images`` pool as docker-convert stores it for an rbd store): Nova's
  rbd backend clones the image's snapshot into ``vms`` and grows the clone
  to the flavor; nothing is downloaded, on the first instance either;
* ``rbd import (qcow2 image)`` (the same backend, the image stored as qcow2 as
  for a file store): Nova downloads it once into ``_base`` (converted to
  raw), then ``rbd import``s the whole base for EVERY instance: the
  naive per-instance copy, into Ceph;
* ``local qcow2 overlay`` (``images_type = qcow2``, docker2vm's default
  on local disk): download once into ``_base``, a COW overlay per instance;
* ``local copy`` (``images_type = flat``): download once, a full copy of
  the base per instance.

The first instance of each mode is the cold host (empty ``_base``). The
"download" is the image API stand-in's local file copy (libvirtkit's
LocalImageAPI; for the rbd image it also reports the ``rbd://`` location
Glance's ``show_image_direct_url`` gives): the network is not measured,
so the download modes' first instance is a floor. Each instance's step
times: ``_create_image`` (image), ``_get_guest_xml``, ``_create_configdrive``
(on rbd: the config drive is imported into Ceph too). To keep disk use
bounded, copy modes delete each instance's disk after measuring it. Needs
root (libvirtd, Ceph).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
sys.path.insert(0, os.path.join(TOP, "bench"))
CACHE = os.path.join(TOP, ".cache", "bench-rbd-spawn")
GiB = 1024 ** 3
MODES = ("rbd clone", "rbd import (qcow2 image)", "local qcow2 overlay", "local copy")


class Bench:
    """A throwaway state dir with devcloud's Ceph in it (the Cloud object is
    used for its process bookkeeping only: no OpenStack service starts)."""

    def __init__(self, port_base, osd_gib):
        from devcloud.ceph import Ceph
        from devcloud.cloud import Cloud
        os.makedirs(CACHE, exist_ok=True)
        self.state = tempfile.mkdtemp(prefix="ceph-", dir="/tmp")
        for d in ("log", "pids", "stamps"):
            os.makedirs(os.path.join(self.state, d))
        self.cloud = Cloud(self.state, port_base=port_base,
                           log=lambda m: print(f"[ceph] {m}", file=sys.stderr, flush=True))
        self.ceph = Ceph(self.cloud, port_base, osd_size_gib=osd_gib)

    def up(self):
        took = self.ceph.up()
        sys.path.insert(0, self.ceph.python_path())     # Debian's rados/rbd for nova
        return took

    def down(self):
        from devcloud.ceph import DAEMONS
        for d in reversed(DAEMONS):
            self.cloud.kill(d)
        shutil.rmtree(self.state, ignore_errors=True)


def image_api_with_locations(fsid):
    """libvirtkit's LocalImageAPI plus the ``rbd://`` location of images put
    in the ``images`` pool (what Nova reads with include_locations)."""
    from tests.nova.libvirtkit import LocalImageAPI

    class API(LocalImageAPI):
        in_rbd = set()

        def get(self, context, image_id, include_locations=False, show_deleted=True):
            meta = super().get(context, image_id)
            if include_locations:
                meta["locations"] = ([{"url": f"rbd://{fsid}/images/{image_id}/snap",
                                       "metadata": {}}] if image_id in self.in_rbd else [])
            return meta
    return API()


def store_in_rbd(ceph, path, image_id, fmt):
    """What glance_store's rbd driver does: import, snapshot ``snap``, protect."""
    ceph.rbd("import", "--image-format", "2", path, f"images/{image_id}", timeout=900)
    ceph.rbd("snap", "create", f"images/{image_id}@snap")
    ceph.rbd("snap", "protect", f"images/{image_id}@snap")


def run_mode(lv, base, ceph, mode, qcow2, raw, props, count, workdir, root_gb):
    from unittest import mock

    import nova.virt.libvirt.imagebackend as imagebackend
    from nova.conf import CONF
    from nova_spawn_bench import du_bytes, spawn_steps

    from nova_image_handler import driver as d2v_driver  # noqa: F401  (registers [docker2vm])
    from tests.nova import libvirtkit as kit

    on_rbd = mode.startswith("rbd")
    images_type = {"rbd clone": "rbd", "rbd import (qcow2 image)": "rbd",
                   "local qcow2 overlay": "qcow2", "local copy": "flat"}[mode]
    inst_path = tempfile.mkdtemp(prefix="spawn-", dir=workdir)
    rows = []
    with kit.NovaCompute(lv, inst_path, base) as nc:
        api = image_api_with_locations(ceph.fsid)
        nc.images = api
        nc.driver._image_api = api
        patches = [mock.patch.object(imagebackend, "IMAGE_API", api),
                   mock.patch("nova.virt.images.IMAGE_API", api)]
        for p in patches:
            p.start()
        over = {"images_type": images_type}
        if on_rbd:
            over.update(images_rbd_pool="vms", images_rbd_ceph_conf=ceph.conf, rbd_user="admin",
                        rbd_secret_uuid=ceph.secret_uuid)   # XML only: no domain starts
        for k, v in over.items():
            CONF.set_override(k, v, group="libvirt")
        nc.driver.image_backend = imagebackend.Backend(CONF.use_cow_images)
        try:
            if mode == "rbd clone":
                image_id = api.add(raw, props, "raw")
                store_in_rbd(ceph, raw, image_id, "raw")
                api.in_rbd.add(image_id)
            else:
                image_id = api.add(qcow2, props, "qcow2")
            drv = nc.driver
            for i in range(count):
                ctx, inst = nc.instance(image_id, root_gb=root_gb)
                row = spawn_steps(drv, ctx, inst, api.image_meta(image_id))
                inst_dir = os.path.join(inst_path, inst.uuid)
                if on_rbd:
                    info = ceph.info("vms", f"{inst.uuid}_disk")
                    row["parent"] = bool(info.get("parent"))
                    row["inst_bytes"] = _rbd_used(ceph, f"vms/{inst.uuid}_disk")
                else:
                    row["inst_bytes"] = du_bytes(inst_dir)
                rows.append(row)
                if mode in ("rbd import (qcow2 image)", "local copy"):       # bounded disk use
                    if on_rbd:
                        drv._cleanup_rbd(inst)
                    shutil.rmtree(inst_dir, ignore_errors=True)
                drv._specs.pop(inst.uuid, None)
            base_bytes = du_bytes(os.path.join(inst_path, "_base"))
        finally:
            for k in over:
                CONF.clear_override(k, group="libvirt")
            for p in patches:
                p.stop()
            if on_rbd:        # every clone, then the image (as Glance would)
                for name in ceph.images("vms"):
                    ceph.rbd("rm", f"vms/{name['image']}") if "@" not in name["image"] else None
                if mode == "rbd clone":
                    ceph.rbd("snap", "unprotect", f"images/{image_id}@snap")
                    ceph.rbd("snap", "purge", f"images/{image_id}")
                    ceph.rbd("rm", f"images/{image_id}")
    shutil.rmtree(inst_path, ignore_errors=True)
    return rows, base_bytes


def _rbd_used(ceph, spec):
    """Bytes the image itself holds in Ceph (``rbd du``: a clone only what it wrote)."""
    out = json.loads(ceph.rbd("du", "--format=json", spec))
    return sum(i.get("used_size", 0) for i in out.get("images", []))


def summarize(rows, base_bytes, counts, deleted):
    out = []
    for n in counts:
        part = rows[:n]
        rest = part[1:]
        inst = rows[0]["inst_bytes"] * n if deleted else sum(r["inst_bytes"] for r in part)
        out.append({
            "n": n, "total_s": sum(r["total"] for r in part),
            "first_s": part[0]["total"], "first_image_s": part[0]["image"],
            "rest_mean_s": sum(r["total"] for r in rest) / len(rest) if rest else None,
            "image_mean_rest_s": sum(r["image"] for r in rest) / len(rest) if rest else None,
            "host_disk_gib": (base_bytes + (0 if rows[0].get("parent") is not None else inst))
            / GiB,
            "ceph_gib": (inst if rows[0].get("parent") is not None else 0) / GiB,
        })
    return out


def print_table(results, size_mb, ceph_up_s):
    print(f"rootfs image: ~{size_mb} MB of data (ext4); instances one after the other from a "
          "cold host; seconds of host work (spec + _create_image + _get_guest_xml + "
          f"_create_configdrive). Ceph start-up in this run: {ceph_up_s:.1f} s")
    print()
    print("| instances | method | total s | first instance (cold host) s | of which disk s "
          "| each further s (mean) | disk step, further (mean) s | compute host disk GiB "
          "| Ceph GiB (instances) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i in range(len(next(iter(results.values())))):
        for name, rs in results.items():
            r = rs[i]
            rest = "-" if r["rest_mean_s"] is None else f"{r['rest_mean_s']:.3f}"
            img = "-" if r["image_mean_rest_s"] is None else f"{r['image_mean_rest_s']:.3f}"
            print(f"| {r['n']} | {name} | {r['total_s']:.1f} | {r['first_s']:.2f} "
                  f"| {r['first_image_s']:.2f} | {rest} | {img} | {r['host_disk_gib']:.2f} "
                  f"| {r['ceph_gib']:.2f} |")


def plot(raw, path):
    from nova_spawn_bench import plot as plot_curves
    return plot_curves(raw, path, styles=dict(zip(MODES, ("o-", "s-", "^-", "v-"))),
                       per_instance="image", per_instance_label="root disk step (_create_image), s",
                       per_instance_title="per instance (#1: cold host)", legend_fontsize=8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,10,50", help="instance counts (default 1,10,50)")
    ap.add_argument("--size-mb", type=int, default=1024, help="rootfs data size (default 1024)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: "
                    + ", ".join(MODES))
    ap.add_argument("--port-base", type=int,
                    default=int(os.environ.get("DEVCLOUD_PORT_BASE", "29300")),
                    help="the bench Ceph's ports derive from it as in devcloud (default "
                         "$DEVCLOUD_PORT_BASE or 29300)")
    ap.add_argument("--osd-gib", type=int, default=16, help="sparse OSD file size (default 16)")
    ap.add_argument("--json", action="store_true", help="print raw results as JSON")
    ap.add_argument("--plot", metavar="PNG", help="also draw the curves (needs matplotlib)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="no run: the table (and --plot) from an earlier run's --json output")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            done = json.load(f)
        print_table(done["results"], args.size_mb, done["ceph_up_s"])
        return plot(done["raw"], args.plot) if args.plot else 0
    counts = sorted({int(c) for c in args.counts.split(",")})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if os.geteuid() != 0:
        print("needs root (a private libvirtd, Ceph)", file=sys.stderr)
        return 2
    os.environ.setdefault("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1")
    bench = Bench(args.port_base, args.osd_gib)
    from devcloud.libvirtd import Libvirtd
    lv = Libvirtd()
    raw, results = {}, {}
    workdir = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    try:
        ceph_up = bench.up()
        from nova_spawn_bench import make_rootfs

        import tests.nova.conftest  # noqa: F401  (Nova's threading bootstrap, the shim path)
        from tests.guest import images
        base = images.base_image()
        qcow2, props = make_rootfs(args.size_mb)
        raw_path = os.path.join(CACHE, os.path.basename(qcow2) + ".raw")
        if not os.path.exists(raw_path):
            subprocess.run(["qemu-img", "convert", "-O", "raw", qcow2, raw_path + ".tmp"],
                           check=True)
            os.replace(raw_path + ".tmp", raw_path)
        vsize = os.path.getsize(raw_path)
        root_gb = -(-vsize // GiB) + 1            # a flavor disk larger than the image
        lv.start()
        for mode in modes:
            t0 = time.monotonic()
            rows, base_bytes = run_mode(lv, base, bench.ceph, mode, qcow2, raw_path, props,
                                        max(counts), workdir, root_gb)
            print(f"[bench] {mode}: {len(rows)} instances in {time.monotonic() - t0:.1f}s",
                  file=sys.stderr, flush=True)
            raw[mode] = rows
            results[mode] = summarize(rows, base_bytes, counts,
                                      mode in ("rbd import (qcow2 image)", "local copy"))
    finally:
        lv.stop()
        bench.down()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"ceph_up_s": ceph_up, "results": results, "raw": raw}, indent=1))
    else:
        print_table(results, args.size_mb, ceph_up)
    if args.plot:
        return plot(raw, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
