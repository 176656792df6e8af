"""Bundle benchmark (Approach 3 against Approach 2, same run).

Build: for the same archives, ``docker2vm bundle`` (build_bundle: rootfs +
boot partition + qcow2) against ``docker2vm convert`` (build_disk: the
rootfs qcow2 alone): wall time and file size. The base VM (kernel +
initramfs) is built once beforehand and is not counted.

Boot: QEMU start to the entrypoint's first line, interleaved runs of

* ``direct vmlinux``: Approach 2 as the docker2vm driver boots it (PVH
  ``-kernel vmlinux`` + initramfs, config drive, rootfs disk);
* ``direct vmlinuz``: the same with the compressed bzImage (what the
  bundle's bootloaders load), to separate the decompression cost;
* ``bundle BIOS``: the bundle alone under SeaBIOS (mbr.bin -> syslinux);
* ``bundle UEFI``: the bundle alone under OVMF (GRUB's BOOTX64.EFI).

Every guest gets the same config drive (virtio) and one NIC. For each boot
the time before the kernel runs ("pre-kernel": firmware, bootloader,
reading the kernel and initrds, decompression) is the QEMU time of the
kernel's last line minus that line's printk timestamp.

    .venv/bin/python bench/bundle_bench.py [--runs 5] [--sizes 0,100] [--json] [--plot bundle.png]

TCG unless DOCKER2VM_TEST_KVM=1. Medians are reported.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from docker_rootfs.archive import open_image  # noqa: E402
from docker_rootfs.disk import build_disk  # noqa: E402
from docker_rootfs.disk.options import DiskOptions  # noqa: E402
from docker_rootfs.guest import bundle, configdrive, contract, qemu  # noqa: E402
from tests.guest import images  # noqa: E402

OVMF = "/usr/share/ovmf/OVMF.fd"
ENTRY = "#!/bin/sh\necho entrypoint-first-line\n"
TARGET = 1.5
KINDS = ("direct vmlinux", "direct vmlinuz", "bundle BIOS", "bundle UEFI")
PRINTK = re.compile(r"\[\s*(\d+\.\d+)\]")


@dataclasses.dataclass
class FirmwareMachine(qemu.Machine):
    firmware: str = ""

    def command(self, workdir, monitor=None):
        cmd = super().command(workdir, monitor)
        return cmd[:1] + (["-bios", self.firmware] if self.firmware else []) + cmd[1:]


def _archive(size_mb):
    files = {"/bin/entry": ENTRY}
    if size_mb:
        # Incompressible-looking text (qcow2 clusters are not compressed either way).
        import random
        rnd = random.Random(size_mb)
        for i in range(max(1, size_mb // 10)):
            files[f"/data/blob{i}"] = "".join(rnd.choices("0123456789abcdef", k=10 * 2**20))
    return images.build_archive(f"bundle-bench-{size_mb}", files, {"entrypoint": ["/bin/entry"]})


def measure_build(archive, base, runs, work):
    res = {"convert_s": [], "bundle_s": []}
    for i in range(runs):
        with open_image(str(archive)) as img:
            t = time.monotonic()
            d = build_disk(img.flatten, os.path.join(work, "disk.qcow2"), DiskOptions(),
                           digest=img.config.config_digest, created=img.created)
            res["convert_s"].append(time.monotonic() - t)
        with open_image(str(archive)) as img:
            t = time.monotonic()
            b = bundle.build_bundle(img.flatten, os.path.join(work, "app.qcow2"), img.config,
                                    img.config.config_digest, created=img.created, base=base)
            res["bundle_s"].append(time.monotonic() - t)
    med = {k: statistics.median(v) for k, v in res.items()}
    med.update(convert_file_mib=d.file_size / 2**20, convert_virtual_mib=d.virtual_size / 2**20,
               bundle_file_mib=b.file_size / 2**20, bundle_virtual_mib=b.virtual_size / 2**20,
               esp_mib=b.esp_size / 2**20)
    return med, os.path.join(work, "disk.qcow2"), os.path.join(work, "app.qcow2")


def _boot_times(boot):
    """(entrypoint's line, time before the kernel, GRUB's first line or None)."""
    first = boot.first(lambda line: line.endswith("entrypoint-first-line"))
    grub = boot.first(lambda line: "Welcome to GRUB" in line)
    pre = None
    for t, line in reversed(boot.lines):
        m = PRINTK.search(line)
        if m:
            pre = t - float(m.group(1))
            break
    return first, pre, grub


def measure_boot(base, disk, app, cfg, runs, work):
    res = {k: {"first": [], "pre": [], "grub": []} for k in KINDS}
    for i in range(runs):
        for kind in KINDS:
            inst = images.instance_disk(app if kind.startswith("bundle") else disk,
                                        os.path.join(work, f"inst-{i}.qcow2"))
            if kind.startswith("direct"):
                kernel = base.vmlinux if kind.endswith("vmlinux") else base.kernel
                m = FirmwareMachine(kernel=kernel,
                                    initrd=base.initrd, cmdline=base.cmdline, config_drive=cfg,
                                    disks=[(str(inst), "root", "qcow2")])
            else:
                m = FirmwareMachine(kernel="", boot_disk=str(inst), config_drive=cfg,
                                    firmware=OVMF if kind.endswith("UEFI") else "")
            b = qemu.boot(m, timeout=300)
            os.unlink(inst)
            first, pre, grub = _boot_times(b)
            if first is None:
                print(f"{kind}: no entrypoint line:\n{b.text}", file=sys.stderr)
            res[kind]["first"].append(first)
            res[kind]["pre"].append(pre)
            res[kind]["grub"].append(grub)
    med = {}
    for kind, v in res.items():
        firsts = [x for x in v["first"] if x is not None]
        pres = [x for x in v["pre"] if x is not None]
        grubs = [x for x in v["grub"] if x is not None]
        med[kind] = {"first_line_s": statistics.median(firsts) if firsts else None,
                     "pre_kernel_s": statistics.median(pres) if pres else None,
                     "firmware_s": statistics.median(grubs) if grubs else None,
                     "raw": v}
    return med


def run(sizes, runs):
    base = images.base_image()
    out = {"accel": qemu.default_accel(), "runs": runs, "kernel": base.version, "build": {}}
    work = tempfile.mkdtemp(prefix="d2v-bundle-bench-")
    try:
        for size in sizes:
            archive = _archive(size)
            med, disk, app = measure_build(archive, base, runs, work)
            out["build"][size] = med
            if size == sizes[0]:
                with open_image(str(archive)) as img:
                    config = img.config
                # Approach 2 needs its docker2vm/ files; the bundle ignores them
                # (it reads only openstack/latest/ from the drive): same drive for all.
                files = contract.render_guest_files(config, "bench", {},
                                                    contract.RootfsDelivery.disk("root"))
                cfg = configdrive.build_config_drive(os.path.join(work, "config.iso"), files,
                                                     "bench")
                out["boot"] = measure_boot(base, disk, app, cfg, runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    direct = out["boot"]["direct vmlinux"]["first_line_s"]
    for kind, m in out["boot"].items():
        m["ratio"] = m["first_line_s"] / direct if m["first_line_s"] and direct else None
    return out


def print_tables(r):
    print(f"accel={r['accel']} runs={r['runs']} kernel={r['kernel']}, medians")
    print()
    print("| image | convert s | bundle s | convert qcow2 MiB (virtual) "
          "| bundle qcow2 MiB (virtual) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for size, m in r["build"].items():
        print(f"| busybox + {size} MB | {m['convert_s']:.2f} | {m['bundle_s']:.2f} | "
              f"{m['convert_file_mib']:.1f} ({m['convert_virtual_mib']:.0f}) | "
              f"{m['bundle_file_mib']:.1f} ({m['bundle_virtual_mib']:.0f}) |")
    print()
    print("| boot | entrypoint line s | pre-kernel s | of which UEFI firmware s "
          f"| ratio to direct vmlinux (target <= {TARGET}x) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in KINDS:
        m = r["boot"][kind]
        fmt = lambda v, f="{:.2f}": f.format(v) if v is not None else "-"  # noqa: E731
        print(f"| {kind} | {fmt(m['first_line_s'])} | {fmt(m['pre_kernel_s'])} "
              f"| {fmt(m['firmware_s'])} | "
              f"{fmt(m['ratio'], '{:.2f}x')} |")


def plot(r, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = list(r["build"])
    xs = range(len(sizes))
    a1.bar([x - 0.2 for x in xs], [r["build"][s]["convert_s"] for s in sizes], 0.4,
           label="convert (Approach 2 disk)")
    a1.bar([x + 0.2 for x in xs], [r["build"][s]["bundle_s"] for s in sizes], 0.4,
           label="bundle (Approach 3)")
    for x, s in zip(xs, sizes):
        m = r["build"][s]
        a1.text(x - 0.2, m["convert_s"], f"{m['convert_file_mib']:.0f} MiB", ha="center",
                va="bottom", fontsize=7)
        a1.text(x + 0.2, m["bundle_s"], f"{m['bundle_file_mib']:.0f} MiB", ha="center",
                va="bottom", fontsize=7)
    a1.set_xticks(list(xs), [f"busybox + {s} MB" for s in sizes])
    a1.set_ylabel("build seconds (labels: qcow2 file)")
    a1.legend(fontsize=8)
    kinds = list(KINDS)
    pre = [r["boot"][k]["pre_kernel_s"] or 0 for k in kinds]
    rest = [(r["boot"][k]["first_line_s"] or 0) - p for k, p in zip(kinds, pre)]
    a2.bar(kinds, pre, label="before the kernel (firmware, loader, decompression)")
    a2.bar(kinds, rest, bottom=pre, label="kernel + d2vinit to the entrypoint's line")
    for i, k in enumerate(kinds):
        if r["boot"][k]["ratio"]:
            a2.text(i, r["boot"][k]["first_line_s"], f"{r['boot'][k]['ratio']:.2f}x",
                    ha="center", va="bottom")
    a2.set_ylabel(f"seconds from QEMU start ({r['accel'].upper()})")
    a2.tick_params(axis="x", labelsize=8)
    a2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="0,100",
                    help="MB of data added to the busybox image, comma-separated; the first "
                         "one is also booted (default 0,100)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", metavar="PNG", help="also draw the charts (needs matplotlib)")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: temporary files and guests are cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    r = run([int(s) for s in args.sizes.split(",")], args.runs)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print_tables(r)
    if args.plot:
        return plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
