"""glance-api latency while docker-convert imports run, against idle, in one run.

    .venv/bin/python -m bench.glance_load_bench [--conversions 4] [--gets 200]
        [--uploads 30] [--archive PATH] [--json out.json] [--plot out.png]

One real glance-api (devcloud/glance_dev.py: gunicorn gthread, 1 worker,
8 threads, file store, the docker_convert plugin at its defaults: the
conversion runs in a child process under the [docker_convert] child_*
limits, niced by child_nice=10) on a private MariaDB (Glance on sqlite
fails concurrent writes). Two phases with the same client load:

* ``idle``: nothing else runs in glance-api;
* ``idle, after``: idle again once the conversions are done, to show
  how much the host's background moved during the run;
* ``load``: ``--conversions`` docker-convert imports (docker_delivery=disk)
  of the ~1.1 GB archive of bench/flatten_bench.py (``bench2-1000-many``:
  two layers, ~100 000 small files) were started just before and are all
  converting (each was staged first, before the phase).

The client, one thread, alternates ``GET /v2/images`` and, every
``gets/uploads`` requests, a small glance-direct upload (create image,
``PUT /stage`` 1 MiB, ``POST /import`` glance-direct: the three calls
timed together), with 20 ms between requests. A twin glance-api (same
configuration, its own database, never converting) gets the same requests
interleaved with the first one's, request by request, in every phase: the
load phase's ratio against the twin is free of the host's drift. The load
phase stops early if a conversion finishes. Reported: p50/p99/max of each, and
whether all conversions were still running at the end of the load phase
(the load phase only counts if they were). Machine: shared, 2 cores;
other work on it shows up as noise in both phases.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOP not in sys.path:
    sys.path.insert(0, TOP)

MiB = 1024 * 1024


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


@contextlib.contextmanager
def mariadb():
    """A private MariaDB on a unix socket; yields new_database(name) -> URL."""
    d = tempfile.mkdtemp(prefix="d2v-bench-db-", dir="/tmp")
    sock = os.path.join(d, "sock")
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/data",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--user=root"], check=True, capture_output=True)
    proc = subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={d}/data",
                             f"--socket={sock}", "--skip-networking", "--user=root",
                             f"--log-error={d}/err.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mariadbd did not start")
            time.sleep(0.1)

        def new_database(name):
            subprocess.run(["mariadb", "--no-defaults", "-S", sock, "-u", "root", "-e",
                            f"CREATE DATABASE {name} CHARACTER SET utf8mb4"], check=True)
            return f"mysql+pymysql://root@localhost/{name}?unix_socket={sock}&charset=utf8mb4"
        yield new_database
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)


class Client:
    def __init__(self, url, token="demo"):
        self.url = url
        self.token = token

    def request(self, method, path, body=None, raw=None, timeout=600):
        headers = {"X-Auth-Token": self.token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read()
                return r.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def stage_file(self, image_id, path):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            req = urllib.request.Request(
                f"{self.url}/v2/images/{image_id}/stage", data=f, method="PUT",
                headers={"X-Auth-Token": self.token, "Content-Type": "application/octet-stream",
                         "Content-Length": str(size)})
            with urllib.request.urlopen(req, timeout=3600) as r:
                assert r.status == 204, r.status

    def image(self, image_id):
        status, body = self.request("GET", f"/v2/images/{image_id}")
        assert status == 200, body
        return body


def small_upload(client, payload):
    t = time.perf_counter()
    status, img = client.request("POST", "/v2/images", {
        "name": "small", "container_format": "bare", "disk_format": "raw"})
    assert status == 201, img
    status, body = client.request("PUT", f"/v2/images/{img['id']}/stage", raw=payload)
    assert status == 204, body
    status, body = client.request("POST", f"/v2/images/{img['id']}/import",
                                  {"method": {"name": "glance-direct"}})
    assert status == 202, body
    return time.perf_counter() - t, img["id"]


def measure(clients, gets, uploads, pause=0.02, keep_going=None):
    """The same request sequence against every client, interleaved request by
    request (the order alternating), so each sees the same moments of the
    host's background. Returns {name: (get latencies, upload latencies)}."""
    payload = os.urandom(MiB)
    every = max(1, gets // max(1, uploads))
    out = {name: ([], []) for name in clients}
    order = list(clients)
    for i in range(gets):
        if keep_going is not None and i % 10 == 0 and not keep_going():
            log(f"stopped after {i} rounds: a conversion finished")
            break
        order.reverse()
        for name in order:
            t = time.perf_counter()
            status, body = clients[name].request("GET", "/v2/images")
            out[name][0].append(time.perf_counter() - t)
            assert status == 200, body
            time.sleep(pause)
        if i % every == every - 1 and len(out[order[0]][1]) < uploads:
            for name in order:
                dt, _ = small_upload(clients[name], payload)
                out[name][1].append(dt)
                time.sleep(pause)
    return out


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values):
    return {"n": len(values), "p50_ms": pct(values, 50) * 1000, "p99_ms": pct(values, 99) * 1000,
            "max_ms": max(values) * 1000, "mean_ms": statistics.mean(values) * 1000}


def default_archive():
    from bench import flatten_bench
    return flatten_bench.build_image(1000, "many")[0]


def run(args):
    from devcloud.glance_dev import DevServer
    archive = args.archive or default_archive()
    log(f"archive {archive} ({os.path.getsize(archive) / 1e9:.2f} GB)")
    work = tempfile.mkdtemp(prefix="d2v-load-bench-", dir=args.dir)
    result = {"archive": archive, "archive_bytes": os.path.getsize(archive),
              "conversions": args.conversions, "gets": args.gets, "uploads": args.uploads}

    def record(phase, measured):
        for name, (g, u) in measured.items():
            result[f"{phase}/{name}"] = {"get": summary(g), "upload": summary(u),
                                         "raw": {"get": g, "upload": u}}

    try:
        with mariadb() as new_database, contextlib.ExitStack() as stack:
            srv = stack.enter_context(DevServer(
                os.path.join(work, "glance"), database=new_database("glance"), threads=8,
                convert_opts={"progress_interval": 5}))
            twin = stack.enter_context(DevServer(
                os.path.join(work, "twin"), database=new_database("twin"), threads=8))
            clients = {"converting": Client(srv.url), "twin": Client(twin.url)}
            for c in clients.values():
                c.request("GET", "/v2/images")
            client = clients["converting"]
            log("idle phase")
            record("idle", measure(clients, args.gets, args.uploads))
            ids = []
            for i in range(args.conversions):
                status, img = client.request("POST", "/v2/images", {
                    "name": f"big-{i}", "container_format": "docker", "disk_format": "raw",
                    "docker_delivery": "disk"})
                assert status == 201, img
                log(f"staging {i + 1}/{args.conversions}")
                client.stage_file(img["id"], archive)
                ids.append(img["id"])
            started = time.monotonic()
            for image_id in ids:
                status, body = client.request("POST", f"/v2/images/{image_id}/import",
                                              {"method": {"name": "docker-convert"}})
                assert status == 202, body
            # Wait until every conversion child runs.
            while sum(1 for n in os.listdir(srv.staging_dir) if n.startswith("docker2vm-")) \
                    < len(ids):
                time.sleep(0.2)
            log("load phase")

            def all_converting():
                return all(client.image(i)["status"] == "importing" for i in ids)
            record("load", measure(clients, args.gets, args.uploads, keep_going=all_converting))
            statuses = [client.image(i)["status"] for i in ids]
            result["all_converting_at_end"] = all(s == "importing" for s in statuses)
            result["statuses_at_end_of_load_phase"] = statuses
            log("waiting for the conversions", statuses)
            done = {}
            while len(done) < len(ids):
                for image_id in ids:
                    if image_id not in done:
                        img = client.image(image_id)
                        if img["status"] in ("active", "queued") and \
                                "os_glance_import_task" not in img:
                            done[image_id] = (img["status"], time.monotonic() - started)
                time.sleep(1)
            result["conversions_result"] = list(done.values())
            log("conversions:", done)
            # Idle again: the machine's background (other work on a shared
            # host) as it is at the end of the run.
            log("idle phase again")
            record("idle_after", measure(clients, args.gets, args.uploads))
            with open(srv.log_file, errors="replace") as f:
                result["child_stats"] = [ln.split("docker-convert: ", 1)[1].strip()
                                         for ln in f if "conversion child" in ln and " done," in ln]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


ROWS = (("idle", "converting", "idle"), ("idle", "twin", "idle, twin"),
        ("load", "converting", "conversions running"),
        ("load", "twin", "twin, same moments"),
        ("idle_after", "converting", "idle, after"), ("idle_after", "twin", "idle after, twin"))


def print_table(r):
    print("| call | glance-api, phase | n | p50 ms | p99 ms | max ms | p99 / idle p99 | p99 / twin p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for call, name in (("get", "GET /v2/images"), ("upload", "glance-direct 1 MiB (3 calls)")):
        for phase, server, label in ROWS:
            s = r[f"{phase}/{server}"][call]
            idle = r[f"idle/{server}"][call]["p99_ms"]
            twin = r[f"{phase}/twin"][call]["p99_ms"]
            print(f"| {name} | {label} | {s['n']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                  f"{s['max_ms']:.1f} | {s['p99_ms'] / idle:.2f} | {s['p99_ms'] / twin:.2f} |")
    print()
    print(f"conversions: {r['conversions']} x {r['archive_bytes'] / 1e9:.2f} GB; all still "
          f"converting at the end of the load phase: {r['all_converting_at_end']}; "
          f"finished: " + ", ".join(f"{s} after {t:.0f} s" for s, t in r["conversions_result"]))
    for line in r.get("child_stats", []):
        print("  " + line)


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (call, title) in zip(axes, (("get", "GET /v2/images"),
                                        ("upload", "glance-direct upload, 1 MiB (3 calls)"))):
        for (phase, server, label), style in zip(ROWS, ("-", ":", "-", ":", "-", ":")):
            if phase == "idle_after":
                continue
            v = sorted(x * 1000 for x in r[f"{phase}/{server}"]["raw"][call])
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], style,
                    label=f"{label} (p99 {r[f'{phase}/{server}'][call]['p99_ms']:.0f} ms)")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"glance-api latency: idle vs {r['conversions']} docker-convert conversions "
                 f"of {r['archive_bytes'] / 1e9:.1f} GB (twin: an idle glance-api, same moments)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    # SIGTERM (and a background job's ignored SIGINT) must still stop
    # glance-api and MariaDB: unwind through the context managers.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversions", type=int, default=4)
    p.add_argument("--gets", type=int, default=200)
    p.add_argument("--uploads", type=int, default=30)
    p.add_argument("--archive")
    p.add_argument("--dir", default=None, help="parent of the scratch directory")
    p.add_argument("--json")
    p.add_argument("--plot")
    args = p.parse_args(argv)
    r = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    print_table(r)
    if args.plot:
        plot(r, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
