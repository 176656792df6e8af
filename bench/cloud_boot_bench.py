"""``openstack server create`` -> the container's first console line, in the
one-machine cloud (devcloud/), this project's path against the original
proposal's, for the same archive, in one run.

The archive: a busybox-static image (tests/guest/images.build_archive)
whose command prints a marker line (then the guest's uptime) and exits 0.
It is imported once per delivery with the real ``glance
image-create-via-import --import-method docker-convert``.

Modes (server create with the real ``openstack`` CLI, flavor d2v.small:
1 vCPU, 512 MiB, 2 GiB; ``--nic none``; TCG):

* ``docker2vm disk``: this project's path, the cloud's default compute
  configuration: the Docker2VM driver boots the docker2vm base VM (direct
  kernel boot, d2vinit) with the image's ext4 as a virtio disk.
* ``docker2vm share``: the same image imported with
  ``docker_delivery=share`` (the unpacked tree over virtiofs).
* ``cloud-init (proposal)``: the original proposal's path (approach 1/2:
  ``base_vm_image`` = a stock cloud image, the container's filesystem
  attached by the compute driver, cloud-init user data running the
  container): nova-compute is switched to ``[docker2vm] base_vm_image`` =
  the Debian 12 cloud image of tests/guest/cloudimage.py (systemd,
  cloud-init, Debian's cloud kernel and initramfs; nothing of docker2vm)
  made BIOS-bootable here (syslinux on a small FAT partition, the image's
  ext4 as partition 2), and the server is created from the SAME disk image
  with ``--user-data`` = docker_rootfs/guest/cloudinit.py's cloud-config
  (its per-boot launcher mounts the container disk by serial, runs the
  entrypoint with the image's config, its output on the console). Stock
  Nova alone cannot do this: without Cinder it attaches no second image to
  a server, and a stock image has no container in it; the proposal's own
  design changes the compute driver exactly here.

Per run: t0 just before ``openstack server create`` is started; the server
id it prints names the instance dir; ``console.log`` there (virtlogd) is
polled every 0.1 s for the marker; the API every second for ACTIVE and
SHUTOFF. Then ``server delete``. The modes interleave: each round runs
both docker2vm deliveries, switches nova-compute to the cloud image
(nova.conf rewritten, nova-compute restarted, ~15 s, not timed), runs the
cloud-init server and switches back. Medians.

    sudo DEVCLOUD_PORT_BASE=30700 .venv/bin/python -m bench.cloud_boot_bench --runs 3 \
        --plot doc/source/cloud-boot-bench.png --json /tmp/cloud-boot.json

Needs root (the cloud), the cloud's packages, and the cloud image (built
once from deb.debian.org by debootstrap, ~2-5 min, cached in
.cache/cloudimage/).
"""

import os
import re
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchcloud import (  # noqa: E402
    TOP,
    BenchCloud,
    cli_main,
    log,
    median,
    pyplot,
    run_ticks,
    save_plot,
)

CACHE = os.path.join(TOP, ".cache", "bench", "cloud-boot")
FLAVOR = "d2v.small"
MARK = "bench-42-first-line"
APP_CONFIG = {"entrypoint": ["/bin/sh", "-c"],
              # the marker is computed, so the command's text never matches it
              "cmd": ['echo "bench-$((6*7))-first-line"; '
                      'echo "bench-uptime $(cut -d" " -f1 /proc/uptime)"; exit 0']}
MODES = ("docker2vm disk", "docker2vm share", "cloud-init (proposal)")
MIB = 1 << 20


def app_archive():
    from tests.guest import images
    return str(images.build_archive("cloud-boot-bench", {}, APP_CONFIG))


def cloudinit_base_disk():
    """The stock cloud image (tests/guest/cloudimage.py) as a BIOS boot disk:
    MBR + syslinux on a FAT partition holding the image's own kernel and
    initramfs (command line ``root=LABEL=cloudimg-rootfs ro console=ttyS0``),
    the image's ext4 unchanged as partition 2. Cached next to the bench data."""
    from docker_rootfs.guest import boot_disk
    from docker_rootfs.guest.bundle import _copy_sparse
    from tests.guest import cloudimage
    image = cloudimage.build(log=log)
    out = os.path.join(CACHE, f"cloudinit-base-{image.dir.name}.qcow2")
    if os.path.exists(out):
        return out, image
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as tmp:
        boot_q = boot_disk.build_boot_disk(os.path.join(tmp, "boot.qcow2"), str(image.kernel),
                                           str(image.initrd), image.cmdline)
        raw, root = os.path.join(tmp, "disk.raw"), os.path.join(tmp, "root.raw")
        for src, dst in ((boot_q, raw), (str(image.disk), root)):
            subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", src, dst], check=True)
        start = -(-os.path.getsize(raw) // MIB) * MIB
        size = os.path.getsize(root)
        with open(raw, "r+b") as f:
            f.truncate(start + size)
        subprocess.run(["sfdisk", "--quiet", "--append", "--no-reread", "--no-tell-kernel", raw],
                       input=f"start={start // 512}, size={size // 512}, type=83\n".encode(),
                       check=True)
        fd = os.open(raw, os.O_RDWR)
        try:
            _copy_sparse(root, fd, start)
        finally:
            os.close(fd)
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out + ".tmp"],
                       check=True)
        os.replace(out + ".tmp", out)
    return out, image


def user_data(archive, path):
    from docker_rootfs.guest import cloudinit, contract
    from nova_image_handler import conf
    from tests.guest import images
    # the cloud's nova.conf leaves [docker2vm] disk_serial at its default
    serial = next(o.default for o in conf.opts if o.name == "disk_serial")
    text = cloudinit.render_cloud_config(images.open_config(archive), "bench",
                                         rootfs=contract.RootfsDelivery.disk(serial))
    with open(path, "wb") as f:
        f.write(text)
    return path


def boot_once(bc, image_id, name, extra=(), timeout=900):
    conn = bc.conn()
    t0 = time.monotonic()
    p = bc.popen("openstack", "server", "create", "--image", image_id, "--flavor", FLAVOR,
                 "--nic", "none", *extra, "-f", "value", "-c", "id", name)
    out, err = p.communicate(timeout=600)
    t_api = time.monotonic() - t0
    if p.returncode:
        raise RuntimeError(f"openstack server create failed: {err[-2000:]}")
    sid = out.split()[-1]
    console = bc.cloud.path("nova", "instances", sid, "console.log")
    row = {"server": sid, "api_s": round(t_api, 2), "first_line_s": None, "active_s": None,
           "shutoff_s": None, "guest_uptime_s": None}
    next_api = 0.0
    text = ""
    try:
        while time.monotonic() - t0 < timeout:
            now = time.monotonic()
            if row["first_line_s"] is None:
                try:
                    with open(console, errors="replace") as f:
                        text = f.read()
                except FileNotFoundError:
                    text = ""
                if MARK in text:
                    row["first_line_s"] = round(now - t0, 2)
            if now >= next_api:
                srv = conn.compute.get_server(sid)
                if srv.status == "ACTIVE" and row["active_s"] is None:
                    row["active_s"] = round(time.monotonic() - t0, 2)
                if srv.status == "ERROR":
                    raise RuntimeError(f"server {sid} ERROR: {srv.fault}")
                if srv.status == "SHUTOFF" and row["first_line_s"] is not None:
                    row["shutoff_s"] = round(time.monotonic() - t0, 2)
                    break
                next_api = time.monotonic() + 1.0
            time.sleep(0.1)
        with open(console, errors="replace") as f:
            text = f.read()
        m = re.search(r"bench-uptime ([0-9.]+)", text)
        if m:
            row["guest_uptime_s"] = float(m.group(1))
        if row["first_line_s"] is None:
            raise RuntimeError(f"no {MARK!r} on the console of {sid} after {timeout}s:\n{text[-3000:]}")
        if "exit status 0" not in text:
            log(f"note: no 'exit status 0' line on {sid}'s console")
    finally:
        conn.compute.delete_server(sid, ignore_missing=True)
        srv = conn.compute.find_server(sid)
        if srv is not None:
            conn.compute.wait_for_delete(srv, wait=300)
    return row


def set_base_vm_image(bc, path):
    """Switch nova-compute to ``[docker2vm] base_vm_image = path`` (None: back
    to the direct-kernel base VM): nova.conf rewritten, nova-compute restarted."""
    c = bc.cloud
    if path:
        c.docker2vm_opts["base_vm_image"] = path
    else:
        c.docker2vm_opts.pop("base_vm_image", None)
    t0 = time.monotonic()
    c.write_configs()
    c.start_compute()
    c.finish_nova()
    log(f"nova-compute reconfigured (base_vm_image={path or '-'}) in {time.monotonic() - t0:.1f}s")


def run(args):
    archive = app_archive()
    base_disk, cimage = (None, None) if args.skip_cloudinit else cloudinit_base_disk()
    rows = {m: [] for m in MODES}
    with BenchCloud(keep=args.keep) as bc:
        images = {}
        for delivery in ("disk", "share"):
            images[delivery], took = bc.import_image(
                archive, f"bench-boot-{delivery}", "docker-convert",
                "--property", f"docker_delivery={delivery}")
            log(f"imported {delivery}: {images[delivery]} in {took:.1f}s")
        ud = None if args.skip_cloudinit else user_data(
            archive, os.path.join(bc.state, "bench-user-data.yaml"))
        try:
            for i in range(args.runs):
                # round i: both docker2vm deliveries, then the proposal's path
                # (nova-compute restarted into base_vm_image and back: the
                # modes interleave, so a change of the host's load hits all)
                for mode, delivery in (("docker2vm disk", "disk"), ("docker2vm share", "share")):
                    row = boot_once(bc, images[delivery], f"bench-{delivery}-{i}")
                    rows[mode].append(row)
                    log(f"{mode} #{i + 1}: {row}")
                if ud:
                    set_base_vm_image(bc, base_disk)
                    row = boot_once(bc, images["disk"], f"bench-cloudinit-{i}",
                                    extra=("--user-data", ud))
                    rows["cloud-init (proposal)"].append(row)
                    log(f"cloud-init #{i + 1}: {row}")
                    set_base_vm_image(bc, None)
        finally:
            if ud and "base_vm_image" in bc.cloud.docker2vm_opts:
                set_base_vm_image(bc, None)
        for image_id in images.values():
            bc.delete_image(image_id)
        up_s = bc.up_s
    return {"runs": args.runs, "flavor": FLAVOR, "archive": os.path.basename(archive),
            "cloud_image": cimage.info if cimage else None, "cloud_up_s": round(up_s, 1),
            "rows": {m: r for m, r in rows.items() if r}}


def summary(result):
    out = {}
    for mode, rows in result["rows"].items():
        out[mode] = {k: median([r[k] for r in rows if r[k] is not None])
                     for k in ("api_s", "active_s", "first_line_s", "shutoff_s", "guest_uptime_s")}
    return out


def print_table(result):
    s = summary(result)
    ours = s.get("docker2vm disk", {}).get("first_line_s")
    print(f"{result['runs']} runs per mode, medians, flavor {result['flavor']} (TCG):\n")
    print("| mode | create returned s | ACTIVE s | first console line s | guest uptime at line s "
          "| SHUTOFF s | first line vs docker2vm disk |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, m in s.items():
        ratio = f"{m['first_line_s'] / ours:.1f}x" if ours and m["first_line_s"] else ""

        def f(v):
            return "" if v is None else f"{v:.1f}"
        print(f"| {mode} | {f(m['api_s'])} | {f(m['active_s'])} | {f(m['first_line_s'])} "
              f"| {f(m['guest_uptime_s'])} | {f(m['shutoff_s'])} | {ratio} |")
    print("\nAll runs (first console line s): " + "; ".join(
        f"{mode}: {', '.join(str(r['first_line_s']) for r in rows)}"
        for mode, rows in result["rows"].items()))


def plot(result, path):
    plt = pyplot()
    s = summary(result)
    modes = list(s)
    fig, ax = plt.subplots(figsize=(8, 1.3 + 0.75 * len(modes)))
    y = range(len(modes))
    first = [s[m]["first_line_s"] for m in modes]
    active = [s[m]["active_s"] or 0 for m in modes]
    ax.barh(y, first, color="#4c72b0", label="server create -> first console line (median)")
    ax.barh(y, active, color="#dd8452", height=0.35, label="server create -> ACTIVE (median)")
    run_ticks(ax, result["rows"], "first_line_s", first)
    ax.set_xlabel("seconds (TCG, 1 vCPU, 512 MiB; ticks: single runs)")
    ax.set_title("one-machine cloud: openstack server create -> container's first line")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=8, frameon=False)
    save_plot(fig, path)


def main(argv=None):
    return cli_main(argv, __doc__, run, print_table, plot, skip_cloudinit={"action": "store_true"})


if __name__ == "__main__":
    sys.exit(main())
