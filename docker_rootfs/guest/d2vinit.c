/*
 * d2vinit: the whole init of a docker2vm guest (the initramfs's /init).
 * Contract: doc/source/guest-contract.md.
 *
 * As /init (PID 1) it:
 *   1. mounts /proc /sys /dev /run, loads the base modules (virtio, power
 *      button), brings every NIC up and starts the DHCP client (dhcp.c, a
 *      thread that keeps the leases renewed);
 *   2. finds the config drive (iso9660 or vfat labelled config-2: virtio
 *      disks first, then IDE/SATA cdroms) and copies its docker2vm/ files;
 *   3. mounts the container root (disk by serial, grown online; or a 9p or
 *      virtiofs share by tag, with an overlay unless the share is a
 *      private copy: its upper layer on the instance's upper disk when
 *      docker2vm/upper names one (disk:SERIAL, ext4, grown online), else
 *      a tmpfs);
 *   4. mounts /proc /sys /dev /dev/pts /dev/shm (/tmp /run) inside it, waits
 *      for DHCP, bind-mounts /etc/hosts, /etc/resolv.conf, /etc/hostname;
 *      resolves the user in the container's own passwd and group files;
 *   5. forks the entrypoint (setsid, chroot, WorkingDir, groups/gid/uid,
 *      PATH lookup in the container), stays PID 1: forwards signals, reaps
 *      zombies, turns an ACPI power-button press into the StopSignal then
 *      SIGKILL after stop_timeout, prints "docker2vm: exit status N" and
 *      powers the machine off.
 *
 * One process does all of it (with dhcp.c, and d2vutil.c for what both
 * share): under TCG every fork+exec costs about 10 ms,
 * and the shell version of steps 1-4 spent most of its time there.
 *
 * Other entry points (by argv[0] or argv[1]):
 *   d2vinit resolve-user SPEC PASSWD GROUP
 *                              prints "UID GID SGIDS HOME" (tests)
 *   d2vinit dhcp NETDIR WAIT RUN
 *                              the DHCP client alone on every NIC (tests):
 *                              waits WAIT s for leases, keeps them RUN s
 *   d2vinit resize MOUNTPOINT DEVICE
 *   d2vinit overrides CFGDIR MDDIR
 *                              a bundle's docker2vm/ files in CFGDIR with the
 *                              metadata in MDDIR (meta_data.json, user_data)
 *                              applied, as at boot (tests)
 *   d2vinit poweroff
 *
 * Why C: busybox's setpriv here cannot change uid/gid/groups, sh cannot
 * carry NUL-separated argv/env, ash's `wait` cannot tell an interrupted wait
 * from a child killed by a signal, and every process costs under TCG.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/blkpg.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "d2vutil.h"
#include "dhcp.h"

#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#define MAX_BUTTONS 8

#define CFG "/run/d2v/cfg"        /* the config drive's docker2vm/ files */
#define NETDIR "/run/d2v/net"     /* lease files written by the DHCP client */
#define ROOT "/mnt/root"          /* the container root */
#define LOWER "/mnt/lower"        /* a share, below the overlay */
#define MODDIR "/lib/modules"
#define DHCP_WAIT 5.0             /* seconds to wait for every NIC's lease */
#define BUNDLE "/etc/d2v/bundle"  /* a bundle's baked-in docker2vm/ files (its second initrd) */
#define MD "/run/d2v/md"          /* a bundle's instance metadata (meta_data.json, user_data) */

static int debug;
static sigset_t orig_mask;        /* the signal mask children get back */

static void dbg(const char *what)
{
    if (!debug) return;
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    msg("docker2vm: [%ld.%03ld] %s", (long)ts.tv_sec, ts.tv_nsec / 1000000, what);
}

/* Remount every ext4/xfs filesystem read-only so the disk is clean. */
static void quiesce(void)
{
    sync();
    FILE *m = fopen("/proc/mounts", "r");
    if (!m) return;
    char line[4096], dev[1024], dir[2048], type[64];
    while (fgets(line, sizeof line, m))
        if (sscanf(line, "%1023s %2047s %63s", dev, dir, type) == 3 &&
            (!strcmp(type, "ext4") || !strcmp(type, "ext3") || !strcmp(type, "ext2") || !strcmp(type, "xfs")))
            mount(NULL, dir, NULL, MS_REMOUNT | MS_RDONLY, NULL);
    fclose(m);
}

static void __attribute__((noreturn)) poweroff(void)
{
    quiesce();
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

/* Setup failed: say why, report 125 (as docker run does) and power off. */
static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    msg("docker2vm: error: %s", buf);
    msg("docker2vm: exit status 125");
    if (getpid() != 1) exit(125);     /* a host-side test entry point */
    kill(-1, SIGKILL);
    poweroff();
}

/* -- small file helpers ---------------------------------------------------- */
/* Split a NUL-separated (and NUL-terminated) buffer into a NULL-ended vector. */
static char **split0(char *buf, size_t len, int extra)
{
    size_t count = 0;
    for (size_t i = 0; i < len; i++) if (!buf[i]) count++;
    if (len && buf[len - 1]) count++;
    char **v = calloc(count + extra + 1, sizeof *v);
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= len && k < count; i++) {
        if (i == len || !buf[i]) {
            if (i > start || i < len) v[k++] = buf + start;
            start = i + 1;
        }
    }
    v[k] = NULL;
    return v;
}

static long read_long(const char *dir, const char *name, long dflt)
{
    char *s = slurp(dir, name, NULL);
    if (!s) return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s) v = dflt;
    free(s);
    return v;
}

static const char *env_get(char **env, const char *key)
{
    size_t kl = strlen(key);
    for (; *env; env++)
        if (!strncmp(*env, key, kl) && (*env)[kl] == '=') return *env + kl + 1;
    return NULL;
}

/* mkdir -p of an absolute path in the current root. */
static void mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(buf, 0755);
        *p = '/';
    }
    mkdir(buf, 0755);
}

/* -- paths inside the container root ---------------------------------------
 * The container's files are the tenant's: a symlink such as /proc -> /x must
 * resolve inside the container root, never to the initramfs. openat2 with
 * RESOLVE_IN_ROOT does that (as runc's securejoin). */
static int rootfd = -1;

static int open_in_root(const char *rel, int flags)
{
    struct open_how how = { .flags = flags | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
    return (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof how);
}

/* mkdir -p REL inside the root; returns an O_PATH fd of it, or -1. */
static int mkdir_in_root(const char *rel, mode_t mode)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", rel);
    for (char *p = buf; ; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (*buf) {
                int fd = open_in_root(buf, O_PATH | O_DIRECTORY);
                if (fd < 0) {
                    /* create it in its (already resolved) parent */
                    char *slash = strrchr(buf, '/');
                    int pfd = slash ? (*slash = 0, open_in_root(buf, O_PATH | O_DIRECTORY)) : dup(rootfd);
                    if (slash) *slash = '/';
                    if (pfd < 0) return -1;
                    mkdirat(pfd, slash ? slash + 1 : buf, mode);
                    close(pfd);
                } else close(fd);
            }
            if (!c) break;
            *p = c;
        }
    }
    return open_in_root(rel, O_PATH | O_DIRECTORY);
}

/* mount SRC (type, flags, data) on REL inside the root; 0 or -1. */
static int mount_in_root(const char *src, const char *rel, const char *type, unsigned long flags,
                         const char *data, int is_dir)
{
    int fd = is_dir ? mkdir_in_root(rel, 0755) : open_in_root(rel, O_PATH);
    if (fd < 0) return -1;
    char target[64];
    snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
    int r = mount(src, target, type, flags, data);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

/* -- modules ----------------------------------------------------------------- */
/* Load the modules of GROUP (MODDIR/GROUP.list, dependency order; empty when
 * built in). -1 when the base image's kernel has no such group. */
static int load_group(const char *group)
{
    char done[128], list[128];
    snprintf(done, sizeof done, "/run/d2v/mod.%s", group);
    snprintf(list, sizeof list, MODDIR "/%s.list", group);
    if (access(done, F_OK) == 0) return 0;
    char *names = slurp(NULL, list, NULL);
    if (!names) return -1;
    write_file(done, "", 0);
    char *save = NULL;
    for (char *m = strtok_r(names, "\n", &save); m; m = strtok_r(NULL, "\n", &save)) {
        char path[256];
        snprintf(path, sizeof path, MODDIR "/%s", m);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST))
            msg("docker2vm: insmod %s: %s", m, strerror(errno));
        if (fd >= 0) close(fd);
        if (debug) { char b[160]; snprintf(b, sizeof b, "module %s", m); dbg(b); }
    }
    free(names);
    if (debug) { char b[160]; snprintf(b, sizeof b, "modules %s loaded", group); dbg(b); }
    return 0;
}

static void need_group(const char *group, const char *what)
{
    if (load_group(group))
        die("the base image's kernel has no %s support (modules group '%s'); "
            "build the base image with a kernel that has it (e.g. linux-image-amd64)", what, group);
}

/* -- config drive ------------------------------------------------------------ */
static int label_is(const char *field, size_t len, const char *want)
{
    size_t n = len;
    while (n && (field[n - 1] == ' ' || field[n - 1] == 0)) n--;
    return n == strlen(want) && !strncasecmp(field, want, n);
}

/* "iso9660", "vfat" if /dev/NAME is a filesystem labelled config-2, else NULL. */
static const char *config_drive_type(const char *name)
{
    char dev[64], buf[2048];
    snprintf(dev, sizeof dev, "/dev/%s", name);
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    const char *type = NULL;
    if (pread(fd, buf, sizeof buf, 16 * 2048) == (ssize_t)sizeof buf &&
        buf[0] == 1 && !memcmp(buf + 1, "CD001", 5) && label_is(buf + 40, 32, "config-2"))
        type = "iso9660";
    else if (pread(fd, buf, 512, 0) == 512 && (unsigned char)buf[510] == 0x55 &&
             (unsigned char)buf[511] == 0xaa &&
             ((buf[38] == 0x29 && label_is(buf + 43, 11, "config-2") && !memcmp(buf + 54, "FAT", 3)) ||
              (buf[66] == 0x29 && label_is(buf + 71, 11, "config-2") && !memcmp(buf + 82, "FAT", 3))))
        type = "vfat";
    close(fd);
    return type;
}

static const char *find_config_drive(const char *prefix, char *out, size_t outlen)
{
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    const char *type = NULL;
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, prefix, strlen(prefix))) continue;
        if ((type = config_drive_type(e->d_name))) {
            snprintf(out, outlen, "%s", e->d_name);
            break;
        }
    }
    if (d) closedir(d);
    return type;
}

static void copy_dir(const char *src, const char *dst)
{
    DIR *d = opendir(src);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t len = 0;
        char *data = slurp(src, e->d_name, &len);
        if (!data) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dst, e->d_name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) { (void)!write(fd, data, len); close(fd); }
        free(data);
    }
    if (d) closedir(d);
}

/* ISO9660 without the kernel's isofs: the Joliet tree (genisoimage -J, as
 * Nova makes config drives) read straight from the device. Saves loading
 * isofs and cdrom and a mount under TCG. Returns 0 when /docker2vm/ was read
 * (files copied to dst), -1 to fall back to mounting. */
#define ISO_SECTOR 2048
#define ISO_MAX_FILE (16 << 20)

static uint32_t le32(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

/* Walk the directory at lba/size: for each entry call fn(name, lba, size, is_dir, arg);
 * fn returning nonzero stops the walk (the value is returned). */
static int iso_walk(int fd, uint32_t lba, uint32_t size,
                    int (*fn)(const char *, uint32_t, uint32_t, int, void *), void *arg)
{
    if (size > (1 << 20)) return -1;
    unsigned char *dir = malloc(size ? size : 1);
    if (pread(fd, dir, size, (off_t)lba * ISO_SECTOR) != (ssize_t)size) { free(dir); return -1; }
    int r = 0;
    for (uint32_t off = 0; off < size && !r;) {
        unsigned len = dir[off];
        if (!len) { off = (off / ISO_SECTOR + 1) * ISO_SECTOR; continue; }  /* to the next sector */
        if (len < 34 || off + len > size || 33 + dir[off + 32] > len) break;
        unsigned char *rec = dir + off;
        unsigned nlen = rec[32];
        char name[128];
        size_t k = 0;
        int ok = nlen % 2 == 0 && !(nlen == 1);
        for (unsigned i = 0; ok && i + 1 < nlen && k < sizeof name - 1; i += 2) {
            unsigned c = rec[33 + i] << 8 | rec[34 + i];
            if (c == ';') break;                       /* ";1" version suffix */
            if (c < 0x20 || c > 0x7e || c == '/') ok = 0;
            name[k++] = (char)c;
        }
        name[k] = 0;
        if (ok && k && !(rec[25] & 0x80))             /* no multi-extent files */
            r = fn(name, le32(rec + 2), le32(rec + 10), rec[25] & 2, arg);
        off += len;
    }
    free(dir);
    return r;
}

struct iso_ctx { int fd; const char *dst; uint32_t lba, size; int found; const char *want; };

static int iso_find_docker2vm(const char *name, uint32_t lba, uint32_t size, int is_dir, void *arg)
{
    struct iso_ctx *c = arg;
    if (is_dir && !strcmp(name, c->want ? c->want : "docker2vm")) { c->lba = lba; c->size = size; c->found = 1; return 1; }
    return 0;
}

static int iso_copy_file(const char *name, uint32_t lba, uint32_t size, int is_dir, void *arg)
{
    struct iso_ctx *c = arg;
    if (is_dir || name[0] == '.' || !strcmp(name, "config.json")) return 0;  /* for people only */
    if (size > ISO_MAX_FILE) return -1;
    char *data = malloc(size ? size : 1), path[512];
    if (pread(c->fd, data, size, (off_t)lba * ISO_SECTOR) != (ssize_t)size) { free(data); return -1; }
    snprintf(path, sizeof path, "%s/%s", c->dst, name);
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int ok = out >= 0 && write(out, data, size) == (ssize_t)size;
    if (out >= 0) close(out);
    free(data);
    return ok ? 0 : -1;
}

/* Copy the files of the directory PATH (names, NULL-ended) of the Joliet
 * tree to DST: 0, -2 when the directory is not there, -1 to fall back to
 * mounting. */
static int iso_read_joliet_dir(const char *dev, const char *const *dirpath, const char *dst)
{
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    unsigned char vd[ISO_SECTOR];
    int r = -1;
    for (int sector = 16; sector < 32; sector++) {
        if (pread(fd, vd, sizeof vd, (off_t)sector * ISO_SECTOR) != (ssize_t)sizeof vd ||
            memcmp(vd + 1, "CD001", 5) || vd[0] == 255)
            break;
        if (vd[0] != 2 || vd[88] != '%' || vd[89] != '/' || (vd[90] != '@' && vd[90] != 'C' && vd[90] != 'E'))
            continue;   /* not the Joliet supplementary descriptor */
        struct iso_ctx c = { .fd = fd, .dst = dst, .lba = le32(vd + 156 + 2), .size = le32(vd + 156 + 10) };
        for (const char *const *d = dirpath; *d; d++) {
            uint32_t lba = c.lba, size = c.size;
            c.found = 0;
            c.want = *d;
            iso_walk(fd, lba, size, iso_find_docker2vm, &c);
            if (!c.found) break;
        }
        if (!c.found) { r = -2; break; }
        r = iso_walk(fd, c.lba, c.size, iso_copy_file, &c) ? -1 : 0;
        break;
    }
    close(fd);
    return r;
}

static int iso_read_joliet(const char *dev, const char *dst)
{
    static const char *const dir[] = { "docker2vm", NULL };
    return iso_read_joliet_dir(dev, dir, dst);
}

static void apply_overrides(void);

/* A bundle (Approach 3) carries its docker2vm/ files; a config drive, if
 * any, only brings the instance's metadata (Nova's openstack/latest/
 * meta_data.json and user_data), which may override them. */
static void read_instance_metadata(const char *path, const char *type)
{
    static const char *const dir[] = { "openstack", "latest", NULL };
    mkdir_p(MD);
    if (!strcmp(type, "iso9660")) {
        int r = iso_read_joliet_dir(path, dir, MD);
        if (r == -2) { dbg("config drive has no openstack/latest/"); return; }
        if (r == 0) { apply_overrides(); return; }
        need_group("iso9660", "iso9660");
    } else need_group("vfat", "vfat");
    if (mount(path, "/mnt/cfg", type, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
        die("cannot mount config drive %s (%s): %s", path, type, strerror(errno));
    copy_dir("/mnt/cfg/openstack/latest", MD);
    umount("/mnt/cfg");
    apply_overrides();
}

/* BUNDLE: the configuration is baked in and the config drive is optional.
 * 1 when a config drive was read. */
static int read_config_drive(int bundle)
{
    char dev[64] = "";
    const char *type = find_config_drive("vd", dev, sizeof dev);
    if (!type) {
        load_group("cdrom");
        /* The SCSI scan of the cdrom is asynchronous. Loading a module waits
         * for its async probes, so a cdrom is there within ~50 ms of the
         * last module (seen under TCG): a bundle, for which the drive is
         * optional, waits less for one that is not there. */
        double until = now() + (bundle ? 0.5 : 2.0);
        while (!(type = find_config_drive("sr", dev, sizeof dev)) &&
               !(type = find_config_drive("sd", dev, sizeof dev)) && now() < until)
            usleep(20000);
    }
    if (!type && bundle) { dbg("no config drive"); return 0; }
    if (!type) die("no config drive (iso9660 or vfat labelled config-2) found");
    if (debug) { char b[128]; snprintf(b, sizeof b, "config drive: %s (%s)", dev, type); dbg(b); }
    char path[80];
    snprintf(path, sizeof path, "/dev/%s", dev);
    if (bundle) { read_instance_metadata(path, type); dbg("config drive read"); return 1; }
    if (!strcmp(type, "iso9660")) {
        int r = iso_read_joliet(path, CFG);
        if (r == -2) die("config drive %s has no docker2vm/ directory", path);
        if (r == 0) { dbg("config drive read"); return 1; }
        need_group("iso9660", "iso9660");   /* no Joliet tree: the kernel reads it */
    } else need_group("vfat", "vfat");
    if (mount(path, "/mnt/cfg", type, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
        die("cannot mount config drive %s (%s): %s", path, type, strerror(errno));
    struct stat st;
    if (stat("/mnt/cfg/docker2vm", &st) || !S_ISDIR(st.st_mode)) {
        umount("/mnt/cfg");
        die("config drive %s has no docker2vm/ directory", path);
    }
    copy_dir("/mnt/cfg/docker2vm", CFG);
    umount("/mnt/cfg");
    dbg("config drive read");
    return 1;
}

/* GET http://169.254.169.254/PATH into DST (the OpenStack metadata service,
 * for a bundle booted without a config drive): 0, or -1 (unreachable within
 * the timeouts, not 200, or too big). */
#define MDS_ADDR "169.254.169.254"
#define MDS_MAX (1 << 20)

static int http_get(const char *path, const char *dst)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(80) };
    inet_pton(AF_INET, MDS_ADDR, &a.sin_addr);
    struct pollfd pf = { .fd = fd, .events = POLLOUT };
    int err = 0;
    socklen_t el = sizeof err;
    if ((connect(fd, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) ||
        poll(&pf, 1, 1000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: " MDS_ADDR "\r\n\r\n", path);
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap + 1);
    int ok = write(fd, req, n) == n;
    pf.events = POLLIN;
    while (ok) {
        if (poll(&pf, 1, 3000) != 1) { ok = 0; break; }
        if (len == cap) {
            if (cap >= MDS_MAX) { ok = 0; break; }
            buf = realloc(buf, (cap *= 2) + 1);
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) break;
        len += r;
    }
    close(fd);
    buf[len] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    ok = ok && body && !strncmp(buf, "HTTP/1.", 7) && !strncmp(buf + 8, " 200", 4);
    if (ok) {
        body += 4;
        int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        size_t bl = len - (size_t)(body - buf);
        ok = out >= 0 && write(out, body, bl) == (ssize_t)bl;
        if (out >= 0) close(out);
    }
    free(buf);
    return ok ? 0 : -1;
}

static void apply_overrides(void);

/* A bundle without a config drive: the same two files from the metadata
 * service, once the network is up. 1 when meta_data.json was read. */
static int read_metadata_service(void)
{
    mkdir_p(MD);
    if (http_get("/openstack/latest/meta_data.json", MD "/meta_data.json")) {
        dbg("no metadata service");
        return 0;
    }
    http_get("/openstack/latest/user_data", MD "/user_data");   /* 404 without user data */
    apply_overrides();
    dbg("metadata service read");
    return 1;
}

/* -- a bundle's overrides: a small JSON reader ------------------------------
 * Stock Nova gives the server metadata only as JSON (meta_data.json "meta",
 * string values) and the user data as it was given. The docker_* keys are
 * applied as doc/source/guest-contract.md says (the host-side rules of
 * contract.resolve); server metadata wins over user data. */
static const char *jws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    *out = v;
    return 0;
}

/* The JSON string at P, decoded (UTF-8, no NUL) into *OUT (malloc'd); the
 * text after it, or NULL. */
static const char *jstr(const char *p, char **out)
{
    p = jws(p);
    if (*p != '"') return NULL;
    p++;
    size_t cap = 64, n = 0;
    char *s = malloc(cap);
    while (*p != '"') {
        if (n + 8 > cap) s = realloc(s, cap *= 2);
        if (!*p || (unsigned char)*p < 0x20) goto bad;
        if (*p != '\\') { s[n++] = *p++; continue; }
        p++;
        char c = *p++;
        unsigned u;
        switch (c) {
        case '"': case '\\': case '/': s[n++] = c; break;
        case 'b': s[n++] = '\b'; break;
        case 'f': s[n++] = '\f'; break;
        case 'n': s[n++] = '\n'; break;
        case 'r': s[n++] = '\r'; break;
        case 't': s[n++] = '\t'; break;
        case 'u':
            if (hex4(p, &u)) goto bad;
            p += 4;
            if (u >= 0xd800 && u < 0xdc00 && p[0] == '\\' && p[1] == 'u') {
                unsigned lo;
                if (!hex4(p + 2, &lo) && lo >= 0xdc00 && lo < 0xe000) {
                    u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                    p += 6;
                }
            }
            if (!u) goto bad;
            if (u < 0x80) s[n++] = (char)u;
            else if (u < 0x800) { s[n++] = (char)(0xc0 | u >> 6); s[n++] = (char)(0x80 | (u & 0x3f)); }
            else if (u < 0x10000) { s[n++] = (char)(0xe0 | u >> 12); s[n++] = (char)(0x80 | ((u >> 6) & 0x3f)); s[n++] = (char)(0x80 | (u & 0x3f)); }
            else { s[n++] = (char)(0xf0 | u >> 18); s[n++] = (char)(0x80 | ((u >> 12) & 0x3f)); s[n++] = (char)(0x80 | ((u >> 6) & 0x3f)); s[n++] = (char)(0x80 | (u & 0x3f)); }
            break;
        default: goto bad;
        }
    }
    s[n] = 0;
    *out = s;
    return p + 1;
bad:
    free(s);
    return NULL;
}

/* The text after the JSON value at P, or NULL. */
static const char *jskip(const char *p, int depth)
{
    p = jws(p);
    if (depth > 64) return NULL;
    if (*p == '"') { char *s; p = jstr(p, &s); if (p) free(s); return p; }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = jws(p + 1);
        if (*p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                char *k;
                if (!(p = jstr(p, &k))) return NULL;
                free(k);
                p = jws(p);
                if (*p++ != ':') return NULL;
            }
            if (!(p = jskip(p, depth + 1))) return NULL;
            p = jws(p);
            if (*p == ',') { p++; continue; }
            return *p == close ? p + 1 : NULL;
        }
    }
    const char *q = p;
    while (*q && strchr("+-.0123456789eEtruefalsn", *q)) q++;
    return q > p ? q : NULL;
}

/* The value of KEY in the JSON object at P, or NULL. */
static const char *jget(const char *p, const char *key)
{
    if (!p || *(p = jws(p)) != '{') return NULL;
    p = jws(p + 1);
    if (*p == '}') return NULL;
    for (;;) {
        char *k;
        if (!(p = jstr(p, &k))) return NULL;
        p = jws(p);
        int match = !strcmp(k, key);
        free(k);
        if (*p++ != ':') return NULL;
        p = jws(p);
        if (match) return p;
        if (!(p = jskip(p, 0))) return NULL;
        p = jws(p);
        if (*p++ != ',') return NULL;
    }
}

/* NUL-terminated strings back to back (the argv and env file format). */
struct strv { char *buf; size_t len; };

static void sv_add(struct strv *v, const char *s, size_t n)
{
    v->buf = realloc(v->buf, v->len + n + 1);
    memcpy(v->buf + v->len, s, n);
    v->buf[v->len + n] = 0;
    v->len += n + 1;
}

/* A JSON list of strings, or one string, filling V: 0, or -1. */
static int jlist(const char *p, struct strv *v)
{
    char *s;
    p = jws(p);
    if (*p == '"') {
        if (!(p = jstr(p, &s))) return -1;
        sv_add(v, s, strlen(s));
        free(s);
        return *jws(p) ? -1 : 0;
    }
    if (*p != '[') return -1;
    p = jws(p + 1);
    if (*p != ']') for (;;) {
        if (!(p = jstr(p, &s))) return -1;
        sv_add(v, s, strlen(s));
        free(s);
        p = jws(p);
        if (*p == ']') break;
        if (*p++ != ',') return -1;
    }
    return *jws(p + 1) ? -1 : 0;
}

/* Env overrides: a JSON object or a list of "KEY=VALUE" strings: 0, or -1. */
static int jenv(const char *p, struct strv *v)
{
    p = jws(p);
    if (*p == '[') {
        if (jlist(p, v)) return -1;
        for (size_t off = 0; off < v->len; off += strlen(v->buf + off) + 1)
            if (!strchr(v->buf + off, '=')) return -1;
        return 0;
    }
    if (*p != '{') return -1;
    p = jws(p + 1);
    if (*p != '}') for (;;) {
        char *k, *val;
        if (!(p = jstr(p, &k))) return -1;
        p = jws(p);
        if (*p++ != ':') { free(k); return -1; }
        p = jws(p);
        if (*p == '"') p = jstr(p, &val);
        else { const char *q = jskip(p, 0); val = q ? strndup(p, q - p) : NULL; p = q; }
        if (!p) { free(k); return -1; }
        char *kv;
        if (asprintf(&kv, "%s=%s", k, val) < 0) return -1;
        sv_add(v, kv, strlen(kv));
        free(kv); free(k); free(val);
        p = jws(p);
        if (*p == '}') break;
        if (*p++ != ',') return -1;
    }
    return *jws(p + 1) ? -1 : 0;
}

/* An override's JSON text: server metadata values are strings holding JSON;
 * in user data the value may also be the JSON itself. malloc'd or NULL. */
static char *override_text(const char *p)
{
    char *s;
    p = jws(p);
    if (*p == '"') return jstr(p, &s) ? s : NULL;
    const char *q = jskip(p, 0);
    return q ? strndup(p, q - p) : NULL;
}

/* Where apply_overrides() reads and writes (d2vinit overrides CFGDIR MDDIR: tests). */
static const char *cfg_dir = CFG, *md_dir = MD;

static void write_bin(const char *name, const char *data, size_t len)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", cfg_dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len) die("cannot write %s: %s", path, strerror(errno));
    close(fd);
}

static void apply_overrides(void)
{
    char *md = slurp(md_dir, "meta_data.json", NULL), *ud = slurp(md_dir, "user_data", NULL);
    const char *src[2] = { jget(md, "meta"), ud && *jws(ud) == '{' ? ud : NULL };
    const char *what[2] = { "server metadata", "user data" };
    char *hostname = line_of(cfg_dir, "hostname"), *s;
    const char *h = jget(md, "hostname");
    if (!*hostname && h && jstr(h, &s)) {
        if (*s && !strchr(s, '\n')) { char line[300]; snprintf(line, sizeof line, "%s\n", s); write_bin("hostname", line, strlen(line)); }
        free(s);
    }
    free(hostname);
    static const char *keys[] = { "docker_entrypoint", "docker_cmd", "docker_env", "docker_user", "docker_workdir" };
    const char *val[5] = { 0 };
    int from[5] = { 0 };
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 2 && !val[k]; i++)
            if ((val[k] = jget(src[i], keys[k]))) from[k] = i;
    struct strv ov[3] = { { 0 } };
    for (int k = 0; k < 3; k++) {
        if (!val[k]) continue;
        char *t = override_text(val[k]);
        if (!t || (k == 2 ? jenv(t, &ov[k]) : jlist(t, &ov[k])))
            die("%s %s must be %s", what[from[k]], keys[k], k == 2 ? "a JSON object or a JSON list of "
                "KEY=VALUE strings" : "a JSON list of strings");
        free(t);
        if (debug) { char b[128]; snprintf(b, sizeof b, "override %s from %s", keys[k], what[from[k]]); dbg(b); }
    }
    if (val[0] || val[1]) {       /* as docker run [--entrypoint E] IMAGE [CMD...] */
        struct strv argv = { 0 };
        size_t n;
        char *ep = val[0] ? NULL : slurp(cfg_dir, "entrypoint", &n);
        if (val[0]) { if (ov[0].len) sv_add(&argv, ov[0].buf, ov[0].len - 1); }
        else if (ep && n) sv_add(&argv, ep, n - 1);
        free(ep);
        char *cmd = val[1] || val[0] ? NULL : slurp(cfg_dir, "cmd", &n);
        if (val[1]) { if (ov[1].len) sv_add(&argv, ov[1].buf, ov[1].len - 1); }
        else if (cmd && n) sv_add(&argv, cmd, n - 1);
        free(cmd);
        write_bin("argv", argv.buf ? argv.buf : "", argv.len);
    }
    if (val[2]) {                 /* -e KEY=VALUE: replaces KEY, else appended */
        size_t n = 0;
        char *env = slurp(cfg_dir, "env", &n);
        struct strv out = { 0 };
        for (size_t off = 0; env && off < n; off += strlen(env + off) + 1) {
            const char *e = env + off, *eq = strchr(e, '=');
            size_t kl = eq ? (size_t)(eq - e) : strlen(e);
            const char *repl = NULL;
            for (size_t o = 0; o < ov[2].len; o += strlen(ov[2].buf + o) + 1)
                if (!strncmp(ov[2].buf + o, e, kl) && ov[2].buf[o + kl] == '=') repl = ov[2].buf + o;
            sv_add(&out, repl ? repl : e, strlen(repl ? repl : e));
        }
        for (size_t o = 0; o < ov[2].len; o += strlen(ov[2].buf + o) + 1) {
            const char *e = ov[2].buf + o;
            size_t kl = strchr(e, '=') - e;
            int seen = 0;
            for (size_t off = 0; env && off < n && !seen; off += strlen(env + off) + 1)
                seen = !strncmp(env + off, e, kl) && env[off + kl] == '=';
            for (size_t o2 = o + strlen(e) + 1; o2 < ov[2].len && !seen; o2 += strlen(ov[2].buf + o2) + 1)
                seen = !strncmp(ov[2].buf + o2, e, kl + 1);   /* a later one wins */
            if (!seen) sv_add(&out, e, strlen(e));
        }
        write_bin("env", out.buf ? out.buf : "", out.len);
        free(env);
    }
    for (int k = 3; k < 5; k++) {
        if (!val[k]) continue;
        char *v;
        if (!jstr(val[k], &v) || strchr(v, '\n')) die("%s %s must be a string", what[from[k]], keys[k]);
        char line[1100];
        snprintf(line, sizeof line, "%s%s\n", k == 4 && *v != '/' ? "/" : "", v);
        write_bin(keys[k] + 7, line, strlen(line));
        free(v);
    }
    free(md);
    free(ud);
}

/* -- the container root -------------------------------------------------------- */
static void find_disk(const char *serial, char *out, size_t outlen)
{
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    *out = 0;
    while (d && (e = readdir(d))) {
        const char *fmt = !strncmp(e->d_name, "vd", 2) ? "/sys/block/%s/serial"
                        : !strncmp(e->d_name, "sd", 2) ? "/sys/block/%s/device/serial" : NULL;
        if (!fmt) continue;
        char p[256];
        snprintf(p, sizeof p, fmt, e->d_name);
        char *v = line_of(NULL, p);
        int match = !strcmp(v, serial);
        free(v);
        if (match) { snprintf(out, outlen, "%s", e->d_name); break; }
    }
    if (d) closedir(d);
}

static int resize(const char *mnt, const char *dev)
{
    int dfd = open(dev, O_RDONLY | O_CLOEXEC);
    uint64_t bytes = 0;
    if (dfd < 0 || ioctl(dfd, BLKGETSIZE64, &bytes)) { msg("docker2vm: resize: %s: %s", dev, strerror(errno)); return 1; }
    /* Nothing to grow (the disk is the image's size): no ioctl. The block
     * count is the superblock's (s_blocks_count_lo/hi, s_log_block_size). */
    unsigned char sb[1024];
    if (pread(dfd, sb, sizeof sb, 1024) == (ssize_t)sizeof sb && sb[0x38] == 0x53 && sb[0x39] == 0xef) {
        uint64_t count = (uint64_t)sb[4] | sb[5] << 8 | sb[6] << 16 | (uint64_t)sb[7] << 24;
        if (sb[0x60] & 0x80)       /* INCOMPAT_64BIT: s_blocks_count_hi */
            count |= ((uint64_t)sb[0x150] | sb[0x151] << 8 | sb[0x152] << 16 | (uint64_t)sb[0x153] << 24) << 32;
        uint32_t log = sb[24] | sb[25] << 8;
        if (log < 7 && bytes / (1024u << log) <= count) { close(dfd); return 0; }
    }
    close(dfd);
    struct statfs sf;
    int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstatfs(fd, &sf)) { msg("docker2vm: resize: %s: %s", mnt, strerror(errno)); return 1; }
    uint64_t blocks = bytes / sf.f_bsize;
    int r = 0;
    if (ioctl(fd, EXT4_IOC_RESIZE_FS, &blocks) && errno != EINVAL) {
        msg("docker2vm: resize: %s: %s", mnt, strerror(errno));
        r = 1;
    }
    close(fd);
    return r;
}

/* -- a bundle's rootfs partition ------------------------------------------------ */
/* The block device (a partition or a whole disk, vd* or sd*) holding the
 * ext4 filesystem whose UUID is UUID: its name in PART and its disk's in DISK. */
static int find_fs_uuid(const char *uuid, char *disk, char *part, size_t len)
{
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    int found = 0;
    while (!found && d && (e = readdir(d))) {
        if (strncmp(e->d_name, "vd", 2) && strncmp(e->d_name, "sd", 2)) continue;
        char sys[300];
        snprintf(sys, sizeof sys, "/sys/block/%s", e->d_name);
        DIR *pd = opendir(sys);
        struct dirent *pe;
        const char *cand = e->d_name;      /* the whole disk first, then its partitions */
        while (!found && cand) {
            char dev[320];
            unsigned char sb[1024];
            snprintf(dev, sizeof dev, "/dev/%s", cand);
            int fd = open(dev, O_RDONLY | O_CLOEXEC);
            if (fd >= 0 && pread(fd, sb, sizeof sb, 1024) == (ssize_t)sizeof sb && sb[0x38] == 0x53 && sb[0x39] == 0xef) {
                char u[40];
                const unsigned char *b = sb + 0x68;
                snprintf(u, sizeof u, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                         b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
                if (!strcasecmp(u, uuid)) {
                    snprintf(disk, len, "%s", e->d_name);
                    snprintf(part, len, "%s", cand);
                    found = 1;
                }
            }
            if (fd >= 0) close(fd);
            cand = NULL;
            while (pd && (pe = readdir(pd)))
                if (!strncmp(pe->d_name, e->d_name, strlen(e->d_name))) { cand = pe->d_name; break; }
        }
        if (pd) closedir(pd);
    }
    if (d) closedir(d);
    return found ? 0 : -1;
}

/* Grow PART, the last primary partition of DISK's MBR table, to the end of
 * the disk (the flavor's disk is bigger than the image): rewrite its size in
 * the table, then tell the kernel (BLKPG). GPT tables are left alone. */
static void grow_partition(const char *disk, const char *part)
{
    if (!strcmp(disk, part)) return;
    char p[300];
    snprintf(p, sizeof p, "/sys/block/%s/%s/partition", disk, part);
    long pno = read_long(NULL, p, 0);
    snprintf(p, sizeof p, "/sys/block/%s/size", disk);
    uint64_t sectors = (uint64_t)read_long(NULL, p, 0);
    snprintf(p, sizeof p, "/dev/%s", disk);
    int fd = open(p, O_RDWR | O_CLOEXEC);
    unsigned char mbr[512];
    if (pno < 1 || pno > 4 || fd < 0 || pread(fd, mbr, sizeof mbr, 0) != (ssize_t)sizeof mbr ||
        mbr[510] != 0x55 || mbr[511] != 0xaa) { if (fd >= 0) close(fd); return; }
    unsigned char *ent = mbr + 446 + 16 * (pno - 1);
    uint32_t start = le32(ent + 8), size = le32(ent + 12);
    for (int i = 0; i < 4; i++)
        if (mbr[446 + 16 * i + 4] == 0xee || (i != pno - 1 && le32(mbr + 446 + 16 * i + 8) > start)) {
            close(fd);                  /* GPT, or not the last partition */
            return;
        }
    uint64_t want = sectors > start ? sectors - start : 0;
    if (want > 0xffffffffu) want = 0xffffffffu;     /* an MBR partition ends at 2 TiB */
    want &= ~(uint64_t)7;                           /* whole 4 KiB blocks */
    if (want <= size) { close(fd); return; }
    for (int i = 0; i < 4; i++) ent[12 + i] = (unsigned char)(want >> (8 * i));
    struct blkpg_partition bp = { .start = (long long)start * 512, .length = (long long)want * 512, .pno = (int)pno };
    struct blkpg_ioctl_arg arg = { .op = BLKPG_RESIZE_PARTITION, .datalen = sizeof bp, .data = &bp };
    if (pwrite(fd, mbr, sizeof mbr, 0) != (ssize_t)sizeof mbr || fsync(fd) || ioctl(fd, BLKPG, &arg))
        msg("docker2vm: cannot grow partition %s: %s", part, strerror(errno));
    else if (debug) { char b[128]; snprintf(b, sizeof b, "partition %s grown to %llu MiB", part, (unsigned long long)(want >> 11)); dbg(b); }
    close(fd);
}

/* Does the directory open at FD (closed here) hold an entry other than
 * ".", ".." and IGNORE? */
static int has_entries(int fd, const char *ignore)
{
    if (fd < 0) return 0;
    DIR *d = fdopendir(fd);
    if (!d) { close(fd); return 0; }
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)))
        found = strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && !(ignore && !strcmp(e->d_name, ignore));
    closedir(d);
    return found;
}

static void mount_root(void)
{
    char *spec = line_of(CFG, "rootfs");
    char *kind = spec, *id = strchr(spec, ':'), *mode = NULL;
    if (!id) die("unknown rootfs delivery '%s'", spec);
    *id++ = 0;
    if ((mode = strchr(id, ':'))) *mode++ = 0;
    int rw = mode && !strcmp(mode, "rw");
    if (!strcmp(kind, "disk")) {
        need_group("disk", "ext4");
        char dev[64], path[96];
        find_disk(id, dev, sizeof dev);
        if (!*dev) die("no disk with serial %s", id);
        char part[160];
        snprintf(part, sizeof part, "/sys/block/%s/%s1", dev, dev);
        int partitioned = access(part, F_OK) == 0;
        snprintf(path, sizeof path, partitioned ? "/dev/%s1" : "/dev/%s", dev);
        if (mount(path, ROOT, "ext4", 0, NULL))
            die("cannot mount %s (serial %s) as ext4: %s", path, id, strerror(errno));
        /* Grow the filesystem to the disk (online) when it is the whole disk. */
        if (!partitioned) { snprintf(path, sizeof path, "/dev/%s", dev); resize(ROOT, path); }
    } else if (!strcmp(kind, "part")) {   /* a bundle: its own partition, by filesystem UUID */
        need_group("disk", "ext4");
        char disk[64], part[64], path[96];
        if (find_fs_uuid(id, disk, part, sizeof disk)) die("no partition with filesystem UUID %s", id);
        grow_partition(disk, part);
        snprintf(path, sizeof path, "/dev/%s", part);
        if (mount(path, ROOT, "ext4", 0, NULL))
            die("cannot mount %s (UUID %s) as ext4: %s", path, id, strerror(errno));
        resize(ROOT, path);
    } else if (!strcmp(kind, "9p")) {
        need_group("9p", "9p");
        if (mount(id, LOWER, "9p", 0, "trans=virtio,version=9p2000.L,msize=262144,cache=loose"))
            die("cannot mount 9p share %s: %s", id, strerror(errno));
    } else if (!strcmp(kind, "virtiofs")) {
        need_group("virtiofs", "virtiofs");
        if (mount(id, LOWER, "virtiofs", 0, NULL))
            die("cannot mount virtiofs share %s: %s", id, strerror(errno));
    } else die("unknown rootfs delivery '%s:%s'", kind, id);
    if (strcmp(kind, "disk") && strcmp(kind, "part")) {
        if (rw) {
            if (mount(LOWER, ROOT, NULL, MS_MOVE, NULL)) die("cannot move the share to the root: %s", strerror(errno));
        } else {  /* the share stays untouched: writes go to an upper layer, on the
                   * instance's upper disk (docker2vm/upper = disk:SERIAL) or a tmpfs */
            need_group("overlay", "overlayfs");
            mkdir("/run/d2v/rw", 0755);
            char *upper = line_of(CFG, "upper");
            if (*upper) {
                if (strncmp(upper, "disk:", 5) || !upper[5]) die("unknown upper delivery '%s'", upper);
                need_group("disk", "ext4");
                char dev[64], path[96];
                find_disk(upper + 5, dev, sizeof dev);
                if (!*dev) die("no upper disk with serial %s", upper + 5);
                snprintf(path, sizeof path, "/dev/%s", dev);
                if (mount(path, "/run/d2v/rw", "ext4", 0, NULL))
                    die("cannot mount the upper disk %s (serial %s) as ext4: %s", path, upper + 5, strerror(errno));
                resize("/run/d2v/rw", path);
            } else if (mount("d2v-upper", "/run/d2v/rw", "tmpfs", 0, "mode=0755")) die("tmpfs for the overlay: %s", strerror(errno));
            free(upper);
            mkdir("/run/d2v/rw/upper", 0755);
            mkdir("/run/d2v/rw/work", 0755);
            if (mount("d2v-root", ROOT, "overlay", 0,
                      "lowerdir=" LOWER ",upperdir=/run/d2v/rw/upper,workdir=/run/d2v/rw/work,index=off,xino=off"))
                die("overlay mount failed: %s", strerror(errno));
        }
    }
    if (debug) { char b[128]; snprintf(b, sizeof b, "rootfs %s:%s mounted", kind, id); dbg(b); }
    free(spec);
    rootfd = open(ROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0 || !has_entries(open(ROOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC), "lost+found"))
        die("container root is empty");
}

static int dir_is_empty(const char *rel)
{
    int fd = open_in_root(rel, O_RDONLY | O_DIRECTORY);
    return fd < 0 || !has_entries(fd, NULL);    /* absent: a fresh tmpfs */
}

static void container_mounts(void)
{
    static const struct { const char *rel, *type; unsigned long flags; const char *data; } m[] = {
        { "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
        { "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL },
        { "dev", "devtmpfs", MS_NOSUID, "mode=0755" },
        { "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,gid=5,mode=620,ptmxmode=0666" },
        { "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m" },
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (mount_in_root(m[i].type, m[i].rel, m[i].type, m[i].flags, m[i].data, 1))
            msg("docker2vm: cannot mount %s on /%s: %s", m[i].type, m[i].rel, strerror(errno));
    static const char *links[][2] = {
        { "fd", "/proc/self/fd" }, { "stdin", "/proc/self/fd/0" },
        { "stdout", "/proc/self/fd/1" }, { "stderr", "/proc/self/fd/2" },
    };
    int dev = open_in_root("dev", O_PATH | O_DIRECTORY);
    for (size_t i = 0; dev >= 0 && i < 4; i++) symlinkat(links[i][1], dev, links[i][0]);
    if (dev >= 0) close(dev);
    /* /tmp and /run: a fresh tmpfs unless the image ships content there. */
    if (dir_is_empty("tmp")) mount_in_root("tmp", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 1);
    if (dir_is_empty("run")) mount_in_root("run", "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 1);
}

/* Bind /run/d2v/NAME over the container's /etc/NAME (a symlink or an empty
 * directory there is replaced by a file, as Docker does). */
static void bind_etc(const char *src, const char *name)
{
    int etc = mkdir_in_root("etc", 0755);
    if (etc < 0) return;
    struct stat st;
    if (!fstatat(etc, name, &st, AT_SYMLINK_NOFOLLOW)) {
        if (S_ISLNK(st.st_mode)) unlinkat(etc, name, 0);
        else if (S_ISDIR(st.st_mode)) unlinkat(etc, name, AT_REMOVEDIR);
    }
    int fd = openat(etc, name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    close(etc);
    char rel[64];
    snprintf(rel, sizeof rel, "etc/%s", name);
    if (mount_in_root(src, rel, NULL, MS_BIND, NULL, 0))
        msg("docker2vm: cannot bind /etc/%s: %s", name, strerror(errno));
}

static void network_files(const char *hostname)
{
    char *ip = line_of(NETDIR, "ip");
    char hosts[1024];
    int n = snprintf(hosts, sizeof hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if (*hostname) snprintf(hosts + n, sizeof hosts - n, "%s\t%s\n", *ip ? ip : "127.0.1.1", hostname);
    write_file("/run/d2v/hosts", hosts, O_TRUNC);
    char hn[300];
    snprintf(hn, sizeof hn, "%s\n", *hostname ? hostname : "localhost");
    write_file("/run/d2v/hostname", hn, O_TRUNC);
    /* resolv.conf: the primary NIC's, rewritten in place by its renewals */
    int fd = open(NETDIR "/resolv.conf", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    bind_etc("/run/d2v/hosts", "hosts");
    bind_etc("/run/d2v/hostname", "hostname");
    bind_etc(NETDIR "/resolv.conf", "resolv.conf");
    free(ip);
}

/* -- user: name, uid, uid:gid, name:group, ... in the container's own files --- */
struct ids { unsigned long uid, gid; char sgids[1024]; char home[1024]; };

static int isnum(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++) if (*s < '0' || *s > '9') return 0;
    return 1;
}

/* Split a passwd/group line in place into at most max fields. */
static int fields(char *line, char **f, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == ':') { *p = 0; f[n++] = p + 1; }
    return n;
}

/* As runc: supplementary groups are those listing the user by name, unless a
 * group is given explicitly; an unknown numeric uid gets gid 0 and HOME=/.
 * Returns NULL, or the error. */
static const char *resolve_user(const char *spec, FILE *pw, FILE *gr, struct ids *out)
{
    static char err[512];
    char u[256], g[256] = "", name[256] = "", line[4096];
    char *f[8];
    snprintf(u, sizeof u, "%s", spec);
    char *colon = strchr(u, ':');
    if (colon) { *colon = 0; snprintf(g, sizeof g, "%s", colon + 1); }
    if (!*u) snprintf(u, sizeof u, "0");
    int found = 0;
    out->sgids[0] = 0;
    snprintf(out->home, sizeof out->home, "/");
    while (pw && fgets(line, sizeof line, pw)) {
        int n = fields(line, f, 7);
        if (n < 4) continue;
        if ((isnum(u) && !strcmp(f[2], u)) || (!isnum(u) && !strcmp(f[0], u))) {
            snprintf(name, sizeof name, "%s", f[0]);
            out->uid = strtoul(f[2], NULL, 10);
            out->gid = strtoul(f[3], NULL, 10);
            if (n > 5 && *f[5]) snprintf(out->home, sizeof out->home, "%s", f[5]);
            found = 1;
            break;
        }
    }
    if (!found) {
        if (!isnum(u)) { snprintf(err, sizeof err, "unable to find user %s: no matching entries in passwd file", u); return err; }
        out->uid = strtoul(u, NULL, 10);
        out->gid = 0;
    }
    if (*g) {
        if (isnum(g)) out->gid = strtoul(g, NULL, 10);
        else {
            int gf = 0;
            while (gr && fgets(line, sizeof line, gr)) {
                int n = fields(line, f, 4);
                if (n >= 3 && !strcmp(f[0], g)) { out->gid = strtoul(f[2], NULL, 10); gf = 1; break; }
            }
            if (!gf) { snprintf(err, sizeof err, "unable to find group %s: no matching entries in group file", g); return err; }
        }
    } else if (*name) {
        while (gr && fgets(line, sizeof line, gr)) {
            int n = fields(line, f, 4);
            if (n < 4) continue;
            char *save = NULL;
            for (char *m = strtok_r(f[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
                if (!strcmp(m, name)) {
                    size_t l = strlen(out->sgids);
                    snprintf(out->sgids + l, sizeof out->sgids - l, "%s%s", l ? "," : "", f[2]);
                    break;
                }
        }
    }
    return NULL;
}

static const char *resolve_user_in_root(const char *spec, struct ids *out)
{
    int pfd = open_in_root("etc/passwd", O_RDONLY), gfd = open_in_root("etc/group", O_RDONLY);
    FILE *pw = pfd >= 0 ? fdopen(pfd, "r") : NULL, *gr = gfd >= 0 ? fdopen(gfd, "r") : NULL;
    const char *e = resolve_user(spec, pw, gr, out);
    if (pw) fclose(pw);
    if (gr) fclose(gr);
    return e;
}

/* -- the entrypoint ---------------------------------------------------------------- */
/* The child: become the container's process. Never returns. */
static void exec_entrypoint(const struct ids *ids, const sigset_t *oldmask, int out_fd, int err_fd)
{
    size_t alen = 0, elen = 0;
    char *abuf = slurp(CFG, "argv", &alen);
    char *ebuf = slurp(CFG, "env", &elen);
    char *wd = line_of(CFG, "workdir");
    char *hostname = line_of(CFG, "hostname");
    if (!abuf || !alen) { msg("docker2vm: error: no command to run (empty Entrypoint and Cmd)"); _exit(127); }
    char **argv = split0(abuf, alen, 0);
    char **env = split0(ebuf ? ebuf : "", ebuf ? elen : 0, 2);
    size_t ne = 0;
    while (env[ne]) ne++;
    if (!env_get(env, "HOME") && *ids->home) {
        char *h = malloc(strlen(ids->home) + 6);
        sprintf(h, "HOME=%s", ids->home);
        env[ne++] = h;
    }
    if (!env_get(env, "HOSTNAME") && *hostname) {
        char *h = malloc(strlen(hostname) + 10);
        sprintf(h, "HOSTNAME=%s", hostname);
        env[ne++] = h;
    }
    env[ne] = NULL;

    gid_t groups[256];
    int ng = 0;
    if (*ids->sgids) {
        char *s = strdup(ids->sgids), *save = NULL;
        for (char *t = strtok_r(s, ",", &save); t && ng < 256; t = strtok_r(NULL, ",", &save))
            groups[ng++] = (gid_t)strtoul(t, NULL, 10);
    }
    for (int sig = 1; sig < 65; sig++) signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) { dup2(null, 0); if (null) close(null); }
    /* stdout and stderr are pipes, as with `docker run` without -t */
    dup2(out_fd, 1);
    dup2(err_fd, 2);

    if (chroot(ROOT) || chdir("/")) { msg("docker2vm: error: chroot %s: %s", ROOT, strerror(errno)); _exit(126); }
    if (*wd) mkdir_p(wd);   /* as root, like docker */
    if (setgroups(ng, groups) || setgid(ids->gid) || setuid(ids->uid)) {
        msg("docker2vm: error: cannot become uid %lu gid %lu: %s", ids->uid, ids->gid, strerror(errno));
        _exit(126);
    }
    if (*wd && chdir(wd)) { msg("docker2vm: error: chdir %s: %s", wd, strerror(errno)); _exit(126); }
    const char *file = argv[0];
    int err = ENOENT;
    if (strchr(file, '/')) {
        execve(file, argv, env);
        err = errno;
    } else {
        const char *path = env_get(env, "PATH");
        if (!path) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        char *p = strdup(path), *save = NULL, full[4096];
        for (char *d = strtok_r(p, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            snprintf(full, sizeof full, "%s/%s", *d ? d : ".", file);
            execve(full, argv, env);
            if (errno != ENOENT && errno != ENOTDIR) err = errno;
        }
    }
    msg("docker2vm: error: exec %s: %s", file, strerror(err));
    _exit(err == ENOENT ? 127 : 126);
}

static void noop(int sig) { (void)sig; }

/* The power button's evdev nodes: input devices named "Power Button". */
static int open_buttons(struct pollfd *fds, int max)
{
    int n = 0;
    DIR *d = opendir("/sys/class/input");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        if (strncmp(e->d_name, "event", 5)) continue;
        char p[300];
        snprintf(p, sizeof p, "/sys/class/input/%s/device/name", e->d_name);
        char *name = line_of(NULL, p);
        int yes = !strcmp(name, "Power Button");
        free(name);
        if (!yes) continue;
        snprintf(p, sizeof p, "/dev/input/%s", e->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) fds[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
    }
    if (d) closedir(d);
    return n;
}

/* Copy what the pipe holds to our fd TO (the console). 0 at end of file,
 * -1 when nothing is there now, else >0. */
static int relay(int fd, int to)
{
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) return 0;
    if (n < 0) return errno == EAGAIN || errno == EINTR ? -1 : 0;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += w;
    }
    return 1;
}

/* Stay PID 1 until the entrypoint ends; never returns. */
static void __attribute__((noreturn)) supervise(const struct ids *ids, int sfd, const sigset_t *old)
{
    int stopsig = (int)read_long(CFG, "stop_signal", SIGTERM);
    long stop_timeout = read_long(CFG, "stop_timeout", 10);
    if (stopsig <= 0 || stopsig >= 65) stopsig = SIGTERM;

    /* fds: signals, the entrypoint's stdout and stderr pipes, power buttons */
    struct pollfd fds[3 + MAX_BUTTONS];
    int outp[2], errp[2];
    if (pipe2(outp, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) die("pipe: %s", strerror(errno));
    int nfds = 0;
    fds[nfds++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
    fds[nfds++] = (struct pollfd){ .fd = outp[0], .events = POLLIN };
    fds[nfds++] = (struct pollfd){ .fd = errp[0], .events = POLLIN };
    nfds += open_buttons(fds + 3, MAX_BUTTONS);

    dbg("starting entrypoint");
    pid_t child = fork();
    if (child < 0) die("fork: %s", strerror(errno));
    if (child == 0) exec_entrypoint(ids, old, outp[1], errp[1]);
    close(outp[1]);
    close(errp[1]);
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    fcntl(errp[0], F_SETFL, O_NONBLOCK);

    int status = 0, stopping = 0, killed = 0;
    double deadline = 0;
    for (;;) {
        int timeout = -1;
        if (stopping && !killed) {
            double left = deadline - now();
            timeout = left <= 0 ? 0 : (int)(left * 1000) + 1;
        }
        int r = poll(fds, nfds, timeout);
        if (r < 0 && errno != EINTR) break;
        if (stopping && !killed && now() >= deadline) {
            msg("docker2vm: stop timeout (%lds): sending SIGKILL", stop_timeout);
            kill(-child, SIGKILL);
            kill(child, SIGKILL);
            killed = 1;
        }
        for (int i = 1; i < 3; i++)
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP)) && !relay(fds[i].fd, i))
                fds[i].fd = -1;     /* every writer is gone */
        for (int i = 3; i < nfds; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            char ev[256];
            while (read(fds[i].fd, ev, sizeof ev) > 0) {}
            if (!stopping) {
                msg("docker2vm: power button: sending signal %d, SIGKILL in %lds", stopsig, stop_timeout);
                kill(child, stopsig);
                stopping = 1;
                deadline = now() + stop_timeout;
            }
        }
        if (!(fds[0].revents & POLLIN)) continue;
        struct signalfd_siginfo si;
        int reaped_main = 0;
        while (read(sfd, &si, sizeof si) == sizeof si) {
            if (si.ssi_signo == SIGCHLD) continue;
            /* Forward everything else to the entrypoint, like docker kill. */
            kill(child, si.ssi_signo);
            if (si.ssi_signo == SIGPWR && !stopping) {   /* ctrl-alt-del / powerfail */
                stopping = 1;
                deadline = now() + stop_timeout;
            }
            break;
        }
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0) break;
            if (p == child) { status = st; reaped_main = 1; }
        }
        if (reaped_main) break;
    }

    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    /* Like the end of a container: everything left is killed. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0) {}
    for (int i = 1; i < 3; i++)      /* what is left in the pipes, before the last line */
        while (fds[i].fd >= 0 && relay(fds[i].fd, i) > 0) {}
    if (WIFSIGNALED(status))
        msg("docker2vm: exit status %d (killed by signal %d)", code, WTERMSIG(status));
    else
        msg("docker2vm: exit status %d", code);
    poweroff();
}

/* -- /init ----------------------------------------------------------------------- */
static void __attribute__((noreturn)) boot(void)
{
    prctl(PR_SET_NAME, "d2vinit");
    umask(022);
    setenv("PATH", "/bin", 1);
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    char *cmdline = line_of(NULL, "/proc/cmdline");
    char padded[4200];
    snprintf(padded, sizeof padded, " %s ", cmdline);
    debug = strstr(padded, " docker2vm.debug ") != NULL;
    free(cmdline);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount("run", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mkdir_p(NETDIR);
    mkdir_p(CFG);
    mkdir_p("/mnt/cfg");
    mkdir_p(LOWER);
    mkdir_p(ROOT);
    /* Quiet console: only the container's output and our own lines. */
    if (!debug) write_file("/proc/sys/kernel/printk", "1", 0);
    dbg("init started");

    /* PID 1 only receives signals it handles: handle every catchable one,
     * block them all and read them from a signalfd (in the supervisor). */
    sigset_t all;
    sigfillset(&all);
    struct sigaction sa = { .sa_handler = noop };
    for (int sig = 1; sig < 65; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &sa, NULL);
    sigprocmask(SIG_BLOCK, &all, &orig_mask);
    int sfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);

    load_group("base");
    double net_started = now();
    dhcp_start(NETDIR);
    dbg("dhcp started");
    /* A bundle's docker2vm/ files are baked into its second initrd. */
    int bundle = access(BUNDLE "/rootfs", F_OK) == 0;
    if (bundle) copy_dir(BUNDLE, CFG);
    int have_drive = read_config_drive(bundle);
    char *hostname = line_of(CFG, "hostname");
    if (*hostname) sethostname(hostname, strlen(hostname));
    mount_root();
    container_mounts();
    double left = DHCP_WAIT - (now() - net_started);
    int missing = dhcp_wait(left > 0 ? left : 0);
    if (missing) msg("docker2vm: no DHCP lease on %d of %d NICs after %.0fs; going on",
                     missing, dhcp_nics(), DHCP_WAIT);
    dbg("network ready");
    if (bundle && !have_drive && dhcp_nics() > missing && read_metadata_service()) {
        free(hostname);
        hostname = line_of(CFG, "hostname");
        if (*hostname) sethostname(hostname, strlen(hostname));
    }
    network_files(hostname);
    char *spec = line_of(CFG, "user");
    struct ids ids;
    const char *err = resolve_user_in_root(spec, &ids);
    if (err) die("user '%s' cannot be resolved in the image: %s", spec, err);
    supervise(&ids, sfd, &orig_mask);
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    if (getpid() == 1) boot();
    if (argc == 5 && !strcmp(argv[1], "resolve-user")) {
        FILE *pw = fopen(argv[3], "r"), *gr = fopen(argv[4], "r");
        struct ids ids;
        const char *e = resolve_user(argv[2], pw, gr, &ids);
        if (e) { msg("%s", e); return 1; }
        printf("%lu %lu %s %s\n", ids.uid, ids.gid, *ids.sgids ? ids.sgids : "-", ids.home);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "dhcp")) {    /* the DHCP client alone (tests) */
        int n = dhcp_start(argv[2]);
        int missing = dhcp_wait(atof(argv[3]));
        printf("dhcp: %d NICs, %d without a lease\n", n, missing);
        fflush(stdout);
        double until = now() + atof(argv[4]);      /* keep renewing meanwhile */
        while (now() < until) usleep(100000);
        return missing ? 1 : 0;
    }
    if (argc == 4 && !strcmp(argv[1], "resize")) return resize(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "overrides")) {   /* a bundle's metadata overrides (tests) */
        cfg_dir = argv[2];
        md_dir = argv[3];
        apply_overrides();
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "poweroff")) poweroff();
    msg("usage: d2vinit (as /init) | resolve-user SPEC PASSWD GROUP | dhcp NETDIR WAIT RUN | "
        "resize MOUNTPOINT DEVICE | overrides CFGDIR MDDIR | poweroff");
    return 2;
}
