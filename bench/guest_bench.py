"""Guest boot benchmark: time from QEMU process start to the entrypoint's
first output line, against the floor of the same kernel (same command
line, same machine) booting an initramfs that prints one line and powers
off at once; and the QEMU process's PSS after boot against the floor's.

    .venv/bin/python bench/guest_bench.py [--runs N] [--json]

TCG unless DOCKER2VM_TEST_KVM=1. Runs alternate floor/guest so host noise
hits both; medians are reported. Target: guest <= 1.2x floor.
"""

import argparse
import json
import os
import statistics
import sys
import shutil
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from docker_rootfs.guest import base_image as bi  # noqa: E402
from docker_rootfs.guest import configdrive, contract, qemu  # noqa: E402
from tests.guest import images  # noqa: E402

ENTRY = "#!/bin/sh\necho entrypoint-first-line\nsleep 3\n"


def _pss_probe(marker, state):
    def on_line(t, line, ctl):
        if line == marker and "t" not in state:
            state["t"] = t
            time.sleep(1.0)           # let it settle, then sample
            state["pss"] = ctl.pss()
    return on_line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--kernel-package", default=None,
                    help="Debian kernel package for both floor and guest (default: the base image's)")
    args = ap.parse_args(argv)

    base = images.base_image(args.kernel_package)
    floor_initrd = os.path.join(images.CACHE, "base", "floor-initrd.img")
    bi.build_floor_initramfs(floor_initrd, bi.find_busybox(str(images.CACHE)))
    archive = images.build_archive("bench", {"/bin/entry": ENTRY},
                                   {"entrypoint": ["/bin/entry"]})
    config = images.open_config(archive)
    shared = images.rootfs_disk(archive)
    work = tempfile.mkdtemp(prefix="d2v-bench-")
    try:
        files = contract.render_guest_files(config, "bench", {}, contract.RootfsDelivery.disk("root"))
        cfg = configdrive.build_config_drive(os.path.join(work, "config.iso"), files, "bench")

        floor_m = qemu.Machine(kernel=base.vmlinux, initrd=floor_initrd, cmdline=base.cmdline,
                               memory_mb=args.memory)
        res = {"floor_first_line": [], "floor_exit": [], "guest_first_line": [],
               "floor_pss_kib": [], "guest_pss_kib": []}
        for i in range(args.runs):
            b = qemu.boot(floor_m, timeout=120)
            res["floor_first_line"].append(b.first(lambda l: l == "docker2vm-floor"))
            res["floor_exit"].append(b.duration)
            disk = images.instance_disk(shared, os.path.join(work, f"disk{i}.qcow2"))
            gm = qemu.Machine(kernel=base.vmlinux, initrd=base.initrd, cmdline=base.cmdline,
                              config_drive=cfg, disks=[(str(disk), "root", "qcow2")],
                              memory_mb=args.memory)
            st = {}
            b = qemu.boot(gm, timeout=120, on_line=_pss_probe("entrypoint-first-line", st))
            res["guest_first_line"].append(st.get("t"))
            res["guest_pss_kib"].append(st.get("pss"))
        # The floor's PSS: a floor that waits instead of powering off at once.
        hold = os.path.join(work, "floor-hold.img")
        bi.build_initramfs(hold, None, bi.find_busybox(str(images.CACHE)), None,
                           init_script=bi.FLOOR_INIT.replace("/bin/busybox poweroff -f",
                                                             "/bin/busybox sleep 3; /bin/busybox poweroff -f"))
        for _ in range(args.runs):
            st = {}
            qemu.boot(qemu.Machine(kernel=base.vmlinux, initrd=hold, cmdline=base.cmdline,
                                   memory_mb=args.memory),
                      timeout=120, on_line=_pss_probe("docker2vm-floor", st))
            res["floor_pss_kib"].append(st.get("pss"))

        med = {k: statistics.median([x for x in v if x is not None]) for k, v in res.items()
               if any(x is not None for x in v)}
        summary = {
            "accel": qemu.default_accel(),
            "runs": args.runs,
            "median": med,
            "ratio_first_line": med["guest_first_line"] / med["floor_first_line"],
            "ratio_vs_floor_exit": med["guest_first_line"] / med["floor_exit"],
            "ratio_pss": med["guest_pss_kib"] / med["floor_pss_kib"],
            "target_ratio": 1.2,
            "raw": res,
        }
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            print(f"accel={summary['accel']} runs={args.runs} memory={args.memory}M "
                  f"kernel={base.version} (medians)")
            print(f"  floor: first line {med['floor_first_line']:.2f}s, qemu exit {med['floor_exit']:.2f}s, "
                  f"PSS {med['floor_pss_kib'] / 1024:.1f} MiB")
            print(f"  guest: entrypoint first line {med['guest_first_line']:.2f}s, "
                  f"PSS {med['guest_pss_kib'] / 1024:.1f} MiB")
            print(f"  ratio (entrypoint line / floor line): {summary['ratio_first_line']:.2f}x "
                  f"(target <= 1.2x); vs floor exit {summary['ratio_vs_floor_exit']:.2f}x; "
                  f"PSS {summary['ratio_pss']:.2f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
