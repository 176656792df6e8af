#!/usr/bin/env bash
# The main job end to end on embedded defaults, on a fresh Debian/Ubuntu
# machine: installs what it needs (bindep.txt, .venv), builds a small real
# image with podman, and carries it through docker2vm: inspect, flatten,
# rootfs disk, then a docker-convert import into a local Glance.
# Everything it makes goes under .cache/demo/ (removed and rebuilt each run).
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
bash "$TOP/tools/setup-env.sh" test
export PATH="$TOP/.venv/bin:$PATH"
WORK="$TOP/.cache/demo"
rm -rf "$WORK"
mkdir -p "$WORK/ctx"
step() { printf '\n==> %s\n' "$*"; }

step "Building a small image with podman (busybox-static payload)"
cp "$(command -v busybox)" "$WORK/ctx/busybox"
cat >"$WORK/ctx/Containerfile" <<'CF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /etc /srv/www && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd && echo 'app:x:1000:1000:app:/home/app:/bin/sh' >> /etc/passwd && echo 'root:x:0:' > /etc/group && echo 'app:x:1000:' >> /etc/group && echo '<h1>hello from docker2vm</h1>' > /srv/www/index.html"]
ENV GREETING="hello from a container in a VM"
WORKDIR /srv/www
EXPOSE 8080/tcp
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo \"$GREETING\"; httpd -f -p 8080 -h /srv/www"]
CF
P=(podman --root "$WORK/storage/root" --runroot "$WORK/storage/run")
"${P[@]}" build -q --isolation=chroot -t demo-app:1 "$WORK/ctx" >/dev/null
"${P[@]}" save -q --format docker-archive -o "$WORK/app.tar" demo-app:1
ls -l "$WORK/app.tar"

step "docker2vm inspect"
docker2vm inspect "$WORK/app.tar"

step "docker2vm flatten"
docker2vm flatten --no-progress "$WORK/app.tar" -o "$WORK/rootfs.tar"
echo "rootfs.tar: $(tar -tf "$WORK/rootfs.tar" | wc -l) entries"

if docker2vm convert --help >/dev/null 2>&1; then
    step "docker2vm convert (ext4 rootfs in qcow2)"
    docker2vm convert "$WORK/app.tar" -o "$WORK/rootfs.qcow2"
    qemu-img info "$WORK/rootfs.qcow2" | head -4
    step "Glance image properties the import will set"
    docker2vm convert --print-properties "$WORK/app.tar"
fi

step "A local Glance (gunicorn on 127.0.0.1) with the docker-convert plugin"
GDIR="$WORK/glance"
trap 'python -m glance_docker_import.devserver stop --dir "$GDIR" >/dev/null 2>&1 || true' EXIT
eval "$(python -m glance_docker_import.devserver start --dir "$GDIR")"
echo "Glance at $OS_IMAGE_URL"

step "glance image-create-via-import --import-method docker-convert"
start=$(date +%s%N)
glance image-create-via-import --import-method docker-convert \
    --container-format docker --disk-format raw \
    --file "$WORK/app.tar" --name demo-app >"$WORK/create.txt"
id=$(awk '$2 == "id" {print $4}' "$WORK/create.txt")
for _ in $(seq 300); do
    status=$(glance image-show "$id" | awk '$2 == "status" {print $4}')
    case "$status" in active|queued|killed) break ;; esac
    sleep 1
done
echo "import finished as \"$status\" in $(( ($(date +%s%N) - start) / 1000000 )) ms"
glance image-show "$id"
[ "$status" = active ] || { echo "demo: import did not become active" >&2; exit 1; }

step "Boot the Glance image as the Nova side would: its disk + its properties -> base VM (QEMU)"
glance image-download --file "$WORK/from-glance.qcow2" "$id"
qemu-img info "$WORK/from-glance.qcow2" | head -3
python - "$id" >"$WORK/properties.json" <<'PY'
import json, os, sys, urllib.request
req = urllib.request.Request(os.environ["OS_IMAGE_URL"].rstrip("/") + "/v2/images/" + sys.argv[1],
                             headers={"X-Auth-Token": os.environ["OS_AUTH_TOKEN"]})
print(json.dumps(json.load(urllib.request.urlopen(req))))
PY
docker2vm boot --properties "$WORK/properties.json" "$WORK/from-glance.qcow2" \
    'echo "$GREETING"; echo "in $(pwd) as uid $(id -u)"; ls /srv/www; exit 0'
echo
echo "demo: done. Everything is under $WORK"
