#!/usr/bin/env python3
"""Flatten throughput: docker2vm flatten vs umoci unpack vs podman export.

Builds (once, cached in .cache/bench/) a ~550 MB two-layer image with real
tools (buildah from scratch + copy, then buildah push to docker-archive and
oci-archive with gzip layers), then times, in one run, on the same image:

* docker2vm flatten   docker-archive -> rootfs tar
* docker2vm flatten   oci-archive (gzip layers) -> rootfs tar
* umoci unpack        OCI layout dir (gzip layers) -> rootfs dir (the layout
                      is unpacked from the same oci-archive beforehand; that
                      step is not counted for umoci)
* podman export       of a created container (podman load is timed
                      separately: it is what podman needs before exporting)

Prints wall time, MB/s (image uncompressed bytes / wall), peak RSS. With
--plot FILE draws a bar chart (needs matplotlib).

    .venv/bin/python bench/flatten_bench.py [--size-mb 550] [--repeat 1] [--plot out.png]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(TOP, ".cache", "bench")
VENV_BIN = os.path.join(TOP, ".venv", "bin")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def make_tree(root, size_mb, seed):
    """Many small files plus some large ones, compressible like real images."""
    rnd = random.Random(seed)
    words = [bytes(rnd.getrandbits(8) for _ in range(64)) for _ in range(256)]
    total = 0
    target = size_mb * 1024 * 1024
    i = 0
    while total < target:
        d = os.path.join(root, f"d{i % 97:02d}", f"s{i % 13}")
        os.makedirs(d, exist_ok=True)
        size = rnd.choice([512, 2048, 8192, 30000]) if i % 50 else rnd.choice([2, 8]) * 1024 * 1024
        chunk = b"".join(rnd.choice(words) for _ in range(256))  # 16 KiB, ~3x compressible
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            left = size
            while left > 0:
                f.write(chunk[:left])
                left -= len(chunk)
        total += size
        i += 1
    return i, total


def build_image(size_mb):
    tag = f"bench-{size_mb}"
    out = os.path.join(CACHE, tag)
    docker_archive = os.path.join(out, "image-docker.tar")
    oci_archive = os.path.join(out, "image-oci-gzip.tar")
    if os.path.exists(oci_archive):
        return docker_archive, oci_archive
    os.makedirs(out, exist_ok=True)
    store = os.path.join(out, "storage")
    b = ["buildah", "--root", store + "/root", "--runroot", store + "/run"]
    t0 = time.time()
    layers = []
    for n, share in enumerate((0.6, 0.4)):
        tree = os.path.join(out, f"tree{n}")
        files, total = make_tree(tree, int(size_mb * share), seed=n)
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
    print(f"bench: built test image in {time.time() - t0:.0f}s", file=sys.stderr)
    return docker_archive, oci_archive


def timed(cmd, env=None):
    """Run cmd; return (wall seconds, peak RSS MiB) of it and its children."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {err.strip()[-500:]}")
    return wall, ru.ru_maxrss / 1024


def uncompressed_bytes(docker_archive):
    import tarfile
    with tarfile.open(docker_archive) as tf:
        return sum(m.size for m in tf if m.name.endswith(".tar") or "/layer" in m.name)


def run(args):
    docker_archive, oci_archive = build_image(args.size_mb)
    work = os.path.join(CACHE, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    size = uncompressed_bytes(docker_archive)
    d2v = os.path.join(VENV_BIN, "docker2vm")
    rows = []

    def add(name, cmd, prepare=None, cleanup=None):
        best = None
        for _ in range(args.repeat):
            if prepare:
                prepare()
            r = timed(cmd)
            best = r if best is None or r[0] < best[0] else best
            if cleanup:
                cleanup()
        rows.append((name, best[0], size / best[0] / 1e6, best[1]))
        print(f"bench: {name}: {best[0]:.2f}s", file=sys.stderr)

    out_tar = os.path.join(work, "rootfs.tar")
    add("docker2vm flatten (docker-archive)",
        [d2v, "flatten", "--no-progress", docker_archive, "-o", out_tar])
    add("docker2vm flatten (oci-archive, gzip)",
        [d2v, "flatten", "--no-progress", oci_archive, "-o", out_tar])
    os.unlink(out_tar)

    layout = os.path.join(work, "oci")
    os.makedirs(layout)
    sh(["tar", "-xf", oci_archive, "-C", layout])
    bundle = os.path.join(work, "bundle")
    add("umoci unpack (oci layout, gzip)",
        ["umoci", "unpack", "--image", f"{layout}:bench-{args.size_mb}", bundle],
        cleanup=lambda: shutil.rmtree(bundle))
    shutil.rmtree(layout)

    store = os.path.join(work, "podman")
    p = ["podman", "--root", store + "/root", "--runroot", store + "/run"]

    def podman_load():
        shutil.rmtree(store, ignore_errors=True)
        sh(p + ["load", "-q", "-i", docker_archive], capture_output=True)
    add("podman load (docker-archive)", p + ["load", "-q", "-i", docker_archive],
        prepare=lambda: shutil.rmtree(store, ignore_errors=True))
    cid = sh(p + ["create", f"localhost/bench-{args.size_mb}:latest", "/bin/sh"],
             capture_output=True, text=True).stdout.strip()
    add("podman export (created container)", p + ["export", "-o", out_tar, cid],
        cleanup=lambda: os.unlink(out_tar))
    sh(p + ["rm", cid], capture_output=True)
    shutil.rmtree(store, ignore_errors=True)

    print(f"\nImage: {size / 1e6:.0f} MB uncompressed in 2 layers; best of {args.repeat}; "
          f"{os.cpu_count()} cores\n")
    print(f"| {'tool':<40} | {'wall s':>7} | {'MB/s':>7} | {'peak RSS MiB':>12} |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
    for name, wall, mbs, rss in rows:
        print(f"| {name:<40} | {wall:7.2f} | {mbs:7.1f} | {rss:12.0f} |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh([r[0] for r in rows], [r[2] for r in rows])
        ax.set_xlabel("MB/s (higher is better)")
        ax.set_title(f"Flatten throughput, {size / 1e6:.0f} MB image")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"\nplot written to {args.plot}")
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=550)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--plot", help="write a PNG bar chart here")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
