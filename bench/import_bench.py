"""Import into the one-machine cloud's Glance: ``docker-convert`` of a ~1 GB
docker archive against a plain ``glance-direct`` upload of the same bytes,
in one run, interleaved, medians.

Both through the real ``glance image-create-via-import`` CLI as the demo
user (Keystone, the paste filter, Glance's import flow, the file store on
the same disk); the time is from the CLI's start to the image being
``active`` (polled every 0.5 s). ``glance-direct`` is the floor of any
import of these bytes: upload to staging, then Glance copies the staged
file into its store. ``docker-convert`` does the same upload, then this
project's plugin reads the archive once and writes the ext4 disk image
(docker_delivery=disk, qcow2) that Glance stores instead.

The archive: bench/flatten_bench.py's ``bench2-1000-many`` docker-archive
(buildah; two layers, ~100 000 small files, 1.1 GB; built once and cached in
.cache/bench/).

    sudo DEVCLOUD_PORT_BASE=30700 .venv/bin/python -m bench.import_bench --runs 3 \
        --plot doc/source/cloud-import-bench.png --json /tmp/import.json
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.benchcloud import BenchCloud, cli_main, log, median, pyplot, run_ticks, save_plot  # noqa: E402

METHODS = ("glance-direct", "docker-convert")


def default_archive():
    from bench import flatten_bench
    return flatten_bench.build_image(1000, "many")[0]


def run(args):
    archive = args.archive or default_archive()
    size = os.path.getsize(archive)
    rows = {m: [] for m in METHODS}
    with BenchCloud(keep=args.keep) as bc:
        for i in range(args.runs):
            for method in METHODS:
                extra = ("--property", "docker_delivery=disk") if method == "docker-convert" else ()
                image_id, took = bc.import_image(archive, f"bench-import-{method}-{i}", method, *extra)
                info = bc.image_info(image_id)
                bc.delete_image(image_id)
                rows[method].append({"seconds": round(took, 2), **info})
                log(f"{method} #{i + 1}: {took:.1f}s -> {info}")
    return {"runs": args.runs, "archive": os.path.relpath(archive), "archive_bytes": size,
            "rows": rows}


def print_table(result):
    mb = result["archive_bytes"] / 1e6
    floor = median([r["seconds"] for r in result["rows"]["glance-direct"]])
    print(f"{result['archive']}: {mb:.0f} MB; {result['runs']} runs per method, interleaved, medians\n")
    print("| method | CLI start -> active s | MB/s of the archive | stored image | stored MB | vs glance-direct |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for method, rows in result["rows"].items():
        t = median([r["seconds"] for r in rows])
        r0 = rows[0]
        stored = f"{r0['disk_format']}/{r0['container_format']}"
        print(f"| {method} | {t:.1f} | {mb / t:.0f} | {stored} | {r0['size'] / 1e6:.0f} "
              f"| {t / floor:.2f}x |")
    print("\nAll runs s: " + "; ".join(f"{m}: {', '.join(str(r['seconds']) for r in rows)}"
                                       for m, rows in result["rows"].items()))


def plot(result, path):
    plt = pyplot()
    methods = list(result["rows"])
    med = [median([r["seconds"] for r in result["rows"][m]]) for m in methods]
    fig, ax = plt.subplots(figsize=(7.5, 2.4))
    ax.barh(range(len(methods)), med, color=["#8c8c8c", "#4c72b0"])
    run_ticks(ax, result["rows"], "seconds", med)
    ax.set_xlabel("glance image-create-via-import -> active, seconds (median; ticks: runs)")
    ax.set_title(f"import of the same {result['archive_bytes'] / 1e9:.1f} GB docker archive")
    save_plot(fig, path)


def main(argv=None):
    return cli_main(argv, __doc__, run, print_table, plot,
                    archive={"help": "docker/OCI archive (default: the cached 1 GB bench image)"})


if __name__ == "__main__":
    sys.exit(main())
