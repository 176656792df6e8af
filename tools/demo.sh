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
