/*
 * d2vinit: the PID 1 supervisor of a docker2vm guest.
 *
 * /init (busybox sh) prepares the machine and the container root, then
 * execs this program, which stays PID 1:
 *
 *   d2vinit run ROOT CFGDIR UID GID SGIDS HOME [BUTTON_DEVICE...]
 *       forks the entrypoint (chroot ROOT, chdir workdir, setgroups SGIDS
 *       (comma separated, "-" for none), setgid GID, setuid UID, execve
 *       argv/env read NUL-separated from CFGDIR/argv and CFGDIR/env, argv[0]
 *       looked up in the container's PATH), forwards signals to it, reaps
 *       every zombie, turns a power-button press (a readable event on any
 *       BUTTON_DEVICE) into CFGDIR/stop_signal then SIGKILL after
 *       CFGDIR/stop_timeout seconds, prints "docker2vm: exit status N" when
 *       the entrypoint ends and powers the machine off.
 *   d2vinit resize MOUNTPOINT DEVICE
 *       grows a mounted ext4 filesystem to the size of DEVICE (online).
 *   d2vinit insmod MODULE.ko...
 *       load kernel modules in the order given (one process for a group).
 *   d2vinit poweroff
 *       sync and power off (used by /init on fatal errors).
 *
 * Why C and not sh: busybox's setpriv here cannot change uid/gid/groups,
 * sh cannot carry NUL-separated argv/env, and ash's `wait` cannot tell an
 * interrupted wait from a child killed by a signal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXT4_IOC_RESIZE_FS _IOW('f', 16, uint64_t)
#define MAX_BUTTONS 8

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(2, buf, n);
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

static void poweroff(void)
{
    quiesce();
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

/* Read a whole file; returns malloc'd buffer (NUL-terminated), size in *len. */
static char *slurp(const char *dir, const char *name, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += r;
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

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

/* mkdir -p, inside the container root (WorkingDir is created if missing). */
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

/* The child: become the container's process. Never returns. */
static void exec_entrypoint(const char *root, const char *cfg, uid_t uid, gid_t gid,
                            const char *sgids, const char *home, const sigset_t *oldmask)
{
    size_t alen = 0, elen = 0;
    char *abuf = slurp(cfg, "argv", &alen);
    char *ebuf = slurp(cfg, "env", &elen);
    char *wd = slurp(cfg, "workdir", NULL);
    char *hostname = slurp(cfg, "hostname", NULL);
    if (!abuf || !alen) { msg("docker2vm: error: no command to run (empty Entrypoint and Cmd)"); _exit(127); }
    char **argv = split0(abuf, alen, 0);
    char **env = split0(ebuf ? ebuf : "", ebuf ? elen : 0, 2);
    size_t ne = 0;
    while (env[ne]) ne++;
    if (!env_get(env, "HOME") && home && *home) {
        char *h = malloc(strlen(home) + 6);
        sprintf(h, "HOME=%s", home);
        env[ne++] = h;
    }
    if (!env_get(env, "HOSTNAME") && hostname && *hostname) {
        hostname[strcspn(hostname, "\n")] = 0;
        char *h = malloc(strlen(hostname) + 10);
        sprintf(h, "HOSTNAME=%s", hostname);
        env[ne++] = h;
    }
    env[ne] = NULL;

    gid_t groups[256];
    int ng = 0;
    if (sgids && strcmp(sgids, "-")) {
        char *s = strdup(sgids), *save = NULL;
        for (char *t = strtok_r(s, ",", &save); t && ng < 256; t = strtok_r(NULL, ",", &save))
            groups[ng++] = (gid_t)strtoul(t, NULL, 10);
    }
    for (int sig = 1; sig < 65; sig++) signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    setsid();
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) { dup2(null, 0); if (null) close(null); }

    if (chroot(root) || chdir("/")) { msg("docker2vm: error: chroot %s: %s", root, strerror(errno)); _exit(126); }
    if (wd) { wd[strcspn(wd, "\n")] = 0; mkdir_p(wd); }   /* as root, like docker */
    if (setgroups(ng, groups) || setgid(gid) || setuid(uid)) {
        msg("docker2vm: error: cannot become uid %u gid %u: %s", uid, gid, strerror(errno));
        _exit(126);
    }
    if (wd) {
        wd[strcspn(wd, "\n")] = 0;
        if (*wd && chdir(wd)) { msg("docker2vm: error: chdir %s: %s", wd, strerror(errno)); _exit(126); }
    }
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

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void noop(int sig) { (void)sig; }

static int run(int argc, char **argv)
{
    if (argc < 8) { msg("usage: d2vinit run ROOT CFGDIR UID GID SGIDS HOME [BUTTON...]"); return 2; }
    const char *root = argv[2], *cfg = argv[3];
    uid_t uid = strtoul(argv[4], NULL, 10);
    gid_t gid = strtoul(argv[5], NULL, 10);
    int stopsig = (int)read_long(cfg, "stop_signal", SIGTERM);
    long stop_timeout = read_long(cfg, "stop_timeout", 10);
    if (stopsig <= 0 || stopsig >= 65) stopsig = SIGTERM;

    /* PID 1 only receives signals it handles: install a handler for every
     * catchable signal, then block them all and read them from a signalfd. */
    sigset_t all, old;
    sigfillset(&all);
    struct sigaction sa = { .sa_handler = noop };
    for (int sig = 1; sig < 65; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &sa, NULL);
    sigprocmask(SIG_BLOCK, &all, &old);
    int sfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);

    struct pollfd fds[1 + MAX_BUTTONS];
    int nfds = 0;
    fds[nfds++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
    for (int i = 8; i < argc && nfds < 1 + MAX_BUTTONS; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) fds[nfds++] = (struct pollfd){ .fd = fd, .events = POLLIN };
    }

    pid_t child = fork();
    if (child < 0) { msg("docker2vm: error: fork: %s", strerror(errno)); poweroff(); }
    if (child == 0) exec_entrypoint(root, cfg, uid, gid, argv[6], argv[7], &old);

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
        for (int i = 1; i < nfds; i++) {
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
    /* Like the end of a container: everything left is killed at once. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0) {}
    if (WIFSIGNALED(status))
        msg("docker2vm: exit status %d (killed by signal %d)", code, WTERMSIG(status));
    else
        msg("docker2vm: exit status %d", code);
    poweroff();
    return 0;
}

static int resize(const char *mnt, const char *dev)
{
    int dfd = open(dev, O_RDONLY | O_CLOEXEC);
    uint64_t bytes = 0;
    if (dfd < 0 || ioctl(dfd, BLKGETSIZE64, &bytes)) { msg("docker2vm: resize: %s: %s", dev, strerror(errno)); return 1; }
    close(dfd);
    struct statfs sf;
    int fd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fstatfs(fd, &sf)) { msg("docker2vm: resize: %s: %s", mnt, strerror(errno)); return 1; }
    uint64_t blocks = bytes / sf.f_bsize;
    if (ioctl(fd, EXT4_IOC_RESIZE_FS, &blocks) && errno != EINVAL) {
        msg("docker2vm: resize: %s: %s", mnt, strerror(errno));
        return 1;
    }
    return 0;
}

/* insmod FILE...: load modules in order (finit_module), one process for all. */
static int insmod(int argc, char **argv)
{
    int rc = 0;
    for (int i = 2; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST)) {
            msg("docker2vm: insmod %s: %s", argv[i], strerror(errno));
            rc = 1;
        }
        if (fd >= 0) close(fd);
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "insmod")) return insmod(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "run")) return run(argc, argv);
    if (argc == 4 && !strcmp(argv[1], "resize")) return resize(argv[2], argv[3]);
    if (argc == 2 && !strcmp(argv[1], "poweroff")) poweroff();
    msg("usage: d2vinit run|resize|poweroff ...");
    return 2;
}
