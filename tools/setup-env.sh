#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for docker2vm: system packages from
# bindep.txt (profile given as $1, default "test") and a virtualenv in .venv
# with the Python requirements. Safe to run again: it only installs what is
# missing. Sourced or executed by tools/test.sh and tools/demo.sh.
set -euo pipefail
PROFILE=${1:-test}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DOCKER2VM_VENV:-$TOP/.venv}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_install() {
    [ $# -gt 0 ] || return 0
    echo "setup-env: installing system packages: $*" >&2
    if ! $SUDO apt-get install -y -q --no-install-recommends "$@" >/tmp/docker2vm-apt.log 2>&1; then
        $SUDO apt-get update -q >/tmp/docker2vm-apt.log 2>&1
        $SUDO apt-get install -y -q --no-install-recommends "$@" >>/tmp/docker2vm-apt.log 2>&1 \
            || { tail -20 /tmp/docker2vm-apt.log >&2; echo "setup-env: apt-get install failed" >&2; exit 1; }
    fi
}

# 1. A Python that can make a virtualenv (python3-venv on a bare Debian).
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv python3-pip
fi

# 2. The virtualenv, with bindep first so it can tell which system packages are missing.
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/bindep" ]; then
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel "pbr>=5.8.0" "bindep>=2.11" >&2
fi

# 3. System packages named in bindep.txt for this profile, before the Python
# requirements: some of those build against them (libvirt-python needs
# libvirt-dev and pkg-config).
missing=$("$VENV/bin/bindep" -b -f "$TOP/bindep.txt" "$PROFILE" 2>/dev/null || true)
# shellcheck disable=SC2086
apt_install $missing

# 4. The Python requirements and docker2vm itself (editable).
stamp="$VENV/.docker2vm-requirements"
want=$(cat "$TOP/requirements.txt" "$TOP/test-requirements.txt" "$TOP/setup.cfg" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup-env: installing Python requirements into $VENV" >&2
    "$VENV/bin/pip" install -q -r "$TOP/requirements.txt" -r "$TOP/test-requirements.txt" >&2
    PBR_VERSION=${PBR_VERSION:-0.1.0} "$VENV/bin/pip" install -q --no-build-isolation -e "$TOP" >&2
    echo "$want" >"$stamp"
fi
