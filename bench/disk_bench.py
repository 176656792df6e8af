#!/usr/bin/env python3
"""Benchmark: flattened tar -> ext4-in-qcow2, three ways, side by side.

    python bench/disk_bench.py [--sizes 100,1000] [--skip-guestfs-above MB] [--plot out.png]

For each generated image (many small files, sizes from a log-normal
distribution, like a distro userland) it runs, from the same flattened tar:

* ``docker2vm ext2fs``: this project's fast builder, as the unprivileged user
  ``nobody`` (setpriv), with its default e2fsck -fn check, to qcow2;
* ``virt-make-fs``: libguestfs (TCG unless DOCKER2VM_TEST_KVM=1), to qcow2;
* ``root tar+mke2fs -d``: the hand pipeline run as root: GNU tar -x
  (--numeric-owner --xattrs), mke2fs -t ext4 -b 4096 -d DIR (same size),
  qemu-img convert -O qcow2.

and prints wall time, MB/s (tar bytes / wall time), peak RSS (largest process
of the run, GNU time %M) and output size. Page caches are dropped before each
run when running as root. Needs root (setpriv, tar as root, drop_caches).
"""

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(TOP, ".cache", "bench-disk")
MiB = 1024 * 1024


def make_tar(path, total_mb, seed=7):
    """A flattened tar of ~total_mb MB in many small files (median ~3 KB)."""
    rng = random.Random(seed)
    pool = rng.randbytes(8 * MiB)
    target = total_mb * MiB
    size = n = 0
    tmp = path + ".part"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        def d(name):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1600000000
            tf.addfile(ti)
        for name in ("usr", "usr/share", "usr/lib"):
            d(name)
        while size < target:
            if n % 150 == 0:
                dn = f"usr/{'share' if n % 300 else 'lib'}/pkg{n // 150:05d}"
                d(dn)
            sz = min(int(rng.lognormvariate(8, 1.6)), 8 * MiB - 1)
            off = rng.randrange(0, len(pool) - sz)
            ti = tarfile.TarInfo(f"{dn}/file-{n:07d}")
            ti.size, ti.mode, ti.mtime = sz, 0o644 if n % 7 else 0o755, 1600000000 + n
            tf.addfile(ti, io.BytesIO(pool[off:off + sz]))
            n += 1
            size += sz
    os.replace(tmp, path)
    return n


def drop_caches():
    if os.geteuid() == 0:
        subprocess.run(["sync"])
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            pass


def timed(argv, env=None, cwd=None):
    """(wall seconds, peak RSS MB) of argv run under GNU time."""
    drop_caches()
    t = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M"] + argv, env=env, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode()[-800:]}")
    peak_kb = int(proc.stderr.decode().strip().splitlines()[-1])
    return wall, peak_kb / 1024


def run_ours(tar, out, work):
    code = ("import sys; from docker_rootfs.disk import build_disk, DiskOptions;"
            "build_disk(sys.argv[1], sys.argv[2], DiskOptions(builder='ext2fs', tmp_dir=sys.argv[3]),"
            " digest='sha256:' + '0' * 64)")
    env = dict(os.environ, PYTHONPATH=TOP, HOME=work)
    argv = [sys.executable, "-c", code, tar, out, work]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + argv
    return timed(argv, env=env, cwd=work)


def geometry(tar):
    """(size MB, inode count) docker2vm computes: the hand pipeline gets the same
    (with mke2fs's default 16 KiB/inode the 1 GB image runs out of inodes)."""
    sys.path.insert(0, TOP)
    from docker_rootfs.disk import DiskOptions, sizing, tarscan
    _, stats = tarscan.scan(tar)
    g = sizing.compute(stats, DiskOptions())
    return g.size_bytes // MiB, g.inodes


def run_virt_make_fs(tar, out, work, size_mb, inodes):
    # virt-make-fs cannot set the inode count; mkfs's default is one inode per
    # 16 KiB, so give it a disk big enough for the image's inodes.
    size_mb = max(size_mb, int(inodes * 16384 * 1.1) // MiB)
    env = dict(os.environ)
    if not os.environ.get("DOCKER2VM_TEST_KVM"):
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return timed(["virt-make-fs", "--format=qcow2", "--type=ext4", f"--size={size_mb}M",
                  tar, out], env=env, cwd=work)


def run_hand(tar, out, work, size_mb, inodes):
    root = os.path.join(work, "root")
    raw = os.path.join(work, "hand.raw")
    script = (f"set -e; mkdir {root}; tar --numeric-owner --xattrs --xattrs-include='*' "
              f"-xpf {tar} -C {root}; truncate -s {size_mb}M {raw}; "
              f"mke2fs -q -F -t ext4 -b 4096 -N {inodes} -d {root} {raw}; "
              f"qemu-img convert -f raw -O qcow2 {raw} {out}; rm -rf {root} {raw}")
    return timed(["sh", "-c", script], cwd=work)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="image sizes in MB (default 100,1000)")
    ap.add_argument("--skip-guestfs-above", type=int, default=10 ** 9, metavar="MB",
                    help="do not run virt-make-fs for images bigger than this")
    ap.add_argument("--plot", metavar="PNG", help="also draw a bar chart (needs matplotlib)")
    args = ap.parse_args(argv)
    os.makedirs(CACHE, exist_ok=True)
    rows = []
    for mb in (int(x) for x in args.sizes.split(",")):
        tar = os.path.join(CACHE, f"image-{mb}mb.tar")
        if not os.path.exists(tar):
            print(f"generating {tar} ...", file=sys.stderr)
            make_tar(tar, mb)
        os.chmod(tar, 0o644)
        os.chmod(os.path.dirname(tar), 0o755)
        tar_mb = os.path.getsize(tar) / MiB
        with tarfile.open(tar) as tf:
            nfiles = sum(1 for _ in tf)
        size_mb, inodes = geometry(tar)
        runs = [("docker2vm ext2fs (nobody)", lambda o, w: run_ours(tar, o, w)),
                ("root tar+mke2fs -d+qemu-img", lambda o, w: run_hand(tar, o, w, size_mb, inodes))]
        if shutil.which("virt-make-fs") and mb <= args.skip_guestfs_above:
            runs.append(("virt-make-fs (TCG)", lambda o, w: run_virt_make_fs(tar, o, w, size_mb, inodes)))
        for name, fn in runs:
            work = tempfile.mkdtemp(prefix="d2v-bench-")
            os.chmod(work, 0o777)
            out = os.path.join(work, "out.qcow2")
            try:
                wall, peak = fn(out, work)
                rows.append((f"{mb} MB / {nfiles} entries", name, wall, tar_mb / wall, peak,
                             os.path.getsize(out) / MiB))
                print(f"  {name}: {wall:.1f} s", file=sys.stderr)
            except RuntimeError as exc:
                print(f"  {name}: FAILED {exc}", file=sys.stderr)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print("| image | method | wall s | MB/s | peak RSS MB | qcow2 MB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} |")
    by_image = {}
    for r in rows:
        by_image.setdefault(r[0], {})[r[1]] = r[2]
    for image, t in by_image.items():
        ours = t.get("docker2vm ext2fs (nobody)")
        hand = t.get("root tar+mke2fs -d+qemu-img")
        vmf = t.get("virt-make-fs (TCG)")
        bits = []
        if ours and hand:
            bits.append(f"ours/root-pipeline = {ours / hand:.2f}x (target <= 1.3x)")
        if ours and vmf:
            bits.append(f"virt-make-fs/ours = {vmf / ours:.1f}x (target >= 10x)")
        print(f"{image}: " + "; ".join(bits))
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
            return 0
        images = list(by_image)
        methods = sorted({r[1] for r in rows})
        fig, ax = plt.subplots(figsize=(8, 4))
        w = 0.8 / len(methods)
        for i, m in enumerate(methods):
            ax.bar([x + i * w for x in range(len(images))],
                   [by_image[im].get(m, 0) for im in images], w, label=m)
        ax.set_xticks([x + 0.4 - w / 2 for x in range(len(images))], images)
        ax.set_ylabel("wall time (s)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
