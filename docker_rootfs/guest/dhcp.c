/*
 * dhcp.c: the guest's DHCPv4 client (RFC 2131), one thread for every NIC.
 *
 * Part of d2vinit (see d2vinit.c). Each NIC gets a UDP socket bound to
 * port 68 on that device (SO_BINDTODEVICE); requests go out as limited
 * broadcasts with the BROADCAST flag, so servers (Neutron's dnsmasq, QEMU's
 * slirp) broadcast their replies and no raw socket is needed. A lease
 * configures the interface by ioctl (address, netmask, broadcast, MTU,
 * default route or RFC 3442 classless routes) and is renewed at T1 (unicast
 * to the server), rebound at T2 (broadcast) and dropped at expiry.
 *
 * Files in NETDIR, for the init and for people: IF.ip, IF.resolv; the first
 * NIC to get a lease is the primary (NETDIR/primary) and provides NETDIR/ip
 * and NETDIR/resolv.conf (rewritten in place, it is bind-mounted).
 *
 * Why not busybox udhcpc: under TCG its exec and the two hook execs per
 * lease cost about 0.15 s of the guest's boot.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "d2vutil.h"
#include "dhcp.h"

#define MAX_NICS 16
#define BOOTP_MIN 300
#define RETRY 1.0          /* seconds between DISCOVERs / REQUESTs */
#define TRIES 4            /* then pause before starting over */
#define PAUSE 5.0

enum { DISCOVER = 1, OFFER = 2, REQUEST = 3, ACK = 5, NAK = 6 };
enum state { S_INIT, S_SELECTING, S_REQUESTING, S_BOUND, S_RENEWING, S_REBINDING };

struct lease {
    struct in_addr ip, mask, bcast, server;
    struct in_addr routers[4];
    int nrouters;
    unsigned char routes[256];   /* option 121, raw */
    int routes_len;
    char dns[256];               /* "nameserver ..." lines */
    char domain[128];
    int mtu;
    uint32_t lease, t1, t2;
};

struct nic {
    char name[IFNAMSIZ];
    unsigned char mac[6];
    int fd;
    enum state state;
    uint32_t xid;
    int tries;
    double next;                 /* when to (re)send or change state */
    double bound_at;
    struct lease offer, cur;
};

static struct nic nics[MAX_NICS];
static int n_nics;
static atomic_int n_bound;
static const char *netdir;

static void put_file(const char *name, const char *data)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", netdir, name);
    write_file(path, data, O_TRUNC);     /* in place: resolv.conf is bind-mounted */
}

/* -- interface configuration ------------------------------------------------ */
static int ifreq_addr(int s, const char *ifn, unsigned long req, struct in_addr a)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifn);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = a;
    return ioctl(s, req, &ifr);
}

static void if_up(int s, const char *ifn)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifn);
    if (ioctl(s, SIOCGIFFLAGS, &ifr)) return;
    ifr.ifr_flags |= IFF_UP;
    ioctl(s, SIOCSIFFLAGS, &ifr);
}

static void add_route(int s, const char *ifn, struct in_addr dst, struct in_addr mask, struct in_addr gw)
{
    struct rtentry rt = {0};
    struct sockaddr_in *d = (struct sockaddr_in *)&rt.rt_dst, *m = (struct sockaddr_in *)&rt.rt_genmask,
                       *g = (struct sockaddr_in *)&rt.rt_gateway;
    d->sin_family = m->sin_family = g->sin_family = AF_INET;
    d->sin_addr = dst;
    m->sin_addr = mask;
    g->sin_addr = gw;
    rt.rt_flags = RTF_UP | (gw.s_addr ? RTF_GATEWAY : 0) | (mask.s_addr == 0xffffffff ? RTF_HOST : 0);
    rt.rt_metric = 101;          /* metric 100 (the kernel subtracts one) */
    rt.rt_dev = (char *)ifn;
    if (ioctl(s, SIOCADDRT, &rt) && errno != EEXIST)
        msg("docker2vm: %s: cannot add a route: %s", ifn, strerror(errno));
}

static void configure(struct nic *n, const struct lease *l)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    /* same address again (a renewal): the kernel keeps it and its routes */
    if (ifreq_addr(s, n->name, SIOCSIFADDR, l->ip))
        msg("docker2vm: %s: cannot set the address: %s", n->name, strerror(errno));
    if (l->mask.s_addr) ifreq_addr(s, n->name, SIOCSIFNETMASK, l->mask);
    if (l->bcast.s_addr) ifreq_addr(s, n->name, SIOCSIFBRDADDR, l->bcast);
    if (l->mtu >= 576) {
        struct ifreq ifr = {0};
        snprintf(ifr.ifr_name, IFNAMSIZ, "%s", n->name);
        ifr.ifr_mtu = l->mtu;
        ioctl(s, SIOCSIFMTU, &ifr);
    }
    if_up(s, n->name);
    struct in_addr any = {0};
    if (l->routes_len) {         /* RFC 3442: classless routes replace the router option */
        const unsigned char *p = l->routes, *end = l->routes + l->routes_len;
        while (p < end) {
            int width = *p++, octets = (width + 7) / 8;
            if (width > 32 || p + octets + 4 > end) break;
            unsigned char dst[4] = {0};
            memcpy(dst, p, octets);
            p += octets;
            struct in_addr d, m, g;
            memcpy(&d, dst, 4);
            m.s_addr = width ? htonl(0xffffffffu << (32 - width)) : 0;
            memcpy(&g, p, 4);
            p += 4;
            add_route(s, n->name, d, m, g);
        }
    } else if (l->nrouters) {
        add_route(s, n->name, any, any, l->routers[0]);
    }
    close(s);

    char buf[512], ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &l->ip, ip, sizeof ip);
    snprintf(buf, sizeof buf, "%s.resolv", n->name);
    char resolv[512];
    snprintf(resolv, sizeof resolv, "%s%s%s%s", *l->domain ? "search " : "", l->domain, *l->domain ? "\n" : "", l->dns);
    put_file(buf, resolv);
    char path[256];
    snprintf(path, sizeof path, "%s/primary", netdir);
    write_file(path, n->name, O_EXCL);      /* the first NIC only */
    char *primary = line_of(netdir, "primary");
    snprintf(buf, sizeof buf, "%s\n", ip);
    if (!strcmp(primary, n->name)) {
        put_file("resolv.conf", resolv);
        put_file("ip", buf);
    }
    free(primary);
    char name[64];
    snprintf(name, sizeof name, "%s.ip", n->name);
    put_file(name, buf);
}

static void deconfigure(struct nic *n)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct in_addr any = {0};
    ifreq_addr(s, n->name, SIOCSIFADDR, any);
    if_up(s, n->name);
    close(s);
}

/* -- messages ---------------------------------------------------------------- */
static void send_msg(struct nic *n, int type, struct in_addr to)
{
    unsigned char p[BOOTP_MIN + 64] = {0};
    p[0] = 1; p[1] = 1; p[2] = 6;
    memcpy(p + 4, &n->xid, 4);
    int renewing = n->state == S_RENEWING || n->state == S_REBINDING;
    if (!renewing) { p[10] = 0x80; }                  /* BROADCAST flag */
    if (renewing) memcpy(p + 12, &n->cur.ip, 4);       /* ciaddr */
    memcpy(p + 28, n->mac, 6);
    unsigned char *o = p + 236;
    *o++ = 99; *o++ = 130; *o++ = 83; *o++ = 99;
    *o++ = 53; *o++ = 1; *o++ = type;
    *o++ = 61; *o++ = 7; *o++ = 1; memcpy(o, n->mac, 6); o += 6;   /* client id */
    if (type == REQUEST && n->state == S_REQUESTING) {
        *o++ = 50; *o++ = 4; memcpy(o, &n->offer.ip, 4); o += 4;
        *o++ = 54; *o++ = 4; memcpy(o, &n->offer.server, 4); o += 4;
    }
    static const unsigned char want[] = { 1, 3, 6, 15, 26, 28, 51, 58, 59, 121 };
    *o++ = 55; *o++ = sizeof want; memcpy(o, want, sizeof want); o += sizeof want;
    *o++ = 255;
    size_t len = o - p < BOOTP_MIN ? BOOTP_MIN : (size_t)(o - p);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(67), .sin_addr = to };
    sendto(n->fd, p, len, 0, (struct sockaddr *)&sa, sizeof sa);
}

/* Parse a reply for n; returns its message type (0: not ours / malformed). */
static int parse(struct nic *n, const unsigned char *p, size_t len, struct lease *l)
{
    if (len < 240 || p[0] != 2 || memcmp(p + 4, &n->xid, 4) || memcmp(p + 28, n->mac, 6) ||
        p[236] != 99 || p[237] != 130 || p[238] != 83 || p[239] != 99)
        return 0;
    memset(l, 0, sizeof *l);
    memcpy(&l->ip, p + 16, 4);                         /* yiaddr */
    int type = 0;
    for (size_t i = 240; i < len;) {
        int code = p[i++];
        if (code == 0) continue;
        if (code == 255 || i >= len) break;
        size_t olen = p[i++];
        if (i + olen > len) break;
        const unsigned char *v = p + i;
        switch (code) {
        case 53: if (olen >= 1) type = v[0]; break;
        case 1: if (olen == 4) memcpy(&l->mask, v, 4); break;
        case 28: if (olen == 4) memcpy(&l->bcast, v, 4); break;
        case 54: if (olen == 4) memcpy(&l->server, v, 4); break;
        case 3:
            for (size_t k = 0; k + 4 <= olen && l->nrouters < 4; k += 4) memcpy(&l->routers[l->nrouters++], v + k, 4);
            break;
        case 6:
            for (size_t k = 0; k + 4 <= olen; k += 4) {
                char a[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, v + k, a, sizeof a);
                size_t used = strlen(l->dns);
                snprintf(l->dns + used, sizeof l->dns - used, "nameserver %s\n", a);
            }
            break;
        case 15: {
            size_t k = olen < sizeof l->domain - 1 ? olen : sizeof l->domain - 1;
            memcpy(l->domain, v, k);
            l->domain[k] = 0;
            for (size_t j = 0; j < k; j++)    /* a name, never a second line */
                if (l->domain[j] < 0x21 || l->domain[j] > 0x7e) { l->domain[j] = 0; break; }
            break;
        }
        case 26: if (olen == 2) l->mtu = v[0] << 8 | v[1]; break;
        case 51: if (olen == 4) l->lease = ntohl(*(uint32_t *)v); break;
        case 58: if (olen == 4) l->t1 = ntohl(*(uint32_t *)v); break;
        case 59: if (olen == 4) l->t2 = ntohl(*(uint32_t *)v); break;
        case 121: if (olen <= sizeof l->routes) { memcpy(l->routes, v, olen); l->routes_len = olen; } break;
        }
        i += olen;
    }
    if (!l->lease) l->lease = 3600;
    if (!l->t1 || l->t1 >= l->lease) l->t1 = l->lease / 2;
    if (!l->t2 || l->t2 >= l->lease || l->t2 <= l->t1) l->t2 = l->lease / 8 * 7;
    return type;
}

static void new_xid(struct nic *n)
{
    if (getrandom(&n->xid, sizeof n->xid, GRND_NONBLOCK) != sizeof n->xid)
        n->xid = (uint32_t)(now() * 1e6) ^ (uint32_t)n->mac[5] << 24;
}

static const struct in_addr BCAST = { .s_addr = 0xffffffff };

/* Time passed: (re)send or move on. */
static void tick(struct nic *n, double t)
{
    if (t < n->next) return;
    switch (n->state) {
    case S_INIT:
        new_xid(n);
        n->tries = 0;
        n->state = S_SELECTING;
        /* fall through */
    case S_SELECTING:
    case S_REQUESTING:
        if (n->tries >= TRIES) {       /* nobody answers: pause, then start over */
            n->state = S_INIT;
            n->next = t + PAUSE;
            return;
        }
        n->tries++;
        send_msg(n, n->state == S_SELECTING ? DISCOVER : REQUEST, BCAST);
        n->next = t + RETRY;
        return;
    case S_BOUND:
        n->state = S_RENEWING;
        new_xid(n);
        /* fall through */
    case S_RENEWING:
    case S_REBINDING: {
        double since = t - n->bound_at;
        if (since >= n->cur.lease) {   /* expired */
            msg("docker2vm: %s: DHCP lease expired", n->name);
            deconfigure(n);
            atomic_fetch_sub(&n_bound, 1);
            n->state = S_INIT;
            n->next = t;
            return;
        }
        if (since >= n->cur.t2) n->state = S_REBINDING;
        send_msg(n, REQUEST, n->state == S_RENEWING ? n->cur.server : BCAST);
        double left = (n->state == S_RENEWING ? n->cur.t2 : n->cur.lease) - since;
        n->next = t + (left / 2 > 60 ? left / 2 : left > 1 ? 1 : left);
        return;
    }
    }
}

static void receive(struct nic *n, double t)
{
    unsigned char buf[1500];
    ssize_t len;
    while ((len = recv(n->fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
        struct lease l;
        int type = parse(n, buf, (size_t)len, &l);
        if (!type) continue;
        if (n->state == S_SELECTING && type == OFFER && l.ip.s_addr) {
            n->offer = l;
            n->state = S_REQUESTING;
            n->tries = 0;
            n->next = t;
            tick(n, t);
        } else if ((n->state == S_REQUESTING || n->state == S_RENEWING || n->state == S_REBINDING) && type == ACK) {
            if (!l.server.s_addr) l.server = n->state == S_REQUESTING ? n->offer.server : n->cur.server;
            if (n->state == S_REQUESTING) l.ip = l.ip.s_addr ? l.ip : n->offer.ip;
            int was_bound = n->state != S_REQUESTING;
            if (was_bound && l.ip.s_addr != n->cur.ip.s_addr) deconfigure(n);
            n->cur = l;
            configure(n, &l);
            n->state = S_BOUND;
            n->bound_at = t;
            n->next = t + l.t1;
            if (!was_bound) atomic_fetch_add(&n_bound, 1);
        } else if (type == NAK && (n->state == S_REQUESTING || n->state == S_RENEWING || n->state == S_REBINDING)) {
            /* only a REQUEST we wait on can be NAKed (RFC 2131 4.4): a stray or
             * late NAK in INIT or BOUND would drop a good lease, or count the
             * NIC unbound twice and make dhcp_wait wait for it in vain */
            if (n->state != S_REQUESTING) { deconfigure(n); atomic_fetch_sub(&n_bound, 1); }
            n->state = S_INIT;
            n->next = t;
        }
    }
}

static void *client(void *arg)
{
    (void)arg;
    struct pollfd fds[MAX_NICS];
    for (;;) {
        double t = now(), next = t + 3600;
        for (int i = 0; i < n_nics; i++) {
            tick(&nics[i], t);
            if (nics[i].next < next) next = nics[i].next;
            fds[i] = (struct pollfd){ .fd = nics[i].fd, .events = POLLIN };
        }
        int ms = (int)((next - t) * 1000) + 1;
        if (poll(fds, n_nics, ms < 0 ? 0 : ms) < 0 && errno != EINTR) return NULL;
        t = now();
        for (int i = 0; i < n_nics; i++)
            if (fds[i].revents & POLLIN) receive(&nics[i], t);
    }
    return NULL;
}

int dhcp_start(const char *dir)
{
    netdir = dir;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 0;
    if_up(s, "lo");
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    while (d && (e = readdir(d)) && n_nics < MAX_NICS) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo") || strlen(e->d_name) >= IFNAMSIZ) continue;
        struct nic *n = &nics[n_nics];
        memset(n, 0, sizeof *n);
        memcpy(n->name, e->d_name, strlen(e->d_name) + 1);
        struct ifreq ifr = {0};
        snprintf(ifr.ifr_name, IFNAMSIZ, "%s", n->name);
        if (ioctl(s, SIOCGIFHWADDR, &ifr) || ifr.ifr_hwaddr.sa_family != 1 /* ARPHRD_ETHER */) continue;
        memcpy(n->mac, ifr.ifr_hwaddr.sa_data, 6);
        if_up(s, n->name);
        n->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int one = 1;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(68) };
        if (n->fd < 0 || setsockopt(n->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
            setsockopt(n->fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) ||
            setsockopt(n->fd, SOL_SOCKET, SO_BINDTODEVICE, n->name, strlen(n->name) + 1) ||
            bind(n->fd, (struct sockaddr *)&sa, sizeof sa)) {
            msg("docker2vm: %s: no DHCP socket: %s", n->name, strerror(errno));
            if (n->fd >= 0) close(n->fd);
            continue;
        }
        n->state = S_INIT;
        tick(n, now());        /* the first DISCOVER goes out now */
        n_nics++;
    }
    if (d) closedir(d);
    close(s);
    if (n_nics) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 64 * 1024);
        if (pthread_create(&th, &at, client, NULL)) {
            msg("docker2vm: DHCP client thread: %s", strerror(errno));
            n_nics = 0;
        }
    }
    return n_nics;
}

int dhcp_wait(double seconds)
{
    double until = now() + seconds;
    while (atomic_load(&n_bound) < n_nics && now() < until) usleep(2000);
    return n_nics - atomic_load(&n_bound);
}

int dhcp_nics(void)
{
    return n_nics;
}
