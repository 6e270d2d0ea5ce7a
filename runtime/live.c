/*
 * live.c - live interfaces for the host engine (see live.h, docs/live.md).
 *
 * Receive: an AF_PACKET socket per port with a memory-mapped ring,
 * TPACKET_V3 by default (the kernel fills whole blocks of frames and hands
 * a block over when it is full or its retire timer fires, so a busy link
 * costs no syscall per packet or even per batch) or TPACKET_V2 (a status
 * word per frame: each frame is visible as soon as it is written, for the
 * lowest latency). Frames are copied from the ring into the engine's pool
 * buffers, up to MB_BATCH per device per pass, and the ring slots go back
 * to the kernel at once.
 *
 * Transmit: sendmmsg() on the same socket, one call per drained batch of
 * up to 256 frames, straight from the pool buffers (the kernel's copy into
 * its skb is the only one). A TPACKET_V2 TX ring would need a copy into the
 * ring in user space plus a send() to kick it, and keeps frames busy until
 * the driver frees the skb; sendmmsg gives the same one syscall per batch
 * with per-frame error reporting and no ring bookkeeping.
 *
 * TAP: /dev/net/tun with IFF_TAP | IFF_NO_PI, nonblocking; frames are read
 * straight into pool buffers (zero copy in user space) and written from
 * them, one syscall per frame (the tun API has no batch call).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "live.h"

#define TX_BATCH 256
#define DEFAULT_RING (4u << 20)
#define V3_BLOCK (256u << 10)       /* holds any frame, GSO ones included */
#define V3_FRAME 2048u              /* nominal: V3 packs frames by size */

static volatile sig_atomic_t live_stop;
static int signals_installed;
static struct sigaction old_int, old_term;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int fail(char *err, uint32_t errlen, const char *fmt, const char *a, int e)
{
    char msg[160];
    snprintf(msg, sizeof msg, fmt, a);
    if (e)
        snprintf(err, errlen, "%s (%s)", msg, strerror(e));
    else
        snprintf(err, errlen, "%s", msg);
    return -1;
}

/* A failed call on an interface as one line: the usual causes by name. */
static int fail_errno(char *err, uint32_t errlen, const char *what, const char *ifname, int e)
{
    char msg[160];
    if (e == EPERM || e == EACCES)
        snprintf(err, errlen, "%s: permission denied (needs root or CAP_NET_RAW/CAP_NET_ADMIN)",
                 ifname);
    else if (e == ENODEV || e == ENXIO)
        snprintf(err, errlen, "%s: no such interface", ifname);
    else {
        snprintf(msg, sizeof msg, "%s: %s", ifname, what);
        snprintf(err, errlen, "%s failed (%s)", msg, strerror(e));
    }
    return -1;
}

/* --- interfaces -------------------------------------------------------------- */

static int if_ioctl(int fd, unsigned long req, const char *ifname, struct ifreq *ifr)
{
    memset(ifr, 0, sizeof *ifr);
    snprintf(ifr->ifr_name, sizeof ifr->ifr_name, "%s", ifname);
    return ioctl(fd, req, ifr);
}

/* --- receive rings ------------------------------------------------------------ */

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static int ring_setup(int fd, struct mb_live_ring *r, int version, uint32_t bytes,
                      uint32_t retire_ms, uint32_t mtu, const char *ifname, char *err,
                      uint32_t errlen)
{
    int v = version == MB_LIVE_RING_V2 ? TPACKET_V2 : TPACKET_V3;
    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    if (!bytes)
        bytes = DEFAULT_RING;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0)
        return fail_errno(err, errlen, "PACKET_VERSION", ifname, errno);
    if (v == TPACKET_V3) {
        r->block_size = V3_BLOCK;
        r->nblocks = bytes / V3_BLOCK < 2 ? 2 : bytes / V3_BLOCK;
        r->frame_size = V3_FRAME;
        req.tp_retire_blk_tov = retire_ms ? retire_ms : 1;
        req.tp_feature_req_word = 0;
        req.tp_sizeof_priv = 0;
    } else {
        /* One frame holds the largest frame the link sends (MTU, Ethernet
         * header, a VLAN tag) after the ring's own header. */
        r->frame_size = pow2_at_least(mtu + 18 + 128);
        if (r->frame_size < 2048)
            r->frame_size = 2048;
        r->block_size = r->frame_size < (64u << 10) ? (64u << 10) : r->frame_size;
        r->nblocks = bytes / r->block_size < 2 ? 2 : bytes / r->block_size;
    }
    r->nframes = (r->block_size / r->frame_size) * r->nblocks;
    req.tp_block_size = r->block_size;
    req.tp_block_nr = r->nblocks;
    req.tp_frame_size = r->frame_size;
    req.tp_frame_nr = r->nframes;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req,
                   v == TPACKET_V3 ? sizeof req : sizeof(struct tpacket_req)) < 0)
        return fail_errno(err, errlen, "PACKET_RX_RING", ifname, errno);
    r->map_len = (uint64_t)r->block_size * r->nblocks;
    r->map = mmap(0, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (r->map == MAP_FAILED) {
        r->map = 0;
        return fail_errno(err, errlen, "mmap of the ring", ifname, errno);
    }
    r->version = (uint32_t)version;
    r->cur = 0;
    r->left = 0;
    r->next = 0;
    return 0;
}

static void ring_unmap(struct mb_live_ring *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    r->map = 0;
    r->version = 0;
}

/* Classic BPF on skb->protocol: keep IPv4/IPv6 (want_ip) or everything else. */
static int attach_ip_filter(int fd, int want_ip)
{
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PROTOCOL)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, want_ip ? 0x40000u : 0u),
        BPF_STMT(BPF_RET | BPF_K, want_ip ? 0u : 0x40000u),
    };
    struct sock_fprog fp = {.len = sizeof prog / sizeof prog[0], .filter = prog};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp);
}

/* One packet socket on ifindex: ring (if rx), bound, promiscuous, blind to
 * its own host's transmissions, optionally filtered and in a fanout group. */
static int packet_socket(struct mb_live_port *p, const struct mb_live_cfg *cfg,
                         struct mb_live_ring *ring, int filter, int fanout, char *err,
                         uint32_t errlen)
{
    struct sockaddr_ll sll;
    struct packet_mreq mr;
    int one = 1, sndbuf = 4 << 20;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail_errno(err, errlen, "AF_PACKET socket", p->ifname, errno);
    if (filter >= 0 && attach_ip_filter(fd, filter) < 0) {
        fail_errno(err, errlen, "SO_ATTACH_FILTER", p->ifname, errno);
        goto bad;
    }
    if (cfg->rx && ring_setup(fd, ring, cfg->ring_version, filter == 0 ? (1u << 20)
                              : cfg->ring_bytes, cfg->retire_ms, p->mtu, p->ifname,
                              err, errlen) < 0)
        goto bad;
    /* Outgoing frames (ours and the host's) are not received: the engine
     * must not see what it sends. Older kernels: skipped by pkttype. */
    (void)setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    if (cfg->tx)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = p->ifindex;
    sll.sll_protocol = cfg->rx ? htons(ETH_P_ALL) : 0;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        fail_errno(err, errlen, "bind", p->ifname, errno);
        goto bad;
    }
    if (cfg->rx) {
        memset(&mr, 0, sizeof mr);
        mr.mr_ifindex = p->ifindex;
        mr.mr_type = PACKET_MR_PROMISC;
        if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
            fail_errno(err, errlen, "promiscuous mode", p->ifname, errno);
            goto bad;
        }
    }
    if (fanout && cfg->rx) {
        int val;
        socklen_t len = sizeof val;
        if (cfg->fanout_join) {
            val = (int)((cfg->fanout_id & 0xffff) | (PACKET_FANOUT_HASH << 16));
            if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof val) < 0) {
                fail(err, errlen, "%s: the kernel refused to join PACKET_FANOUT group",
                     p->ifname, errno);
                goto bad;
            }
            p->fanout_id = cfg->fanout_id;
        } else {
            val = (int)((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID) << 16);
            if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof val) < 0) {
                /* Kernels before 4.19 lack UNIQUEID: pick an id ourselves. */
                uint32_t id = ((uint32_t)getpid() * 2654435761u ^ (uint32_t)p->ifindex) & 0xffff;
                int tries, e = errno;
                for (tries = 0; tries < 64; tries++, id = (id + 1) & 0xffff) {
                    val = (int)(id | (PACKET_FANOUT_HASH << 16));
                    if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof val) == 0)
                        break;
                    e = errno;
                }
                if (tries == 64) {
                    fail(err, errlen, "%s: the kernel refused PACKET_FANOUT", p->ifname, e);
                    goto bad;
                }
                p->fanout_id = id;
            } else if (getsockopt(fd, SOL_PACKET, PACKET_FANOUT, &val, &len) == 0) {
                p->fanout_id = (uint32_t)val & 0xffff;
            } else {
                fail(err, errlen, "%s: cannot read the PACKET_FANOUT group id", p->ifname,
                     errno);
                goto bad;
            }
        }
        p->in_fanout = 1;
    }
    return fd;
bad:
    ring_unmap(ring);
    close(fd);
    return -1;
}

static int open_packet(struct mb_live_port *p, const struct mb_live_cfg *cfg, char *err,
                       uint32_t errlen)
{
    struct ifreq ifr;
    int ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl < 0)
        return fail_errno(err, errlen, "socket", p->ifname, errno);
    if (if_ioctl(ctl, SIOCGIFINDEX, p->ifname, &ifr) < 0) {
        int e = errno;
        close(ctl);
        return fail_errno(err, errlen, "SIOCGIFINDEX", p->ifname, e == ENODEV ? ENODEV : e);
    }
    p->ifindex = ifr.ifr_ifindex;
    p->mtu = if_ioctl(ctl, SIOCGIFMTU, p->ifname, &ifr) == 0 ? (uint32_t)ifr.ifr_mtu : 1500;
    p->was_up = if_ioctl(ctl, SIOCGIFFLAGS, p->ifname, &ifr) == 0 && (ifr.ifr_flags & IFF_UP);
    close(ctl);
    /* Workers: IP frames are spread by flow (fanout hash); every worker
     * gets every other frame (ARP...) on a socket of its own. */
    p->fd = packet_socket(p, cfg, &p->ring, cfg->fanout ? 1 : -1, cfg->fanout, err, errlen);
    if (p->fd < 0)
        return -1;
    if (cfg->fanout && cfg->rx) {
        struct mb_live_cfg c2 = *cfg;
        c2.tx = 0;
        p->fd2 = packet_socket(p, &c2, &p->ring2, 0, 0, err, errlen);
        if (p->fd2 < 0) {
            ring_unmap(&p->ring);
            close(p->fd);
            p->fd = -1;
            return -1;
        }
    }
    return 0;
}

static int open_tap(struct mb_live_port *p, const struct mb_live_cfg *cfg, char *err,
                    uint32_t errlen)
{
    struct ifreq ifr;
    int ctl;
    int existed = if_nametoindex(p->ifname) != 0;
    (void)cfg;
    p->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (p->fd < 0) {
        if (errno == ENOENT || errno == ENODEV)
            return fail(err, errlen, "tap:%s: /dev/net/tun is missing (modprobe tun)",
                        p->ifname, 0);
        if (errno == EPERM || errno == EACCES)
            return fail(err, errlen, "tap:%s: permission denied opening /dev/net/tun",
                        p->ifname, 0);
        return fail(err, errlen, "tap:%s: cannot open /dev/net/tun", p->ifname, errno);
    }
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", p->ifname);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (ioctl(p->fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(p->fd);
        p->fd = -1;
        if (e == EPERM || e == EACCES)
            return fail(err, errlen, "tap:%s: permission denied (needs CAP_NET_ADMIN)",
                        p->ifname, 0);
        if (e == EBUSY)
            return fail(err, errlen, "tap:%s: in use by another process", p->ifname, 0);
        if (e == EINVAL && existed)
            return fail(err, errlen, "tap:%s: exists and is not a TAP device", p->ifname, 0);
        return fail(err, errlen, "tap:%s: TUNSETIFF failed", p->ifname, e);
    }
    snprintf(p->ifname, sizeof p->ifname, "%s", ifr.ifr_name);
    p->created = !existed;
    p->ifindex = (int)if_nametoindex(p->ifname);
    /* The kernel only sends to a TAP whose link is up. */
    ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (ctl >= 0) {
        if (if_ioctl(ctl, SIOCGIFFLAGS, p->ifname, &ifr) == 0) {
            p->was_up = !!(ifr.ifr_flags & IFF_UP);
            if (!p->was_up) {
                ifr.ifr_flags |= IFF_UP;
                (void)ioctl(ctl, SIOCSIFFLAGS, &ifr);
            }
        }
        if (if_ioctl(ctl, SIOCGIFMTU, p->ifname, &ifr) == 0)
            p->mtu = (uint32_t)ifr.ifr_mtu;
        close(ctl);
    }
    return 0;
}

int mb_live_open(struct mb_live_port *p, const struct mb_live_cfg *cfg, char *err,
                 uint32_t errlen)
{
    memset(p, 0, sizeof *p);
    p->fd = p->fd2 = -1;
    p->kind = cfg->kind;
    p->dev = cfg->dev;
    p->rx = cfg->rx;
    p->tx = cfg->tx;
    p->mtu = 1500;
    err[0] = 0;
    if (!cfg->ifname || !cfg->ifname[0] || strlen(cfg->ifname) >= sizeof p->ifname)
        return fail(err, errlen, "'%s': not an interface name (at most 15 characters)",
                    cfg->ifname ? cfg->ifname : "", 0);
    snprintf(p->ifname, sizeof p->ifname, "%s", cfg->ifname);
    if (cfg->kind == MB_LIVE_TAP)
        return open_tap(p, cfg, err, errlen);
    if (cfg->kind == MB_LIVE_PACKET)
        return open_packet(p, cfg, err, errlen);
    return fail(err, errlen, "%s: unknown port kind", p->ifname, 0);
}

void mb_live_kernel_stats(struct mb_live_port *p)
{
    int fds[2] = {p->fd, p->fd2};
    int i;
    if (p->kind != MB_LIVE_PACKET)
        return;
    for (i = 0; i < 2; i++) {
        struct tpacket_stats_v3 st;
        socklen_t len = sizeof st;
        if (fds[i] < 0)
            continue;
        memset(&st, 0, sizeof st);
        /* Reading the counters resets them: add them up here. */
        if (getsockopt(fds[i], SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0) {
            p->c.kernel_drops += st.tp_drops;
            if (len >= sizeof st)
                p->c.kernel_freezes += st.tp_freeze_q_cnt;
        }
    }
}

void mb_live_close(struct mb_live_port *p)
{
    ring_unmap(&p->ring);
    ring_unmap(&p->ring2);
    if (p->fd >= 0)
        close(p->fd);
    if (p->fd2 >= 0)
        close(p->fd2);
    p->fd = p->fd2 = -1;
}

/* --- frames into pool buffers ------------------------------------------------ */

static uint32_t csum_sum(uint32_t sum, const uint8_t *b, uint32_t n)
{
    uint32_t i;
    for (i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)((b[i] << 8) | b[i + 1]);
    if (n & 1)
        sum += (uint32_t)(b[n - 1] << 8);
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/*
 * A frame a local sender handed to the kernel with checksum offload
 * (CHECKSUM_PARTIAL, e.g. over veth) carries only the pseudo-header sum in
 * its TCP/UDP checksum: complete it, as the NIC would have on a wire.
 * Returns 1 if a checksum was written.
 */
static int complete_csum(uint8_t *f, uint32_t len)
{
    uint32_t off = 12, l4, l4len, sum;
    uint16_t type;
    uint8_t proto;
    uint32_t coff;
    if (len < 14)
        return 0;
    type = (uint16_t)((f[12] << 8) | f[13]);
    while ((type == 0x8100 || type == 0x88a8) && off + 6 <= len) {
        off += 4;
        type = (uint16_t)((f[off] << 8) | f[off + 1]);
    }
    off += 2;
    if (type == 0x0800) {
        uint32_t ihl, tot;
        if (len < off + 20)
            return 0;
        ihl = (uint32_t)(f[off] & 15) * 4;
        tot = (uint32_t)((f[off + 2] << 8) | f[off + 3]);
        if (ihl < 20 || tot < ihl || off + tot > len || ((f[off + 6] & 0x3f) | f[off + 7]))
            return 0;
        proto = f[off + 9];
        l4 = off + ihl;
        l4len = tot - ihl;
        sum = csum_sum(0, f + off + 12, 8);
    } else if (type == 0x86dd) {
        if (len < off + 40)
            return 0;
        proto = f[off + 6];
        l4 = off + 40;
        l4len = (uint32_t)((f[off + 4] << 8) | f[off + 5]);
        if (l4 + l4len > len)
            return 0;
        sum = csum_sum(0, f + off + 8, 32);
    } else {
        return 0;
    }
    if (proto == 6 && l4len >= 20)
        coff = l4 + 16;
    else if (proto == 17 && l4len >= 8)
        coff = l4 + 6;
    else
        return 0;
    sum += proto + (l4len & 0xffff) + (l4len >> 16);
    f[coff] = f[coff + 1] = 0;
    sum = csum_sum(sum, f + l4, l4len);
    {
        uint16_t c = csum_fold(sum);
        if (c == 0 && proto == 17)
            c = 0xffff;
        f[coff] = (uint8_t)(c >> 8);
        f[coff + 1] = (uint8_t)c;
    }
    return 1;
}

/* Copy a received frame into pool packet p (VLAN tag the kernel took out
 * put back, partial checksum completed). 0, or -1 when it does not fit. */
static int fill(struct mb_live_port *pt, struct mb_packet *p, const uint8_t *f,
                uint32_t snap, uint32_t wire, uint32_t status, uint16_t tci, uint16_t tpid,
                uint64_t now)
{
    uint32_t room = mb_tailroom(p) + p->len, add = 0;     /* fresh: len 0 */
    if (snap < wire)
        return -1;                      /* the ring truncated it (e.g. a GSO frame) */
    if ((status & TP_STATUS_VLAN_VALID) && snap >= 12)
        add = 4;
    if (snap + add > room)
        return -1;
    if (add) {
        memcpy(p->data, f, 12);
        p->data[12] = (uint8_t)(tpid >> 8);
        p->data[13] = (uint8_t)tpid;
        p->data[14] = (uint8_t)(tci >> 8);
        p->data[15] = (uint8_t)tci;
        memcpy(p->data + 16, f + 12, snap - 12);
    } else {
        memcpy(p->data, f, snap);
    }
    p->len = snap + add;
    p->ts_ns = now;
    if (status & TP_STATUS_CSUMNOTREADY)
        pt->c.csum_fixed += (uint64_t)complete_csum(p->data, p->len);
    pt->c.rx++;
    pt->c.rx_bytes += p->len;
    return 0;
}

static inline uint32_t load_status(volatile uint32_t *s)
{
    return __atomic_load_n(s, __ATOMIC_ACQUIRE);
}

static inline void give_back(volatile uint32_t *s)
{
    __atomic_store_n(s, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
}

static uint32_t take_v3(struct mb_engine *eng, struct mb_live_port *pt, struct mb_live_ring *r,
                        struct mb_packet **out, uint32_t max, uint64_t now)
{
    uint32_t n = 0;
    while (n < max) {
        struct tpacket_block_desc *bd =
            (struct tpacket_block_desc *)(r->map + (uint64_t)r->cur * r->block_size);
        struct tpacket3_hdr *h;
        const struct sockaddr_ll *sll;
        struct mb_packet *p;
        if (!r->next) {
            if (!(load_status(&bd->hdr.bh1.block_status) & TP_STATUS_USER))
                break;
            r->left = bd->hdr.bh1.num_pkts;
            r->next = (uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt;
        }
        if (r->left) {
            h = (struct tpacket3_hdr *)r->next;
            sll = (const struct sockaddr_ll *)((uint8_t *)h +
                                               TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
            if (sll->sll_pkttype != PACKET_OUTGOING) {
                p = mb_alloc(eng);
                if (!p)
                    break;              /* pool empty: the frame waits in the ring */
                if (fill(pt, p, (uint8_t *)h + h->tp_mac, h->tp_snaplen, h->tp_len,
                         h->tp_status, h->hv1.tp_vlan_tci,
                         (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid
                                                                    : 0x8100, now) == 0)
                    out[n++] = p;
                else {
                    pt->c.oversize++;
                    mb_free(eng, p);
                }
            }
            r->next += h->tp_next_offset;
            r->left--;
        }
        if (!r->left) {
            give_back(&bd->hdr.bh1.block_status);
            r->cur = r->cur + 1 == r->nblocks ? 0 : r->cur + 1;
            r->next = 0;
        }
    }
    return n;
}

static uint32_t take_v2(struct mb_engine *eng, struct mb_live_port *pt, struct mb_live_ring *r,
                        struct mb_packet **out, uint32_t max, uint64_t now)
{
    uint32_t n = 0, per = r->block_size / r->frame_size;
    while (n < max) {
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(r->map +
            (uint64_t)(r->cur / per) * r->block_size + (uint64_t)(r->cur % per) * r->frame_size);
        const struct sockaddr_ll *sll;
        struct mb_packet *p;
        uint32_t st = load_status(&h->tp_status);
        if (!(st & TP_STATUS_USER))
            break;
        sll = (const struct sockaddr_ll *)((uint8_t *)h +
                                           TPACKET_ALIGN(sizeof(struct tpacket2_hdr)));
        if (sll->sll_pkttype != PACKET_OUTGOING) {
            p = mb_alloc(eng);
            if (!p)
                break;
            if (fill(pt, p, (uint8_t *)h + h->tp_mac, h->tp_snaplen, h->tp_len, st,
                     h->tp_vlan_tci,
                     (st & TP_STATUS_VLAN_TPID_VALID) ? h->tp_vlan_tpid : 0x8100, now) == 0)
                out[n++] = p;
            else {
                pt->c.oversize++;
                mb_free(eng, p);
            }
        }
        give_back(&h->tp_status);
        r->cur = r->cur + 1 == r->nframes ? 0 : r->cur + 1;
    }
    return n;
}

static uint32_t take_ring(struct mb_engine *eng, struct mb_live_port *pt, struct mb_live_ring *r,
                          struct mb_packet **out, uint32_t max, uint64_t now)
{
    if (r->version == MB_LIVE_RING_V3)
        return take_v3(eng, pt, r, out, max, now);
    if (r->version == MB_LIVE_RING_V2)
        return take_v2(eng, pt, r, out, max, now);
    return 0;
}

static uint32_t take_tap(struct mb_engine *eng, struct mb_live_port *pt, struct mb_packet **out,
                         uint32_t max, uint64_t now)
{
    uint32_t n = 0, maxlen = mb_max_len(eng);
    while (n < max) {
        struct mb_packet *p = mb_alloc(eng);
        ssize_t got;
        if (!p)
            break;
        /* A frame longer than the buffer: tun reports its whole length
         * (or EFAULT); either way it is counted, not passed on cut. */
        got = read(pt->fd, p->data, maxlen);
        if (got < 0) {
            mb_free(eng, p);
            if (errno == EINTR)
                continue;
            if (errno == EFAULT || errno == EMSGSIZE) {
                pt->c.oversize++;
                continue;
            }
            break;                      /* EAGAIN: nothing more now */
        }
        if ((uint32_t)got > maxlen || got == 0) {
            if (got)
                pt->c.oversize++;
            mb_free(eng, p);
            if (!got)
                break;
            continue;
        }
        p->len = (uint32_t)got;
        p->ts_ns = now;
        pt->c.rx++;
        pt->c.rx_bytes += (uint64_t)got;
        out[n++] = p;
    }
    return n;
}

/* One batch (at most MB_BATCH) from a port into its device. */
static uint32_t rx_port(struct mb_engine *eng, struct mb_live_port *pt, uint64_t now)
{
    struct mb_packet *batch[MB_BATCH];
    uint32_t n = 0;
    if (pt->kind == MB_LIVE_TAP) {
        n = take_tap(eng, pt, batch, MB_BATCH, now);
    } else {
        /* Non-IP frames first (few; ARP answers release held packets). */
        if (pt->ring2.version)
            n = take_ring(eng, pt, &pt->ring2, batch, MB_BATCH / 2, now);
        n += take_ring(eng, pt, &pt->ring, batch + n, MB_BATCH - n, now);
    }
    if (n)
        mb_engine_rx(eng, pt->dev, batch, n);
    return n;
}

/* --- transmit ---------------------------------------------------------------- */

static void tx_packet(struct mb_live_port *pt, struct mb_packet **pkts, uint32_t m)
{
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    uint32_t i, off = 0, waits = 0;
    memset(msgs, 0, sizeof(struct mmsghdr) * m);
    for (i = 0; i < m; i++) {
        iov[i].iov_base = pkts[i]->data;
        iov[i].iov_len = pkts[i]->len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (off < m) {
        int r = sendmmsg(pt->fd, msgs + off, m - off, MSG_DONTWAIT);
        if (r > 0) {
            for (i = off; i < off + (uint32_t)r; i++)
                pt->c.tx_bytes += msgs[i].msg_len;
            pt->c.tx += (uint64_t)r;
            off += (uint32_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN && waits < 3) {
            /* The socket's send buffer is full: give the device a moment. */
            struct pollfd pf = {.fd = pt->fd, .events = POLLOUT};
            waits++;
            (void)poll(&pf, 1, 1);
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
            if (errno == EAGAIN) {
                pt->c.tx_dropped += m - off;
                break;
            }
            pt->c.tx_dropped++;         /* the queue discipline dropped this one */
            off++;
            continue;
        }
        pt->c.tx_errors++;              /* this frame was refused (too big, link down) */
        off++;
    }
}

static void tx_tap(struct mb_live_port *pt, struct mb_packet **pkts, uint32_t m)
{
    uint32_t i;
    for (i = 0; i < m; i++) {
        ssize_t r = write(pt->fd, pkts[i]->data, pkts[i]->len);
        if (r < 0 && errno == EINTR) {
            i--;
            continue;
        }
        if (r >= 0) {
            pt->c.tx++;
            pt->c.tx_bytes += (uint64_t)r;
        } else if (errno == EAGAIN || errno == ENOBUFS) {
            pt->c.tx_dropped++;
        } else {
            pt->c.tx_errors++;
        }
    }
}

/* --- the loop ---------------------------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    live_stop = 1;
}

void mb_live_signals_install(void)
{
    struct sigaction sa;
    if (signals_installed++)
        return;
    live_stop = 0;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;                    /* no SA_RESTART: poll() returns at once */
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
}

void mb_live_signals_restore(void)
{
    if (!signals_installed || --signals_installed)
        return;
    sigaction(SIGINT, &old_int, 0);
    sigaction(SIGTERM, &old_term, 0);
}

void mb_live_stop(void)
{
    live_stop = 1;
}

int mb_live_stopping(void)
{
    return live_stop != 0;
}

int mb_live_run(struct mb_engine *eng, struct mb_live_port *const *ports, uint32_t nports,
                const struct mb_live_opts *o, const struct mb_live_hooks *h, char *err,
                uint32_t errlen)
{
    struct pollfd pfds[2 * MB_LIVE_MAX_PORTS];
    struct mb_packet *txb[TX_BATCH];
    int devport[2 * MB_LIVE_MAX_PORTS];
    uint32_t npfd = 0, i, d;
    int poll_ms = o->poll_ms > 0 ? o->poll_ms : 10;
    uint64_t start = mono_ns();
    uint64_t deadline = o->duration_ns ? start + o->duration_ns : 0;
    err[0] = 0;
    if (nports > MB_LIVE_MAX_PORTS || eng->ndev > 2 * MB_LIVE_MAX_PORTS)
        return fail(err, errlen, "%s: too many devices", "live", 0);
    for (d = 0; d < eng->ndev; d++)
        devport[d] = -1;
    for (i = 0; i < nports; i++) {
        const struct mb_live_port *pt = ports[i];
        if (pt->dev < eng->ndev)
            devport[pt->dev] = (int)i;
        if (!pt->rx)
            continue;
        if (pt->fd >= 0) {
            pfds[npfd].fd = pt->fd;
            pfds[npfd++].events = POLLIN;
        }
        if (pt->fd2 >= 0) {
            pfds[npfd].fd = pt->fd2;
            pfds[npfd++].events = POLLIN;
        }
    }
    while (!live_stop && !*h->failed) {
        uint64_t now = mono_ns();
        uint32_t got = 0, made;
        if (deadline && now >= deadline)
            break;
        eng->now_ns = now;
        for (i = 0; i < nports; i++)
            if (ports[i]->rx)
                got += rx_port(eng, ports[i], now);
        made = mb_engine_pull(eng);
        if (got || made)
            mb_engine_run(eng);
        if (*h->pending)
            h->service(h->arg);
        for (d = 0; d < eng->ndev; d++) {
            uint32_t m;
            while ((m = mb_engine_tx(eng, d, txb, TX_BATCH)) != 0) {
                if (devport[d] >= 0) {
                    struct mb_live_port *pt = ports[devport[d]];
                    if (pt->kind == MB_LIVE_TAP)
                        tx_tap(pt, txb, m);
                    else
                        tx_packet(pt, txb, m);
                }
                for (i = 0; i < m; i++)
                    mb_free(eng, txb[i]);
            }
        }
        if (got || made || o->busy_poll)
            continue;
        {
            int timeout = poll_ms;
            if (deadline) {
                uint64_t left = deadline - now;
                if (left / 1000000u < (uint64_t)timeout)
                    timeout = (int)(left / 1000000u) + 1;
            }
            if (poll(pfds, npfd, timeout) < 0 && errno != EINTR)
                return fail(err, errlen, "%s: poll failed", "live", errno);
        }
    }
    return 0;
}
