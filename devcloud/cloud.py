"""A whole OpenStack cloud on one machine, on 127.0.0.1 (development only).

Real services, from PyPI (the repository's .venv) and Debian packages:

==============  ==========================================================
MariaDB         ``mariadbd``, unix socket only (``STATE/mysql/sock``)
RabbitMQ        Debian ``rabbitmq-server`` started by hand (own epmd)
Keystone        pip ``keystone``, ``keystone.wsgi.api`` under gunicorn
Glance          pip ``glance`` 33 + this project's plugin and paste filter
                (devcloud.glance_dev's config, keystone authtoken
                instead of its dev filter), gunicorn
Placement       pip ``openstack-placement``, ``placement.wsgi.api`` under gunicorn
Nova            pip ``nova`` 34: api (``nova.wsgi.osapi_compute`` under
                gunicorn), conductor, scheduler, compute (libvirt, TCG)
libvirtd        Debian libvirt, private daemons in a mount namespace
                (devcloud/libvirtd.py)
Neutron         pip ``neutron`` 29: the API server only (``neutron.wsgi.api``
                under gunicorn; ML2 with no mechanism driver, no RPC server,
                no agents: servers use ``--nic none``). With
                ``DEVCLOUD_NEUTRON=standin`` (or when neutron is not
                installed) the STAND-IN devcloud/neutron_standin.py instead.
==============  ==========================================================

Everything (config, databases, logs, PIDs, images, instances) is under one
state directory: ``$DEVCLOUD_STATE`` or ``<repo>/.cloud``. Ports are fixed,
below Linux's ephemeral range (so they never clash with the tests'
``free_port()`` servers): ``$DEVCLOUD_PORT_BASE`` (28700) + offsets.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from devcloud.ceph import DAEMONS as CEPH_DAEMONS
from devcloud.ceph import Ceph
from devcloud.libvirtd import Libvirtd

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION = "RegionOne"
PASSWORD = "devcloud"          # every user's password (127.0.0.1 only)
SERVICE_USERS = ("glance", "nova", "placement", "neutron")
DATABASES = ("keystone", "glance", "placement", "nova_api", "nova", "nova_cell0", "neutron")
FLAVORS = (("d2v.tiny", 1, 256, 1), ("d2v.small", 1, 512, 2))   # name, vcpus, MiB, GiB
# How long the API servers keep an idle client connection: well above any
# client's polling interval (openstacksdk's is 2 s), see Cloud.gunicorn.
KEEPALIVE_SECONDS = 75

PORTS = {"keystone": 0, "glance": 92, "placement": 78, "nova-api": 74,
         "neutron": 96, "rabbitmq": 72, "rabbitmq-dist": 73, "epmd": 69}
# Start order; down goes in reverse.
STOCK_DRIVER = "libvirt.LibvirtDriver"
DOCKER2VM_DRIVER = "docker2vm.Docker2VMDriver"
SERVICES = ("mysql", *CEPH_DAEMONS, "epmd", "rabbitmq", "libvirtd", "keystone", "glance",
            "placement", "neutron", "nova-api", "nova-conductor",
            "nova-scheduler", "nova-compute")


def venv_bin(name):
    cand = os.path.join(os.path.dirname(sys.executable), name)
    return cand if os.path.exists(cand) else (shutil.which(name) or name)


def default_compute_driver():
    """This project's driver when the checkout has it (its shim package),
    else the stock libvirt driver."""
    if os.path.exists(os.path.join(TOP, "nova", "virt", "docker2vm", "__init__.py")):
        return DOCKER2VM_DRIVER
    return STOCK_DRIVER


class CloudError(RuntimeError):
    pass


class Cloud:
    def __init__(self, state=None, port_base=None, compute_driver=None,
                 docker2vm_opts=None, log=None, ceph=None):
        self.state = os.path.abspath(state or os.environ.get("DEVCLOUD_STATE")
                                     or os.path.join(TOP, ".cloud"))
        base = int(port_base or os.environ.get("DEVCLOUD_PORT_BASE", "28700"))
        self.ports = {k: base + v for k, v in PORTS.items()}
        self.compute_driver = compute_driver or os.environ.get(
            "DEVCLOUD_COMPUTE_DRIVER") or default_compute_driver()
        self.docker2vm_opts = dict(docker2vm_opts or {})
        self._log = log or (lambda msg: (sys.stderr.write(f"devcloud: {msg}\n"), sys.stderr.flush()))
        self.t0 = time.monotonic()
        self.libvirtd = Libvirtd(self.path("libvirt"), persistent=True)
        # DEVCLOUD_CEPH=1 (or --ceph): Glance's rbd store, Nova's rbd image backend
        if ceph is None:
            ceph = os.environ.get("DEVCLOUD_CEPH", "0") == "1"
        self.ceph = Ceph(self, base) if ceph else None

    def log(self, msg):
        self._log(f"[{time.monotonic() - self.t0:5.1f}s] {msg}")

    # -- paths, urls ---------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.state, *parts)

    def url(self, name):
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def keystone_url(self):
        return self.url("keystone") + "/v3"

    @property
    def mysql_socket(self):
        return self.path("mysql", "sock")

    def db_url(self, name):
        return (f"mysql+pymysql://root@localhost/{name}"
                f"?unix_socket={self.mysql_socket}&charset=utf8mb4")

    @property
    def transport_url(self):
        return f"rabbit://guest:guest@127.0.0.1:{self.ports['rabbitmq']}/"

    def pidfile(self, name):
        return self.path("pids", f"{name}.pid")

    def logfile(self, name):
        return self.path("log", f"{name}.log")

    # -- process bookkeeping --------------------------------------------------
    def pid(self, name):
        if name == "libvirtd":
            return self.libvirtd.pid()
        try:
            with open(self.pidfile(name)) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        try:    # a zombie child of ours is not running
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    os.waitpid(pid, os.WNOHANG)
                    return None
        except (OSError, IndexError, ChildProcessError):
            pass
        return pid

    def spawn(self, name, cmd, env=None, cwd=None):
        """Start one service in its own session (its process group is what
        ``down`` kills); stdout/stderr to log/NAME.out; PID recorded."""
        if self.pid(name):
            return False
        os.makedirs(self.path("pids"), exist_ok=True)
        os.makedirs(self.path("log"), exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        out = open(self.path("log", f"{name}.out"), "ab")
        proc = subprocess.Popen(cmd, env=full_env, cwd=cwd or self.state,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        with open(self.pidfile(name), "w") as f:
            f.write(str(proc.pid))
        return True

    def kill(self, name, timeout=30):
        if name == "libvirtd":
            self.libvirtd.stop(timeout)
            return
        pid = self.pid(name)
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._group_alive(pid):
                _reap(pid)
                time.sleep(0.1)
            if self._group_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(0.2)
            _reap(pid)
        try:
            os.unlink(self.pidfile(name))
        except FileNotFoundError:
            pass

    @staticmethod
    def _group_alive(pgid):
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[2]) == pgid and fields[0] != "Z":
                        return True
                except (OSError, IndexError, ValueError):
                    pass
        return False

    def tail(self, name, n=3000):
        text = ""
        for fn in (f"{name}.out", f"{name}.log"):
            try:
                with open(self.path("log", fn), errors="replace") as f:
                    text += f"\n--- log/{fn} ---\n" + f.read()[-n:]
            except OSError:
                pass
        return text

    def wait(self, name, check, timeout=120, what=None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if name and not self.pid(name):
                raise CloudError(f"{name} exited during start-up:{self.tail(name)}")
            try:
                if check():
                    return
            except Exception as exc:   # noqa: BLE001 - any failure means not ready yet
                last = exc
            time.sleep(0.3)
        raise CloudError(f"{what or name} not ready after {timeout}s ({last}):{self.tail(name)}")

    @staticmethod
    def http_ok(url):
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500

    def stamp(self, name):
        return os.path.exists(self.path("stamps", name))

    def set_stamp(self, name):
        os.makedirs(self.path("stamps"), exist_ok=True)
        open(self.path("stamps", name), "w").close()

    def run(self, cmd, env=None, timeout=900, what=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        res = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        with open(self.path("log", "setup.log"), "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
        if res.returncode:
            raise CloudError(f"{what or cmd[0]} failed ({res.returncode}):\n"
                             + (res.stderr or res.stdout)[-3000:])
        return res.stdout

    # -- up / down -----------------------------------------------------------
    def up(self):
        t0 = self.t0 = time.monotonic()
        self.check_prerequisites()
        if self.ceph:
            try:
                self.ceph.check_prerequisites()
            except RuntimeError as exc:
                raise CloudError(str(exc)) from None
        for d in ("log", "pids", "stamps", "etc"):
            os.makedirs(self.path(d), exist_ok=True)
        self.prepare_base_vm()
        self.write_configs()
        self.start_mysql()
        self.start_rabbitmq()
        self.libvirtd.start(wait=False)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as ex:     # Ceph comes up while the databases migrate
            ceph_up = ex.submit(self.ceph.up) if self.ceph else None
            self.wait("mysql", lambda: self._mysql("SELECT 1") is not None, 60)
            self.create_databases()
            self.setup_databases()
            if ceph_up:
                ceph_up.result()
        self.start_keystone()
        self.bootstrap_keystone()
        self.start_glance()
        self.start_placement()
        self.start_neutron()
        self.start_nova()
        self.libvirtd.wait_ready()
        if self.ceph:
            self.ceph.libvirt_secret(self.libvirtd)
        self.start_compute()
        self.finish_nova()
        self.write_clouds_yaml()
        took = time.monotonic() - t0
        self.log(f"cloud up in {took:.1f}s (state in {self.state})")
        return took

    def down(self):
        from devcloud.compute2 import SecondCompute
        SecondCompute(self).down()        # a second compute host, when one was added
        for name in reversed(SERVICES):
            t0 = time.monotonic()
            if name == "nova-compute":
                self.destroy_domains()
            self.kill(name)
            if time.monotonic() - t0 > 3:
                self.log(f"{name} took {time.monotonic() - t0:.1f}s to stop")
        # epmd started by rabbit itself (should not happen: ours runs first)
        left = self.leftover_processes()
        if left:
            self.log(f"killing leftovers: {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.unmount_under_state()
        self.log("cloud down")

    def mounts_under_state(self):
        """Mount points below the state dir in this mount namespace, deepest
        last (nova-compute's read-only bind mounts of share trees)."""
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                line.split()[4])
                if target.startswith(self.state + "/"):
                    found.append(target)
        return found

    def unmount_under_state(self):
        """The share trees' read-only bind mounts stay after nova-compute
        stops (only its image cache pass removes them): unmount them, so
        down leaves no mount and destroy can remove the state dir."""
        for target in reversed(self.mounts_under_state()):
            proc = subprocess.run(["umount", target], capture_output=True, text=True)
            if proc.returncode:
                self.log(f"could not unmount {target}: {proc.stderr.strip()}")

    def destroy_domains(self):
        if not self.libvirtd.running():
            return
        try:
            out = self.libvirtd.virsh("list", "--all", "--name", timeout=20).stdout
            for dom in out.split():
                self.libvirtd.virsh("destroy", dom, check=False, timeout=30)
                self.libvirtd.virsh("undefine", "--nvram", dom, check=False, timeout=30)
        except Exception as exc:     # noqa: BLE001
            self.log(f"could not list domains: {exc}")

    def leftover_processes(self):
        """Processes whose command line or cwd names the state dir."""
        out = []
        me = os.getpid()
        for p in os.listdir("/proc"):
            if not p.isdigit() or int(p) == me:
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
                cwd = os.readlink(f"/proc/{p}/cwd")
            except OSError:
                continue
            if self.state + "/" in cmd.replace("\0", " ") + " " or cwd == self.state \
                    or cwd.startswith(self.state + "/"):
                out.append(int(p))
        return out

    def status(self):
        """PID (or None) of each service of this cloud (Ceph's daemons only with Ceph)."""
        return {name: self.pid(name) for name in SERVICES
                if self.ceph or name not in CEPH_DAEMONS}

    def destroy(self):
        """down, then remove the state dir (the cloud's only footprint)."""
        self.down()
        shutil.rmtree(self.state, ignore_errors=True)

    # -- prerequisites --------------------------------------------------------
    def check_prerequisites(self):
        missing = [t for t in ("mariadbd", "mariadb-install-db", "unshare", "libvirtd",
                               "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img",
                               "epmd")
                   if not (shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
                           or os.path.exists(f"/usr/lib/erlang/bin/{t}"))]
        if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
            missing.append("rabbitmq-server")
        if missing:
            raise CloudError("missing system tools: " + ", ".join(missing)
                             + " (bash devcloud/cloud.sh installs bindep profile 'cloud')")
        for mod in ("keystone", "glance", "nova", "placement", "pymysql", "gunicorn",
                    "libvirt", "openstack", "glance_docker_import"):
            try:
                __import__(mod)
            except ImportError:
                raise CloudError(f"Python package for '{mod}' is missing from {sys.prefix} "
                                 "(pip install -r devcloud/requirements.txt)")
        if os.geteuid() != 0:
            raise CloudError("the development cloud needs root (libvirtd, mounts)")

    # -- configuration ---------------------------------------------------------
    def authtoken(self, user):
        return (f"www_authenticate_uri = {self.keystone_url}\n"
                f"auth_url = {self.keystone_url}\n"
                "auth_type = password\n"
                "project_domain_name = Default\nuser_domain_name = Default\n"
                f"project_name = service\nusername = {user}\npassword = {PASSWORD}\n"
                f"region_name = {REGION}\n")

    def service_auth(self, user="nova"):
        return (f"auth_url = {self.keystone_url}\nauth_type = password\n"
                "project_domain_name = Default\nuser_domain_name = Default\n"
                f"project_name = service\nusername = {user}\npassword = {PASSWORD}\n"
                f"region_name = {REGION}\n")

    def write_configs(self):
        etc = self.path("etc")
        files = {}
        files["keystone/keystone.conf"] = f"""\
[DEFAULT]
log_file = {self.logfile('keystone')}
[database]
connection = {self.db_url('keystone')}
[token]
provider = fernet
[fernet_tokens]
key_repository = {self.path('keystone', 'fernet-keys')}
[fernet_receipts]
key_repository = {self.path('keystone', 'fernet-keys')}
[credential]
key_repository = {self.path('keystone', 'credential-keys')}
"""
        files["placement/placement.conf"] = f"""\
[DEFAULT]
log_file = {self.logfile('placement')}
[api]
auth_strategy = keystone
[keystone_authtoken]
{self.authtoken('placement')}
[placement_database]
connection = {self.db_url('placement')}
"""
        nova = f"""\
[DEFAULT]
transport_url = {self.transport_url}
state_path = {self.path('nova')}
instances_path = {self.path('nova', 'instances')}
compute_driver = {self.compute_driver}
my_ip = 127.0.0.1
host = devcloud
graceful_shutdown_timeout = 5
[api]
auth_strategy = keystone
[api_database]
connection = {self.db_url('nova_api')}
[database]
connection = {self.db_url('nova')}
[keystone_authtoken]
{self.authtoken('nova')}
[service_user]
send_service_user_token = true
{self.service_auth()}
[placement]
{self.service_auth()}
valid_interfaces = internal,public
[glance]
valid_interfaces = internal,public
[neutron]
{self.service_auth()}
# neutron-server API only, or the devcloud STAND-IN (DEVCLOUD_NEUTRON=standin)
endpoint_override = {self.url('neutron')}
[libvirt]
virt_type = qemu
connection_uri = {self.libvirtd.uri}
{self.ceph.nova_conf() if self.ceph else ''}[scheduler]
discover_hosts_in_cells_interval = 5
workers = 1
[conductor]
workers = 1
[oslo_concurrency]
lock_path = {self.path('nova', 'locks')}
[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 0
[vnc]
enabled = false
[spice]
enabled = false
[nova_sys_admin]
helper_command = {venv_bin('privsep-helper')} --config-file {os.path.join(etc, 'nova', 'nova.conf')}
[docker2vm]
{''.join(f'{k} = {v}{chr(10)}' for k, v in self.docker2vm_opts.items())}"""
        files["nova/nova.conf"] = nova
        files["neutron/neutron.conf"] = f"""\
[DEFAULT]
# API only: servers here use --nic none; no RPC server, no agents.
core_plugin = ml2
# port_forwarding (and the router plugin it needs) only for its DB model:
# Neutron's port queries join Port.port_forwardings.
service_plugins = router,port_forwarding
auth_strategy = keystone
transport_url = {self.transport_url}
log_file = {self.logfile('neutron')}
state_path = {self.path('neutron')}
api_paste_config = {os.path.join(etc, 'neutron', 'api-paste.ini')}
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
[database]
connection = {self.db_url('neutron')}
[keystone_authtoken]
{self.authtoken('neutron')}
[oslo_concurrency]
lock_path = {self.path('neutron', 'locks')}
"""
        files["neutron/plugins/ml2/ml2_conf.ini"] = """\
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers =
extension_drivers =
"""
        npaste = os.path.join(sys.prefix, "etc", "neutron", "api-paste.ini")
        if os.path.exists(npaste):
            with open(npaste) as f:
                files["neutron/api-paste.ini"] = f.read()
        for svc in ("nova-api", "nova-conductor", "nova-scheduler", "nova-compute"):
            files[f"nova/{svc}.conf"] = f"[DEFAULT]\nlog_file = {self.logfile(svc)}\n"
        paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
        if not os.path.exists(paste):
            raise CloudError(f"{paste} not found (nova's wheel ships it)")
        with open(paste) as f:
            files["nova/api-paste.ini"] = f.read()
        for rel, text in files.items():
            p = os.path.join(etc, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(text)
        for d in (("nova", "instances"), ("nova", "locks"), ("keystone",), ("neutron", "locks")):
            os.makedirs(self.path(*d), exist_ok=True)

    # -- MariaDB ---------------------------------------------------------------
    def _mysql(self, sql, db=None):
        cmd = ["mariadb", "--no-defaults", "-S", self.mysql_socket, "-u", "root",
               "-N", "-e", sql] + ([db] if db else [])
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return res.stdout if res.returncode == 0 else None

    def start_mysql(self):
        d = self.path("mysql")
        if not os.path.isdir(os.path.join(d, "data", "mysql")):
            os.makedirs(d, exist_ok=True)
            self.log("initialising MariaDB")
            self.run(["mariadb-install-db", "--no-defaults", f"--datadir={d}/data",
                      "--auth-root-authentication-method=normal", "--skip-test-db",
                      "--user=root"], what="mariadb-install-db")
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        if self.spawn("mysql", [mariadbd, "--no-defaults", f"--datadir={d}/data",
                                f"--socket={self.mysql_socket}", "--skip-networking",
                                "--user=root", f"--pid-file={d}/mariadbd.pid",
                                f"--log-error={self.logfile('mysql')}",
                                "--max-connections=500", "--innodb-buffer-pool-size=64M",
                                # development data: no fsync per commit, small redo log
                                "--innodb-flush-log-at-trx-commit=2",
                                "--innodb-log-file-size=16M"]):
            self.log("MariaDB started (unix socket only)")

    def create_databases(self):
        sql = ";".join(f"CREATE DATABASE IF NOT EXISTS {n} CHARACTER SET utf8mb4"
                       for n in DATABASES)
        if self._mysql(sql) is None:
            raise CloudError("could not create the databases")

    # -- RabbitMQ ----------------------------------------------------------------
    def rabbit_env(self):
        d = self.path("rabbitmq")
        return {
            "HOME": d,                                  # .erlang.cookie stays here
            "RABBITMQ_NODENAME": "devcloud@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.ports["rabbitmq"]),
            "RABBITMQ_DIST_PORT": str(self.ports["rabbitmq-dist"]),
            "ERL_EPMD_PORT": str(self.ports["epmd"]),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": self.path("log"),
            "RABBITMQ_LOGS": self.logfile("rabbitmq"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(d, "plugins-expand"),
            "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(d, "feature_flags"),
        }

    def start_rabbitmq(self):
        d = self.path("rabbitmq")
        os.makedirs(d, exist_ok=True)
        for name, text in (("rabbitmq.conf",
                            f"listeners.tcp.default = 127.0.0.1:{self.ports['rabbitmq']}\n"
                            "loopback_users.guest = true\n"
                            "disk_free_limit.absolute = 50MB\n"),
                           ("advanced.config", "[].\n"), ("rabbitmq-env.conf", ""),
                           ("enabled_plugins", "[].\n")):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        env = self.rabbit_env()
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if self.spawn("epmd", [epmd, "-port", str(self.ports["epmd"]),
                               "-address", "127.0.0.1"], env=env):
            time.sleep(0.3)
        if self.spawn("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env):
            self.log("RabbitMQ started")

    def rabbit_ready(self):
        import kombu
        with kombu.Connection(self.transport_url.replace("rabbit://", "amqp://"),
                              connect_timeout=2) as c:
            c.connect()
        return True

    # -- gunicorn services ---------------------------------------------------------
    def gunicorn(self, name, app, port, env, workers=1, threads=8):
        """gunicorn serving APP (module:callable) through devcloud.wsgi.

        ``--keep-alive``: gunicorn's default closes a connection idle for
        2 s, the very interval at which openstacksdk polls (``server delete
        --wait``, ``wait_for_status``). The server's close then races the
        client's next request on the reused connection, and the client gets
        "Remote end closed connection without response" (4-5 of 60 polls
        here; 0 of 60 with 75 s). Idle connections cost the gthread worker
        no thread, only a poller entry."""
        cmd = [venv_bin("gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--worker-class", "gthread", "--workers", str(workers),
               "--threads", str(threads), "--timeout", "0", "--graceful-timeout", "10",
               "--keep-alive", str(KEEPALIVE_SECONDS),
               "--error-logfile", self.path("log", f"{name}.gunicorn.log"),
               # gunicorn 27 would otherwise create ~/.gunicorn/gunicorn.ctl
               "--no-control-socket", "devcloud.wsgi:application"]
        env = dict(env, DEVCLOUD_WSGI_APP=app,
                   PYTHONPATH=os.pathsep.join(p for p in (TOP, env.get("PYTHONPATH"),
                                                          os.environ.get("PYTHONPATH")) if p))
        return self.spawn(name, cmd, env=env)

    def setup_databases(self):
        """Schema migrations and Keystone's bootstrap, once (stamps), the
        four services' in parallel: they are independent databases, and
        Nova's alone takes more than a minute."""
        from concurrent.futures import ThreadPoolExecutor
        steps = (self.setup_keystone_db, self.setup_glance_db, self.setup_placement_db,
                 self.setup_nova_db, self.setup_neutron_db)
        with ThreadPoolExecutor(len(steps)) as ex:
            futures = [ex.submit(step) for step in steps]
        for f in futures:
            f.result()

    def setup_keystone_db(self):
        conf = self.path("etc", "keystone", "keystone.conf")
        manage = [venv_bin("keystone-manage"), "--config-file", conf]
        if not self.stamp("keystone-db"):
            self.log("keystone: db_sync, fernet keys")
            self.run(manage + ["db_sync"], what="keystone-manage db_sync")
            for sub in ("fernet_setup", "credential_setup"):
                self.run(manage + [sub, "--keystone-user", "root",
                                   "--keystone-group", "root"], what=f"keystone-manage {sub}")
            self.run(manage + ["bootstrap", "--bootstrap-password", PASSWORD,
                               "--bootstrap-admin-url", self.keystone_url,
                               "--bootstrap-internal-url", self.keystone_url,
                               "--bootstrap-public-url", self.keystone_url,
                               "--bootstrap-region-id", REGION],
                     what="keystone-manage bootstrap")
            self.set_stamp("keystone-db")

    def start_keystone(self):
        if self.gunicorn("keystone", "keystone.wsgi.api:application",
                         self.ports["keystone"],
                         {"OS_KEYSTONE_CONFIG_DIR": self.path("etc", "keystone"),
                          "OS_KEYSTONE_CONFIG_FILES": "keystone.conf"},
                         threads=4):
            self.log(f"keystone started on {self.url('keystone')}")
        self.wait("keystone", lambda: self.http_ok(self.keystone_url), 90)

    def admin_conn(self):
        import openstack
        return openstack.connect(
            auth_url=self.keystone_url, username="admin", password=PASSWORD,
            project_name="admin", user_domain_name="Default",
            project_domain_name="Default", region_name=REGION,
            identity_interface="public")

    def bootstrap_keystone(self):
        if self.stamp("keystone-catalog"):
            return
        self.log("keystone: projects, users, roles, service catalog")
        c = self.admin_conn()
        ident = c.identity
        roles = {r.name: r for r in ident.roles()}
        for r in ("admin", "member", "reader", "service"):
            if r not in roles:
                roles[r] = ident.create_role(name=r)
        projects = {p.name: p for p in ident.projects()}
        for p in ("service", "demo"):
            if p not in projects:
                projects[p] = ident.create_project(name=p, domain_id="default")
        users = {u.name: u for u in ident.users()}

        def user(name, project, role_names):
            u = users.get(name) or ident.create_user(
                name=name, password=PASSWORD, domain_id="default",
                default_project_id=projects[project].id)
            for rn in role_names:
                ident.assign_project_role_to_user(projects[project], u, roles[rn])

        for name in SERVICE_USERS:
            user(name, "service", ("admin", "service"))
        user("demo", "demo", ("member", "reader"))
        services = {s.type: s for s in ident.services()}
        for stype, name, url in (("image", "glance", self.url("glance")),
                                 ("placement", "placement", self.url("placement")),
                                 ("compute", "nova", self.url("nova-api") + "/v2.1"),
                                 ("network", "neutron", self.url("neutron"))):
            svc = services.get(stype) or ident.create_service(name=name, type=stype)
            for iface in ("public", "internal"):
                ident.create_endpoint(service_id=svc.id, interface=iface, url=url,
                                      region_id=REGION)
        self.set_stamp("keystone-catalog")

    @property
    def glance(self):
        from devcloud.glance import KeystoneGlance
        return KeystoneGlance(self.path("glance"), port=self.ports["glance"],
                              database=self.db_url("glance"),
                              authtoken=self.authtoken("glance"),
                              # docker_delivery=bundle: the base VM built in prepare_base_vm
                              convert_opts={"bundle_base_dir": self.path("base")})

    def setup_glance_db(self):
        g = self.glance
        g.write_config()
        if self.ceph:
            self.ceph.configure_glance(g.dir)
        if not self.stamp("glance-db"):
            self.log("glance: db_sync")
            g.db_sync()
            self.set_stamp("glance-db")

    def start_glance(self):
        g = self.glance
        if not self.pid("glance"):
            env = g.env()
            if self.ceph:
                env["PYTHONPATH"] = self.ceph.python_path()
            self.gunicorn("glance", "glance.wsgi.api:application", self.ports["glance"], env)
            self.log(f"glance started on {self.url('glance')}")

    def setup_placement_db(self):
        conf_dir = self.path("etc", "placement")
        env = {"OS_PLACEMENT_CONFIG_DIR": conf_dir}
        if not self.stamp("placement-db"):
            self.log("placement: db sync")
            self.run([venv_bin("placement-manage"), "--config-file",
                      os.path.join(conf_dir, "placement.conf"), "db", "sync"],
                     env=env, what="placement-manage db sync")
            self.set_stamp("placement-db")

    def start_placement(self):
        env = {"OS_PLACEMENT_CONFIG_DIR": self.path("etc", "placement")}
        if self.gunicorn("placement", "placement.wsgi.api:application",
                         self.ports["placement"], env, threads=4):
            self.log(f"placement started on {self.url('placement')}")

    @property
    def real_neutron(self):
        """Real neutron-server (API only) unless DEVCLOUD_NEUTRON=standin or
        neutron is not installed."""
        if os.environ.get("DEVCLOUD_NEUTRON", "real") == "standin":
            return False
        # find_spec, not import: importing neutron monkey-patches with eventlet
        import importlib.util
        return importlib.util.find_spec("neutron") is not None

    def neutron_env(self):
        return {"OS_NEUTRON_CONFIG_DIR": self.path("etc", "neutron"),
                "OS_NEUTRON_CONFIG_FILES": "neutron.conf;plugins/ml2/ml2_conf.ini",
                # SQLAlchemy 2.1: Neutron reads backrefs before mappers are configured
                "DEVCLOUD_CONFIGURE_MAPPERS": "1"}

    def setup_neutron_db(self):
        if not self.real_neutron or self.stamp("neutron-db"):
            return
        self.log("neutron: db upgrade heads")
        etc = self.path("etc", "neutron")
        self.run([venv_bin("neutron-db-manage"), "--config-file",
                  os.path.join(etc, "neutron.conf"), "--config-file",
                  os.path.join(etc, "plugins", "ml2", "ml2_conf.ini"), "upgrade", "heads"],
                 what="neutron-db-manage upgrade heads")
        self.set_stamp("neutron-db")

    def start_neutron(self):
        mode = "real" if self.real_neutron else "standin"
        mode_file = self.path("neutron-mode")
        try:
            with open(mode_file) as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if old != mode and self.pid("neutron"):
            self.kill("neutron")
        with open(mode_file, "w") as f:
            f.write(mode)
        if not self.real_neutron:
            self.log("neutron is not installed or DEVCLOUD_NEUTRON=standin: "
                     "the Neutron STAND-IN answers instead")
            return self.start_neutron_standin()
        if self.gunicorn("neutron", "neutron.wsgi.api:application", self.ports["neutron"],
                         self.neutron_env(), threads=4):
            self.log(f"neutron-server (API only, ML2 without mechanism drivers, no agents) "
                     f"started on {self.url('neutron')}")

    def start_neutron_standin(self):
        if self.gunicorn("neutron", "devcloud.neutron_standin:application",
                         self.ports["neutron"], {}, threads=4):
            self.log(f"Neutron STAND-IN started on {self.url('neutron')} "
                     "(devcloud/neutron_standin.py)")

    def nova_args(self, svc):
        etc = self.path("etc", "nova")
        return ["--config-file", os.path.join(etc, "nova.conf"),
                "--config-file", os.path.join(etc, f"{svc}.conf")]

    def setup_nova_db(self):
        manage = [venv_bin("nova-manage")] + self.nova_args("nova-conductor")
        if not self.stamp("nova-db"):
            self.log("nova: api_db sync, cells, db sync (the slow part of a first up)")
            self.run(manage + ["api_db", "sync"], what="nova-manage api_db sync")
            self.run(manage + ["cell_v2", "map_cell0", "--database_connection",
                               self.db_url("nova_cell0")], what="nova-manage map_cell0")
            cells = self.run(manage + ["cell_v2", "list_cells"])
            if " cell1 " not in cells:
                self.run(manage + ["cell_v2", "create_cell", "--name", "cell1",
                                   "--transport-url", self.transport_url,
                                   "--database_connection", self.db_url("nova")],
                         what="nova-manage create_cell")
            self.run(manage + ["db", "sync"], what="nova-manage db sync")
            self.set_stamp("nova-db")

    def start_nova(self):
        etc = self.path("etc", "nova")
        if self.gunicorn("nova-api", "nova.wsgi.osapi_compute:application",
                         self.ports["nova-api"],
                         {"OS_NOVA_CONFIG_DIR": etc,
                          "OS_NOVA_CONFIG_FILES": "api-paste.ini;nova.conf;nova-api.conf"},
                         threads=4):
            self.log(f"nova-api started on {self.url('nova-api')}")
        self.wait("rabbitmq", self.rabbit_ready, 120)
        self.log("RabbitMQ ready")
        for svc in ("nova-conductor", "nova-scheduler"):
            if self.spawn(svc, [venv_bin(svc)] + self.nova_args(svc)):
                self.log(f"{svc} started")

    def prepare_base_vm(self):
        """The base VM (`docker2vm base-image --boot-disk`, built once into
        STATE/base): its boot.qcow2 is the plain image of the tests with any
        driver; the docker2vm driver boots containers on its kernel and
        initrd unless [docker2vm] options name others."""
        docker2vm = self.compute_driver.startswith("docker2vm.")
        if docker2vm and ("base_kernel" in self.docker2vm_opts
                          or "base_vm_image" in self.docker2vm_opts):
            return
        base = self.path("base")
        files = {k: os.path.join(base, f) for k, f in (("base_kernel", "vmlinux"),
                                                       ("base_initrd", "initrd.img"))}
        # boot.qcow2 (the same base VM on a BIOS boot disk) doubles as the
        # cloud's plain, non-docker image for stock-path servers.
        if not all(os.path.exists(f) for f in list(files.values()) + [self.plain_image]):
            self.log("building the docker2vm base VM (docker2vm base-image)")
            os.makedirs(self.path("log"), exist_ok=True)
            cache = os.environ.get("DEVCLOUD_CACHE") or self.path("cache")
            self.run([venv_bin("docker2vm"), "base-image", "-o", base, "--boot-disk",
                      "--cache-dir", cache], what="docker2vm base-image")
        self.link_base_kernels(base)
        if not docker2vm:
            return
        self.docker2vm_opts.update(files)
        with open(os.path.join(base, "cmdline")) as f:
            self.docker2vm_opts["base_cmdline"] = f.read().strip()

    def link_base_kernels(self, base):
        """Glance's bundle import rebuilds (or reuses) the base VM in
        ``[docker_convert] bundle_base_dir`` = STATE/base with that directory
        as its kernel cache: link the cached kernels there, so it finds the
        kernel the base VM was built from (same inputs: nothing rebuilt, no
        download)."""
        cache = os.environ.get("DEVCLOUD_CACHE") or self.path("cache")
        if os.path.realpath(cache) == os.path.realpath(base):
            return
        for kdir in glob.glob(os.path.join(cache, "kernel-*")):
            link = os.path.join(base, os.path.basename(kdir))
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(kdir), link)

    @property
    def plain_image(self):
        return self.path("base", "boot.qcow2")

    def compute_signature(self):
        return json.dumps({"driver": self.compute_driver, "docker2vm": self.docker2vm_opts,
                           "ceph": bool(self.ceph)}, sort_keys=True)

    def start_compute(self):
        sig_file = self.path("compute-driver.json")
        try:
            with open(sig_file) as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if self.pid("nova-compute") and old != self.compute_signature():
            self.log("compute driver or [docker2vm] options changed: restarting nova-compute")
            self.destroy_domains()
            self.kill("nova-compute")
        with open(sig_file, "w") as f:
            f.write(self.compute_signature())
        env = {"PYTHONPATH": os.pathsep.join(
            [TOP] + ([self.ceph.python_path()] if self.ceph else [])
            + [os.environ.get("PYTHONPATH", "")])}
        if self.spawn("nova-compute", [sys.executable, "-m", "devcloud.nova_compute"]
                      + self.nova_args("nova-compute"), env=env):
            self.log(f"nova-compute started ({self.compute_driver}, "
                     f"libvirt {self.libvirtd.uri})")

    def finish_nova(self):
        for name, url in (("glance", self.url("glance") + "/healthcheck"),
                          ("placement", self.url("placement")),
                          ("neutron", self.url("neutron")),
                          ("nova-api", self.url("nova-api"))):
            self.wait(name, lambda u=url: self.http_ok(u), 120)
        c = self.admin_conn()

        def compute_up():
            return any(s.binary == "nova-compute" and s.state == "up"
                       for s in c.compute.services())
        self.wait("nova-compute", compute_up, 180, "nova-compute service")
        self.log("nova-compute service up")

        def provider():
            return any(True for _ in c.placement.resource_providers())
        self.wait("nova-compute", provider, 120, "compute resource provider")
        manage = [venv_bin("nova-manage")] + self.nova_args("nova-conductor")
        self.run(manage + ["cell_v2", "discover_hosts"], what="nova-manage discover_hosts")
        if not self.stamp("flavors"):
            have = {f.name for f in c.compute.flavors()}
            for name, vcpus, ram, disk in FLAVORS:
                if name not in have:
                    c.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk)
            self.set_stamp("flavors")

        def hypervisor():
            return any(True for _ in c.compute.hypervisors())
        self.wait("nova-compute", hypervisor, 60, "hypervisor mapped to cell1")

    # -- clients -------------------------------------------------------------------
    def os_env(self, user="demo"):
        project = "admin" if user == "admin" else "demo"
        return {"OS_AUTH_URL": self.keystone_url, "OS_AUTH_TYPE": "password",
                "OS_USERNAME": user, "OS_PASSWORD": PASSWORD,
                "OS_PROJECT_NAME": project, "OS_USER_DOMAIN_NAME": "Default",
                "OS_PROJECT_DOMAIN_NAME": "Default", "OS_REGION_NAME": REGION,
                "OS_IDENTITY_API_VERSION": "3", "OS_IMAGE_API_VERSION": "2",
                "OS_INTERFACE": "public"}

    def write_clouds_yaml(self):
        clouds = {}
        for user in ("demo", "admin"):
            e = self.os_env(user)
            clouds[f"devcloud-{user}"] = {
                "auth": {"auth_url": e["OS_AUTH_URL"], "username": user,
                         "password": PASSWORD, "project_name": e["OS_PROJECT_NAME"],
                         "user_domain_name": "Default", "project_domain_name": "Default"},
                "region_name": REGION, "identity_api_version": 3,
                "image_api_version": 2, "interface": "public"}
        with open(self.path("clouds.yaml"), "w") as f:
            json.dump({"clouds": clouds}, f, indent=2)   # JSON is YAML

    # -- measurements --------------------------------------------------------------
    def rss(self):
        """RSS (MiB) per service: its process group (gunicorn workers, beam,
        libvirt namespace with QEMUs)."""
        out = {}
        groups = {}
        for name in SERVICES:
            pid = self.pid(name)
            if pid:
                groups[pid] = name
        ns_pids = set(self.libvirtd.namespace_pids())
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                pgid = int(fields[2])
                rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
            name = groups.get(pgid) or ("libvirtd" if int(p) in ns_pids else None)
            if name:
                out[name] = out.get(name, 0) + rss
        return {k: round(v / 2 ** 20) for k, v in out.items()}

    def disk_usage(self):
        res = subprocess.run(["du", "-sm", self.state], capture_output=True, text=True)
        return int(res.stdout.split()[0]) if res.returncode == 0 else None


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
