"""Guest boot benchmark: time from QEMU process start to the entrypoint's
first output line, against the floor of the same kernel (same command
line, same machine) booting an initramfs that prints one line and powers
off at once; and the QEMU process's PSS after boot against the floor's.

    .venv/bin/python bench/guest_bench.py [--runs N] [--kernel-package PKG ...]
                                          [--json] [--plot guest.png]

TCG unless DOCKER2VM_TEST_KVM=1. Runs alternate floor/guest so host noise
hits both; medians are reported. Target: guest <= 1.2x floor. Each
``--kernel-package`` (default: the base image's, Debian's cloud kernel) is
measured with its own floor; ``--kernel-package linux-image-amd64`` gives
the generic kernel side by side.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from docker_rootfs.guest import base_image as bi  # noqa: E402
from docker_rootfs.guest import configdrive, contract, qemu  # noqa: E402
from tests.guest import images  # noqa: E402

ENTRY = "#!/bin/sh\necho entrypoint-first-line\nsleep 3\n"
TARGET = 1.2


def _pss_probe(marker, state):
    def on_line(t, line, ctl):
        if line == marker and "t" not in state:
            state["t"] = t
            time.sleep(1.0)           # let it settle, then sample
            state["pss"] = ctl.pss()
    return on_line


def measure(kernel_package, runs, memory):
    """Medians (and raw values) for one kernel: floor and guest, interleaved."""
    base = images.base_image(kernel_package)
    busybox = bi.find_busybox(str(images.CACHE))
    floor_initrd = os.path.join(os.path.dirname(base.initrd), "floor-initrd.img")
    bi.build_floor_initramfs(floor_initrd, busybox)
    archive = images.build_archive("bench", {"/bin/entry": ENTRY},
                                   {"entrypoint": ["/bin/entry"]})
    config = images.open_config(archive)
    shared = images.rootfs_disk(archive)
    work = tempfile.mkdtemp(prefix="d2v-bench-")
    try:
        files = contract.render_guest_files(config, "bench", {}, contract.RootfsDelivery.disk("root"))
        cfg = configdrive.build_config_drive(os.path.join(work, "config.iso"), files, "bench")
        floor_m = qemu.Machine(kernel=base.vmlinux, initrd=floor_initrd, cmdline=base.cmdline,
                               memory_mb=memory)
        res = {"floor_first_line": [], "floor_exit": [], "guest_first_line": [],
               "floor_pss_kib": [], "guest_pss_kib": []}
        for i in range(runs):
            b = qemu.boot(floor_m, timeout=120)
            res["floor_first_line"].append(b.first(lambda line: line == "docker2vm-floor"))
            res["floor_exit"].append(b.duration)
            disk = images.instance_disk(shared, os.path.join(work, f"disk{i}.qcow2"))
            gm = qemu.Machine(kernel=base.vmlinux, initrd=base.initrd, cmdline=base.cmdline,
                              config_drive=cfg, disks=[(str(disk), "root", "qcow2")],
                              memory_mb=memory)
            st = {}
            qemu.boot(gm, timeout=120, on_line=_pss_probe("entrypoint-first-line", st))
            res["guest_first_line"].append(st.get("t"))
            res["guest_pss_kib"].append(st.get("pss"))
        # The floor's PSS: a floor that waits instead of powering off at once.
        hold = os.path.join(work, "floor-hold.img")
        bi.build_initramfs(hold, None, busybox, None,
                           init_script=bi.FLOOR_INIT.replace("/bin/busybox poweroff -f",
                                                             "/bin/busybox sleep 3; /bin/busybox poweroff -f"))
        for _ in range(runs):
            st = {}
            qemu.boot(qemu.Machine(kernel=base.vmlinux, initrd=hold, cmdline=base.cmdline,
                                   memory_mb=memory),
                      timeout=120, on_line=_pss_probe("docker2vm-floor", st))
            res["floor_pss_kib"].append(st.get("pss"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median([x for x in v if x is not None]) for k, v in res.items()
           if any(x is not None for x in v)}
    return {
        "kernel": base.version,
        "median": med,
        "ratio_first_line": med["guest_first_line"] / med["floor_first_line"],
        "ratio_vs_floor_exit": med["guest_first_line"] / med["floor_exit"],
        "ratio_pss": med["guest_pss_kib"] / med["floor_pss_kib"],
        "raw": res,
    }


def print_table(results, runs, memory):
    print(f"accel={qemu.default_accel()} runs={runs} memory={memory}M, medians; "
          f"target: entrypoint line <= {TARGET}x the floor's line")
    print()
    print("| kernel | floor line s | entrypoint line s | ratio | floor PSS MiB | guest PSS MiB | PSS ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        m = r["median"]
        print(f"| {r['kernel']} | {m['floor_first_line']:.2f} | {m['guest_first_line']:.2f} | "
              f"{r['ratio_first_line']:.2f}x | {m['floor_pss_kib'] / 1024:.1f} | "
              f"{m['guest_pss_kib'] / 1024:.1f} | {r['ratio_pss']:.2f}x |")


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["kernel"] for r in results]
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], [r["median"]["floor_first_line"] for r in results], 0.4,
           label="floor (initramfs prints, powers off)")
    ax.bar([x + 0.2 for x in xs], [r["median"]["guest_first_line"] for r in results], 0.4,
           label="docker2vm guest: entrypoint's first line")
    for x, r in zip(xs, results):
        ax.text(x + 0.2, r["median"]["guest_first_line"], f"{r['ratio_first_line']:.2f}x",
                ha="center", va="bottom")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("seconds from QEMU start (TCG)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--kernel-package", action="append", default=None,
                    help="Debian kernel (meta) package for both floor and guest; repeat to "
                         "compare (default: the base image's, linux-image-cloud-amd64)")
    ap.add_argument("--plot", metavar="PNG", help="also draw a bar chart (needs matplotlib)")
    args = ap.parse_args(argv)
    results = [measure(k, args.runs, args.memory) for k in (args.kernel_package or [None])]
    if args.json:
        print(json.dumps({"accel": qemu.default_accel(), "runs": args.runs,
                          "target_ratio": TARGET, "results": results}, indent=1))
    else:
        print_table(results, args.runs, args.memory)
    if args.plot:
        return plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
