"""python -m devcloud up|down|env|status|destroy

up       bring the cloud up (or reuse what runs), print the OS_* exports
down     stop every process of the cloud (state dir kept for the next up)
destroy  down, then remove the state dir
env      print the OS_* exports (--admin for the admin user)
status   PIDs, RSS (MiB) and state dir size
"""

import argparse
import json
import sys

from devcloud.cloud import Cloud, CloudError


def exports(cloud, user):
    lines = [f"export {k}={v}" for k, v in cloud.os_env(user).items()]
    lines.append(f"export OS_CLIENT_CONFIG_FILE={cloud.path('clouds.yaml')}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m devcloud", description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["up", "down", "env", "status", "destroy"])
    p.add_argument("--state", help="state dir (default $DEVCLOUD_STATE or <repo>/.cloud)")
    p.add_argument("--admin", action="store_true", help="env: the admin user's variables")
    p.add_argument("--compute-driver",
                   help="nova compute_driver (default $DEVCLOUD_COMPUTE_DRIVER or "
                        "libvirt.LibvirtDriver; docker2vm.Docker2VMDriver for this project's)")
    p.add_argument("--docker2vm", action="append", default=[], metavar="OPT=VALUE",
                   help="a [docker2vm] option for nova.conf (repeatable)")
    p.add_argument("--ceph", action="store_true", default=None,
                   help="a real single-node Ceph: Glance's rbd store, Nova's images_type=rbd "
                        "(default $DEVCLOUD_CEPH=1; doc/source/ceph.md)")
    args = p.parse_args(argv)
    opts = dict(kv.split("=", 1) for kv in args.docker2vm)
    cloud = Cloud(args.state, compute_driver=args.compute_driver, docker2vm_opts=opts,
                  ceph=args.ceph)
    user = "admin" if args.admin else "demo"
    try:
        if args.cmd == "up":
            took = cloud.up()
            print(f"# devcloud up in {took:.1f}s; state, logs, PIDs in {cloud.state}")
            print("# stop: python -m devcloud down    (as admin: python -m devcloud env --admin)")
            print(exports(cloud, user))
        elif args.cmd == "down":
            cloud.down()
        elif args.cmd == "destroy":
            cloud.destroy()
        elif args.cmd == "env":
            print(exports(cloud, user))
        elif args.cmd == "status":
            print(json.dumps({"pids": cloud.status(), "rss_mib": cloud.rss(),
                              "state_dir_mib": cloud.disk_usage()}, indent=2))
    except CloudError as exc:
        print(f"devcloud: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
