/*
 * statefulfw.c - kernel of the StatefulFirewall element (elements/statefulfw.py):
 * connection tracking for IPv4 with IPFilter rules for new connections.
 *
 * Input 0: packets from the inside, passed ones leave on output 0.
 * Input 1: packets from the outside, passed ones leave on output 1.
 * Packets are never modified. Only the IPv4 packet at the nh annotation is
 * read; bytes in front of it (an Ethernet header) are left alone.
 *
 * A connection is the 5-tuple of its first packet: initiator address and
 * port (a, ap), responder address and port (b, bp), protocol; plus the side
 * it was opened from. A packet belongs to it when its (src, sport, dst,
 * dport) is (a, ap, b, bp) (forward: from the initiator) or (b, bp, a, ap)
 * (reverse: a reply), and it arrives from the matching side. Ports are 17
 * bits wide: an ICMP echo request from X to Y with identifier i is
 * (X, i, Y, NOPORT) and its echo reply (Y, NOPORT, X, i), with NOPORT =
 * 0x10000, so requests and replies can never be confused for each other,
 * whichever side pings. Protocols other than TCP, UDP and ICMP are tracked
 * by their addresses (ports 0).
 *
 * Configuration (little-endian):
 *   u32 magic "SFW1", u32 capacity (1..2^22), u64 timeouts in ns: udp, tcp
 *   established, tcp transitory, tcp closing, icmp (each 1..2^62), u32 len0,
 *   u32 len1, then the inside rules program (len0 bytes) and the outside
 *   rules program (len1 bytes), both elements/program.h programs (IP
 *   programs: output 0 = allow, anything else = deny).
 *
 * State, one block (state_size) with 64-byte aligned arrays:
 *   conns   the connection table (elements/flowtable.h): capacity entries
 *           of 32 bytes (struct sfw_conn), free ones on a stack, and a
 *           bucketed cuckoo index over them (two buckets per key of 8
 *           (signature, entry index) slots). The hash is symmetric in the
 *           two endpoints, so one index entry serves both directions.
 *   prog0, prog1  the loaded rule programs (program.h).
 *
 * Time: now = the largest of mb_now() and the packets' timestamps seen so
 * far (never goes back). A connection expires `timeout` after its last
 * packet; related ICMP errors do not refresh it. Expired entries are
 * reclaimed when met by a lookup, SFW_SWEEP entries per push by a sweeping
 * cursor, and up to SFW_RECLAIM more before a new connection is refused
 * (table_full).
 *
 * TCP state (struct sfw_conn.state): SYN_SENT (the initiator's SYN) ->
 * SYN_RECV (the responder's SYN+ACK) -> ESTABLISHED (the initiator's ACK);
 * a FIN either way -> FIN_WAIT; FINs both ways or an RST -> CLOSED. A pure
 * SYN from either side on a CLOSED connection ends it: the SYN is handled
 * as the first packet of a new connection. Timeouts: transitory in
 * SYN_SENT, SYN_RECV and FIN_WAIT, established in ESTABLISHED, closing in
 * CLOSED. No sequence or window tracking.
 *
 * xstat: 0 new_conns, 1 expired, 2 related (ICMP errors passed for a
 * connection), 3 denied, 4 no_conn, 5 table_full, 6 fragments, 7 malformed.
 * Every dropped packet is counted once in 3..7.
 *
 * control (write handler "flush"): message 0x01 removes every connection.
 * query(what): live connections from entry `what` on: header u32 next entry
 * to ask for (0xFFFFFFFF: done), u32 live entries, u64 now (ns); then
 * 32-byte records: u8 proto, u8 TCP state, u8 side that opened it, u8 1 if
 * a reply was seen, u32 a, u32 b, u32 ap, u32 bp, u32 0, u64 expiry (ns).
 */
#include "program.h"
#include "flowtable.h"

#define SFW_MAGIC 0x31574653u          /* "SFW1" */
#define SFW_MAX_CAPACITY FT_MAX_CAPACITY
#define SFW_CFG_FIXED 56u
#define SFW_NONE FT_NONE
#define SFW_B2_SHIFT 20u               /* second bucket: hash bits 20.. */
#define SFW_SWEEP 8u
#define SFW_RECLAIM 64u
#define SFW_CHUNK 16u
#define NOPORT 0x10000u

#define PROTO_ICMP 1u
#define PROTO_TCP 6u
#define PROTO_UDP 17u

#define TCP_FIN 0x01u
#define TCP_SYN 0x02u
#define TCP_RST 0x04u
#define TCP_ACK 0x10u

enum { ST_NONE, ST_SYN_SENT, ST_SYN_RECV, ST_EST, ST_FIN_WAIT, ST_CLOSED };
enum { X_NEW, X_EXPIRED, X_RELATED, X_DENIED, X_NOCONN, X_FULL, X_FRAG, X_MALFORMED };
enum { TO_UDP, TO_TCP_EST, TO_TCP_TRANS, TO_TCP_CLOSING, TO_ICMP };

/* struct sfw_conn.flags */
#define F_USED 0x80u
#define F_REPLIED 0x01u
#define F_FIN_A 0x02u
#define F_FIN_B 0x04u

struct sfw_conn {
    uint32_t a, b;          /* initiator, responder address (host order);
                             * a, when free: the free stack link */
    uint32_t ap, bp;        /* their ports (17 bits: NOPORT) */
    uint64_t expires;       /* ns */
    uint8_t proto;
    uint8_t state;          /* TCP: ST_*; else 0 */
    uint8_t side;           /* input it was opened from: 0 inside, 1 outside */
    uint8_t flags;          /* F_* */
    uint32_t pad;
};
_Static_assert(sizeof(struct sfw_conn) == 32, "an entry is 32 bytes");

struct sfw_state {
    struct ft ft;           /* connections and their index */
    uint32_t seed;
    uint64_t to[5];
    uint64_t o_prog[2];
};

struct sfw_cfg {
    uint32_t cap, len[2];
    uint64_t to[5];
};

static int sfw_parse(const uint8_t *c, uint32_t len, struct sfw_cfg *k)
{
    uint32_t i;
    if (!c || len < SFW_CFG_FIXED || mb_le32(c) != SFW_MAGIC)
        return -1;
    k->cap = mb_le32(c + 4);
    for (i = 0; i < 5; i++)
        k->to[i] = mb_le64(c + 8 + 8 * i);
    k->len[0] = mb_le32(c + 48);
    k->len[1] = mb_le32(c + 52);
    if (k->cap < 1 || k->cap > SFW_MAX_CAPACITY)
        return -1;
    for (i = 0; i < 5; i++)
        if (k->to[i] == 0 || k->to[i] > (1ull << 62))
            return -1;
    if (k->len[0] > len - SFW_CFG_FIXED || k->len[1] != len - SFW_CFG_FIXED - k->len[0])
        return -1;
    return 0;
}

/* Offsets of the arrays and the total size; 0 when too large. With s, the
 * table is set up (ft_reset still to do). */
static uint64_t sfw_layout(const uint8_t *cfg, const struct sfw_cfg *k, struct sfw_state *s)
{
    uint64_t off, o_prog[2];
    const uint8_t *p1 = cfg + SFW_CFG_FIXED + k->len[0];
    off = ft_layout(s ? &s->ft : 0, (uint8_t *)s, sizeof(struct sfw_state), k->cap,
                    sizeof(struct sfw_conn), SFW_B2_SHIFT);
    o_prog[0] = off;
    off = FT_ALIGN64(off + cls_prog_size(cfg + SFW_CFG_FIXED, k->len[0]));
    o_prog[1] = off;
    off = FT_ALIGN64(off + cls_prog_size(p1, k->len[1]));
    if (off > 0xFFFFFFC0ull)
        return 0;
    if (s) {
        s->o_prog[0] = o_prog[0];
        s->o_prog[1] = o_prog[1];
    }
    return off;
}

static uint32_t sfw_state_size(const uint8_t *cfg, uint32_t len)
{
    struct sfw_cfg k;
    uint64_t n;
    if (sfw_parse(cfg, len, &k) != 0)
        return sizeof(struct sfw_state);
    n = sfw_layout(cfg, &k, 0);
    return n ? (uint32_t)n : sizeof(struct sfw_state);
}

#define CONNS(s) ((struct sfw_conn *)(s)->ft.ents)
#define PROG(s, i) ((const struct cls_prog *)((const uint8_t *)(s) + (s)->o_prog[i]))

static int sfw_init(struct mb_elem *e)
{
    struct sfw_state *s = e->state;
    struct sfw_cfg k;
    const char *err;
    uint32_t i;
    if (sfw_parse(e->cfg, e->cfg_len, &k) != 0)
        return mb_fail(e, "bad configuration");
    if (sfw_layout(e->cfg, &k, s) == 0)
        return mb_fail(e, "configuration too large");
    for (i = 0; i < 5; i++)
        s->to[i] = k.to[i];
    err = cls_prog_load((struct cls_prog *)((uint8_t *)s + s->o_prog[0]),
                        e->cfg + SFW_CFG_FIXED, k.len[0]);
    if (!err)
        err = cls_prog_load((struct cls_prog *)((uint8_t *)s + s->o_prog[1]),
                            e->cfg + SFW_CFG_FIXED + k.len[0], k.len[1]);
    if (err)
        return mb_fail(e, err);
    if (!(PROG(s, 0)->flags & CLS_F_IP) || !(PROG(s, 1)->flags & CLS_F_IP))
        return mb_fail(e, "rules are not an IP program");
    s->seed = 0x5F3C0A1Bu ^ k.cap;
    ft_reset(&s->ft);
    return 0;
}

/* --- the index ------------------------------------------------------------- */

/* Symmetric in the endpoints (addr, port): both directions hash alike. */
static inline uint64_t sfw_hash(uint32_t seed, uint32_t proto, uint32_t s, uint32_t sp,
                                uint32_t d, uint32_t dp)
{
    uint64_t e1 = ((uint64_t)s << 17) | sp, e2 = ((uint64_t)d << 17) | dp;
    uint64_t lo = e1 < e2 ? e1 : e2, hi = e1 < e2 ? e2 : e1;
    uint64_t h = (lo ^ ((uint64_t)seed << 49)) * 0x9E3779B97F4A7C15ull;
    h ^= (hi + (h >> 29) + ((uint64_t)proto << 56)) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

static inline uint64_t sfw_conn_hash(const struct sfw_state *s, const struct sfw_conn *c)
{
    return sfw_hash(s->seed, c->proto, c->a, c->ap, c->b, c->bp);
}

/* A packet's key: protocol, source, destination (17-bit ports). */
struct sfw_key {
    uint32_t proto, s, sp, d, dp;
};

/* 0: the packet goes forward (from the initiator), 1: reverse, -1: not this
 * connection. */
static inline int sfw_match(const struct sfw_conn *c, const struct sfw_key *k)
{
    if (c->proto != k->proto)
        return -1;
    if (c->a == k->s && c->b == k->d && c->ap == k->sp && c->bp == k->dp)
        return 0;
    if (c->a == k->d && c->b == k->s && c->ap == k->dp && c->bp == k->sp)
        return 1;
    return -1;
}

/* Flow table callbacks (ctx: the state; the sweep's: the element). */
static inline int sfw_ft_match(const void *ctx, uint32_t i, const void *key)
{
    return sfw_match(&CONNS((const struct sfw_state *)ctx)[i], key);
}

static uint64_t sfw_ft_hash(const void *ctx, uint32_t i)
{
    const struct sfw_state *s = ctx;
    return sfw_conn_hash(s, &CONNS(s)[i]);
}

/* The connection with key k, its direction in *dir; or SFW_NONE. */
static inline uint32_t sfw_lookup(const struct sfw_state *s, uint64_t h,
                                  const struct sfw_key *k, int *dir)
{
    return ft_find(&s->ft, h, sfw_ft_match, s, k, dir);
}

/* --- entries ---------------------------------------------------------------- */

/* Unindex and free connection i (ctx: the state). */
static void sfw_free(void *ctx, uint32_t i)
{
    struct sfw_state *s = ctx;
    struct sfw_conn *c = &CONNS(s)[i];
    uint64_t h = sfw_conn_hash(s, c);
    c->flags = 0;
    ft_remove(&s->ft, i, h);
}

static inline int sfw_expired(const struct sfw_state *s, const struct sfw_conn *c)
{
    return ft_expired(&s->ft, c->expires);
}

/* FT_FREE, FT_LIVE or FT_EXPIRED (ctx: the state). */
static int sfw_ft_state(const void *ctx, uint32_t i)
{
    const struct sfw_conn *c = &CONNS((const struct sfw_state *)ctx)[i];
    return !(c->flags & F_USED) ? FT_FREE : sfw_expired(ctx, c) ? FT_EXPIRED : FT_LIVE;
}

static inline uint32_t sfw_sweep(struct mb_elem *e, struct sfw_state *s, uint32_t count)
{
    uint32_t n = ft_sweep(&s->ft, count, sfw_ft_state, sfw_free, s);
    e->xstat[X_EXPIRED] += n;
    return n;
}

static inline uint64_t sfw_timeout(const struct sfw_state *s, const struct sfw_conn *c)
{
    switch (c->proto) {
    case PROTO_TCP:
        return c->state == ST_EST ? s->to[TO_TCP_EST] :
               c->state == ST_CLOSED ? s->to[TO_TCP_CLOSING] : s->to[TO_TCP_TRANS];
    case PROTO_ICMP:
        return s->to[TO_ICMP];
    default:
        return s->to[TO_UDP];
    }
}

static inline void sfw_touch(const struct sfw_state *s, struct sfw_conn *c)
{
    c->expires = s->ft.now + sfw_timeout(s, c);
}

/* A new connection for key k opened from `side`; its index, or SFW_NONE
 * with table_full counted. */
static uint32_t sfw_create(struct mb_elem *e, struct sfw_state *s, uint64_t h,
                           const struct sfw_key *k, uint32_t side)
{
    struct sfw_conn *c;
    uint32_t i;
    if (ft_full(&s->ft) && sfw_sweep(e, s, SFW_RECLAIM) == 0) {
        e->xstat[X_FULL]++;
        return SFW_NONE;
    }
    i = ft_insert(&s->ft, h, sfw_ft_hash, s);
    if (i == SFW_NONE) {
        e->xstat[X_FULL]++;             /* 2 + 16 buckets full: vanishingly rare */
        return SFW_NONE;
    }
    c = &CONNS(s)[i];
    c->a = k->s;
    c->b = k->d;
    c->ap = k->sp;
    c->bp = k->dp;
    c->proto = (uint8_t)k->proto;
    c->state = k->proto == PROTO_TCP ? ST_SYN_SENT : ST_NONE;
    c->side = (uint8_t)side;
    c->flags = F_USED;
    e->xstat[X_NEW]++;
    sfw_touch(s, c);
    return i;
}

/* --- packets ---------------------------------------------------------------- */

enum { K_TRACK, K_FRAG, K_ICMP_ERR, K_ICMP_OTHER, K_MALFORMED };

struct sfw_pkt {
    struct sfw_key k;
    uint8_t *ip;
    uint8_t *l4;
    uint32_t l4len;
    uint32_t kind;
    uint32_t tcpfl;
};

static inline int is_icmp_error(uint32_t type)
{
    return type == 3 || type == 4 || type == 11 || type == 12;
}

/* Parse the packet at the nh annotation into q (kind and, for K_TRACK,
 * the key). */
static inline void sfw_parse_pkt(struct mb_packet *p, struct sfw_pkt *q)
{
    int32_t off = mb_nh_off(p, 20);
    uint8_t *ip, *l4;
    uint32_t hl, tot, proto, fo, l4len;
    q->kind = K_MALFORMED;
    if (MB_UNLIKELY(off < 0))
        return;
    ip = p->data + off;
    hl = (uint32_t)(ip[0] & 15) << 2;
    tot = mb_rd16(ip + 2);
    if (MB_UNLIKELY((ip[0] >> 4) != 4 || hl < 20 || tot < hl || tot > p->len - (uint32_t)off))
        return;
    proto = ip[9];
    l4 = ip + hl;
    l4len = tot - hl;
    q->ip = ip;
    q->l4 = l4;
    q->l4len = l4len;
    q->k.proto = proto;
    fo = mb_rd16(ip + 6) & 0x1FFF;
    if (MB_UNLIKELY(fo != 0)) {
        q->kind = K_FRAG;
        return;
    }
    q->k.s = mb_rd32(ip + 12);
    q->k.d = mb_rd32(ip + 16);
    if (proto == PROTO_TCP) {
        if (MB_UNLIKELY(l4len < 20))
            return;
        q->k.sp = mb_rd16(l4);
        q->k.dp = mb_rd16(l4 + 2);
        q->tcpfl = l4[13];
    } else if (proto == PROTO_UDP) {
        if (MB_UNLIKELY(l4len < 8))
            return;
        q->k.sp = mb_rd16(l4);
        q->k.dp = mb_rd16(l4 + 2);
    } else if (proto == PROTO_ICMP) {
        uint32_t type;
        if (MB_UNLIKELY(l4len < 8))
            return;
        type = l4[0];
        if (type == 8) {
            q->k.sp = mb_rd16(l4 + 4);
            q->k.dp = NOPORT;
        } else if (type == 0) {
            q->k.sp = NOPORT;
            q->k.dp = mb_rd16(l4 + 4);
        } else {
            q->kind = is_icmp_error(type) ? K_ICMP_ERR : K_ICMP_OTHER;
            return;
        }
    } else {
        q->k.sp = 0;
        q->k.dp = 0;
    }
    q->kind = K_TRACK;
}

/* The rules of `side` over packet p: 1 allow, 0 deny. */
static inline int sfw_allowed(const struct sfw_state *s, uint32_t side, const struct mb_packet *p)
{
    return cls_run_ip(PROG(s, side), p) == -1;
}

/* The live connection with key k (expired ones are reclaimed), its
 * direction in *dir; or SFW_NONE. */
static inline uint32_t sfw_find(struct mb_elem *e, struct sfw_state *s, uint64_t h,
                                const struct sfw_key *k, int *dir)
{
    uint32_t i = sfw_lookup(s, h, k, dir);
    if (i != SFW_NONE && MB_UNLIKELY(sfw_expired(s, &CONNS(s)[i]))) {
        sfw_free(s, i);
        e->xstat[X_EXPIRED]++;
        return SFW_NONE;
    }
    return i;
}

/* An ICMP error: 1 if it quotes a packet of a live connection that went
 * out through the other side towards where the error comes from, and is
 * addressed to the quoted packet's source. */
static int sfw_related(struct mb_elem *e, struct sfw_state *s, const struct sfw_pkt *q,
                       uint32_t side)
{
    const uint8_t *ip, *l4;
    uint32_t hl, avail, i, proto, qs, qd;
    struct sfw_key k;
    int dir;
    const struct sfw_conn *c;
    if (q->l4len < 8 + 20)
        return 0;
    ip = q->l4 + 8;
    avail = q->l4len - 8;
    hl = (uint32_t)(ip[0] & 15) << 2;
    if ((ip[0] >> 4) != 4 || hl < 20 || avail < hl + 8 || (mb_rd16(ip + 6) & 0x1FFF))
        return 0;
    l4 = ip + hl;
    proto = ip[9];
    qs = mb_rd32(ip + 12);
    qd = mb_rd32(ip + 16);
    if (mb_rd32(q->ip + 16) != qs)
        return 0;
    k.proto = proto;
    k.s = qs;
    k.d = qd;
    if (proto == PROTO_TCP || proto == PROTO_UDP) {
        k.sp = mb_rd16(l4);
        k.dp = mb_rd16(l4 + 2);
    } else if (proto == PROTO_ICMP) {
        if (l4[0] == 8) {
            k.sp = mb_rd16(l4 + 4);
            k.dp = NOPORT;
        } else if (l4[0] == 0) {
            k.sp = NOPORT;
            k.dp = mb_rd16(l4 + 4);
        } else {
            return 0;
        }
    } else {
        k.sp = 0;
        k.dp = 0;
    }
    i = sfw_find(e, s, sfw_hash(s->seed, k.proto, k.s, k.sp, k.d, k.dp), &k, &dir);
    if (i == SFW_NONE)
        return 0;
    c = &CONNS(s)[i];
    /* the quoted packet came in from side c->side ^ dir; the error comes back
     * from the other one */
    return side != ((uint32_t)c->side ^ (uint32_t)dir);
}

static inline void sfw_tcp_update(struct sfw_conn *c, int dir, uint32_t fl)
{
    if (fl & TCP_RST) {
        c->state = ST_CLOSED;
        return;
    }
    if (c->state == ST_SYN_SENT && dir == 1 && (fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
        c->state = ST_SYN_RECV;
    else if (c->state == ST_SYN_RECV && dir == 0 && (fl & (TCP_SYN | TCP_ACK)) == TCP_ACK)
        c->state = ST_EST;
    if (fl & TCP_FIN) {
        c->flags |= dir ? F_FIN_B : F_FIN_A;
        c->state = (c->flags & (F_FIN_A | F_FIN_B)) == (F_FIN_A | F_FIN_B) ? ST_CLOSED
                                                                          : ST_FIN_WAIT;
    }
}

static inline void sfw_drop(struct mb_elem *e, struct mb_packet *p, uint32_t why)
{
    e->xstat[why]++;
    mb_drop(e, p);
}

static void sfw_one(struct mb_elem *e, struct sfw_state *s, struct mb_packet *p,
                    const struct sfw_pkt *q, uint64_t h)
{
    uint32_t side = p->port != 0;
    uint32_t i;
    int dir;
    struct sfw_conn *c;

    switch (q->kind) {
    case K_TRACK:
        break;
    case K_FRAG:
        /* RFC 1858: a TCP fragment at offset 8 could rewrite the flags */
        if (q->k.proto == PROTO_TCP && (mb_rd16(q->ip + 6) & 0x1FFF) == 1)
            sfw_drop(e, p, X_FRAG);
        else if (sfw_allowed(s, side, p))
            mb_emit(e, side, p);
        else
            sfw_drop(e, p, X_FRAG);
        return;
    case K_ICMP_ERR:
    case K_ICMP_OTHER:
        /* an error about a connection passes; other ICMP: the rules decide */
        if (q->kind == K_ICMP_ERR && sfw_related(e, s, q, side)) {
            e->xstat[X_RELATED]++;
            mb_emit(e, side, p);
        } else if (sfw_allowed(s, side, p)) {
            mb_emit(e, side, p);
        } else {
            sfw_drop(e, p, X_DENIED);
        }
        return;
    default:
        sfw_drop(e, p, X_MALFORMED);
        return;
    }

    i = sfw_find(e, s, h, &q->k, &dir);
    if (i != SFW_NONE) {
        c = &CONNS(s)[i];
        if (MB_UNLIKELY(side != ((uint32_t)c->side ^ (uint32_t)dir))) {
            sfw_drop(e, p, X_NOCONN);           /* right tuple, wrong side */
            return;
        }
        if (q->k.proto == PROTO_TCP) {
            if (MB_UNLIKELY(c->state == ST_CLOSED &&
                            (q->tcpfl & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_SYN)) {
                sfw_free(s, i);                 /* the tuple is used again */
                goto fresh;
            }
            sfw_tcp_update(c, dir, q->tcpfl);
        }
        if (dir)
            c->flags |= F_REPLIED;
        sfw_touch(s, c);
        mb_emit(e, side, p);
        return;
    }
fresh:
    if (q->k.proto == PROTO_TCP ?
        (q->tcpfl & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) != TCP_SYN :
        q->k.proto == PROTO_ICMP && q->k.sp == NOPORT) {
        sfw_drop(e, p, X_NOCONN);               /* not the start of a connection */
        return;
    }
    if (!sfw_allowed(s, side, p)) {
        sfw_drop(e, p, X_DENIED);
        return;
    }
    if (sfw_create(e, s, h, &q->k, side) == SFW_NONE) {
        mb_drop(e, p);                          /* table_full counted */
        return;
    }
    mb_emit(e, side, p);
}

static void sfw_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct sfw_state *s = e->state;
    uint64_t now = mb_now(e->eng);
    struct sfw_pkt qs[SFW_CHUNK];
    uint64_t hs[SFW_CHUNK];
    uint32_t base, j, m;

    ft_advance(&s->ft, now);
    sfw_sweep(e, s, SFW_SWEEP);
    for (base = 0; base < n; base += m) {
        m = n - base < SFW_CHUNK ? n - base : SFW_CHUNK;
        for (j = 0; j < m; j++) {
            sfw_parse_pkt(pkts[base + j], &qs[j]);
            if (qs[j].kind == K_TRACK) {
                const struct sfw_key *k = &qs[j].k;
                hs[j] = sfw_hash(s->seed, k->proto, k->s, k->sp, k->d, k->dp);
                ft_prefetch_bucket(&s->ft, hs[j]);
            } else {
                hs[j] = 0;
            }
        }
        for (j = 0; j < m; j++)
            if (qs[j].kind == K_TRACK)
                ft_prefetch_entry(&s->ft, hs[j]);
        for (j = 0; j < m; j++) {
            struct mb_packet *p = pkts[base + j];
            ft_advance(&s->ft, p->ts_ns);
            sfw_one(e, s, p, &qs[j], hs[j]);
        }
    }
}

/* --- handlers ---------------------------------------------------------------- */

static int sfw_control(struct mb_elem *e, const uint8_t *msg, uint32_t len)
{
    if (len != 1 || msg[0] != 1)
        return mb_fail(e, "unknown control message");
    ft_reset(&((struct sfw_state *)e->state)->ft);
    return 0;
}

/* Query record of connection i (ctx: the state). */
static void sfw_q_record(const void *ctx, uint32_t i, uint8_t *r)
{
    const struct sfw_conn *c = &CONNS((const struct sfw_state *)ctx)[i];
    r[0] = c->proto;
    r[1] = c->state;
    r[2] = c->side;
    r[3] = (uint8_t)((c->flags & F_REPLIED) != 0);
    ft_put32(r + 4, c->a);
    ft_put32(r + 8, c->b);
    ft_put32(r + 12, c->ap);
    ft_put32(r + 16, c->bp);
    ft_put32(r + 20, 0);
    ft_put64(r + 24, c->expires);
}

static uint32_t sfw_query(struct mb_elem *e, uint32_t what, uint8_t *out, uint32_t cap)
{
    struct sfw_state *s = e->state;
    return ft_query(&s->ft, what, out, cap, 32, sfw_ft_state, sfw_q_record, s);
}

MB_KERNEL(statefulfw) = {
    .name = "statefulfw",
    .state_size = sfw_state_size,
    .init = sfw_init,
    .push = sfw_push,
    .control = sfw_control,
    .query = sfw_query,
};
