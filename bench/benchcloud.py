"""The development cloud (devcloud/) for the cloud benchmarks, and its CLIs.

``BenchCloud`` brings ``devcloud.cloud.Cloud`` up in its own state dir and
on its own ports (``$DEVCLOUD_STATE`` / ``$DEVCLOUD_PORT_BASE``, defaults a
fresh ``/tmp/d2v-bench-*`` and 30700), runs the real ``openstack`` and
``glance`` CLIs against it as the demo user, and at the end brings it down
and checks that no process names the state dir and nothing is mounted
under it; a state dir it created itself is removed (``--keep`` leaves the
cloud running). Needs root, as the cloud does.
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
BIN = os.path.join(TOP, ".venv", "bin")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return None if not n else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)


class BenchCloud:
    def __init__(self, state=None, port_base=None, keep=False):
        self.given = state or os.environ.get("DEVCLOUD_STATE")
        self.state = self.given or tempfile.mkdtemp(prefix="d2v-bench-", dir="/tmp")
        self.port_base = int(port_base or os.environ.get("DEVCLOUD_PORT_BASE", "30700"))
        self.keep = keep
        self.cloud = None
        self._conn = None

    def __enter__(self):
        from devcloud.cloud import Cloud
        if os.geteuid() != 0:
            raise SystemExit("bench: the development cloud needs root")
        os.environ.setdefault("DEVCLOUD_CACHE", os.path.join(TOP, ".cache", "devcloud"))
        self.cloud = Cloud(self.state, port_base=self.port_base, log=log)
        self.up_s = self.cloud.up()
        return self

    def __exit__(self, *exc):
        if self.keep:
            log(f"cloud left running (state {self.state}): python -m devcloud down --state {self.state}")
            return
        self.cloud.down()
        left = self.cloud.leftover_processes()
        mounts = self.cloud.mounts_under_state()
        if left or mounts:
            log(f"WARNING: left after down: processes {left}, mounts {mounts}")
        if not self.given:
            shutil.rmtree(self.state, ignore_errors=True)

    # -- CLIs ------------------------------------------------------------------
    def env(self, user="demo"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(self.cloud.os_env(user))
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
        return env

    def cli(self, *args, user="demo", timeout=900):
        # glance: stdin closed, not /dev/null: glanceclient takes a non-tty
        # stdin for image data and then refuses --file with glance-direct
        res = subprocess.run(list(args), env=self.env(user), capture_output=True, text=True,
                             timeout=timeout,
                             stdin=None if args[0] == "glance" else subprocess.DEVNULL,
                             preexec_fn=(lambda: os.close(0)) if args[0] == "glance" else None)
        if res.returncode:
            raise RuntimeError(f"{' '.join(args[:4])} ... failed ({res.returncode}):\n"
                               f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def popen(self, *args, user="demo"):
        return subprocess.Popen(list(args), env=self.env(user), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def conn(self):
        """openstacksdk as the demo user (cheap polling: no CLI start-up per call)."""
        if self._conn is None:
            import openstack
            e = self.cloud.os_env("demo")
            self._conn = openstack.connect(
                auth_url=e["OS_AUTH_URL"], username=e["OS_USERNAME"], password=e["OS_PASSWORD"],
                project_name=e["OS_PROJECT_NAME"], user_domain_name="Default",
                project_domain_name="Default", region_name=e["OS_REGION_NAME"],
                identity_interface="public")
        return self._conn

    # -- images -------------------------------------------------------------------
    def image_status(self, image_id):
        img = self.conn().image.get_image(image_id)
        return img.status, img

    def wait_image(self, image_id, timeout=1800, poll=0.5):
        """Poll until the image is active (returns the monotonic time seen);
        killed, or queued without an import task, fails with the task's message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, img = self.image_status(image_id)
            if status == "active":
                return time.monotonic()
            props = img.properties or {}
            if status == "killed" or (status == "queued" and "os_glance_import_task" not in props):
                tasks = self.conn().image.get(f"/images/{image_id}/tasks").json().get("tasks", [])
                raise RuntimeError(f"import of {image_id} ended {status}: "
                                   f"{tasks[-1].get('message') if tasks else 'no task'}")
            time.sleep(poll)
        raise RuntimeError(f"image {image_id} not active after {timeout}s")

    def import_image(self, archive, name, method="docker-convert", *extra):
        """``glance image-create-via-import`` (the real CLI) then wait until
        active: (image id, seconds from the CLI's start to active)."""
        fmt = (["--container-format", "docker", "--disk-format", "raw"] if method == "docker-convert"
               else ["--container-format", "bare", "--disk-format", "raw"])
        t0 = time.monotonic()
        out = self.cli("glance", "image-create-via-import", "--import-method", method, *fmt,
                       "--file", archive, "--name", name, *extra, timeout=3600)
        image_id = next(line.split("|")[2].strip() for line in out.splitlines()
                        if line.split("|")[1:2] and line.split("|")[1].strip() == "id")
        t1 = self.wait_image(image_id)
        self.wait_task_done(image_id)
        return image_id, t1 - t0

    def wait_task_done(self, image_id, timeout=120):
        """Glance finishes the import task (and frees the image's import lock)
        a moment after the image is active: deleting the image before that
        makes the task's last step fail ("other task None holds the lock")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.conn().image.get(f"/images/{image_id}/tasks").json().get("tasks", [])
            if tasks and tasks[-1].get("status") in ("success", "failure"):
                return tasks[-1]["status"]
            time.sleep(0.5)
        raise RuntimeError(f"the import task of {image_id} did not end within {timeout}s")

    def delete_image(self, image_id):
        self.conn().image.delete_image(image_id, ignore_missing=True)

    def image_info(self, image_id):
        img = self.conn().image.get_image(image_id)
        return {"size": img.size, "disk_format": img.disk_format,
                "container_format": img.container_format,
                "docker_delivery": (img.properties or {}).get("docker_delivery")}


def write_json(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


# -- the benchmarks' command line and plots ----------------------------------------

def cli_main(argv, doc, run, print_table, plot, **options):
    """A cloud benchmark's command line (its description: ``doc``'s first
    paragraph): --runs, --keep, the benchmark's own ``options`` (``name=``
    add_argument's keywords: ``skip_cloudinit={"action": "store_true"}`` is
    --skip-cloudinit), --plot, --json, --from-json. The result is
    ``run(args)`` (written to --json) or an earlier run's --json; then
    ``print_table(result)`` and, with --plot, ``plot(result, path)``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the cloud running")
    for name, kwargs in options.items():
        ap.add_argument("--" + name.replace("_", "-"), **kwargs)
    ap.add_argument("--plot", help="PNG path (matplotlib)")
    ap.add_argument("--json", help="raw results")
    ap.add_argument("--from-json", help="print/plot an earlier --json instead of running")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
    else:
        result = run(args)
        if args.json:
            write_json(args.json, result)
    print_table(result)
    if args.plot:
        plot(result, args.plot)
    return 0


def pyplot():
    """matplotlib's pyplot on the Agg (file only) backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_ticks(ax, rows, key, medians):
    """On a horizontal bar chart of ``rows`` (name -> runs, top down): each
    run's ``key`` as a tick on its name's bar, ``medians[i]`` written beside
    the slowest run, and room on the right for those labels."""
    names = list(rows)
    for i, name in enumerate(names):
        xs = [r[key] for r in rows[name]]
        ax.plot(xs, [i] * len(xs), "k|", markersize=14)
        ax.text(max(xs), i, f"  {medians[i]:.1f} s", va="center")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(r[key] for r in runs) for runs in rows.values()) * 1.3)


def save_plot(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")
