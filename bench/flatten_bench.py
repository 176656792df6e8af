#!/usr/bin/env python3
"""Flatten and convert throughput against the floor of reading the bytes once.

Builds (once, cached in .cache/bench/) a two-layer image with real tools
(buildah from scratch + copy, then buildah push to docker-archive and
oci-archive with gzip layers, and skopeo to zstd layers): ~550 MB with a mix
of small and multi-MB files (``--profile mixed``, the default) or ~1 GB in
~100k small files (``--profile many``). Then times, in one run, on the same
archives:

* floor               per archive, in this process, single-threaded: each
                      layer blob read once, sha256 of the stored bytes,
                      one-pass decompression (zlib / zstandard), sha256 of the
                      result, the uncompressed bytes written once to a file.
                      Any verifying reader must do at least this work.
* docker2vm flatten   archive -> rootfs tar, for each archive
* docker2vm convert   archive -> ext4 qcow2 (unprivileged), for each archive
* the same two commands of an older revision (``--baseline-rev REV``, run
  from a temporary git worktree): "before" in the same run
* umoci unpack        OCI layout dir (gzip layers) -> rootfs dir (the layout
                      is unpacked from the same oci-archive beforehand; that
                      step is not counted for umoci)
* podman export       of a created container (podman load is timed
                      separately: it is what podman needs before exporting)

The floor and docker2vm's commands run interleaved, one round after the
other, best of ``--repeat`` each, so a change of the machine's load hits
them alike. Prints wall time, MB/s (image uncompressed bytes / wall), peak
RSS (of the command and the tools it ran), the ratio to the floor of the
same archive, and the 1-minute load average when the best run started. With --plot FILE draws a bar chart
(needs matplotlib).

    .venv/bin/python bench/flatten_bench.py [--size-mb 550] [--profile mixed|many]
        [--repeat 3] [--baseline-rev f5f3c63] [--skip-tools] [--plot out.png]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(TOP, ".cache", "bench")
VENV_BIN = os.path.join(TOP, ".venv", "bin")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def make_tree(root, size_mb, seed, profile="mixed"):
    """Many small files plus some large ones, compressible like real images;
    profile "many": small files only (~10 KB on average)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.getrandbits(8) for _ in range(64)) for _ in range(256)]
    total = 0
    target = size_mb * 1024 * 1024
    i = 0
    while total < target:
        d = os.path.join(root, f"d{i % 97:02d}", f"s{i % 13}")
        os.makedirs(d, exist_ok=True)
        size = rnd.choice([512, 2048, 8192, 30000])
        if profile == "mixed" and i % 50 == 0:
            size = rnd.choice([2, 8]) * 1024 * 1024
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            left = size
            while left > 0:
                # A fresh 16 KiB of random words each time: ~3-6x compressible
                # by gzip and zstd alike (a repeated chunk made zstd's
                # long-range matching see a 280x "bomb").
                chunk = b"".join(rnd.choices(words, k=256))
                f.write(chunk[:left])
                left -= len(chunk)
        total += size
        i += 1
    return i, total


def bench_tag(size_mb, profile):
    return f"bench2-{size_mb}-{profile}"   # bench2: the data generator of 2026-12


def build_image(size_mb, profile="mixed"):
    tag = bench_tag(size_mb, profile)
    out = os.path.join(CACHE, tag)
    docker_archive = os.path.join(out, "image-docker.tar")
    oci_archive = os.path.join(out, "image-oci-gzip.tar")
    zstd_archive = os.path.join(out, "image-oci-zstd.tar")
    if os.path.exists(oci_archive):
        if not os.path.exists(zstd_archive):
            sh(["skopeo", "copy", "-q", "--dest-compress-format", "zstd", "--dest-compress",
                "oci-archive:" + oci_archive, "oci-archive:" + zstd_archive + f":{tag}"])
        return docker_archive, oci_archive, zstd_archive
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "storage")
    b = ["buildah", "--root", store + "/root", "--runroot", store + "/run"]
    t0 = time.time()
    layers = []
    for n, share in enumerate((0.6, 0.4)):
        tree = os.path.join(out, f"tree{n}")
        files, total = make_tree(tree, int(size_mb * share), seed=n, profile=profile)
        layers.append(tree)
        print(f"bench: layer {n + 1}: {files} files, {total / 1e6:.0f} MB", file=sys.stderr)
    ctr = sh(b + ["from", "scratch"], capture_output=True, text=True).stdout.strip()
    for n, tree in enumerate(layers):
        sh(b + ["copy", "--quiet", ctr, tree, f"/data{n}"])
        sh(b + ["commit", "--quiet", ctr, f"{tag}:l{n}"], capture_output=True)
    sh(b + ["config", "--cmd", "/bin/sh", ctr])
    sh(b + ["commit", "--quiet", ctr, f"{tag}:latest"], capture_output=True)
    sh(b + ["push", "--quiet", f"{tag}:latest", "docker-archive:" + docker_archive + f":{tag}:latest"])
    sh(b + ["push", "--quiet", "--compression-format", "gzip", f"{tag}:latest",
            "oci-archive:" + oci_archive + f":{tag}"])
    for tree in layers:
        shutil.rmtree(tree)
    shutil.rmtree(store, ignore_errors=True)
    sh(["skopeo", "copy", "-q", "--dest-compress-format", "zstd", "--dest-compress",
        "oci-archive:" + oci_archive, "oci-archive:" + zstd_archive + f":{tag}"])
    print(f"bench: built test image in {time.time() - t0:.0f}s", file=sys.stderr)
    return docker_archive, oci_archive, zstd_archive


def floor(archive, out_path):
    """The floor of any verifying reader, single-threaded (see the module doc)."""
    import hashlib
    import tarfile
    import zlib

    import zstandard
    t0 = time.perf_counter()
    c0 = time.process_time()
    with tarfile.open(archive) as tf, open(out_path, "wb") as out:
        for m in tf:
            if not m.isreg() or not (m.name.startswith("blobs/") or m.name.endswith(".tar")):
                continue
            f = tf.extractfile(m)
            head = f.read(4)
            if head.startswith(b"\x1f\x8b"):
                d = zlib.decompressobj(31)
                decompress = d.decompress
            elif head.startswith(b"\x28\xb5\x2f\xfd"):
                decompress = zstandard.ZstdDecompressor().decompressobj().decompress
            elif m.size > 65536:
                decompress = bytes
            else:
                continue        # config / manifest JSON
            stored, plain = hashlib.sha256(), hashlib.sha256()
            buf = head
            while buf:
                stored.update(buf)
                data = decompress(buf)
                plain.update(data)
                out.write(data)
                buf = f.read(1 << 20)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    os.unlink(out_path)
    return wall, cpu


TIME = "/usr/bin/time"   # GNU time (Debian package time)


def timed(cmd, env=None, cwd=None):
    """Run cmd; return (wall seconds, peak RSS MiB, CPU seconds) of it and
    its children.

    The peak RSS comes from GNU time, a small process that forks the
    command: a child forked straight from this benchmark would count the
    benchmark's own memory (its RSS at fork time) as its peak."""
    rss_file = None
    if os.path.exists(TIME):
        fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
        os.close(fd)
        cmd = [TIME, "-f", "%M", "-o", rss_file] + list(cmd)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    rss = ru.ru_maxrss / 1024
    cpu = ru.ru_utime + ru.ru_stime
    if rss_file:
        with open(rss_file) as f:
            lines = f.read().split()
        os.unlink(rss_file)
        rss = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")
    if p.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {err.strip()[-500:]}")
    return wall, rss, cpu


def uncompressed_bytes(docker_archive):
    import tarfile
    with tarfile.open(docker_archive) as tf:
        return sum(m.size for m in tf if m.name.endswith(".tar") or "/layer" in m.name)


def worktree(rev):
    """A temporary checkout of ``rev``; returns (dir, python env running it)."""
    path = os.path.join(CACHE, f"rev-{rev}")
    if not os.path.isdir(path):
        sh(["git", "-C", TOP, "worktree", "add", "--detach", "-f", path, rev],
           capture_output=True)
    env = dict(os.environ, PYTHONPATH=path)
    return path, env


def run(args):
    docker_archive, oci_archive, zstd_archive = build_image(args.size_mb, args.profile)
    tag = bench_tag(args.size_mb, args.profile)
    work = os.path.join(CACHE, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    size = uncompressed_bytes(docker_archive)
    python = os.path.join(VENV_BIN, "python")
    rows = []
    floors = {}

    def add(name, cmd, prepare=None, cleanup=None, env=None, archive=None):
        best = None
        for _ in range(args.repeat):
            if prepare:
                prepare()
            load = os.getloadavg()[0]
            # python -m puts the working directory first on sys.path: run
            # an older revision from its own worktree.
            r = timed(cmd, env=env, cwd=env.get("PYTHONPATH") if env else None) + (load,)
            best = r if best is None or r[0] < best[0] else best
            if cleanup:
                cleanup()
        rows.append((name, best[0], size / best[0] / 1e6, best[1], archive, best[3], best[2]))
        print(f"bench: {name}: {best[0]:.2f}s", file=sys.stderr)

    out_tar = os.path.join(work, "rootfs.tar")
    out_disk = os.path.join(work, "rootfs.qcow2")
    archives = [(label, path) for label, path in
                (("docker-archive", docker_archive), ("oci gzip", oci_archive),
                 ("oci zstd", zstd_archive))
                if label.split()[-1] in args.archives.split(",")]
    versions = [("now", None)]
    if args.baseline_rev:
        versions.append((args.baseline_rev, worktree(args.baseline_rev)[1]))
    # The floor and docker2vm's commands run interleaved, round after round
    # (best of --repeat each), so a change in the machine's load hits them
    # alike and their ratios stay meaningful.
    jobs = []
    for label, path in archives:
        jobs.append((f"floor ({label})", label, None, None, None))
        for version, env in versions:
            suffix = "" if env is None else f" [{version}]"
            jobs.append((f"docker2vm flatten ({label}){suffix}", label, env, out_tar,
                         [python, "-m", "docker_rootfs.cli", "flatten", "--no-progress", path,
                          "-o", out_tar]))
            jobs.append((f"docker2vm convert ({label}){suffix}", label, env, out_disk,
                         [python, "-m", "docker_rootfs.cli", "convert", "--no-progress", path,
                          "-o", out_disk]))
    paths = dict(archives)
    best = {}
    for _ in range(args.repeat):
        for name, label, env, out, cmd in jobs:
            load = os.getloadavg()[0]
            if cmd is None:
                wall, cpu = floor(paths[label], out_tar)
                r = (wall, 0, cpu, load)
            else:
                r = timed(cmd, env=env, cwd=env.get("PYTHONPATH") if env else None) + (load,)
                os.unlink(out)
            if name not in best or r[0] < best[name][0]:
                best[name] = r
            print(f"bench: {name}: {r[0]:.2f}s (load {load:.1f})", file=sys.stderr)
    for name, label, *_ in jobs:
        wall, rss, cpu, load = best[name]
        if name.startswith("floor"):
            floors[label] = wall
        rows.append((name, wall, size / wall / 1e6, rss, label, load, cpu))
    if args.skip_tools:
        report(args, rows, floors, size)
        shutil.rmtree(work, ignore_errors=True)
        return

    layout = os.path.join(work, "oci")
    os.makedirs(layout)
    sh(["tar", "-xf", oci_archive, "-C", layout])
    bundle = os.path.join(work, "bundle")
    add("umoci unpack (oci layout, gzip)",
        ["umoci", "unpack", "--image", f"{layout}:{tag}", bundle],
        cleanup=lambda: shutil.rmtree(bundle), archive="oci gzip")
    shutil.rmtree(layout)

    store = os.path.join(work, "podman")
    p = ["podman", "--root", store + "/root", "--runroot", store + "/run"]

    def podman_load():
        shutil.rmtree(store, ignore_errors=True)
        sh(p + ["load", "-q", "-i", docker_archive], capture_output=True)
    add("podman load (docker-archive)", p + ["load", "-q", "-i", docker_archive],
        prepare=lambda: shutil.rmtree(store, ignore_errors=True))
    cid = sh(p + ["create", f"localhost/{tag}:latest", "/bin/sh"],
             capture_output=True, text=True).stdout.strip()
    add("podman export (created container)", p + ["export", "-o", out_tar, cid],
        cleanup=lambda: os.unlink(out_tar), archive="docker-archive")
    sh(p + ["rm", cid], capture_output=True)
    shutil.rmtree(store, ignore_errors=True)

    report(args, rows, floors, size)
    shutil.rmtree(work, ignore_errors=True)


def report(args, rows, floors, size):
    print(f"\nImage: {size / 1e6:.0f} MB uncompressed in 2 layers ({args.profile}); "
          f"best of {args.repeat}; {os.cpu_count()} cores; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print(f"| {'tool':<46} | {'wall s':>7} | {'MB/s':>7} | {'peak RSS MiB':>12} | {'x floor':>7} "
          f"| {'CPU s':>6} | {'load':>5} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 9}|{'-' * 14}|{'-' * 9}|{'-' * 8}|{'-' * 7}|")
    for name, wall, mbs, rss, archive, load, cpu in rows:
        ratio = f"{wall / floors[archive]:.2f}" if archive in floors else ""
        print(f"| {name:<46} | {wall:7.2f} | {mbs:7.1f} | {rss:12.0f} | {ratio:>7} | {cpu:6.2f} "
              f"| {load:5.1f} |")
    print("\n(CPU s: user + system time of the best run, all threads and child processes; "
          "load: the 1-minute load average when it started; the floor runs in the "
          "benchmark's own process, so its peak RSS is not measured)")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5))
        colors = ["0.6" if r[0].startswith("floor") else "tab:orange" if "[" in r[0] else "tab:blue"
                  for r in rows]
        bars = ax.barh([r[0] for r in rows], [r[2] for r in rows], color=colors)
        for bar, (name, wall, mbs, rss, archive, *_) in zip(bars, rows):
            if archive in floors and not name.startswith("floor"):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                        f" {wall / floors[archive]:.2f}x floor", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("MB/s (higher is better); grey: floor, orange: before (baseline revision)")
        ax.set_title(f"Flatten and convert throughput, {size / 1e6:.0f} MB image "
                     f"(best of {args.repeat}, one run)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nplot written to {args.plot}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=550)
    ap.add_argument("--profile", choices=("mixed", "many"), default="mixed",
                    help="mixed: small and multi-MB files; many: ~10 KB files only")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--baseline-rev", help="also time this git revision's flatten and convert")
    ap.add_argument("--skip-tools", action="store_true", help="skip umoci and podman")
    ap.add_argument("--archives", default="docker-archive,gzip,zstd",
                    help="which archives of the image to time (docker-archive,gzip,zstd)")
    ap.add_argument("--plot", help="write a PNG bar chart here")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
