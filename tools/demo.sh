#!/usr/bin/env bash
# The main job end to end, the user's real workflow, on a fresh Debian 12
# machine (as root: the cloud runs libvirtd and mounts):
#   1. installs what it needs (tools/setup-env.sh: bindep profile "cloud", .venv)
#   2. builds a small real image with podman (or takes IMAGE=path/to/archive.tar)
#   3. brings up the development cloud (bash devcloud/cloud.sh up; reused if up)
#   4. glance image-create-via-import --import-method docker-convert
#      --property docker_delivery=$DELIVERY, and waits for the import
#   5. openstack server create --nic none --wait, waits for SHUTOFF
#   6. prints openstack console log show and the server's docker2vm_exit_status
# and leaves the cloud running (DEMO_DOWN=1: stops it at the end).
#
# Environment: DELIVERY=disk|share (default disk), IMAGE=archive (default: the
# podman-built demo image), FLAVOR (default d2v.small), DEMO_DOWN=1,
# DEMO_TIMEOUT (seconds to wait for the container to exit, default 600),
# DEVCLOUD_STATE (the cloud's state dir, default .cloud).
# Each step prints one line; its output goes to .cache/demo/<step>.log and a
# failure stops the demo with one line naming what is missing.
# A re-run first deletes the previous run's server and image.
set -euo pipefail
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP"
DELIVERY=${DELIVERY:-disk}
IMAGE=${IMAGE:-}
FLAVOR=${FLAVOR:-d2v.small}
TIMEOUT=${DEMO_TIMEOUT:-600}
NAME=docker2vm-demo
WORK="$TOP/.cache/demo"
STATE=${DEVCLOUD_STATE:-$TOP/.cloud}
START=$SECONDS

step() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
# The line of a step's log that says why it failed (the last error line of
# devcloud / setup-env / the OpenStack clients, else the last line).
why() {
    local line
    line=$(grep -E '^(devcloud|setup-env): ' "$1" | grep -v '^devcloud: \[' | tail -1 || true)
    [ -n "$line" ] || line=$(grep -E '^(ERROR|Error|HTTP|[A-Za-z.]*(Error|Exception)|[0-9]{3} )' "$1" \
        | tail -1 || true)
    [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -1 || true)
    printf '%s' "${line:0:300}"
}
# Run a step's command with its output in $WORK/$1.log; on failure: one line.
run() {
    local log="$WORK/$1.log" what=$2
    shift 2
    "$@" >"$log" 2>&1 || die "$what: $(why "$log") (see $log)"
}
make_flavor() (   # as admin, in a subshell: the demo user cannot create flavors
    eval "$(python -m devcloud env --admin)"
    openstack flavor create --vcpus 1 --ram 512 --disk 2 "$FLAVOR"
)
json() {   # json FIELD[.KEY] < openstack -f json output
    python -c 'import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = (v or {}).get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1"
}

case "$DELIVERY" in disk|share) ;; *) die "DELIVERY=$DELIVERY: use disk or share" ;; esac
[ -z "$IMAGE" ] || [ -f "$IMAGE" ] || die "IMAGE=$IMAGE: no such archive"
[ -z "$IMAGE" ] || IMAGE=$(cd "$(dirname "$IMAGE")" && pwd)/$(basename "$IMAGE")
[ "$(id -u)" = 0 ] || die "the development cloud needs root (libvirtd, mounts): run sudo bash tools/demo.sh"
rm -rf "$WORK"
mkdir -p "$WORK"

step "Installing what is missing (tools/setup-env.sh cloud: Debian packages from bindep.txt, Python packages into .venv)"
run setup "installing the system or Python packages failed" bash "$TOP/tools/setup-env.sh" cloud
export PATH="$TOP/.venv/bin:$PATH"

if [ -n "$IMAGE" ]; then
    step "Using the image archive $IMAGE"
    ARCHIVE=$IMAGE
else
    step "Building a small image with podman (busybox-static payload) into $WORK/app.tar"
    mkdir -p "$WORK/ctx"
    cp "$(command -v busybox)" "$WORK/ctx/busybox" || die "busybox (busybox-static) is not installed"
    cat >"$WORK/ctx/Containerfile" <<'CF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /etc /srv/www && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'root:x:0:' > /etc/group && echo 'app:x:1000:' >> /etc/group && echo '<h1>hello from docker2vm</h1>' > /srv/www/index.html"]
ENV GREETING="hello from a container in a VM"
WORKDIR /srv/www
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo \"$GREETING\"; echo \"in $(pwd) as uid $(id -u) on $(uname -r): $(ls /srv/www)\"; exit 0"]
CF
    RUNROOT=$(mktemp -d /tmp/d2v-demo-run-XXXXXX)
    P=(podman --root "$WORK/storage" --runroot "$RUNROOT")
    run podman-build "podman build failed" \
        "${P[@]}" build -q --isolation=chroot -t localhost/demo-app:1 "$WORK/ctx"
    run podman-save "podman save failed" \
        "${P[@]}" save -q --format docker-archive -o "$WORK/app.tar" localhost/demo-app:1
    "${P[@]}" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$RUNROOT" "$WORK/storage"
    ARCHIVE="$WORK/app.tar"
fi

step "Bringing up the development cloud (bash devcloud/cloud.sh up; reused if it runs, first time a few minutes; log in $WORK/cloud-up.log)"
bash "$TOP/devcloud/cloud.sh" up >"$WORK/cloud-up.env" 2>"$WORK/cloud-up.log" \
    || die "the cloud did not come up: $(why "$WORK/cloud-up.log") (see $WORK/cloud-up.log and $STATE/log/)"
eval "$(grep '^export ' "$WORK/cloud-up.env")"
[ -n "${OS_AUTH_URL:-}" ] || die "the cloud came up but printed no OS_* variables (see $WORK/cloud-up.env)"

step "Removing the previous run's server and image ($NAME), if any"
if openstack server show "$NAME" -f value -c id >/dev/null 2>&1; then
    run delete-server "could not delete the previous server $NAME" \
        openstack server delete --wait "$NAME"
fi
for id in $(openstack image list --name "$NAME" -f value -c ID 2>"$WORK/image-list.log"); do
    run delete-image "could not delete the previous image $id" openstack image delete "$id"
done

step "glance image-create-via-import --import-method docker-convert --property docker_delivery=$DELIVERY ($(du -h "$ARCHIVE" | cut -f1) archive)"
t0=$SECONDS
run import "the docker-convert import could not start" \
    glance image-create-via-import --import-method docker-convert \
    --container-format docker --disk-format raw --file "$ARCHIVE" --name "$NAME" \
    --property docker_delivery="$DELIVERY"
IMAGE_ID=$(awk '$2 == "id" {print $4}' "$WORK/import.log")
[ -n "$IMAGE_ID" ] || die "glance printed no image id (see $WORK/import.log)"
while :; do
    openstack image show "$IMAGE_ID" -f json >"$WORK/image.json" 2>"$WORK/image-show.log" \
        || die "openstack image show $IMAGE_ID failed: $(why "$WORK/image-show.log")"
    status=$(json status <"$WORK/image.json")
    task=$(json properties.os_glance_import_task <"$WORK/image.json")
    [ "$status" = active ] && break
    if [ "$status" = killed ] || { [ "$status" = queued ] && [ -z "$task" ]; } \
            || [ $((SECONDS - t0)) -gt "$TIMEOUT" ]; then
        msg=$(python - "$IMAGE_ID" <<'PY' 2>/dev/null || true
import sys
import openstack
conn = openstack.connect()
tasks = conn.image.get(f"/images/{sys.argv[1]}/tasks").json().get("tasks", [])
print(tasks[-1].get("message", "") if tasks else "")
PY
)
        die "the docker-convert import ended \"$status\" after $((SECONDS - t0)) s: ${msg:-no task message} (glance image-tasks $IMAGE_ID; Glance's log: $STATE/log/glance.log)"
    fi
    sleep 2
done
step "Image $IMAGE_ID active after $((SECONDS - t0)) s: $(json disk_format <"$WORK/image.json")/$(json container_format <"$WORK/image.json"), docker_delivery=$(json properties.docker_delivery <"$WORK/image.json")"

if ! openstack flavor show "$FLAVOR" -f value -c id >/dev/null 2>&1; then
    step "Creating the flavor $FLAVOR (1 vCPU, 512 MiB, 2 GiB) as admin"
    run flavor "could not create the flavor $FLAVOR" make_flavor
fi

step "openstack server create --image $NAME --flavor $FLAVOR --nic none --wait $NAME"
t0=$SECONDS
if ! openstack server create --image "$IMAGE_ID" --flavor "$FLAVOR" --nic none --wait \
        "$NAME" -f json >"$WORK/server.json" 2>"$WORK/server-create.log"; then
    fault=$(openstack server show "$NAME" -f json 2>/dev/null | json fault.message || true)
    die "openstack server create failed: ${fault:-$(why "$WORK/server-create.log")} (Nova's logs: $STATE/log/nova-*.log)"
fi
SERVER_ID=$(json id <"$WORK/server.json")
step "Server $SERVER_ID ACTIVE after $((SECONDS - t0)) s; waiting for the container to exit (SHUTOFF)"
while :; do
    openstack server show "$NAME" -f json >"$WORK/server.json" 2>"$WORK/server-show.log" \
        || die "openstack server show $NAME failed: $(why "$WORK/server-show.log")"
    status=$(json status <"$WORK/server.json")
    [ "$status" = SHUTOFF ] && break
    [ "$status" != ERROR ] || die "the server went to ERROR: $(json fault.message <"$WORK/server.json") (Nova's logs: $STATE/log/nova-*.log)"
    [ $((SECONDS - t0)) -le "$TIMEOUT" ] || die "the server is still $status after $TIMEOUT s: its container has not exited (openstack console log show $NAME; DEMO_TIMEOUT)"
    sleep 3
done
step "Server SHUTOFF $((SECONDS - t0)) s after create; openstack console log show $NAME:"
openstack console log show "$NAME" >"$WORK/console.log" 2>"$WORK/console-show.log" \
    || die "openstack console log show failed: $(why "$WORK/console-show.log")"
sed 's/^/    | /' "$WORK/console.log"
exit_status=$(json properties.docker2vm_exit_status <"$WORK/server.json")
[ -n "$exit_status" ] || die "the server is SHUTOFF but has no docker2vm_exit_status property (Nova's log: $STATE/log/nova-compute.log)"
step "openstack server show $NAME: status SHUTOFF, properties docker2vm_exit_status='$exit_status'"

if [ "${DEMO_DOWN:-0}" = 1 ]; then
    step "Stopping the cloud (DEMO_DOWN=1: python -m devcloud down)"
    run down "python -m devcloud down failed" python -m devcloud down
    step "demo: done in $((SECONDS - START)) s (the cloud is stopped; the next run starts it again)"
else
    step "demo: done in $((SECONDS - START)) s. The cloud keeps running, with the server and image $NAME:"
    cat <<EOF
    cd $TOP && . .venv/bin/activate
    eval "\$(python -m devcloud env)"     # then: openstack server list, openstack console log show $NAME, ...
    python -m devcloud down              # stops the cloud (its state stays in $STATE for the next up)
EOF
fi
