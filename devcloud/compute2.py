"""A second compute host on this machine (development only), for the Ceph cloud.

    python -m devcloud.compute2 up|down      (the cloud's DEVCLOUD_STATE / DEVCLOUD_PORT_BASE)

Host ``devcloud2``: its own libvirtd (``STATE/libvirt2``) in its own mount
and UTS namespaces, so libvirt reports the hypervisor host name
``devcloud2`` (placement names the resource provider after it: two
nova-computes on one libvirtd would clash there), and its own nova-compute
(``nova-compute2``: ``[DEFAULT] host = devcloud2``, ``state_path`` and
``instances_path`` under ``STATE/nova2``), otherwise the cloud's
``nova.conf``: the same Ceph pools, cephx user and libvirt secret. On rbd
nothing of an image is per host: ``_base`` stays empty on both.
``python -m devcloud down`` stops it too.
"""

import os
import sys

from devcloud.libvirtd import Libvirtd

NAME = "devcloud2"
SERVICE = "nova-compute2"


class SecondCompute:
    def __init__(self, cloud):
        self.cloud = cloud
        self.libvirtd = Libvirtd(cloud.path("libvirt2"), persistent=True, hostname=NAME)

    @property
    def instances_path(self):
        return self.cloud.path("nova2", "instances")

    @property
    def conf(self):
        return self.cloud.path("etc", "nova", f"{SERVICE}.conf")

    def write_config(self):
        os.makedirs(self.instances_path, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"[DEFAULT]\nhost = {NAME}\nstate_path = {self.cloud.path('nova2')}\n"
                    f"instances_path = {self.instances_path}\n"
                    f"log_file = {self.cloud.logfile(SERVICE)}\n"
                    f"[libvirt]\nconnection_uri = {self.libvirtd.uri}\n")

    def up(self):
        c = self.cloud
        if c.ceph is None:
            raise RuntimeError("a second compute host is for the Ceph cloud (DEVCLOUD_CEPH=1)")
        self.write_config()
        self.libvirtd.start()
        c.ceph.libvirt_secret(self.libvirtd)
        env = {"PYTHONPATH": os.pathsep.join(
            p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        c.ceph.python_path(), os.environ.get("PYTHONPATH")) if p)}
        etc = c.path("etc", "nova")
        if c.spawn(SERVICE, [sys.executable, "-m", "devcloud.nova_compute",
                             "--config-file", os.path.join(etc, "nova.conf"),
                             "--config-file", self.conf], env=env):
            c.log(f"{SERVICE} started (host {NAME}, libvirt {self.libvirtd.uri})")
        conn = c.admin_conn()

        def service_up():
            return any(s.binary == "nova-compute" and s.host == NAME and s.state == "up"
                       for s in conn.compute.services())
        c.wait(SERVICE, service_up, 240, f"nova-compute service on {NAME}")
        from devcloud.cloud import venv_bin
        manage = [venv_bin("nova-manage")] + c.nova_args("nova-conductor")

        def mapped():
            c.run(manage + ["cell_v2", "discover_hosts"], what="nova-manage discover_hosts")
            return sum(1 for _ in conn.compute.hypervisors()) >= 2
        c.wait(SERVICE, mapped, 120, f"hypervisor {NAME} mapped to cell1")
        c.log(f"second compute host {NAME} up")

    def down(self):
        c = self.cloud
        if self.libvirtd.running():
            out = self.libvirtd.virsh("list", "--all", "--name", timeout=20).stdout
            for dom in out.split():
                self.libvirtd.virsh("destroy", dom, check=False, timeout=30)
                self.libvirtd.virsh("undefine", "--nvram", dom, check=False, timeout=30)
        c.kill(SERVICE)
        if self.libvirtd.pid():
            self.libvirtd.stop()


def main(argv=None):
    from devcloud.cloud import Cloud
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] not in (["up"], ["down"]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    second = SecondCompute(Cloud(ceph=True))
    second.up() if argv[0] == "up" else second.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
