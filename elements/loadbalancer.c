/*
 * loadbalancer.c - the LoadBalancer kernel (elements/loadbalancer.py):
 * a layer-4, NAT-mode load balancer with a connection table and a backend
 * selection table (Maglev, or a weighted round-robin order) built in Python.
 *
 * Configuration and control messages are described in loadbalancer.py.
 * Addresses arrive in host byte order (little-endian u32) and are compared
 * with header fields read by mb_rd32 (host order too).
 *
 * State layout (one block, sized by lb_state_size):
 *   struct lb_state                  backends ("slots"), parameters
 *   buckets[nbuckets]                64-byte groups of 4 connection entries
 *   table[table_cap]                 u16 slot index per selection entry
 *
 * Backends live in slots: a slot keeps its address while connections
 * refer to it, so a backend removed by the write handler keeps serving its
 * established connections ("draining") until they end. A connection entry
 * names its backend by slot; slot reference counts say when a slot is free.
 * A connection goes in one of two groups (two hashes of its key); lookups
 * look in both, inserts take the emptier.
 */
#include "mb.h"

#define LB_WAYS 4
#define LB_SLOTS 1024            /* backends in the set plus draining ones */
#define LB_MAX_SET 512           /* MAX_BACKENDS in loadbalancer.py */
#define LB_INDEX 2048            /* open-addressing index of slots by address */
#define LB_MAX_CONNS (1u << 22)
#define LB_MAX_TABLE 1048573u
#define LB_HDR 28
#define LB_OP_SET 1
#define LB_CHUNK 32

enum { LB_MAGLEV = 0, LB_RR = 1, LB_HASH = 2 };
enum { X_NEW, X_FULL, X_NOT_VIP, X_NOT_BACKEND, X_FRAGMENT, X_BAD, X_NOCONN, X_EXPIRED };
/* TCP state bits of an entry: any set means closing. */
enum { LB_FIN_CLIENT = 1, LB_FIN_SERVER = 2, LB_RST = 4 };

struct lb_conn {
    uint64_t key;               /* client IP << 32 | port << 16 | proto << 8; 0: empty */
    uint32_t exp;               /* expiry time, 2^20 ns units (wraps) */
    uint16_t slot;
    uint8_t state;
    uint8_t pad;
};

struct lb_bucket {
    struct lb_conn c[LB_WAYS];
};

struct lb_slot {
    uint32_t ip;
    uint16_t port;
    uint16_t weight;
    uint32_t refs;              /* connection entries naming this slot */
    uint32_t live;              /* in the current set */
};

struct lb_state {
    uint32_t vip;
    uint16_t port;
    uint8_t protos;             /* bit 0 TCP, bit 1 UDP */
    uint8_t method;
    uint32_t mask;              /* buckets - 1 */
    uint32_t table_cap;
    uint32_t table_len;
    uint32_t t_tcp, t_fin, t_udp;
    uint32_t rr;
    uint32_t sweep;
    uint32_t used;              /* occupied entries (live or not yet reclaimed) */
    uint32_t nset;
    uint16_t set[LB_MAX_SET];   /* the set, in configured order (slot numbers) */
    uint16_t index[LB_INDEX];   /* slot + 1 by hash of address and port; 0 empty */
    struct lb_slot slots[LB_SLOTS];
    struct lb_bucket *buckets;
    uint16_t *table;
};

#define LB_ALIGN64(x) (((x) + 63u) & ~(uint64_t)63u)

static int lb_sizes(const uint8_t *cfg, uint32_t len, uint32_t *nconn, uint32_t *tcap)
{
    if (len < LB_HDR)
        return -1;
    *nconn = mb_le32(cfg + 8);
    *tcap = mb_le32(cfg + 12);
    if (*nconn < LB_WAYS || *nconn > LB_MAX_CONNS || (*nconn & (*nconn - 1)))
        return -1;
    if (*tcap < 1 || *tcap > LB_MAX_TABLE)
        return -1;
    return 0;
}

static uint32_t lb_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t nconn, tcap;
    uint64_t n = LB_ALIGN64(sizeof(struct lb_state));
    if (lb_sizes(cfg, len, &nconn, &tcap) < 0)
        return (uint32_t)n;
    n += (uint64_t)nconn * sizeof(struct lb_conn);
    n += (uint64_t)tcap * 2;
    return (uint32_t)n;
}

static inline uint64_t lb_mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline uint32_t lb_index_hash(uint32_t ip, uint16_t port)
{
    return (uint32_t)(lb_mix(((uint64_t)ip << 16) | port) & (LB_INDEX - 1));
}

static inline int lb_in_use(const struct lb_slot *sl)
{
    return sl->live || sl->refs;
}

/* Slot in use with this address and port, or -1. */
static int lb_find_slot(const struct lb_state *s, uint32_t ip, uint16_t port)
{
    uint32_t h = lb_index_hash(ip, port), i;
    for (i = 0; i < LB_INDEX; i++) {
        uint16_t v = s->index[(h + i) & (LB_INDEX - 1)];
        const struct lb_slot *sl;
        if (!v)
            return -1;
        sl = &s->slots[v - 1];
        if (sl->ip == ip && sl->port == port && lb_in_use(sl))
            return v - 1;
    }
    return -1;
}

/* Apply a "set backends" message: all checked before anything changes. */
static int lb_apply_set(struct mb_elem *e, const uint8_t *msg, uint32_t len)
{
    struct lb_state *s = e->state;
    uint16_t map[LB_MAX_SET];
    uint32_t nb, tlen, i, next = 0;
    const uint8_t *recs, *tab;

    if (len < 12 || mb_le32(msg) != LB_OP_SET)
        return mb_fail(e, "bad backend set message");
    nb = mb_le32(msg + 4);
    tlen = mb_le32(msg + 8);
    if (nb < 1 || nb > LB_MAX_SET || tlen < 1 || tlen > s->table_cap)
        return mb_fail(e, "bad backend or table count");
    if ((uint64_t)len != 12 + (uint64_t)nb * 8 + (uint64_t)tlen * 2)
        return mb_fail(e, "bad backend set length");
    recs = msg + 12;
    tab = recs + nb * 8;
    for (i = 0; i < tlen; i++)
        if (mb_le16(tab + 2 * i) >= nb)
            return mb_fail(e, "table names a backend that is not in the set");
    /* Backends already in use keep their slot; new ones take free slots. */
    for (i = 0; i < nb; i++) {
        int sl = lb_find_slot(s, mb_le32(recs + 8 * i), mb_le16(recs + 8 * i + 4));
        map[i] = sl < 0 ? 0xFFFF : (uint16_t)sl;
    }
    for (i = 0; i < nb; i++) {
        uint32_t j;
        if (map[i] != 0xFFFF)
            continue;
        for (j = 0; j < i; j++)     /* the same address twice: one slot */
            if (mb_le32(recs + 8 * j) == mb_le32(recs + 8 * i) &&
                mb_le16(recs + 8 * j + 4) == mb_le16(recs + 8 * i + 4))
                break;
        if (j < i) {
            map[i] = map[j];
            continue;
        }
        while (next < LB_SLOTS && lb_in_use(&s->slots[next]))
            next++;
        if (next == LB_SLOTS)
            return mb_fail(e, "too many backends still draining connections");
        map[i] = (uint16_t)next++;
    }
    /* Commit. */
    for (i = 0; i < LB_SLOTS; i++)
        s->slots[i].live = 0;
    for (i = 0; i < nb; i++) {
        struct lb_slot *sl = &s->slots[map[i]];
        sl->ip = mb_le32(recs + 8 * i);
        sl->port = mb_le16(recs + 8 * i + 4);
        sl->weight = mb_le16(recs + 8 * i + 6);
        sl->live = 1;
        s->set[i] = map[i];
    }
    s->nset = nb;
    memset(s->index, 0, sizeof(s->index));
    for (i = 0; i < LB_SLOTS; i++) {
        uint32_t h;
        if (!lb_in_use(&s->slots[i]))
            continue;
        h = lb_index_hash(s->slots[i].ip, s->slots[i].port);
        while (s->index[h])
            h = (h + 1) & (LB_INDEX - 1);
        s->index[h] = (uint16_t)(i + 1);
    }
    for (i = 0; i < tlen; i++)
        s->table[i] = map[mb_le16(tab + 2 * i)];
    s->table_len = tlen;
    s->rr %= tlen;
    return 0;
}

static int lb_init(struct mb_elem *e)
{
    struct lb_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t nconn, tcap;
    if (lb_sizes(c, e->cfg_len, &nconn, &tcap) < 0)
        return mb_fail(e, "bad load balancer configuration");
    s->vip = mb_le32(c);
    s->port = mb_le16(c + 4);
    s->protos = c[6];
    s->method = c[7];
    if (s->protos < 1 || s->protos > 3 || s->method > LB_HASH || s->port == 0)
        return mb_fail(e, "bad protocol, method or port");
    s->mask = nconn / LB_WAYS - 1;
    s->table_cap = tcap;
    s->t_tcp = mb_le32(c + 16);
    s->t_fin = mb_le32(c + 20);
    s->t_udp = mb_le32(c + 24);
    if ((s->t_tcp | s->t_fin | s->t_udp) & 0x80000000u)
        return mb_fail(e, "bad timeout");
    s->buckets = (struct lb_bucket *)((uint8_t *)s + LB_ALIGN64(sizeof(struct lb_state)));
    s->table = (uint16_t *)(s->buckets + nconn / LB_WAYS);
    return lb_apply_set(e, c + LB_HDR, e->cfg_len - LB_HDR);
}

static inline int lb_live(const struct lb_conn *c, uint32_t now)
{
    return (int32_t)(c->exp - now) >= 0;
}

static inline void lb_reclaim(struct mb_elem *e, struct lb_state *s, struct lb_conn *c)
{
    s->slots[c->slot].refs--;
    s->used--;
    c->key = 0;
    e->xstat[X_EXPIRED]++;
}

/* The live entry for key, or 0. */
static inline struct lb_conn *lb_lookup(struct lb_state *s, uint64_t key, uint64_t h,
                                        uint32_t now)
{
    struct lb_bucket *b = &s->buckets[(uint32_t)h & s->mask];
    uint32_t w;
    for (w = 0; w < LB_WAYS; w++)
        if (b->c[w].key == key)
            return lb_live(&b->c[w], now) ? &b->c[w] : 0;
    b = &s->buckets[(uint32_t)(h >> 32) & s->mask];
    for (w = 0; w < LB_WAYS; w++)
        if (b->c[w].key == key)
            return lb_live(&b->c[w], now) ? &b->c[w] : 0;
    return 0;
}

/* A free way for key in the emptier of its two groups (reclaiming expired
 * entries, including an expired one for key itself), or 0 when full. */
static struct lb_conn *lb_place(struct mb_elem *e, struct lb_state *s, uint64_t h, uint32_t now)
{
    struct lb_bucket *b[2];
    struct lb_conn *best = 0;
    uint32_t k, w, bestfree = 0;
    b[0] = &s->buckets[(uint32_t)h & s->mask];
    b[1] = &s->buckets[(uint32_t)(h >> 32) & s->mask];
    for (k = 0; k < 2; k++) {
        struct lb_conn *first = 0;
        uint32_t nfree = 0;
        if (k == 1 && b[1] == b[0])
            break;
        for (w = 0; w < LB_WAYS; w++) {
            struct lb_conn *c = &b[k]->c[w];
            if (c->key && !lb_live(c, now))
                lb_reclaim(e, s, c);
            if (!c->key) {
                nfree++;
                if (!first)
                    first = c;
            }
        }
        if (nfree > bestfree) {
            bestfree = nfree;
            best = first;
        }
    }
    return best;
}

/* Backend slot for a new connection. */
static inline uint16_t lb_select(struct lb_state *s, uint64_t h)
{
    uint32_t i;
    if (s->method == LB_RR) {
        i = s->rr;
        if (++s->rr >= s->table_len)
            s->rr = 0;
    } else {
        uint32_t x = (uint32_t)lb_mix(h ^ 0x9e3779b97f4a7c15ULL);
        /* Maglev: any uniform map onto the table; hash: plain modulo,
         * the classic (inconsistent) hash-mod-N. */
        i = s->method == LB_MAGLEV ? (uint32_t)(((uint64_t)x * s->table_len) >> 32)
                                   : x % s->table_len;
    }
    return s->table[i];
}

static inline uint32_t lb_fold(uint32_t sum)
{
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    return sum;
}

/* Rewrite the address at ip+aoff (12 source, 16 destination) and the port
 * at l4+poff, updating the IP and TCP/UDP checksums (RFC 1624, eqn. 3). */
static inline void lb_rewrite(uint8_t *ip, uint8_t *l4, uint8_t proto, uint32_t aoff,
                              uint32_t naddr, uint32_t poff, uint16_t nport)
{
    uint32_t old = mb_rd32(ip + aoff), d;
    uint16_t oport = mb_rd16(l4 + poff), c;
    d = (uint16_t)~(old >> 16) + (uint16_t)~old + (naddr >> 16) + (naddr & 0xFFFF);
    c = mb_rd16(ip + 10);
    mb_wr16(ip + 10, (uint16_t)~lb_fold((uint16_t)~c + d));
    mb_wr32(ip + aoff, naddr);
    d += (uint16_t)~oport + nport;
    mb_wr16(l4 + poff, nport);
    if (proto == 6) {
        c = mb_rd16(l4 + 16);
        mb_wr16(l4 + 16, (uint16_t)~lb_fold((uint16_t)~c + d));
    } else {
        c = mb_rd16(l4 + 6);
        if (c) {    /* UDP: 0 means no checksum; a computed 0 is sent as 0xFFFF */
            c = (uint16_t)~lb_fold((uint16_t)~c + d);
            mb_wr16(l4 + 6, c ? c : 0xFFFF);
        }
    }
}

/* Reclaim expired entries of one group per call. */
static inline void lb_sweep(struct mb_elem *e, struct lb_state *s, uint32_t now)
{
    struct lb_bucket *b = &s->buckets[s->sweep];
    uint32_t w;
    s->sweep = (s->sweep + 1) & s->mask;
    for (w = 0; w < LB_WAYS; w++)
        if (b->c[w].key && !lb_live(&b->c[w], now))
            lb_reclaim(e, s, &b->c[w]);
}

/* A packet after the first stage: parsed, classified, its key hashed. */
enum { LB_OK = 0, LB_OTHER = 1, LB_FRAG = 2, LB_BAD = 3, LB_NOT_VIP = 4 };

struct lb_job {
    uint8_t *ip;
    uint8_t *l4;
    uint64_t key;
    uint64_t h;
    uint8_t proto;
    uint8_t what;               /* LB_OK ... */
};

/* Parse the IPv4 and TCP/UDP headers and hash the connection key; for a
 * client packet (reply 0) the key is the source endpoint, for a reply
 * the destination endpoint. */
static inline void lb_classify(const struct lb_state *s, struct mb_packet *p, int reply,
                               struct lb_job *j)
{
    int32_t off = mb_nh_off(p, 20);
    uint32_t ihl, tl;
    uint8_t *ip, *l4;
    j->what = LB_BAD;
    if (off < 0)
        return;
    ip = p->data + off;
    ihl = (uint32_t)(ip[0] & 15) * 4;
    tl = mb_rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || tl < ihl || !mb_has(p, (uint32_t)off, tl))
        return;
    j->ip = ip;
    j->proto = ip[9];
    if (!reply && mb_rd32(ip + 16) != s->vip) {
        j->what = LB_NOT_VIP;
        return;
    }
    if (!((j->proto == 6 && (s->protos & 1)) || (j->proto == 17 && (s->protos & 2)))) {
        j->what = LB_OTHER;
        return;
    }
    if (mb_rd16(ip + 6) & 0x3FFF) {
        j->what = LB_FRAG;
        return;
    }
    if (tl - ihl < (j->proto == 6 ? 20u : 8u))
        return;
    l4 = j->l4 = ip + ihl;
    if (!reply) {
        if (mb_rd16(l4 + 2) != s->port) {
            j->what = LB_NOT_VIP;
            return;
        }
        j->key = ((uint64_t)mb_rd32(ip + 12) << 32) | ((uint64_t)mb_rd16(l4) << 16);
    } else {
        j->key = ((uint64_t)mb_rd32(ip + 16) << 32) | ((uint64_t)mb_rd16(l4 + 2) << 16);
    }
    j->key |= (uint64_t)j->proto << 8;
    j->h = lb_mix(j->key);
    j->what = LB_OK;
    MB_PREFETCH(&s->buckets[(uint32_t)j->h & s->mask]);
}

static inline void lb_client(struct mb_elem *e, struct lb_state *s, struct mb_packet *p,
                             const struct lb_job *j, uint32_t now)
{
    struct lb_conn *c;
    struct lb_slot *sl;
    uint16_t slot;
    uint8_t flags = 0;
    if (MB_UNLIKELY(j->what != LB_OK)) {
        if (j->what == LB_BAD) {
            e->xstat[X_BAD]++;
            mb_drop(e, p);
            return;
        }
        e->xstat[j->what == LB_FRAG ? X_FRAGMENT : X_NOT_VIP]++;
        mb_emit(e, 2, p);
        return;
    }
    c = lb_lookup(s, j->key, j->h, now);
    if (j->proto == 6)
        flags = j->l4[13];
    if (MB_LIKELY(c != 0)) {
        /* A SYN on a closing connection opens a new one (port reuse). */
        if (MB_UNLIKELY(c->state && (flags & 0x16) == 0x02)) {
            s->slots[c->slot].refs--;
            c->slot = lb_select(s, j->h);
            s->slots[c->slot].refs++;
            c->state = 0;
            e->xstat[X_NEW]++;
        }
        slot = c->slot;
    } else {
        slot = lb_select(s, j->h);
        e->xstat[X_NEW]++;
        c = lb_place(e, s, j->h, now);
        if (c) {
            c->key = j->key;
            c->slot = slot;
            c->state = 0;
            s->slots[slot].refs++;
            s->used++;
        } else {
            e->xstat[X_FULL]++;
        }
    }
    if (c) {
        if (j->proto == 6) {
            if (flags & 0x04)
                c->state |= LB_RST;
            if (flags & 0x01)
                c->state |= LB_FIN_CLIENT;
            c->exp = now + (c->state ? s->t_fin : s->t_tcp);
        } else {
            c->exp = now + s->t_udp;
        }
    }
    sl = &s->slots[slot];
    lb_rewrite(j->ip, j->l4, j->proto, 16, sl->ip, 2, sl->port);
    p->dst_ip = sl->ip;
    mb_emit(e, 0, p);
}

static inline void lb_reply(struct mb_elem *e, struct lb_state *s, struct mb_packet *p,
                            const struct lb_job *j, uint32_t now)
{
    struct lb_conn *c;
    const struct lb_slot *sl;
    uint32_t src;
    uint16_t sport;
    if (MB_UNLIKELY(j->what != LB_OK)) {
        if (j->what == LB_BAD) {
            e->xstat[X_BAD]++;
            mb_drop(e, p);
            return;
        }
        e->xstat[j->what == LB_FRAG ? X_FRAGMENT : X_NOT_BACKEND]++;
        mb_emit(e, 3, p);
        return;
    }
    src = mb_rd32(j->ip + 12);
    sport = mb_rd16(j->l4);
    c = lb_lookup(s, j->key, j->h, now);
    sl = c ? &s->slots[c->slot] : 0;
    if (MB_LIKELY(sl && sl->ip == src && sl->port == sport)) {
        if (j->proto == 6) {
            uint8_t flags = j->l4[13];
            if (flags & 0x04)
                c->state |= LB_RST;
            if (flags & 0x01)
                c->state |= LB_FIN_SERVER;
            c->exp = now + (c->state ? s->t_fin : s->t_tcp);
        } else {
            c->exp = now + s->t_udp;
        }
    } else if (lb_find_slot(s, src, sport) >= 0) {
        e->xstat[X_NOCONN]++;
    } else {
        e->xstat[X_NOT_BACKEND]++;
        mb_emit(e, 3, p);
        return;
    }
    p->dst_ip = mb_rd32(j->ip + 16);
    lb_rewrite(j->ip, j->l4, j->proto, 12, s->vip, 0, s->port);
    mb_emit(e, 1, p);
}

/* Two stages per chunk of packets: parse, hash and prefetch the group of
 * every packet, then look up and rewrite (the prefetches overlap). */
static void lb_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct lb_state *s = e->state;
    struct lb_job jobs[LB_CHUNK];
    uint32_t now = (uint32_t)(mb_now(e->eng) >> 20), i, base, m;
    lb_sweep(e, s, now);
    lb_sweep(e, s, now);
    for (base = 0; base < n; base += m) {
        m = n - base < LB_CHUNK ? n - base : LB_CHUNK;
        for (i = 0; i < m; i++)
            lb_classify(s, pkts[base + i], pkts[base + i]->port != 0, &jobs[i]);
        for (i = 0; i < m; i++) {
            struct mb_packet *p = pkts[base + i];
            if (p->port == 0)
                lb_client(e, s, p, &jobs[i], now);
            else
                lb_reply(e, s, p, &jobs[i], now);
        }
    }
}

static int lb_control(struct mb_elem *e, const uint8_t *msg, uint32_t len)
{
    return lb_apply_set(e, msg, len);
}

static inline void lb_put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static uint32_t lb_query(struct mb_elem *e, uint32_t what, uint8_t *out, uint32_t cap)
{
    struct lb_state *s = e->state;
    uint32_t now = (uint32_t)(mb_now(e->eng) >> 20), i, w, n = 0, live = 0;
    if (what == 0) {
        if (cap < 12)
            return 0;
        for (i = 0; i <= s->mask; i++)
            for (w = 0; w < LB_WAYS; w++)
                live += s->buckets[i].c[w].key && lb_live(&s->buckets[i].c[w], now);
        lb_put32(out, live);
        lb_put32(out + 4, s->used);
        lb_put32(out + 8, (s->mask + 1) * LB_WAYS);
        return 12;
    }
    if (what == 1) {
        for (i = 0; i <= s->mask; i++)
            for (w = 0; w < LB_WAYS; w++) {
                const struct lb_conn *c = &s->buckets[i].c[w];
                const struct lb_slot *sl = &s->slots[c->slot];
                uint32_t rec[5];
                if (!c->key || !lb_live(c, now))
                    continue;
                if (cap - n < 20)
                    return n;
                rec[0] = (uint32_t)(c->key >> 32);
                rec[1] = (uint32_t)((c->key >> 16) & 0xFFFF) |
                         ((uint32_t)((c->key >> 8) & 0xFF) << 16) | ((uint32_t)c->state << 24);
                rec[2] = sl->ip;
                rec[3] = sl->port;
                rec[4] = c->exp - now;
                for (uint32_t j = 0; j < 5; j++)
                    lb_put32(out + n + 4 * j, rec[j]);
                n += 20;
            }
        return n;
    }
    if (what == 2) {
        uint32_t nset = 0, ndrain = 0, k;
        if (cap < 8)
            return 0;
        n = 8;
        for (k = 0; k < 2; k++)
            for (i = 0; i < (k ? LB_SLOTS : s->nset); i++) {
                const struct lb_slot *sl = &s->slots[k ? i : s->set[i]];
                uint32_t rec[4];
                if (k && (sl->live || !sl->refs))
                    continue;
                if (cap - n < 16)
                    break;
                rec[0] = sl->ip;
                rec[1] = sl->port | ((uint32_t)sl->weight << 16);
                rec[2] = sl->refs;
                rec[3] = sl->live;
                for (uint32_t j = 0; j < 4; j++)
                    lb_put32(out + n + 4 * j, rec[j]);
                n += 16;
                if (k)
                    ndrain++;
                else
                    nset++;
            }
        lb_put32(out, nset);
        lb_put32(out + 4, ndrain);
        return n;
    }
    return 0;
}

MB_KERNEL(load_balancer) = {
    .name = "load_balancer",
    .state_size = lb_state_size,
    .init = lb_init,
    .push = lb_push,
    .control = lb_control,
    .query = lb_query,
};
