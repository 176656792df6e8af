"""The guest's DHCP client (docker_rootfs/guest/dhcp.c) against a real dnsmasq,
the server OpenStack Neutron runs, with no VM.

Per test: two network namespaces joined by a veth pair. The client side
(eth0, fixed MAC) runs `d2vinit dhcp NETDIR WAIT RUN` under `ip netns exec`,
which mounts that namespace's own sysfs, so the client sees only lo + eth0.
The server side has 10.77.0.1/24 and runs dnsmasq configured the way the
Neutron DHCP agent does it: a `static` range, a hosts file mapping the port's
MAC to its fixed IP, an options file with tagged options, --domain,
--dhcp-option-force for the MTU. DNS is off (--port=0).

Learnt from dnsmasq 2.90 (Debian 12): leases under 2 minutes are raised to
2 minutes; T1/T2 set as options (58/59) are sent only if 2 < value < lease
(else lease/2 and 7/8 lease), T1 is forced below T2, and a random fuzz of up
to T1/8 is subtracted (none for T1 = 3 s). So T1 = 3 s drives real renewals.
In a dynamic range dnsmasq pings an address before offering it (about 3 s,
the client has resent its DISCOVER 3 times by then); Neutron's static hosts
are not pinged, and neither are these.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from docker_rootfs.guest import base_image

pytestmark = [pytest.mark.skipif(os.geteuid() != 0,
                                 reason="needs root: network namespaces, veths, dnsmasq")]

MAC = "02:d2:00:00:00:01"
SERVER = "10.77.0.1"
OTHER = "10.77.0.2"       # a second DHCP server (agent)
IP_A, IP_B = "10.77.0.5", "10.77.0.6"
DOMAIN = "example.test"
DNS = ("10.77.0.53", "10.77.0.54")
MTU = 1400
T1, T2 = 3, 6             # dnsmasq's smallest T1 (see above)

STRAY_NAK = r"""
import socket, struct, sys
xid, mac, server = int(sys.argv[1]), bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3]
p = bytearray(300)
p[0:3] = bytes([2, 1, 6])                          # BOOTREPLY, ethernet
p[4:8] = struct.pack("!I", xid)
p[28:34] = mac
p[236:240] = bytes([99, 130, 83, 99])
o = bytes([53, 1, 6, 54, 4]) + socket.inet_aton(server) + bytes([255])   # DHCPNAK
p[240:240 + len(o)] = o
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
s.sendto(bytes(p), ("255.255.255.255", 68))
"""


def run(*args, check=True, timeout=30):
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def d2vinit():
    """The guest's d2vinit, compiled for the host (its `dhcp` entry)."""
    for tool, pkg in (("gcc", "gcc"), ("dnsmasq", "dnsmasq-base"), ("ip", "iproute2")):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed (bindep.txt: {pkg})", pytrace=False)
    d = tempfile.mkdtemp(prefix="d2v-dhcp-bin-")
    try:
        yield base_image.compile_d2vinit(os.path.join(d, "d2vinit"))
    finally:
        shutil.rmtree(d)


class Lan:
    """Client and server namespaces, the veth between them, dnsmasq, clients."""

    def __init__(self, d2vinit):
        self.d2vinit = d2vinit
        tag = uuid.uuid4().hex[:10]
        self.cns, self.sns = f"d2vdhcp-c-{tag}", f"d2vdhcp-s-{tag}"
        self.dir = tempfile.mkdtemp(prefix="d2v-dhcp-")
        os.chmod(self.dir, 0o755)       # dnsmasq rereads the hosts file as nobody
        self.netdir = os.path.join(self.dir, "net")
        os.mkdir(self.netdir)
        self.log = os.path.join(self.dir, "dnsmasq.log")
        self.leases = os.path.join(self.dir, "leases")
        self.procs = []
        self.dnsmasq = None
        self.made = []

    def setup(self):
        for ns in (self.cns, self.sns):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
        run("ip", "link", "add", "eth0", "netns", self.cns, "address", MAC, "type", "veth",
            "peer", "name", "eth0", "netns", self.sns)
        run("ip", "-n", self.sns, "addr", "add", f"{SERVER}/24", "dev", "eth0")
        run("ip", "-n", self.sns, "link", "set", "lo", "up")
        run("ip", "-n", self.sns, "link", "set", "eth0", "up")

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        for ns in self.made:            # deleting a namespace deletes its veth end
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- server ---------------------------------------------------------------
    def serve(self, ip=IP_A, opts=()):
        """dnsmasq as the Neutron DHCP agent starts it; returns once it listens."""
        self.write_host(ip)
        with open(os.path.join(self.dir, "opts"), "w") as f:
            for o in (f"option:router,{SERVER}", f"option:dns-server,{','.join(DNS)}",
                      f"option:T1,{T1}", f"option:T2,{T2}", *opts):
                f.write(f"tag:subnet0,{o}\n")
        for name in ("host", "opts"):
            os.chmod(os.path.join(self.dir, name), 0o644)
        log = open(self.log, "a")
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.sns, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--port=0", "--pid-file",
             "--interface=eth0", "--bind-dynamic",
             "--dhcp-range=set:subnet0,10.77.0.0,static,255.255.255.0,120s",
             f"--dhcp-hostsfile={self.dir}/host", f"--dhcp-optsfile={self.dir}/opts",
             f"--dhcp-leasefile={self.leases}", f"--domain={DOMAIN}",
             f"--dhcp-option-force=option:mtu,{MTU}", "--dhcp-lease-max=16",
             "--log-dhcp", "--log-facility=-"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.procs.append(p)
        self.dnsmasq = p
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert p.poll() is None, f"dnsmasq exited {p.returncode}:\n{self.server_log()}"
            if run("ip", "netns", "exec", self.sns, "ss", "-Hlun", "sport", "=", ":67").stdout.strip():
                return p
            time.sleep(0.05)
        pytest.fail(f"dnsmasq does not listen on port 67:\n{self.server_log()}")

    def write_host(self, ip):
        """The hosts file: our MAC's fixed IP (ip None: the port is not known yet)."""
        with open(os.path.join(self.dir, "host"), "w") as f:
            if ip:
                f.write(f"{MAC},host-{ip.replace('.', '-')},{ip}\n")

    def reload(self, ip):
        """What the Neutron agent does when a port changes: new hosts file, SIGHUP."""
        self.write_host(ip)
        self.dnsmasq.send_signal(signal.SIGHUP)

    def stray_nak(self, xid):
        """Broadcast a DHCPNAK for transaction xid to the client, as a second
        server (or a late duplicate) would: the client must only take a NAK
        for a REQUEST it is waiting on (RFC 2131 4.4)."""
        run("ip", "netns", "exec", self.sns, sys.executable, "-c", STRAY_NAK, str(xid), MAC, SERVER)

    def stop_server(self):
        self.dnsmasq.terminate()
        self.dnsmasq.wait(5)

    def server_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def server_events(self, since=0):
        """[(xid, DHCPxxx, ip or None)] for our MAC, in log order (from offset since)."""
        out = []
        for m in re.finditer(r"dnsmasq-dhcp\[\d+\]: (\d+) (DHCP[A-Z]+)\(eth0\) (?:(\d+\.\d+\.\d+\.\d+) )?"
                             + re.escape(MAC), self.server_log()[since:]):
            out.append((m.group(1), m.group(2), m.group(3)))
        return out

    # -- client ---------------------------------------------------------------
    def client(self, wait, run_for):
        p = subprocess.Popen(["ip", "netns", "exec", self.cns, self.d2vinit, "dhcp", self.netdir,
                              str(wait), str(run_for)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def client_run(self, wait, run_for):
        """Run the client to its end: (exit code, stdout, stderr)."""
        p = self.client(wait, run_for)
        out, err = p.communicate(timeout=wait + run_for + 10)
        return p.returncode, out, err

    def addrs(self):
        """The client's IPv4 addresses on eth0, as 'a.b.c.d/len'."""
        j = json.loads(run("ip", "-j", "-n", self.cns, "-4", "addr", "show", "dev", "eth0").stdout)
        return [f"{a['local']}/{a['prefixlen']}" for i in j for a in i.get("addr_info", [])]

    def routes(self):
        """The client's IPv4 main-table routes: {dst: gateway or None}."""
        j = json.loads(run("ip", "-j", "-n", self.cns, "-4", "route", "show").stdout)
        return {r["dst"]: r.get("gateway") for r in j}

    def mtu(self):
        return json.loads(run("ip", "-j", "-n", self.cns, "link", "show", "dev", "eth0").stdout)[0]["mtu"]

    def netfile(self, name):
        try:
            with open(os.path.join(self.netdir, name)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def why(self, *extra):
        return "\n".join([*map(str, extra), "--- dnsmasq log ---", self.server_log()[-6000:]])


@pytest.fixture
def lan(d2vinit):
    lan = Lan(d2vinit)
    try:
        lan.setup()
        yield lan
    finally:
        lan.close()
        left = run("ip", "netns", "list").stdout
        assert lan.cns not in left and lan.sns not in left, left


def wait_for(cond, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


# -- tests ---------------------------------------------------------------------
def test_lease_configures_interface_routes_and_files(lan):
    lan.serve()
    t0 = time.monotonic()
    rc, out, err = lan.client_run(10, 0)
    took = time.monotonic() - t0
    assert rc == 0 and "dhcp: 1 NICs, 0 without a lease" in out, lan.why(rc, out, err)
    assert took < 5, f"lease took {took:.1f} s"     # one round trip, no retries needed
    assert lan.addrs() == [f"{IP_A}/24"]
    routes = lan.routes()
    assert routes.get("default") == SERVER, routes
    assert "10.77.0.0/24" in routes, routes
    assert lan.mtu() == MTU
    assert lan.netfile("eth0.ip") == f"{IP_A}\n"
    assert lan.netfile("ip") == f"{IP_A}\n"
    assert lan.netfile("primary") == "eth0"
    resolv = f"search {DOMAIN}\n" + "".join(f"nameserver {d}\n" for d in DNS)
    assert lan.netfile("resolv.conf") == resolv
    assert lan.netfile("eth0.resolv") == resolv
    acks = [e for e in lan.server_events() if e[1] == "DHCPACK"]
    assert len(acks) == 1 and acks[0][2] == IP_A, lan.why()


@pytest.mark.slow
def test_renews_at_t1_and_keeps_the_address(lan):
    lan.serve()
    p = lan.client(10, 2 * T1 + 0.5)
    seen = set()
    assert wait_for(lambda: lan.netfile("ip"), 10), lan.why(lan.addrs())
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 20:
        seen.add(tuple(lan.addrs()))          # never dropped or changed meanwhile
        time.sleep(0.2)
    out, err = p.communicate(timeout=15)
    assert p.returncode == 0, lan.why(out, err)
    assert seen == {(f"{IP_A}/24",)}, seen
    acks = [e for e in lan.server_events() if e[1] == "DHCPACK"]
    # lease at ~0 s, renewals at T1 and 2*T1 over the run; only rebinding
    # at T2 (= 2*T1) would give 2
    assert len(acks) >= 3 and all(ip == IP_A for _, _, ip in acks), lan.why(acks)
    assert len({x for x, _, _ in acks}) == len(acks), "a new xid per renewal"
    reqs = [e for e in lan.server_events() if e[1] == "DHCPREQUEST"]
    assert len(reqs) == len(acks), lan.why("a renewal needed retries")
    assert lan.routes().get("default") == SERVER
    assert lan.netfile("ip") == f"{IP_A}\n"


@pytest.mark.slow
def test_rebinds_at_t2_to_another_server(lan):
    """The server is replaced by one at another address (sharing its lease
    database) right after the lease: the unicast renewals from T1 go nowhere,
    the broadcast REQUEST at T2 is answered by the new server, whose address
    (option 54) the next renewals are sent to."""
    lan.serve()
    p = lan.client(10, 30)
    assert wait_for(lambda: lan.netfile("ip"), 10), lan.why(lan.addrs())
    t0 = time.monotonic()
    lan.stop_server()
    mark = len(lan.server_log())
    run("ip", "-n", lan.sns, "addr", "del", f"{SERVER}/24", "dev", "eth0")
    run("ip", "-n", lan.sns, "addr", "add", f"{OTHER}/24", "dev", "eth0")
    lan.serve()
    seen, acks = set(), {}
    while time.monotonic() - t0 < T2 + T1 + 3 and len(acks) < 2:
        seen.add(tuple(lan.addrs()))
        for x, what, _ in lan.server_events(since=mark):
            if what == "DHCPACK" and x not in acks:
                acks[x] = time.monotonic() - t0
        time.sleep(0.1)
    assert p.poll() is None, lan.why(p.communicate())
    assert seen == {(f"{IP_A}/24",)}, seen
    when = sorted(acks.values())
    assert len(when) == 2, lan.why(when)
    assert T2 - 0.5 < when[0] < T2 + 1.5, lan.why(when)             # rebinding, at T2
    assert T1 - 0.5 < when[1] - when[0] < T1 + 1.5, lan.why(when)   # renewal, to OTHER
    reqs = [e for e in lan.server_events(since=mark) if e[1] == "DHCPREQUEST"]
    assert len(reqs) == 2, lan.why("the renewal needed retries")
    assert lan.routes().get("default") == SERVER


def test_classless_static_routes_replace_the_router_option(lan):
    # RFC 3442: with option 121 the router option (3) MUST be ignored; the
    # default route comes from 121's 0.0.0.0/0 entry (Neutron sends both).
    # /32 (metadata-like), /20 (3 octets), on-link (gateway 0.0.0.0), /0.
    lan.serve(opts=["option:router,10.77.0.253",
                    "option:classless-static-route,169.254.169.254/32,10.77.0.2,"
                    "10.9.0.0/16,10.77.0.254,172.16.16.0/20,10.77.0.254,"
                    "10.8.0.0/24,0.0.0.0,0.0.0.0/0,10.77.0.1"])
    rc, out, err = lan.client_run(10, 0)
    assert rc == 0, lan.why(rc, out, err)
    routes = lan.routes()
    assert routes.get("default") == "10.77.0.1", routes
    assert routes.get("169.254.169.254") == "10.77.0.2", routes
    assert routes.get("10.9.0.0/16") == "10.77.0.254", routes
    assert routes.get("172.16.16.0/20") == "10.77.0.254", routes
    assert "10.8.0.0/24" in routes and routes["10.8.0.0/24"] is None, routes
    assert "10.77.0.253" not in routes.values(), routes
    assert lan.addrs() == [f"{IP_A}/24"]


@pytest.mark.slow
def test_no_server_no_lease(lan):
    t0 = time.monotonic()
    rc, out, err = lan.client_run(3, 0)
    took = time.monotonic() - t0
    assert rc == 1 and "dhcp: 1 NICs, 1 without a lease" in out, (rc, out, err)
    assert 2.5 < took < 6, took
    assert lan.addrs() == []
    assert lan.netfile("ip") is None and lan.netfile("primary") is None


@pytest.mark.slow
def test_port_known_late_and_stray_naks(lan):
    """dnsmasq runs but has no host entry for the MAC yet (the Neutron agent
    has not got the port): DISCOVERs go unanswered, four a second, then the
    client pauses 5 s and starts over. The entry arrives during the pause;
    the next round gets the lease. Stray NAKs for the client's last
    transaction, one during the pause (INIT) and one once bound, are
    ignored: neither drops the lease nor miscounts the NICs without one."""
    lan.serve(ip=None)
    t0 = time.monotonic()
    p = lan.client(20, T1 + 0.5)    # a renewal (REQUEST) is fine, a DISCOVER is not
    discovers = lambda: [e for e in lan.server_events() if e[1] == "DHCPDISCOVER"]
    assert wait_for(lambda: len(discovers()) >= 4, 6), lan.why()
    time.sleep(max(0, 4.6 - (time.monotonic() - t0)))   # in the pause (4 s to 9 s)
    assert len(discovers()) == 4, lan.why("4 tries, then a pause")
    lan.stray_nak(discovers()[-1][0])
    lan.reload(IP_A)
    line = p.stdout.readline()
    took = time.monotonic() - t0
    assert line == "dhcp: 1 NICs, 0 without a lease\n", lan.why(line, took)
    assert 8.5 < took < 11, lan.why(took)              # the round after the pause
    assert lan.addrs() == [f"{IP_A}/24"]
    ack = [e for e in lan.server_events() if e[1] == "DHCPACK"][-1]
    n = len(lan.server_events())
    lan.stray_nak(ack[0])                              # bound: not waiting on any reply
    seen = set()
    while p.poll() is None:
        seen.add(tuple(lan.addrs()))
        time.sleep(0.1)
    assert p.returncode == 0, lan.why(p.communicate())
    assert seen == {(f"{IP_A}/24",)}, seen
    assert "DHCPDISCOVER" not in [e[1] for e in lan.server_events()[n:]], \
        lan.why("the stray NAK sent the client back to INIT")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["reload", "restart"])
def test_nak_on_renewal_then_new_address(lan, how):
    """The port's fixed IP changes while the guest runs.

    reload: what Neutron does, the hosts file is rewritten and dnsmasq gets
    SIGHUP; the unicast renewal of the old address is NAKed ("address not
    available"). restart: dnsmasq restarted with no lease file; the renewal
    is NAKed ("lease not found"). Either way the client goes back to INIT and
    DISCOVERs the new address.
    """
    lan.serve()
    p = lan.client(10, 30)
    assert wait_for(lambda: lan.netfile("ip") == f"{IP_A}\n", 10), lan.why(lan.addrs())
    assert lan.addrs() == [f"{IP_A}/24"]
    if how == "reload":
        lan.reload(IP_B)
    else:
        lan.stop_server()
        os.unlink(lan.leases)
        lan.serve(ip=IP_B)
    t0 = time.monotonic()
    got = wait_for(lambda: lan.netfile("ip") == f"{IP_B}\n" and lan.addrs() == [f"{IP_B}/24"], 15)
    took = time.monotonic() - t0
    assert got, lan.why(lan.addrs(), lan.netfile("ip"))
    assert took < T1 + 3, took             # at the next renewal, not at expiry
    assert p.poll() is None, "the client keeps running"
    events = lan.server_events()
    assert ("DHCPNAK", IP_A) in [(e[1], e[2]) for e in events], lan.why()
    assert events[-1][1:] == ("DHCPACK", IP_B), lan.why()
    assert lan.routes().get("default") == SERVER, lan.routes()
    assert lan.netfile("eth0.ip") == f"{IP_B}\n"
    assert lan.netfile("primary") == "eth0"
    # and the new lease is renewed in turn
    n = len([e for e in events if e[1] == "DHCPACK"])
    assert wait_for(lambda: len([e for e in lan.server_events() if e[1] == "DHCPACK"]) > n,
                    T1 + 3), lan.why()
    assert lan.addrs() == [f"{IP_B}/24"]
