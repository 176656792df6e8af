#!/usr/bin/env bash
# The development cloud, one command: bash devcloud/cloud.sh up|down|env|status|destroy
# Installs what is missing first (bindep profile "cloud" through
# tools/setup-env.sh, and profile "ceph" with DEVCLOUD_CEPH=1 or --ceph, then
# devcloud/requirements.txt into .venv), then runs python -m devcloud.
# See doc/source/cloud.md (and doc/source/ceph.md).
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DOCKER2VM_VENV:-$TOP/.venv}
if [ "${1:-}" = up ]; then
    bash "$TOP/tools/setup-env.sh" cloud
    case " $* " in *" --ceph "*) DEVCLOUD_CEPH=1 ;; esac
    if [ "${DEVCLOUD_CEPH:-0}" = 1 ]; then
        bash "$TOP/tools/setup-env.sh" ceph     # bindep profile "ceph": devcloud/ceph.py
    fi
    if ! "$VENV/bin/python" -c 'import keystone, glance, nova, placement, neutron, pymysql, libvirt, openstackclient' 2>/dev/null; then
        while pgrep -f "pip install" >/dev/null; do echo "devcloud: waiting for another pip install" >&2; sleep 5; done
        echo "devcloud: installing the services (devcloud/requirements.txt) into $VENV" >&2
        "$VENV/bin/pip" install -q -r "$TOP/devcloud/requirements.txt" >&2
    fi
fi
cd "$TOP"
exec "$VENV/bin/python" -m devcloud "$@"
