#!/bin/sh
# docker2vm guest init (busybox sh), PID 1 of the VM until it execs d2vinit,
# which stays PID 1. Contract: docs/guest-contract.md.
#
#  1. load the base modules (virtio, disk, input, net), bring every NIC up
#     with DHCP in the background;
#  2. find the config drive (iso9660 labelled config-2: virtio disks first,
#     then IDE/SATA cdroms) and read docker2vm/* from it;
#  3. mount the container root (disk by serial, or 9p/virtiofs share by tag,
#     with a tmpfs overlay unless the share is a private copy);
#  4. /proc /sys /dev /dev/pts /dev/shm (/tmp /run) and /etc/hosts,
#     /etc/resolv.conf, /etc/hostname inside it; resolve the user;
#  5. exec d2vinit, which runs the entrypoint and powers off when it ends.
export PATH=/bin
umask 022
MODDIR=/lib/modules
CFG=/run/d2v/cfg          # where docker2vm/* ends up (copied from the config drive)
R=/mnt/root               # container root

DEBUG=""
dbg() { [ -n "$DEBUG" ] && read -r _up _ </proc/uptime && echo "docker2vm: [$_up] $*" >&2; return 0; }

die() {
    echo "docker2vm: error: $*" >&2
    echo "docker2vm: exit status 125" >&2
    exec /bin/d2vinit poweroff
}

# load GROUP...: load the modules listed (dependency order) in $MODDIR/GROUP.list
load() {
    for _g in "$@"; do
        [ -f "$MODDIR/$_g.list" ] && [ ! -e "/run/d2v/mod.$_g" ] || continue
        : >"/run/d2v/mod.$_g"
        _mods=""
        while read -r _m; do _mods="$_mods $MODDIR/$_m"; done <"$MODDIR/$_g.list"
        /bin/d2vinit insmod $_mods
        dbg "modules $_g loaded"
    done
}

mount -t proc -o nosuid,nodev,noexec proc /proc
read -r _cmdline </proc/cmdline
case " $_cmdline " in *" docker2vm.debug "*) DEBUG=1 ;; esac
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
mkdir -p /run/d2v/net "$CFG" /mnt/cfg /mnt/lower "$R"
# Quiet console: only the container's output and our own lines.
[ -n "$DEBUG" ] || echo 1 >/proc/sys/kernel/printk

dbg "init started"
load base

# -- networking: DHCP on every NIC, in the background ------------------------
ip link set lo up
NETPIDS=""
for _n in /sys/class/net/*; do
    _n=${_n##*/}
    [ "$_n" = lo ] && continue
    ip link set "$_n" up
    udhcpc -i "$_n" -f -q -n -t 4 -T 1 -A 1 -s /etc/d2v/udhcpc.sh >/dev/null 2>&1 &
    NETPIDS="$NETPIDS $!"
done

# -- config drive --------------------------------------------------------------
iso_label() {  # prints the iso9660 volume id of /dev/$1, if any
    _pvd=$(dd if="/dev/$1" bs=8 skip=4096 count=9 2>/dev/null | tr '\000' ' ')
    case "$_pvd" in ?CD001*) echo ${_pvd#????????????????????????????????????????} ;; esac
}
find_cfg() {
    for _b in /sys/block/$1; do
        _b=${_b##*/}
        [ -e "/dev/$_b" ] || continue
        [ "$(iso_label "$_b")" = config-2 ] && { echo "$_b"; return 0; }
    done
    return 1
}
CFGDEV=$(find_cfg 'vd*')
if [ -z "$CFGDEV" ]; then
    load cdrom
    for _i in 1 2 3 4 5 6 7 8 9 10; do
        CFGDEV=$(find_cfg 'sr*') && break
        sleep 0.2
    done
fi
dbg "config drive: $CFGDEV"
[ -n "$CFGDEV" ] || die "no config drive (iso9660 labelled config-2) found"
mount -t iso9660 -o ro "/dev/$CFGDEV" /mnt/cfg || die "cannot mount config drive /dev/$CFGDEV"
[ -d /mnt/cfg/docker2vm ] || die "config drive has no docker2vm/ directory"
cp -a /mnt/cfg/docker2vm/. "$CFG/"
umount /mnt/cfg

# getv VAR NAME: VAR = the (one-line) file docker2vm/NAME, or empty. Builtins
# only: every process costs under TCG.
getv() { eval "$1="; [ -f "$CFG/$2" ] && IFS= read -r "$1" <"$CFG/$2"; return 0; }
getv HOSTNAME hostname
[ -n "$HOSTNAME" ] && hostname "$HOSTNAME"

# -- container root ------------------------------------------------------------
getv ROOTSPEC rootfs
KIND=${ROOTSPEC%%:*}
REST=${ROOTSPEC#*:}
ID=${REST%%:*}
MODE=overlay
[ "$REST" != "$ID" ] && MODE=${REST#*:}

overlay_on() {  # the share at /mnt/lower becomes a private writable root
    load overlay
    mount -t tmpfs -o mode=0755 d2v-upper /run/d2v/rw || die "tmpfs for the overlay"
    mkdir -p /run/d2v/rw/upper /run/d2v/rw/work
    mount -t overlay -o lowerdir=/mnt/lower,upperdir=/run/d2v/rw/upper,workdir=/run/d2v/rw/work,index=off,xino=off \
        d2v-root "$R" || die "overlay mount failed"
}
mkdir -p /run/d2v/rw
case "$KIND" in
disk)
    load disk
    DEV=""
    for _s in /sys/block/vd*/serial /sys/block/sd*/device/serial; do
        _v=""; [ -f "$_s" ] && IFS= read -r _v <"$_s"
        [ "$_v" = "$ID" ] || continue
        DEV=${_s#/sys/block/}; DEV=${DEV%%/*}
        break
    done
    [ -n "$DEV" ] || die "no disk with serial $ID"
    PART=$DEV
    [ -e "/sys/block/$DEV/${DEV}1" ] && PART=${DEV}1
    mount -o rw "/dev/$PART" "$R" || die "cannot mount /dev/$PART (serial $ID)"
    # Grow the filesystem to the disk (online, ext4) when it is the whole disk.
    [ "$PART" = "$DEV" ] && /bin/d2vinit resize "$R" "/dev/$DEV"
    ;;
9p)
    load 9p
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose "$ID" /mnt/lower ||
        die "cannot mount 9p share $ID"
    ;;
virtiofs)
    load virtiofs
    mount -t virtiofs "$ID" /mnt/lower || die "cannot mount virtiofs share $ID"
    ;;
*) die "unknown rootfs delivery '$ROOTSPEC'" ;;
esac
dbg "rootfs $ROOTSPEC mounted"
if [ "$KIND" != disk ]; then
    if [ "$MODE" = rw ]; then
        mount --move /mnt/lower "$R" || die "cannot move the share to the root"
    else
        overlay_on
    fi
fi
[ -x "$R/bin/sh" ] || [ -e "$R/etc" ] || [ -n "$(ls -A "$R" 2>/dev/null)" ] || die "container root is empty"

# -- inside the container root ----------------------------------------------------
mkdir -p "$R/proc" "$R/sys" "$R/dev" "$R/etc"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,nosuid,noexec,gid=5,mode=620,ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=64m shm "$R/dev/shm"
[ -e "$R/dev/fd" ] || ln -s /proc/self/fd "$R/dev/fd"
[ -e "$R/dev/stdin" ] || ln -s /proc/self/fd/0 "$R/dev/stdin"
[ -e "$R/dev/stdout" ] || ln -s /proc/self/fd/1 "$R/dev/stdout"
[ -e "$R/dev/stderr" ] || ln -s /proc/self/fd/2 "$R/dev/stderr"
# /tmp and /run: a fresh tmpfs unless the image ships content there.
is_empty() {  # DIR has no entries (globs, no ls process)
    for _x in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        { [ -e "$_x" ] || [ -L "$_x" ]; } && return 1
    done
    return 0
}
for _d in tmp run; do
    if [ ! -e "$R/$_d" ] || is_empty "$R/$_d"; then
        mkdir -p "$R/$_d"
        _mode=0755; [ $_d = tmp ] && _mode=1777
        mount -t tmpfs -o nosuid,nodev,mode=$_mode "$_d" "$R/$_d"
    fi
done

# Wait for DHCP before writing the network files.
for _p in $NETPIDS; do wait "$_p"; done
dbg "network ready"
IP=""; [ -f /run/d2v/net/ip ] && read -r IP </run/d2v/net/ip
{
    echo "127.0.0.1	localhost"
    echo "::1	localhost ip6-localhost ip6-loopback"
    [ -n "$HOSTNAME" ] && echo "${IP:-127.0.1.1}	$HOSTNAME"
} >/run/d2v/hosts
echo "${HOSTNAME:-localhost}" >/run/d2v/hostname
[ -f /run/d2v/net/resolv.conf ] && cp /run/d2v/net/resolv.conf /run/d2v/resolv.conf || : >/run/d2v/resolv.conf
for _f in hosts hostname resolv.conf; do
    if [ -L "$R/etc/$_f" ] || [ -d "$R/etc/$_f" ]; then rm -rf "$R/etc/$_f"; fi
    [ -e "$R/etc/$_f" ] || : >"$R/etc/$_f" 2>/dev/null
    mount --bind "/run/d2v/$_f" "$R/etc/$_f" 2>/dev/null
done

# -- user: name, uid, uid:gid, name:group in the container's passwd/group -----------
getv USERSPEC user
IDS=$(awk -v spec="$USERSPEC" -v pw="$R/etc/passwd" -v gr="$R/etc/group" -f /etc/d2v/user.awk) || die "user '$USERSPEC' cannot be resolved in the image"
read -r UID_ GID_ SGIDS HOME_ <<EOF
$IDS
EOF

# -- power button (ACPI): its evdev node(s) -------------------------------------
BUTTONS=""
for _i in /sys/class/input/input*; do
    _v=""; [ -f "$_i/name" ] && IFS= read -r _v <"$_i/name"
    [ "$_v" = "Power Button" ] || continue
    for _e in "$_i"/event*; do [ -e "$_e" ] && BUTTONS="$BUTTONS /dev/input/${_e##*/}"; done
done

dbg "starting entrypoint"
exec /bin/d2vinit run "$R" "$CFG" "$UID_" "$GID_" "$SGIDS" "$HOME_" $BUTTONS
