"""A real single-node Ceph for the development cloud (``DEVCLOUD_CEPH=1``).

One mon, one mgr, one BlueStore OSD on a sparse file, from Debian 12's
packages (16.2 Pacific, bindep profile ``ceph``), started by hand (no
cephadm, containers or systemd). Everything is under ``STATE/ceph``; the
daemons run in the foreground (``-f``) as cloud services (``ceph-mon``,
``ceph-mgr``, ``ceph-osd``: PID files in ``STATE/pids``, logs in
``STATE/log``), so ``down`` stops them by PID like any other service.

Ports derive from the cloud's port base, never Ceph's fixed 3300/6789, so
several clouds (and their Ceph) run side by side: the mon listens on
``[v2:127.0.0.1:BASE+30, v1:127.0.0.1:BASE+31]``, the mgr and OSD bind in
``BASE+40 .. BASE+59`` (``ms_bind_port_min/max``).

Pools ``images`` (Glance) and ``vms`` (Nova), cephx users ``client.glance``
(``profile rbd pool=images``) and ``client.nova`` (``profile rbd pool=vms,
profile rbd-read-only pool=images``), keyrings ``STATE/ceph/ceph.client.
NAME.keyring`` found through the ``keyring`` option of ``ceph.conf``.

Python: Debian's ``rados``/``rbd`` modules are built for /usr/bin/python3
(3.11.2) and the services run from the repository's .venv (another 3.11):
:meth:`Ceph.python_path` is a directory holding links to just those two C
extensions (the CPython 3.11 ABI is the same for every 3.11.x), put on
``PYTHONPATH`` of glance-api and nova-compute; nothing else of
``/usr/lib/python3/dist-packages`` shadows the venv.
"""

import glob
import json
import os
import subprocess
import time
import uuid

MON_ID = "a"
MGR_ID = "x"
OSD_ID = "0"
POOLS = ("images", "vms")
PG_NUM = 8
PORT_OFFSETS = {"mon-v2": 30, "mon-v1": 31, "bind-min": 40, "bind-max": 59}
USERS = {
    "glance": {"mon": "profile rbd", "osd": "profile rbd pool=images"},
    "nova": {"mon": "profile rbd",
             "osd": "profile rbd pool=vms, profile rbd-read-only pool=images"},
}
DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd")
PY_MODULES = ("rados", "rbd")
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
TOOLS = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd", "monmaptool", "ceph-authtool")


class Ceph:
    """The cluster of one cloud. ``cloud`` is the :class:`devcloud.cloud.Cloud`
    (its spawn/run/wait/log/path and port base)."""

    def __init__(self, cloud, port_base, osd_size_gib=None):
        self.cloud = cloud
        self.dir = cloud.path("ceph")
        self.ports = {k: port_base + v for k, v in PORT_OFFSETS.items()}
        self.osd_size_gib = int(osd_size_gib or os.environ.get("DEVCLOUD_CEPH_OSD_GIB", "8"))

    # -- paths -------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def conf(self):
        return self.path("ceph.conf")

    def keyring(self, user):
        return self.path(f"ceph.client.{user}.keyring")

    @property
    def mon_host(self):
        return (f"[v2:127.0.0.1:{self.ports['mon-v2']},"
                f"v1:127.0.0.1:{self.ports['mon-v1']}]")

    @property
    def fsid(self):
        with open(self.path("fsid")) as f:
            return f.read().strip()

    @property
    def secret_uuid(self):
        """The libvirt secret nova-compute's QEMUs authenticate with (client.nova)."""
        path = self.path("libvirt-secret-uuid")
        if not os.path.exists(path):
            os.makedirs(self.dir, exist_ok=True)
            with open(path, "w") as f:
                f.write(str(uuid.uuid4()))
        with open(path) as f:
            return f.read().strip()

    # -- commands ------------------------------------------------------------------
    def ceph(self, *args, user="admin", timeout=120, what=None):
        return self.cloud.run(["ceph", "-c", self.conf, "--id", user, *args],
                              timeout=timeout, what=what or f"ceph {' '.join(args[:3])}")

    def rbd(self, *args, user="admin", timeout=300):
        return self.cloud.run(["rbd", "-c", self.conf, "--id", user, *args],
                              timeout=timeout, what=f"rbd {' '.join(args[:2])}")

    def key(self, user):
        return self.ceph("auth", "get-key", f"client.{user}").strip()

    def check_prerequisites(self):
        from shutil import which
        missing = [t for t in TOOLS if not which(t)]
        missing += [f"python3-{m}" for m in PY_MODULES if not self._module_file(m)]
        if missing:
            raise RuntimeError("Ceph (DEVCLOUD_CEPH=1) needs: " + ", ".join(missing)
                               + " (bash devcloud/cloud.sh up installs bindep profile 'ceph')")

    @staticmethod
    def _module_file(mod):
        found = glob.glob(os.path.join(DIST_PACKAGES, f"{mod}.cpython-311-*.so"))
        return found[0] if found else None

    def python_path(self):
        """A directory with links to Debian's rados/rbd C extensions only."""
        d = self.path("python")
        os.makedirs(d, exist_ok=True)
        for mod in PY_MODULES:
            src = self._module_file(mod)
            link = os.path.join(d, os.path.basename(src))
            if not os.path.lexists(link):
                os.symlink(src, link)
        return d

    # -- configuration -------------------------------------------------------------
    def write_conf(self):
        log = self.cloud.path("log")
        text = f"""\
# Generated by devcloud/ceph.py (development only: one OSD, size 1).
[global]
fsid = {self.fsid}
mon_host = {self.mon_host}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_port_min = {self.ports['bind-min']}
ms_bind_port_max = {self.ports['bind-max']}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
run_dir = {self.dir}/run
admin_socket = {self.dir}/run/$cluster-$name.asok
log_file = {log}/ceph-$name.log
mon_cluster_log_file = {log}/ceph-cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
auth_allow_insecure_global_id_reclaim = false
# the host's disk may be fuller than Ceph's 30 % warning threshold
mon_data_avail_warn = 2
mon_data_avail_crit = 1
[client]
keyring = {self.dir}/$cluster.$name.keyring
[mon]
mon_data = {self.dir}/mon/$cluster-$id
mgr_initial_modules = iostat
[mgr]
mgr_data = {self.dir}/mgr/$cluster-$id
[osd]
osd_data = {self.dir}/osd/$cluster-$id
osd_objectstore = bluestore
# the block file OUTSIDE osd_data (inside it ceph-osd --mkfs fails with ELOOP)
bluestore_block_path = {self.dir}/block/$cluster-$id.block
bluestore_block_create = true
bluestore_block_size = {self.osd_size_gib << 30}
osd_memory_target = 1073741824
"""
        with open(self.conf, "w") as f:
            f.write(text)

    # -- up / down -----------------------------------------------------------------
    def up(self):
        """Create the cluster once, start its daemons (those not running),
        wait until every PG is active+clean and the cluster is HEALTH_OK."""
        t0 = time.monotonic()
        self.check_prerequisites()
        for d in ("run", "mon", "mgr", "osd", "block"):
            os.makedirs(self.path(d), exist_ok=True)
        if not os.path.exists(self.path("fsid")):
            with open(self.path("fsid"), "w") as f:
                f.write(str(uuid.uuid4()))
        self.write_conf()
        if not self.cloud.stamp("ceph-mon"):
            self.mkfs_mon()
            self.cloud.set_stamp("ceph-mon")
        self.start("ceph-mon", ["ceph-mon", "-f", "-i", MON_ID, "-c", self.conf])
        self.cloud.wait("ceph-mon", lambda: self.ceph("mon", "stat", timeout=10), 60,
                        "ceph-mon quorum")
        mgr_dir = self.path("mgr", f"ceph-{MGR_ID}")
        if not os.path.exists(os.path.join(mgr_dir, "keyring")):
            os.makedirs(mgr_dir, exist_ok=True)
            self.ceph("auth", "get-or-create", f"mgr.{MGR_ID}", "mon", "allow profile mgr",
                      "osd", "allow *", "mds", "allow *", "-o", os.path.join(mgr_dir, "keyring"))
        self.start("ceph-mgr", ["ceph-mgr", "-f", "-i", MGR_ID, "-c", self.conf])
        if not self.cloud.stamp("ceph-osd"):
            self.mkfs_osd()
            self.cloud.set_stamp("ceph-osd")
        self.start("ceph-osd", ["ceph-osd", "-f", "-i", OSD_ID, "-c", self.conf])
        if not self.cloud.stamp("ceph-pools"):
            self.create_pools_and_users()
            self.cloud.set_stamp("ceph-pools")
        self.cloud.wait("ceph-osd", self.ready, 180, "Ceph HEALTH_OK, all PGs active+clean")
        took = time.monotonic() - t0
        self.cloud.log(f"Ceph ready in {took:.1f}s (mon {self.mon_host}, pools {', '.join(POOLS)})")
        return took

    def start(self, name, cmd):
        if self.cloud.spawn(name, cmd):
            self.cloud.log(f"{name} started")

    def mkfs_mon(self):
        self.cloud.log("ceph: creating the monitor (keys, monmap, mkfs)")
        mon_keyring = self.path("mon.keyring")
        admin = self.path("ceph.client.admin.keyring")
        auth = "ceph-authtool"
        for f in (mon_keyring, admin):
            if os.path.exists(f):
                os.unlink(f)
        self.cloud.run([auth, "--create-keyring", mon_keyring, "--gen-key", "-n", "mon.",
                        "--cap", "mon", "allow *"], what="ceph-authtool mon.")
        self.cloud.run([auth, "--create-keyring", admin, "--gen-key", "-n", "client.admin",
                        "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                        "--cap", "mds", "allow *", "--cap", "mgr", "allow *"],
                       what="ceph-authtool client.admin")
        self.cloud.run([auth, mon_keyring, "--import-keyring", admin], what="ceph-authtool import")
        monmap = self.path("monmap")
        self.cloud.run(["monmaptool", "--create", "--clobber", "--fsid", self.fsid,
                        "--addv", MON_ID, self.mon_host, monmap], what="monmaptool")
        self.cloud.run(["ceph-mon", "--mkfs", "-i", MON_ID, "-c", self.conf,
                        "--monmap", monmap, "--keyring", mon_keyring], what="ceph-mon --mkfs")

    def mkfs_osd(self):
        self.cloud.log(f"ceph: creating the BlueStore OSD ({self.osd_size_gib} GiB sparse file)")
        osd_uuid = str(uuid.uuid4())
        osd_dir = self.path("osd", f"ceph-{OSD_ID}")
        os.makedirs(osd_dir, exist_ok=True)
        key = self.cloud.run(["ceph-authtool", "--gen-print-key"]).strip()
        secrets = self.path("osd-secrets.json")
        with open(secrets, "w") as f:
            json.dump({"cephx_secret": key}, f)
        try:
            self.ceph("osd", "new", osd_uuid, OSD_ID, "-i", secrets)
        finally:
            os.unlink(secrets)
        with open(os.path.join(osd_dir, "keyring"), "w") as f:
            f.write(f"[osd.{OSD_ID}]\n\tkey = {key}\n")
        self.cloud.run(["ceph-osd", "-i", OSD_ID, "-c", self.conf, "--mkfs",
                        "--osd-uuid", osd_uuid], timeout=300, what="ceph-osd --mkfs")

    def create_pools_and_users(self):
        self.cloud.log("ceph: pools " + ", ".join(POOLS) + "; users " + ", ".join(USERS))
        for pool in POOLS:
            self.ceph("osd", "pool", "create", pool, str(PG_NUM), str(PG_NUM))
            self.ceph("osd", "pool", "application", "enable", pool, "rbd")
        self.cloud.wait("ceph-osd", lambda: self.osd_up(), 120, "OSD up")
        for pool in POOLS:
            self.rbd("pool", "init", pool)
        for user, caps in USERS.items():
            args = []
            for k, v in caps.items():
                args += [k, v]
            self.ceph("auth", "get-or-create", f"client.{user}", *args, "-o", self.keyring(user))

    def osd_up(self):
        stat = json.loads(self.ceph("osd", "stat", "--format=json", timeout=10))
        return stat.get("num_up_osds", stat.get("osdmap", {}).get("num_up_osds")) == 1

    def ready(self):
        """All PGs active+clean (a looser check fires before a new pool's PGs
        exist) and HEALTH_OK."""
        pg = json.loads(self.ceph("pg", "stat", "--format=json", timeout=10))
        summary = pg.get("pg_summary", pg)
        total = summary.get("num_pgs", 0)
        states = {s["name"]: s["num"] for s in summary.get("num_pg_by_state", [])}
        if total < PG_NUM * len(POOLS) or states.get("active+clean", 0) != total:
            return False
        health = json.loads(self.ceph("health", "--format=json", timeout=10))
        return health.get("status") == "HEALTH_OK"

    def running(self):
        return all(self.cloud.pid(d) for d in DAEMONS)

    # -- what the services get ---------------------------------------------------------
    def configure_glance(self, glance_dir):
        """glance-api.conf: glance_store's rbd driver as store ``ceph``, the
        default (the file store stays, as ``fs``); ``show_image_direct_url``
        so Nova sees the ``rbd://FSID/images/ID/snap`` location it clones."""
        conf = os.path.join(glance_dir, "glance-api.conf")
        with open(conf) as f:
            text = f.read()
        for old, new in (("enabled_backends = fs:file\n", "enabled_backends = fs:file, ceph:rbd\n"
                          "show_image_direct_url = true\n"),
                         ("default_backend = fs\n", "default_backend = ceph\n")):
            if old not in text:
                raise RuntimeError(f"devcloud.ceph: {conf} has no '{old.strip()}' to change")
            text = text.replace(old, new)
        text += (f"\n[ceph]\nrbd_store_pool = images\nrbd_store_user = glance\n"
                 f"rbd_store_ceph_conf = {self.conf}\nrbd_store_chunk_size = 8\n"
                 # zero chunks not written: the raw rootfs's free space costs nothing
                 "rbd_thin_provisioning = true\n"
                 "store_description = Ceph RBD (devcloud)\n")
        with open(conf, "w") as f:
            f.write(text)

    def nova_conf(self):
        """[libvirt] lines for nova-compute: instances' disks in pool vms."""
        return (f"images_type = rbd\nimages_rbd_pool = vms\n"
                f"images_rbd_ceph_conf = {self.conf}\nrbd_user = nova\n"
                f"rbd_secret_uuid = {self.secret_uuid}\n"
                "images_rbd_glance_store_name = ceph\n")

    def libvirt_secret(self, libvirtd):
        """Define client.nova's key as the libvirt secret QEMU authenticates with."""
        xml = self.path("libvirt-secret.xml")
        with open(xml, "w") as f:
            f.write(f"<secret ephemeral='no' private='no'><uuid>{self.secret_uuid}</uuid>"
                    "<usage type='ceph'><name>client.nova secret</name></usage></secret>")
        libvirtd.virsh("secret-define", xml, timeout=30)
        libvirtd.virsh("secret-set-value", "--secret", self.secret_uuid,
                       "--base64", self.key("nova"), timeout=30)

    # -- measurements -----------------------------------------------------------------
    def images(self, pool):
        out = self.rbd("ls", "-l", "--format=json", pool)
        return json.loads(out or "[]")

    def info(self, pool, name):
        return json.loads(self.rbd("info", "--format=json", f"{pool}/{name}"))

    def df(self):
        return json.loads(self.ceph("df", "--format=json"))


def rbd_cmd(conf, *args, user="admin"):
    """Run the rbd CLI (for tests and the benchmark)."""
    return subprocess.run(["rbd", "-c", conf, "--id", user, *args], check=True,
                          capture_output=True, text=True).stdout
