/*
 * nat.c - kernel of the NAT element (elements/nat.py): source NAT with
 * port translation (NAPT) for IPv4 TCP, UDP and ICMP echo, with ICMP
 * errors translated in both directions.
 *
 * Input 0: packets from the inside; translated ones leave on output 0.
 * Input 1: packets from the outside; replies translated back leave on
 * output 1; packets that match no mapping leave on output 2 (mb_emit drops
 * and counts them when output 2 is not connected). Only the IPv4 packet at
 * the nh annotation is read or written; bytes in front of it (an Ethernet
 * header) are left alone.
 *
 * Configuration (little-endian):
 *   u32 magic "NAT1", u32 naddr (1..32), u32 capacity (1..2^22),
 *   u16 port_lo, u16 port_hi (1 <= lo <= hi), u32 flags (bit 0: preserve
 *   ports), u64 timeouts in ns: udp, tcp established, tcp transitory, icmp
 *   (each >= 1), then naddr u32 public addresses (host order).
 *
 * State, laid out in one block (state_size) with 64-byte aligned arrays:
 *   flows   the flow table (elements/flowtable.h): capacity entries of 32
 *           bytes (struct nat_flow: inside addr:port, remote addr:port,
 *           public port and address index, protocol, TCP state, expiry
 *           time), free ones on a stack, and the inside index over them,
 *           a bucketed cuckoo hash: a flow hashes (5-tuple, 64-bit mix) to
 *           two buckets of 8 (signature, flow index) slots.
 *   p2f     the outside index: per public address and protocol (TCP, UDP,
 *           ICMP), one u32 per port of the range: flow index + 1, 0 = free.
 *           Exact and O(1): inbound packets are matched by (protocol,
 *           public address, public port), then the remote address and port
 *           are checked (address-and-port-dependent filtering).
 *   bitmaps per (address, protocol) pool a bitmap of ports in use and a
 *           summary bitmap of full words, so a free port is found in a few
 *           word reads; plus the pool's free count.
 *
 * Port allocation for a new flow: the public address is chosen by a hash of
 * the inside address (paired pooling, RFC 4787 REQ-2: one inside host uses
 * one public address). Then: (1) the inside source port (ICMP identifier)
 * itself, if ports are preserved, it lies in the range and is free; else
 * (2) the first free port at or after a start point hashed from the flow's
 * 5-tuple, going up and wrapping around the range. A pool with no free
 * port is exhausted (ports_exhausted); a full flow table is table_full.
 * Before giving up, up to NAT_RECLAIM flow entries (and ports of the pool)
 * are checked for expiry and reclaimed.
 *
 * Time: now = the largest of mb_now() and the packets' timestamps seen so
 * far (never goes back). A flow expires `timeout` after its last packet
 * (either direction; ICMP errors do not refresh). Expired flows are
 * reclaimed when looked up, NAT_SWEEP entries per push by a sweeping
 * cursor, and on demand as above.
 *
 * TCP state (flags of struct nat_flow.tcp): established once a SYN has been
 * seen from the outside (or, for a flow first seen without SYN, any
 * packet from the outside) and neither an RST nor FINs in both directions
 * have been seen; else transitory. A SYN without ACK from the inside on a
 * closed flow starts it again.
 *
 * Fragments (MF set or a non-zero offset) are dropped and counted: only the
 * first carries the ports, and the rest could not be matched without
 * reassembly, so translating the first would only waste a mapping.
 *
 * Checksums: IP header, TCP, UDP and ICMP checksums are updated
 * incrementally (RFC 1624 eq. 3). A UDP checksum of 0 (none) stays 0; an
 * updated one that comes to 0 is sent as 0xFFFF. An ICMP checksum that
 * comes to 0 is recomputed over the message (all-zero messages need 0xFFFF).
 *
 * xstat: 0 translated, 1 new_flows, 2 expired, 3 table_full,
 * 4 ports_exhausted, 5 no_mapping, 6 fragments, 7 untranslatable.
 * Every packet in is counted once in 0, 3, 4, 5, 6 or 7.
 *
 * control (write handler "flush"): message 0x01 removes every mapping.
 * query(what): live mappings from flow entry `what` on: header u32 next
 * entry to ask for (0xFFFFFFFF: done), u32 live flows, u64 now (ns); then
 * records of 32 bytes: u8 proto, u8 tcp state flags, u8 established,
 * u8 address index, u32 inside addr, u32 remote addr, u32 public addr,
 * u16 inside port, u16 remote port, u16 public port, u16 zero, u64 expiry
 * (ns). Little-endian.
 */
#include "flowtable.h"

#define NAT_MAGIC 0x3154414Eu          /* "NAT1" */
#define NAT_MAX_ADDRS 32u
#define NAT_MAX_CAPACITY FT_MAX_CAPACITY
#define NAT_CFG_FIXED 52u
#define NAT_NONE FT_NONE
#define NAT_B2_SHIFT 24u               /* second bucket: hash bits 24.. */
#define NAT_SWEEP 8u                   /* entries checked per push */
#define NAT_RECLAIM 64u                /* entries checked before giving up */
#define NAT_CHUNK 16u                  /* packets hashed/prefetched ahead */

#define PROTO_ICMP 1u
#define PROTO_TCP 6u
#define PROTO_UDP 17u

#define TCP_FIN 0x01u
#define TCP_SYN 0x02u
#define TCP_RST 0x04u
#define TCP_ACK 0x10u

/* struct nat_flow.tcp */
#define T_SYN_OUT 0x01u
#define T_SYN_IN 0x02u
#define T_FIN_OUT 0x04u
#define T_FIN_IN 0x08u
#define T_RST 0x10u
#define T_MID 0x20u                    /* first seen without SYN */

enum { X_TRANSLATED, X_NEW, X_EXPIRED, X_FULL, X_EXHAUSTED, X_NOMAP, X_FRAG, X_UNTRANS };
enum { TO_UDP, TO_TCP_EST, TO_TCP_TRANS, TO_ICMP };

struct nat_flow {
    uint32_t in_addr;       /* inside host (host order); free: stack link */
    uint32_t rem_addr;      /* remote host */
    uint16_t in_port;       /* inside port / echo identifier */
    uint16_t rem_port;      /* remote port (0 for ICMP) */
    uint16_t pub_port;      /* public port / identifier */
    uint8_t proto;          /* 6, 17, 1; 0 = free entry */
    uint8_t aidx;           /* public address index */
    uint8_t tcp;            /* T_* flags */
    uint8_t pc;             /* protocol class 0 TCP, 1 UDP, 2 ICMP */
    uint16_t pad;
    uint32_t pad2;
    uint64_t expires;       /* ns */
};
_Static_assert(sizeof(struct nat_flow) == 32, "an entry is 32 bytes");

struct nat_state {
    struct ft ft;           /* flows and the inside index */
    uint32_t naddr, lo, range, nw, ns, preserve, seed;
    uint64_t to[4];
    uint64_t o_p2f, o_bm, o_sum;
    uint32_t addr[NAT_MAX_ADDRS];
    uint32_t pool_free[NAT_MAX_ADDRS * 3];
    uint32_t pool_cursor[NAT_MAX_ADDRS * 3];
};

struct nat_cfg {
    uint32_t naddr, cap, lo, hi, flags;
    uint64_t to[4];
};

/* Parse and check the configuration; 0 when it is usable. */
static int nat_parse(const uint8_t *c, uint32_t len, struct nat_cfg *k)
{
    uint32_t i;
    if (!c || len < NAT_CFG_FIXED || mb_le32(c) != NAT_MAGIC)
        return -1;
    k->naddr = mb_le32(c + 4);
    k->cap = mb_le32(c + 8);
    k->lo = mb_le16(c + 12);
    k->hi = mb_le16(c + 14);
    k->flags = mb_le32(c + 16);
    for (i = 0; i < 4; i++)
        k->to[i] = mb_le64(c + 20 + 8 * i);
    if (k->naddr < 1 || k->naddr > NAT_MAX_ADDRS || len != NAT_CFG_FIXED + 4 * k->naddr)
        return -1;
    if (k->cap < 1 || k->cap > NAT_MAX_CAPACITY || k->lo < 1 || k->lo > k->hi || k->flags > 1)
        return -1;
    for (i = 0; i < 4; i++)
        if (k->to[i] == 0 || k->to[i] > (1ull << 62))
            return -1;
    return 0;
}

/* Array offsets and total size for a configuration (with s: set them). */
static uint64_t nat_layout(const struct nat_cfg *k, struct nat_state *s)
{
    uint32_t range = k->hi - k->lo + 1;
    uint32_t nw = (range + 63) / 64, ns = (nw + 63) / 64;
    uint64_t pools = (uint64_t)k->naddr * 3;
    uint64_t off, o_p2f, o_bm, o_sum;
    off = ft_layout(s ? &s->ft : 0, (uint8_t *)s, sizeof(struct nat_state), k->cap,
                    sizeof(struct nat_flow), NAT_B2_SHIFT);
    o_p2f = off;
    off = FT_ALIGN64(off + pools * range * 4);
    o_bm = off;
    off = FT_ALIGN64(off + pools * nw * 8);
    o_sum = off;
    off = FT_ALIGN64(off + pools * ns * 8);
    if (s) {
        s->o_p2f = o_p2f;
        s->o_bm = o_bm;
        s->o_sum = o_sum;
        s->range = range;
        s->nw = nw;
        s->ns = ns;
    }
    return off;
}

static uint32_t nat_state_size(const uint8_t *cfg, uint32_t len)
{
    struct nat_cfg k;
    if (nat_parse(cfg, len, &k) != 0)
        return sizeof(struct nat_state);
    return (uint32_t)nat_layout(&k, 0);
}

#define FLOWS(s) ((struct nat_flow *)(s)->ft.ents)
#define P2F(s, pool) ((uint32_t *)((uint8_t *)(s) + (s)->o_p2f) + (uint64_t)(pool) * (s)->range)
#define BM(s, pool) ((uint64_t *)((uint8_t *)(s) + (s)->o_bm) + (uint64_t)(pool) * (s)->nw)
#define SUM(s, pool) ((uint64_t *)((uint8_t *)(s) + (s)->o_sum) + (uint64_t)(pool) * (s)->ns)

/* Empty every table: all entries free, all ports free. */
static void nat_reset(struct nat_state *s)
{
    uint32_t pool, pools = s->naddr * 3;
    ft_reset(&s->ft);
    memset(P2F(s, 0), 0, (uint64_t)pools * s->range * 4);
    for (pool = 0; pool < pools; pool++) {
        uint64_t *bm = BM(s, pool), *sm = SUM(s, pool);
        uint32_t w;
        memset(bm, 0, (uint64_t)s->nw * 8);
        memset(sm, 0, (uint64_t)s->ns * 8);
        if (s->range & 63)  /* bits past the range: always in use */
            bm[s->nw - 1] = ~0ull << (s->range & 63);
        for (w = 0; w < s->ns * 64; w++)
            if (w >= s->nw || bm[w] == ~0ull)
                sm[w >> 6] |= 1ull << (w & 63);
        s->pool_free[pool] = s->range;
        s->pool_cursor[pool] = 0;
    }
}

static int nat_init(struct mb_elem *e)
{
    struct nat_state *s = e->state;
    struct nat_cfg k;
    uint32_t i, j;
    if (nat_parse(e->cfg, e->cfg_len, &k) != 0)
        return mb_fail(e, "bad configuration");
    nat_layout(&k, s);
    s->naddr = k.naddr;
    s->lo = k.lo;
    s->preserve = k.flags & 1;
    for (i = 0; i < 4; i++)
        s->to[i] = k.to[i];
    s->seed = 0x5A17C0DEu;
    for (i = 0; i < k.naddr; i++) {
        s->addr[i] = mb_le32(e->cfg + NAT_CFG_FIXED + 4 * i);
        if (s->addr[i] == 0)
            return mb_fail(e, "bad public address");
        for (j = 0; j < i; j++)
            if (s->addr[j] == s->addr[i])
                return mb_fail(e, "public address listed twice");
        s->seed = (s->seed ^ s->addr[i]) * 0x9E3779B1u;
    }
    nat_reset(s);
    return 0;
}

/* --- hashing and the inside index ------------------------------------------ */

static inline uint64_t nat_hash(uint32_t seed, uint32_t a, uint32_t b, uint32_t ports,
                                uint32_t proto)
{
    uint64_t h = (((uint64_t)a << 32) | b) * 0x9E3779B97F4A7C15ull;
    h ^= ((((uint64_t)ports << 32) | (proto ^ seed)) + (h >> 29)) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

static inline uint64_t nat_flow_hash(const struct nat_state *s, const struct nat_flow *f)
{
    return nat_hash(s->seed, f->in_addr, f->rem_addr,
                    ((uint32_t)f->in_port << 16) | f->rem_port, f->proto);
}

/* Flow table callbacks (ctx: the state). */
static uint64_t nat_ft_hash(const void *ctx, uint32_t i)
{
    const struct nat_state *s = ctx;
    return nat_flow_hash(s, &FLOWS(s)[i]);
}

/* An inside key: protocol, inside addr:port, remote addr:port. */
struct nat_key {
    uint32_t proto, ia, ip, ra, rp;
};

static inline int nat_ft_match(const void *ctx, uint32_t i, const void *key)
{
    const struct nat_flow *f = &FLOWS((const struct nat_state *)ctx)[i];
    const struct nat_key *k = key;
    return f->in_addr == k->ia && f->rem_addr == k->ra && f->in_port == k->ip &&
           f->rem_port == k->rp && f->proto == k->proto ? 0 : -1;
}

/* The flow with this inside key, or NAT_NONE. */
static inline uint32_t nat_lookup_in(const struct nat_state *s, uint64_t h, uint32_t proto,
                                     uint32_t ia, uint32_t ip, uint32_t ra, uint32_t rp)
{
    const struct nat_key k = {proto, ia, ip, ra, rp};
    return ft_find(&s->ft, h, nat_ft_match, s, &k, 0);
}

/* --- port pools --------------------------------------------------------------- */

static inline void pool_take(struct nat_state *s, uint32_t pool, uint32_t off)
{
    uint64_t *bm = BM(s, pool);
    uint32_t w = off >> 6;
    bm[w] |= 1ull << (off & 63);
    if (bm[w] == ~0ull)
        SUM(s, pool)[w >> 6] |= 1ull << (w & 63);
    s->pool_free[pool]--;
}

static inline void pool_give(struct nat_state *s, uint32_t pool, uint32_t off)
{
    uint32_t w = off >> 6;
    BM(s, pool)[w] &= ~(1ull << (off & 63));
    SUM(s, pool)[w >> 6] &= ~(1ull << (w & 63));
    s->pool_free[pool]++;
}

static inline int pool_is_free(const struct nat_state *s, uint32_t pool, uint32_t off)
{
    return !(BM(s, pool)[off >> 6] & (1ull << (off & 63)));
}

/* First free port offset at or after `start`, wrapping; -1 if none. */
static int32_t pool_find(const struct nat_state *s, uint32_t pool, uint32_t start)
{
    const uint64_t *bm = BM(s, pool), *sm = SUM(s, pool);
    uint32_t w = start >> 6, pass;
    uint64_t m = ~bm[w] & (~0ull << (start & 63));
    if (m)
        return (int32_t)((w << 6) + (uint32_t)__builtin_ctzll(m));
    for (pass = 0; pass < 2; pass++) {
        uint32_t from = pass == 0 ? w + 1 : 0, to = pass == 0 ? s->nw : w + 1;
        uint32_t i = from;
        while (i < to) {
            uint32_t sw = i >> 6, ww;
            uint64_t fm = ~sm[sw] & (~0ull << (i & 63));
            if (!fm) {
                i = (sw + 1) << 6;
                continue;
            }
            ww = (sw << 6) + (uint32_t)__builtin_ctzll(fm);
            if (ww >= to)
                break;
            return (int32_t)((ww << 6) + (uint32_t)__builtin_ctzll(~bm[ww]));
        }
    }
    return -1;
}

/* --- flow entries ------------------------------------------------------------- */

static inline uint32_t nat_pool(const struct nat_flow *f)
{
    return (uint32_t)f->aidx * 3 + f->pc;
}

/* Remove flow i from both indices and free its port and entry
 * (ctx: the state). */
static void nat_free(void *ctx, uint32_t i)
{
    struct nat_state *s = ctx;
    struct nat_flow *f = &FLOWS(s)[i];
    uint64_t h = nat_flow_hash(s, f);
    uint32_t pool = nat_pool(f), off = (uint32_t)f->pub_port - s->lo;
    P2F(s, pool)[off] = 0;
    pool_give(s, pool, off);
    f->proto = 0;
    ft_remove(&s->ft, i, h);
}

static inline int nat_expired(const struct nat_state *s, const struct nat_flow *f)
{
    return ft_expired(&s->ft, f->expires);
}

/* FT_FREE, FT_LIVE or FT_EXPIRED (ctx: the state). */
static int nat_ft_state(const void *ctx, uint32_t i)
{
    const struct nat_flow *f = &FLOWS((const struct nat_state *)ctx)[i];
    return !f->proto ? FT_FREE : nat_expired(ctx, f) ? FT_EXPIRED : FT_LIVE;
}

/* Check up to `count` entries at the sweep cursor; free expired ones. */
static inline uint32_t nat_sweep(struct mb_elem *e, struct nat_state *s, uint32_t count)
{
    uint32_t n = ft_sweep(&s->ft, count, nat_ft_state, nat_free, s);
    e->xstat[X_EXPIRED] += n;
    return n;
}

/* Check up to `count` used ports of a pool for expired flows. */
static void nat_sweep_pool(struct mb_elem *e, struct nat_state *s, uint32_t pool,
                           uint32_t count)
{
    uint32_t *p2f = P2F(s, pool);
    struct nat_flow *flows = FLOWS(s);
    if (count > s->range)
        count = s->range;
    while (count--) {
        uint32_t off = s->pool_cursor[pool];
        if (++s->pool_cursor[pool] == s->range)
            s->pool_cursor[pool] = 0;
        if (p2f[off] && nat_expired(s, &flows[p2f[off] - 1])) {
            nat_free(s, p2f[off] - 1);
            e->xstat[X_EXPIRED]++;
        }
    }
}

static inline int nat_established(const struct nat_flow *f)
{
    return f->pc == 0 && (f->tcp & T_SYN_IN) && !(f->tcp & T_RST) &&
           (f->tcp & (T_FIN_OUT | T_FIN_IN)) != (T_FIN_OUT | T_FIN_IN);
}

static inline uint64_t nat_timeout(const struct nat_state *s, const struct nat_flow *f)
{
    if (f->pc == 1)
        return s->to[TO_UDP];
    if (f->pc == 2)
        return s->to[TO_ICMP];
    return nat_established(f) ? s->to[TO_TCP_EST] : s->to[TO_TCP_TRANS];
}

static inline void nat_touch(const struct nat_state *s, struct nat_flow *f)
{
    f->expires = s->ft.now + nat_timeout(s, f);
}

/* Make a mapping for a new inside flow; its index, or NAT_NONE with the
 * reason counted (the caller drops the packet). */
static uint32_t nat_create(struct mb_elem *e, struct nat_state *s, uint64_t h, uint32_t proto,
                           uint32_t pc, uint32_t ia, uint32_t ip, uint32_t ra, uint32_t rp)
{
    uint32_t aidx = (uint32_t)(((uint64_t)((ia ^ s->seed) * 0x9E3779B1u) * s->naddr) >> 32);
    uint32_t pool = aidx * 3 + pc, i, off;
    struct nat_flow *f;
    int32_t found = -1;

    if (ft_full(&s->ft) && nat_sweep(e, s, NAT_RECLAIM) == 0) {
        e->xstat[X_FULL]++;
        return NAT_NONE;
    }
    if (s->pool_free[pool] == 0) {
        nat_sweep_pool(e, s, pool, NAT_RECLAIM);
        if (s->pool_free[pool] == 0) {
            e->xstat[X_EXHAUSTED]++;
            return NAT_NONE;
        }
    }
    if (ft_full(&s->ft)) {              /* the pool sweep cannot empty the table */
        e->xstat[X_FULL]++;
        return NAT_NONE;
    }
    if (s->preserve && ip >= s->lo && ip - s->lo < s->range && pool_is_free(s, pool, ip - s->lo))
        found = (int32_t)(ip - s->lo);
    else
        found = pool_find(s, pool, (uint32_t)((((h >> 16) & 0xFFFFFFFFull) * s->range) >> 32));
    if (found < 0) {                    /* cannot happen: the free count said so */
        e->xstat[X_EXHAUSTED]++;
        return NAT_NONE;
    }
    off = (uint32_t)found;
    i = ft_insert(&s->ft, h, nat_ft_hash, s);
    if (i == NAT_NONE) {
        e->xstat[X_FULL]++;             /* 2 + 16 buckets full: vanishingly rare */
        return NAT_NONE;
    }
    f = &FLOWS(s)[i];
    f->in_addr = ia;
    f->rem_addr = ra;
    f->in_port = (uint16_t)ip;
    f->rem_port = (uint16_t)rp;
    f->pub_port = (uint16_t)(s->lo + off);
    f->proto = (uint8_t)proto;
    f->aidx = (uint8_t)aidx;
    f->pc = (uint8_t)pc;
    f->tcp = 0;
    P2F(s, pool)[off] = i + 1;
    pool_take(s, pool, off);
    e->xstat[X_NEW]++;
    return i;
}

/* --- checksums ---------------------------------------------------------------- */

/* Delta of replacing 16-bit word o by n, to add up and apply with csum_apply. */
static inline uint32_t d16(uint16_t o, uint16_t n)
{
    return (uint32_t)(uint16_t)~o + n;
}

static inline uint32_t d32(uint32_t o, uint32_t n)
{
    return d16((uint16_t)(o >> 16), (uint16_t)(n >> 16)) + d16((uint16_t)o, (uint16_t)n);
}

static inline uint16_t csum_apply(uint16_t csum, uint32_t delta)
{
    uint64_t sum = (uint64_t)(uint16_t)~csum + delta;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Update the checksum at b (big-endian) by delta; returns the old value. */
static inline uint16_t csum_fix(uint8_t *b, uint32_t delta)
{
    uint16_t old = mb_rd16(b);
    mb_wr16(b, csum_apply(old, delta));
    return old;
}

/* UDP: none (0) stays none, a computed 0 is sent as 0xFFFF. */
static inline uint16_t udp_csum_fix(uint8_t *b, uint32_t delta)
{
    uint16_t old = mb_rd16(b), c;
    if (old == 0)
        return 0;
    c = csum_apply(old, delta);
    mb_wr16(b, c ? c : 0xFFFF);
    return old;
}

/* ICMP message of len bytes at m: update, recomputing when it comes to 0. */
static inline void icmp_csum_fix(uint8_t *m, uint32_t len, uint32_t delta)
{
    uint16_t c = csum_apply(mb_rd16(m + 2), delta);
    if (MB_UNLIKELY(c == 0)) {
        mb_wr16(m + 2, 0);
        c = mb_csum_fold(mb_csum_add(0, m, len));
    }
    mb_wr16(m + 2, c);
}

/* --- packet parsing ----------------------------------------------------------- */

struct nat_pkt {
    uint8_t *ip;
    uint8_t *l4;
    uint32_t hl;
    uint32_t l4len;         /* IP payload bytes (within the packet) */
    uint32_t proto;
};

/* 0: parsed; -1: no usable IPv4 header; -2: a fragment. */
static inline int nat_parse_ip(struct mb_packet *p, struct nat_pkt *k)
{
    int32_t off = mb_nh_off(p, 20);
    uint8_t *ip;
    uint32_t hl, tot;
    if (MB_UNLIKELY(off < 0))
        return -1;
    ip = p->data + off;
    hl = (uint32_t)(ip[0] & 15) << 2;
    tot = mb_rd16(ip + 2);
    if (MB_UNLIKELY((ip[0] >> 4) != 4 || hl < 20 || tot < hl || tot > p->len - (uint32_t)off))
        return -1;
    k->ip = ip;
    k->hl = hl;
    k->l4 = ip + hl;
    k->l4len = tot - hl;
    k->proto = ip[9];
    if (MB_UNLIKELY(mb_rd16(ip + 6) & 0x3FFF))
        return -2;
    return 0;
}

static inline int is_icmp_error(uint32_t type)
{
    return type == 3 || type == 4 || type == 11 || type == 12;
}

/* The quoted packet of an ICMP error: inner IP header and its payload
 * (at least 8 bytes). 0 on success. */
static inline int nat_parse_inner(const struct nat_pkt *k, struct nat_pkt *in)
{
    uint8_t *ip;
    uint32_t hl, avail;
    if (k->l4len < 8 + 20)
        return -1;
    ip = k->l4 + 8;
    avail = k->l4len - 8;
    hl = (uint32_t)(ip[0] & 15) << 2;
    if ((ip[0] >> 4) != 4 || hl < 20 || avail < hl + 8)
        return -1;
    in->ip = ip;
    in->hl = hl;
    in->l4 = ip + hl;
    in->l4len = avail - hl;
    in->proto = ip[9];
    if (in->proto != PROTO_TCP && in->proto != PROTO_UDP && in->proto != PROTO_ICMP)
        return -1;
    return 0;
}

static inline uint32_t proto_class(uint32_t proto)
{
    return proto == PROTO_TCP ? 0u : proto == PROTO_UDP ? 1u : 2u;
}

static inline int nat_addr_index(const struct nat_state *s, uint32_t a)
{
    for (uint32_t i = 0; i < s->naddr; i++)
        if (s->addr[i] == a)
            return (int)i;
    return -1;
}

/* The live flow that owns public (address, port) for a protocol class, or
 * NAT_NONE; an expired one is reclaimed on the way. */
static inline uint32_t nat_lookup_pub(struct mb_elem *e, struct nat_state *s, uint32_t aidx,
                                      uint32_t pc, uint32_t port)
{
    uint32_t v, i;
    if (port < s->lo || port - s->lo >= s->range)
        return NAT_NONE;
    v = P2F(s, aidx * 3 + pc)[port - s->lo];
    if (!v)
        return NAT_NONE;
    i = v - 1;
    if (nat_expired(s, &FLOWS(s)[i])) {
        nat_free(s, i);
        e->xstat[X_EXPIRED]++;
        return NAT_NONE;
    }
    return i;
}

/* --- outbound ------------------------------------------------------------------ */

/* An ICMP error from the inside about a packet that came in through a
 * mapping: the quote is (remote -> inside host); it becomes (remote ->
 * public), and the error's source becomes the public address. Returns 0,
 * or the xstat index that explains the drop. */
static int nat_out_icmp_error(struct nat_state *s, struct nat_pkt *k)
{
    struct nat_pkt in;
    uint32_t ia, ip, ra, rp, i, pa, icmp_delta, d;
    struct nat_flow *f;
    uint8_t *l4;
    if (nat_parse_inner(k, &in) != 0)
        return X_UNTRANS;
    l4 = in.l4;
    ra = mb_rd32(in.ip + 12);
    ia = mb_rd32(in.ip + 16);
    if (in.proto == PROTO_ICMP) {
        if (l4[0] != 0)             /* only an echo reply went in */
            return X_NOMAP;
        ip = mb_rd16(l4 + 4);
        rp = 0;
    } else {
        rp = mb_rd16(l4);
        ip = mb_rd16(l4 + 2);
    }
    i = nat_lookup_in(s, nat_hash(s->seed, ia, ra, (ip << 16) | rp, in.proto), in.proto,
                      ia, ip, ra, rp);
    if (i == NAT_NONE || nat_expired(s, &FLOWS(s)[i]))
        return X_NOMAP;
    f = &FLOWS(s)[i];
    pa = s->addr[f->aidx];
    /* inner destination address and port */
    icmp_delta = d32(ia, pa);
    mb_wr32(in.ip + 16, pa);
    d = d32(ia, pa);
    {
        uint16_t o = csum_fix(in.ip + 10, d);
        icmp_delta += d16(o, mb_rd16(in.ip + 10));
    }
    if (in.proto == PROTO_ICMP) {
        uint32_t dl = d16((uint16_t)ip, f->pub_port);
        mb_wr16(l4 + 4, f->pub_port);
        icmp_delta += dl;
        uint16_t o = csum_fix(l4 + 2, dl);
        icmp_delta += d16(o, mb_rd16(l4 + 2));
    } else {
        uint32_t dl = d + d16((uint16_t)ip, f->pub_port);
        mb_wr16(l4 + 2, f->pub_port);
        icmp_delta += d16((uint16_t)ip, f->pub_port);
        if (in.proto == PROTO_UDP) {
            uint16_t o = udp_csum_fix(l4 + 6, dl);
            icmp_delta += d16(o, mb_rd16(l4 + 6));
        } else if (in.l4len >= 18) {
            uint16_t o = csum_fix(l4 + 16, dl);
            icmp_delta += d16(o, mb_rd16(l4 + 16));
        }
    }
    icmp_csum_fix(k->l4, k->l4len, icmp_delta);
    /* outer source: the public address */
    d = d32(mb_rd32(k->ip + 12), pa);
    mb_wr32(k->ip + 12, pa);
    csum_fix(k->ip + 10, d);
    return -1;
}

static void nat_outbound(struct mb_elem *e, struct nat_state *s, struct mb_packet *p,
                         struct nat_pkt *k, uint64_t h)
{
    uint32_t ia, ip, ra, rp, i, pc, pa, dip;
    struct nat_flow *f;
    uint8_t *l4 = k->l4;
    uint32_t proto = k->proto;

    ia = mb_rd32(k->ip + 12);
    ra = mb_rd32(k->ip + 16);
    if (proto == PROTO_ICMP) {
        ip = mb_rd16(l4 + 4);
        rp = 0;
    } else {
        ip = mb_rd16(l4);
        rp = mb_rd16(l4 + 2);
    }
    pc = proto_class(proto);
    i = nat_lookup_in(s, h, proto, ia, ip, ra, rp);
    if (i != NAT_NONE && MB_UNLIKELY(nat_expired(s, &FLOWS(s)[i]))) {
        nat_free(s, i);
        e->xstat[X_EXPIRED]++;
        i = NAT_NONE;
    }
    if (i == NAT_NONE) {
        i = nat_create(e, s, h, proto, pc, ia, ip, ra, rp);
        if (i == NAT_NONE) {
            mb_drop(e, p);
            return;
        }
        f = &FLOWS(s)[i];
        if (proto == PROTO_TCP && !(l4[13] & TCP_SYN))
            f->tcp = T_MID;
    }
    f = &FLOWS(s)[i];
    if (proto == PROTO_TCP) {
        uint32_t fl = l4[13];
        if ((fl & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
            ((f->tcp & T_RST) || (f->tcp & (T_FIN_OUT | T_FIN_IN)) == (T_FIN_OUT | T_FIN_IN)))
            f->tcp = 0;             /* the 5-tuple is used again */
        if (fl & TCP_SYN)
            f->tcp |= T_SYN_OUT;
        if (fl & TCP_FIN)
            f->tcp |= T_FIN_OUT;
        if (fl & TCP_RST)
            f->tcp |= T_RST;
    }
    nat_touch(s, f);

    pa = s->addr[f->aidx];
    dip = d32(ia, pa);
    mb_wr32(k->ip + 12, pa);
    csum_fix(k->ip + 10, dip);
    if (proto == PROTO_ICMP) {
        mb_wr16(l4 + 4, f->pub_port);
        icmp_csum_fix(l4, k->l4len, d16((uint16_t)ip, f->pub_port));
    } else {
        uint32_t dl = dip + d16((uint16_t)ip, f->pub_port);
        mb_wr16(l4, f->pub_port);
        if (proto == PROTO_UDP)
            udp_csum_fix(l4 + 6, dl);
        else
            csum_fix(l4 + 16, dl);
    }
    e->xstat[X_TRANSLATED]++;
    mb_emit(e, 0, p);
}

/* --- inbound -------------------------------------------------------------------- */

/* An ICMP error from the outside quoting a packet that went out through a
 * mapping: the quote is (public -> remote); it becomes (inside host ->
 * remote) and the error goes to the inside host. */
static int nat_in_icmp_error(struct mb_elem *e, struct nat_state *s, struct mb_packet *p,
                             struct nat_pkt *k, uint32_t aidx)
{
    struct nat_pkt in;
    uint32_t pp, ra, rp, i, pa, icmp_delta, d;
    struct nat_flow *f;
    uint8_t *l4;
    if (nat_parse_inner(k, &in) != 0)
        return X_UNTRANS;
    l4 = in.l4;
    pa = mb_rd32(in.ip + 12);
    ra = mb_rd32(in.ip + 16);
    if (pa != s->addr[aidx])
        return X_NOMAP;
    if (in.proto == PROTO_ICMP) {
        if (l4[0] != 8)             /* only echo requests went out */
            return X_NOMAP;
        pp = mb_rd16(l4 + 4);
        rp = 0;
    } else {
        pp = mb_rd16(l4);
        rp = mb_rd16(l4 + 2);
    }
    i = nat_lookup_pub(e, s, aidx, proto_class(in.proto), pp);
    if (i == NAT_NONE)
        return X_NOMAP;
    f = &FLOWS(s)[i];
    if (f->rem_addr != ra || f->rem_port != rp)
        return X_NOMAP;
    /* inner source address and port */
    d = d32(pa, f->in_addr);
    icmp_delta = d;
    mb_wr32(in.ip + 12, f->in_addr);
    {
        uint16_t o = csum_fix(in.ip + 10, d);
        icmp_delta += d16(o, mb_rd16(in.ip + 10));
    }
    if (in.proto == PROTO_ICMP) {
        uint32_t dl = d16((uint16_t)pp, f->in_port);
        mb_wr16(l4 + 4, f->in_port);
        icmp_delta += dl;
        uint16_t o = csum_fix(l4 + 2, dl);
        icmp_delta += d16(o, mb_rd16(l4 + 2));
    } else {
        uint32_t dl = d + d16((uint16_t)pp, f->in_port);
        mb_wr16(l4, f->in_port);
        icmp_delta += d16((uint16_t)pp, f->in_port);
        if (in.proto == PROTO_UDP) {
            uint16_t o = udp_csum_fix(l4 + 6, dl);
            icmp_delta += d16(o, mb_rd16(l4 + 6));
        } else if (in.l4len >= 18) {
            uint16_t o = csum_fix(l4 + 16, dl);
            icmp_delta += d16(o, mb_rd16(l4 + 16));
        }
    }
    icmp_csum_fix(k->l4, k->l4len, icmp_delta);
    /* outer destination: the inside host */
    d = d32(pa, f->in_addr);
    mb_wr32(k->ip + 16, f->in_addr);
    csum_fix(k->ip + 10, d);
    p->dst_ip = f->in_addr;
    return -1;
}

static void nat_inbound(struct mb_elem *e, struct nat_state *s, struct mb_packet *p,
                        struct nat_pkt *k, int aidx)
{
    uint32_t pp, ra, rp, i, pa;
    struct nat_flow *f;
    uint8_t *l4 = k->l4;
    uint32_t proto = k->proto;
    uint32_t dip;

    ra = mb_rd32(k->ip + 12);
    pa = s->addr[aidx];
    if (proto == PROTO_ICMP) {
        uint32_t type = l4[0];
        if (is_icmp_error(type)) {
            int why = nat_in_icmp_error(e, s, p, k, (uint32_t)aidx);
            if (why >= 0) {
                e->xstat[why]++;
                if (why == X_NOMAP)
                    mb_emit(e, 2, p);
                else
                    mb_drop(e, p);
                return;
            }
            e->xstat[X_TRANSLATED]++;
            mb_emit(e, 1, p);
            return;
        }
        if (type != 0)
            goto nomap;
        pp = mb_rd16(l4 + 4);
        rp = 0;
    } else {
        rp = mb_rd16(l4);
        pp = mb_rd16(l4 + 2);
    }
    i = nat_lookup_pub(e, s, (uint32_t)aidx, proto_class(proto), pp);
    if (i == NAT_NONE)
        goto nomap;
    f = &FLOWS(s)[i];
    if (f->rem_addr != ra || f->rem_port != rp)
        goto nomap;
    if (proto == PROTO_TCP) {
        uint32_t fl = l4[13];
        if (fl & TCP_SYN)
            f->tcp |= T_SYN_IN;
        if ((f->tcp & T_MID) && !(fl & TCP_RST))
            f->tcp |= T_SYN_IN;
        if (fl & TCP_FIN)
            f->tcp |= T_FIN_IN;
        if (fl & TCP_RST)
            f->tcp |= T_RST;
    }
    nat_touch(s, f);

    dip = d32(pa, f->in_addr);
    mb_wr32(k->ip + 16, f->in_addr);
    csum_fix(k->ip + 10, dip);
    if (proto == PROTO_ICMP) {
        mb_wr16(l4 + 4, f->in_port);
        icmp_csum_fix(l4, k->l4len, d16((uint16_t)pp, f->in_port));
    } else {
        uint32_t dl = dip + d16((uint16_t)pp, f->in_port);
        mb_wr16(l4 + 2, f->in_port);
        if (proto == PROTO_UDP)
            udp_csum_fix(l4 + 6, dl);
        else
            csum_fix(l4 + 16, dl);
    }
    p->dst_ip = f->in_addr;
    e->xstat[X_TRANSLATED]++;
    mb_emit(e, 1, p);
    return;
nomap:
    e->xstat[X_NOMAP]++;
    mb_emit(e, 2, p);
}

/* --- push ---------------------------------------------------------------------- */

/* Classify one packet: 0 = translate with hash *h (outbound) or public
 * address index *h (inbound); else the xstat index of a drop (X_NOMAP for
 * inbound: to output 2). */
static inline int nat_classify(const struct nat_state *s, struct mb_packet *p,
                               struct nat_pkt *k, uint64_t *h)
{
    int r = nat_parse_ip(p, k);
    uint8_t *l4;
    if (p->port != 0) {                 /* inbound */
        int aidx;
        if (r == -1)
            return X_UNTRANS;
        aidx = nat_addr_index(s, mb_rd32(k->ip + 16));
        if (aidx < 0)
            return X_NOMAP;
        if (r == -2)
            return X_FRAG;
        if (k->proto == PROTO_TCP ? k->l4len < 20 :
            k->proto == PROTO_UDP || k->proto == PROTO_ICMP ? k->l4len < 8 : 0)
            return X_UNTRANS;
        if (k->proto != PROTO_TCP && k->proto != PROTO_UDP && k->proto != PROTO_ICMP)
            return X_NOMAP;
        *h = (uint64_t)aidx;
        if (k->proto != PROTO_ICMP || k->l4[0] == 0) {
            uint32_t pp = mb_rd16(k->l4 + (k->proto == PROTO_ICMP ? 4 : 2));
            if (pp >= s->lo && pp - s->lo < s->range)
                MB_PREFETCH(&P2F(s, (uint32_t)aidx * 3 + proto_class(k->proto))[pp - s->lo]);
        }
        return 0;
    }
    if (r == -1)
        return X_UNTRANS;
    if (r == -2)
        return X_FRAG;
    l4 = k->l4;
    if (k->proto == PROTO_TCP) {
        if (k->l4len < 20)
            return X_UNTRANS;
    } else if (k->proto == PROTO_UDP) {
        if (k->l4len < 8)
            return X_UNTRANS;
    } else if (k->proto == PROTO_ICMP) {
        if (k->l4len < 8)
            return X_UNTRANS;
        if (l4[0] != 8) {
            *h = 0;
            return is_icmp_error(l4[0]) ? 0 : X_UNTRANS;
        }
    } else {
        return X_UNTRANS;
    }
    {
        uint32_t ia = mb_rd32(k->ip + 12), ra = mb_rd32(k->ip + 16), ports;
        if (k->proto == PROTO_ICMP)
            ports = (uint32_t)mb_rd16(l4 + 4) << 16;
        else
            ports = ((uint32_t)mb_rd16(l4) << 16) | mb_rd16(l4 + 2);
        *h = nat_hash(s->seed, ia, ra, ports, k->proto);
        ft_prefetch_bucket(&s->ft, *h);
    }
    return 0;
}

static void nat_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct nat_state *s = e->state;
    uint64_t now = mb_now(e->eng);
    struct nat_pkt ks[NAT_CHUNK];
    uint64_t hs[NAT_CHUNK];
    int rs[NAT_CHUNK];
    uint32_t base, j, m;

    ft_advance(&s->ft, now);
    nat_sweep(e, s, NAT_SWEEP);
    for (base = 0; base < n; base += m) {
        m = n - base < NAT_CHUNK ? n - base : NAT_CHUNK;
        for (j = 0; j < m; j++)
            rs[j] = nat_classify(s, pkts[base + j], &ks[j], &hs[j]);
        for (j = 0; j < m; j++)
            if (rs[j] == 0 && pkts[base + j]->port == 0 &&
                (ks[j].proto != PROTO_ICMP || ks[j].l4[0] == 8))
                ft_prefetch_entry(&s->ft, hs[j]);   /* bucket: nat_classify */
        for (j = 0; j < m; j++) {
            struct mb_packet *p = pkts[base + j];
            ft_advance(&s->ft, p->ts_ns);
            if (rs[j] != 0) {
                e->xstat[rs[j]]++;
                if (rs[j] == X_NOMAP && p->port != 0)
                    mb_emit(e, 2, p);
                else
                    mb_drop(e, p);
                continue;
            }
            if (p->port != 0) {
                nat_inbound(e, s, p, &ks[j], (int)hs[j]);
            } else if (ks[j].proto == PROTO_ICMP && ks[j].l4[0] != 8) {
                int why = nat_out_icmp_error(s, &ks[j]);
                if (why >= 0) {
                    e->xstat[why]++;
                    mb_drop(e, p);
                } else {
                    e->xstat[X_TRANSLATED]++;
                    mb_emit(e, 0, p);
                }
            } else {
                nat_outbound(e, s, p, &ks[j], hs[j]);
            }
        }
    }
}

/* --- handlers ------------------------------------------------------------------ */

static int nat_control(struct mb_elem *e, const uint8_t *msg, uint32_t len)
{
    struct nat_state *s = e->state;
    if (len != 1 || msg[0] != 1)
        return mb_fail(e, "unknown control message");
    nat_reset(s);
    return 0;
}

/* Query record of flow i (ctx: the state). */
static void nat_q_record(const void *ctx, uint32_t i, uint8_t *r)
{
    const struct nat_state *s = ctx;
    const struct nat_flow *f = &FLOWS(s)[i];
    r[0] = f->proto;
    r[1] = f->tcp;
    r[2] = (uint8_t)nat_established(f);
    r[3] = f->aidx;
    ft_put32(r + 4, f->in_addr);
    ft_put32(r + 8, f->rem_addr);
    ft_put32(r + 12, s->addr[f->aidx]);
    ft_put16(r + 16, f->in_port);
    ft_put16(r + 18, f->rem_port);
    ft_put16(r + 20, f->pub_port);
    ft_put16(r + 22, 0);
    ft_put64(r + 24, f->expires);
}

static uint32_t nat_query(struct mb_elem *e, uint32_t what, uint8_t *out, uint32_t cap)
{
    struct nat_state *s = e->state;
    return ft_query(&s->ft, what, out, cap, 32, nat_ft_state, nat_q_record, s);
}

MB_KERNEL(nat) = {
    .name = "nat",
    .state_size = nat_state_size,
    .init = nat_init,
    .push = nat_push,
    .control = nat_control,
    .query = nat_query,
};
