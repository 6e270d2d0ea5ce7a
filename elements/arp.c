/*
 * arp.c - kernels of ARPResponder, ARPQuerier, HostEtherFilter and
 * DropBroadcasts (elements/arp.py).
 *
 * Configuration (little-endian; IPv4 addresses as host-order u32, Ethernet
 * addresses as 6 raw bytes):
 *   arp_responder      u32 n, then n x {u32 addr, u32 mask, u8 eth[6], u8 pad[2]}
 *                      longest prefix first: the first match answers
 *   arp_querier        u32 ip, u8 eth[6], u8 pad[2], u32 capacity,
 *                      u32 table size (power of 2, >= 4), u32 per-entry
 *                      packet limit (0: none), u64 timeout ns (0: never),
 *                      u32 broadcast (0: none), u32 0          (40 bytes)
 *   host_ether_filter  u8 eth[6], u8 drop_own, u8 drop_other, u32 offset
 *   drop_broadcasts    u32 offset
 */
#include "mb.h"

#define ETH_HLEN 14u
#define ETH_ALEN 6u
#define ARP_LEN 42u                 /* Ethernet + IPv4-over-Ethernet ARP */
#define ETHERTYPE_IP 0x0800u
#define ETHERTYPE_ARP 0x0806u
#define ARPOP_REQUEST 1u
#define ARPOP_REPLY 2u

/* Offsets in an ARP frame. */
#define A_HRD 14u
#define A_PRO 16u
#define A_HLN 18u
#define A_PLN 19u
#define A_OP 20u
#define A_SHA 22u
#define A_SPA 28u
#define A_THA 32u
#define A_TPA 38u

static const uint8_t eth_bcast[ETH_ALEN] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* An IPv4-over-Ethernet ARP frame with operation op. */
static inline int arp_frame_ok(const struct mb_packet *p, uint32_t op)
{
    const uint8_t *d = p->data;
    return p->len >= ARP_LEN && mb_rd16(d + 12) == ETHERTYPE_ARP && mb_rd16(d + A_HRD) == 1 &&
           mb_rd16(d + A_PRO) == ETHERTYPE_IP && d[A_HLN] == ETH_ALEN && d[A_PLN] == 4 &&
           mb_rd16(d + A_OP) == op;
}

/* Write the 42-byte frame of an ARP message at d. */
static void arp_write(uint8_t *d, const uint8_t *eth_dst, const uint8_t *eth_src, uint32_t op,
                      const uint8_t *sha, uint32_t spa, const uint8_t *tha, uint32_t tpa)
{
    memcpy(d, eth_dst, ETH_ALEN);
    memcpy(d + 6, eth_src, ETH_ALEN);
    mb_wr16(d + 12, ETHERTYPE_ARP);
    mb_wr16(d + A_HRD, 1);
    mb_wr16(d + A_PRO, ETHERTYPE_IP);
    d[A_HLN] = ETH_ALEN;
    d[A_PLN] = 4;
    mb_wr16(d + A_OP, (uint16_t)op);
    memcpy(d + A_SHA, sha, ETH_ALEN);
    mb_wr32(d + A_SPA, spa);
    memcpy(d + A_THA, tha, ETH_ALEN);
    mb_wr32(d + A_TPA, tpa);
}

/* --- ARPResponder ------------------------------------------------------------ */

#define AR_MAX 4096u

struct ar_entry {
    uint32_t addr;
    uint32_t mask;
    uint8_t eth[ETH_ALEN];
};

struct ar_state {
    uint32_t n;
    struct ar_entry v[];
};

static uint32_t ar_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t n = len >= 4 ? mb_le32(cfg) : 0;
    if (n > AR_MAX)
        n = 0;
    return (uint32_t)(sizeof(struct ar_state) + n * sizeof(struct ar_entry));
}

static int ar_init(struct mb_elem *e)
{
    struct ar_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t n, i;
    if (e->cfg_len < 4)
        return mb_fail(e, "bad configuration");
    n = mb_le32(c);
    if (n == 0 || n > AR_MAX || e->cfg_len != 4 + 16 * n)
        return mb_fail(e, "bad configuration");
    for (i = 0; i < n; i++) {
        const uint8_t *r = c + 4 + 16 * i;
        s->v[i].addr = mb_le32(r);
        s->v[i].mask = mb_le32(r + 4);
        memcpy(s->v[i].eth, r + 8, ETH_ALEN);
        if (s->v[i].addr & ~s->v[i].mask)
            return mb_fail(e, "bad prefix");
    }
    s->n = n;
    return 0;
}

static void ar_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct ar_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        const struct ar_entry *hit = 0;
        if (arp_frame_ok(p, ARPOP_REQUEST)) {
            uint32_t tpa = mb_rd32(p->data + A_TPA);
            for (uint32_t k = 0; k < s->n; k++)
                if ((tpa & s->v[k].mask) == s->v[k].addr) {
                    hit = &s->v[k];
                    break;
                }
        }
        if (!hit) {
            e->xstat[1]++;
            mb_emit(e, 1, p);       /* dropped and counted if unconnected */
            continue;
        }
        uint8_t *d = p->data;
        uint8_t sha[ETH_ALEN];
        uint32_t spa = mb_rd32(d + A_SPA), tpa = mb_rd32(d + A_TPA);
        memcpy(sha, d + A_SHA, ETH_ALEN);
        arp_write(d, sha, hit->eth, ARPOP_REPLY, hit->eth, tpa, sha, spa);
        mb_take(p, p->len - ARP_LEN);
        e->xstat[0]++;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(arp_responder) = {
    .name = "arp_responder",
    .state_size = ar_state_size,
    .init = ar_init,
    .push = ar_push,
};

/* --- ARPQuerier ---------------------------------------------------------------- */

#define AQ_CFG_LEN 40u
#define AQ_MAX_CAPACITY 16384u
#define AQ_MAX_TABLE 65536u
#define AQ_WAYS 4u
#define AQ_QUERY_NS 1000000000ull   /* at most one query a second per address */
#define AQ_SWEEP 4u                 /* entries checked for expiry per batch */

#define AQ_USED 1u
#define AQ_KNOWN 2u
#define AQ_QUERIED 4u

/* xstat slots, in the order of ARPQuerier.xstats */
enum { AQX_QUERIES, AQX_REPLIES, AQX_BAD_ARP, AQX_NO_ADDRESS, AQX_HELD_DROPS,
       AQX_EVICTIONS, AQX_NO_ROOM, AQX_NO_BUFFER };

struct aq_entry {
    uint32_t ip;
    uint8_t flags;
    uint8_t mac[ETH_ALEN];
    uint8_t pad;
    uint64_t stamp;                 /* learned, or last queried: expiry base */
    uint64_t last_query;
    uint32_t head, tail;            /* held packets: slot index + 1, 0: none */
    uint32_t nheld;
    uint32_t pad2;
};

struct aq_slot {
    struct mb_packet *p;
    uint32_t next;                  /* slot index + 1, 0: none */
};

struct aq_state {
    uint32_t ip;
    uint8_t eth[ETH_ALEN];
    uint32_t capacity;
    uint32_t tsize;                 /* entries; nbuckets = tsize / AQ_WAYS */
    uint32_t per_entry;
    uint64_t timeout;
    uint32_t bcast;
    uint32_t free;                  /* free slot list: index + 1, 0: none */
    uint32_t sweep;
    struct aq_entry *t;
    struct aq_slot *slots;
};

static int aq_sizes_ok(uint32_t cap, uint32_t tsize)
{
    return cap >= 1 && cap <= AQ_MAX_CAPACITY && tsize >= AQ_WAYS && tsize <= AQ_MAX_TABLE &&
           !(tsize & (tsize - 1));
}

static uint32_t aq_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t cap, tsize;
    if (len != AQ_CFG_LEN)
        return sizeof(struct aq_state);
    cap = mb_le32(cfg + 12);
    tsize = mb_le32(cfg + 16);
    if (!aq_sizes_ok(cap, tsize))
        return sizeof(struct aq_state);
    return (uint32_t)(sizeof(struct aq_state) + tsize * sizeof(struct aq_entry) +
                      cap * sizeof(struct aq_slot));
}

static int aq_init(struct mb_elem *e)
{
    struct aq_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t i;
    if (e->cfg_len != AQ_CFG_LEN)
        return mb_fail(e, "bad configuration");
    s->ip = mb_le32(c);
    memcpy(s->eth, c + 4, ETH_ALEN);
    s->capacity = mb_le32(c + 12);
    s->tsize = mb_le32(c + 16);
    s->per_entry = mb_le32(c + 20);
    s->timeout = mb_le64(c + 24);
    s->bcast = mb_le32(c + 32);
    if (!aq_sizes_ok(s->capacity, s->tsize) || s->per_entry > AQ_MAX_CAPACITY ||
        e->nin != 2 || e->nout < 1 || e->nout > 2)
        return mb_fail(e, "bad configuration");
    s->t = (struct aq_entry *)(s + 1);
    s->slots = (struct aq_slot *)(s->t + s->tsize);
    for (i = 0; i < s->capacity; i++)
        s->slots[i].next = i + 1 < s->capacity ? i + 2 : 0;
    s->free = 1;
    return 0;
}

static inline int aq_expired(const struct aq_state *s, const struct aq_entry *en, uint64_t now)
{
    return s->timeout && now >= en->stamp && now - en->stamp >= s->timeout;
}

/* Drop every packet an entry holds. */
static void aq_drop_held(struct mb_elem *e, struct aq_state *s, struct aq_entry *en)
{
    while (en->head) {
        struct aq_slot *sl = &s->slots[en->head - 1];
        uint32_t idx = en->head;
        en->head = sl->next;
        mb_drop(e, sl->p);
        e->held--;
        e->xstat[AQX_HELD_DROPS]++;
        sl->p = 0;
        sl->next = s->free;
        s->free = idx;
    }
    en->tail = 0;
    en->nheld = 0;
}

static void aq_clear(struct mb_elem *e, struct aq_state *s, struct aq_entry *en)
{
    aq_drop_held(e, s, en);
    en->flags = 0;
}

static inline struct aq_entry *aq_bucket(const struct aq_state *s, uint32_t ip)
{
    uint32_t h = ip * 0x9E3779B1u;
    uint32_t b = (uint32_t)(((uint64_t)h * (s->tsize / AQ_WAYS)) >> 32);
    return &s->t[b * AQ_WAYS];
}

static struct aq_entry *aq_find(const struct aq_state *s, uint32_t ip)
{
    struct aq_entry *b = aq_bucket(s, ip);
    for (uint32_t w = 0; w < AQ_WAYS; w++)
        if ((b[w].flags & AQ_USED) && b[w].ip == ip)
            return &b[w];
    return 0;
}

/* A fresh entry for ip: a free way of its group, else the group's least
 * recently refreshed entry, whose held packets are dropped. */
static struct aq_entry *aq_insert(struct mb_elem *e, struct aq_state *s, uint32_t ip,
                                  uint64_t now)
{
    struct aq_entry *b = aq_bucket(s, ip), *victim = 0;
    for (uint32_t w = 0; w < AQ_WAYS; w++) {
        if (!(b[w].flags & AQ_USED)) {
            victim = &b[w];
            break;
        }
        if (!victim || b[w].stamp < victim->stamp)
            victim = &b[w];
    }
    if (victim->flags & AQ_USED) {
        e->xstat[AQX_EVICTIONS]++;
        aq_clear(e, s, victim);
    }
    victim->ip = ip;
    victim->flags = AQ_USED;
    victim->stamp = now;
    victim->last_query = 0;
    victim->head = victim->tail = victim->nheld = 0;
    return victim;
}

/* Room for n bytes in front of the data: headroom, else shift into tailroom. */
static inline int aq_prepend(struct mb_packet *p, uint32_t n)
{
    if (MB_LIKELY(mb_push(p, n) == 0))
        return 0;
    if (mb_tailroom(p) < n)
        return -1;
    memmove(p->data + n, p->data, p->len);
    p->len += n;
    if (p->nh)
        p->nh += n;
    return 0;
}

/* Encapsulate p for dst and send it on output 0. */
static inline void aq_send(struct mb_elem *e, const struct aq_state *s, struct mb_packet *p,
                           const uint8_t *dst)
{
    if (MB_UNLIKELY(aq_prepend(p, ETH_HLEN) < 0)) {
        e->xstat[AQX_NO_ROOM]++;
        mb_drop(e, p);
        return;
    }
    memcpy(p->data, dst, ETH_ALEN);
    memcpy(p->data + 6, s->eth, ETH_ALEN);
    mb_wr16(p->data + 12, ETHERTYPE_IP);
    mb_emit(e, 0, p);
}

static void aq_query(struct mb_elem *e, struct aq_state *s, struct aq_entry *en, uint64_t now)
{
    static const uint8_t zero[ETH_ALEN] = {0};
    struct mb_packet *q = mb_alloc(e->eng);
    if (!q || mb_put(q, ARP_LEN) < 0) {
        if (q)
            mb_free(e->eng, q);
        e->xstat[AQX_NO_BUFFER]++;
        return;
    }
    arp_write(q->data, eth_bcast, s->eth, ARPOP_REQUEST, s->eth, s->ip, zero, en->ip);
    e->created++;
    e->xstat[AQX_QUERIES]++;
    en->flags |= AQ_QUERIED;
    en->last_query = now;
    en->stamp = now;
    mb_emit(e, e->nout > 1 ? 1 : 0, q);
}

/* Keep p until en is resolved. */
static void aq_hold(struct mb_elem *e, struct aq_state *s, struct aq_entry *en,
                    struct mb_packet *p)
{
    struct aq_slot *sl;
    uint32_t idx;
    if (s->per_entry && en->nheld >= s->per_entry) {
        /* Drop the oldest held for this address, as Click does. */
        idx = en->head;
        sl = &s->slots[idx - 1];
        en->head = sl->next;
        if (!en->head)
            en->tail = 0;
        en->nheld--;
        mb_drop(e, sl->p);
        e->held--;
        e->xstat[AQX_HELD_DROPS]++;
        sl->p = 0;
        sl->next = s->free;
        s->free = idx;
    }
    if (!s->free) {
        e->xstat[AQX_HELD_DROPS]++;
        mb_drop(e, p);
        return;
    }
    idx = s->free;
    sl = &s->slots[idx - 1];
    s->free = sl->next;
    sl->p = p;
    sl->next = 0;
    if (en->tail)
        s->slots[en->tail - 1].next = idx;
    else
        en->head = idx;
    en->tail = idx;
    en->nheld++;
    e->held++;
}

static void aq_ip(struct mb_elem *e, struct aq_state *s, struct mb_packet *p, uint64_t now)
{
    uint32_t a = p->dst_ip;
    struct aq_entry *en;
    if (!a) {
        int32_t off = mb_nh_off(p, 20);
        if (off < 0)
            off = 0;
        if (mb_has(p, (uint32_t)off, 20))
            a = mb_rd32(p->data + off + 16);
    }
    if (MB_UNLIKELY(!a)) {
        e->xstat[AQX_NO_ADDRESS]++;
        mb_drop(e, p);
        return;
    }
    if (MB_UNLIKELY(a == 0xFFFFFFFFu || a == s->bcast)) {
        aq_send(e, s, p, eth_bcast);
        return;
    }
    if (MB_UNLIKELY((a >> 28) == 0xE)) {
        uint8_t mc[ETH_ALEN] = {0x01, 0x00, 0x5e, (uint8_t)((a >> 16) & 0x7f),
                                (uint8_t)(a >> 8), (uint8_t)a};
        aq_send(e, s, p, mc);
        return;
    }
    en = aq_find(s, a);
    if (en && aq_expired(s, en, now)) {
        aq_clear(e, s, en);
        en = 0;
    }
    if (MB_LIKELY(en && (en->flags & AQ_KNOWN))) {
        aq_send(e, s, p, en->mac);
        return;
    }
    if (!en)
        en = aq_insert(e, s, a, now);
    aq_hold(e, s, en, p);
    if (!(en->flags & AQ_QUERIED) || now < en->last_query ||
        now - en->last_query >= AQ_QUERY_NS)
        aq_query(e, s, en, now);
}

static void aq_reply(struct mb_elem *e, struct aq_state *s, struct mb_packet *p, uint64_t now)
{
    const uint8_t *d = p->data;
    struct aq_entry *en;
    uint32_t spa;
    if (!arp_frame_ok(p, ARPOP_REPLY) || (d[A_SHA] & 1) || !(spa = mb_rd32(d + A_SPA))) {
        e->xstat[AQX_BAD_ARP]++;
        mb_drop(e, p);
        return;
    }
    en = aq_find(s, spa);
    if (!en)
        en = aq_insert(e, s, spa, now);
    memcpy(en->mac, d + A_SHA, ETH_ALEN);
    en->flags |= AQ_KNOWN;
    en->stamp = now;
    e->xstat[AQX_REPLIES]++;
    mb_drop(e, p);                  /* consumed */
    while (en->head) {
        uint32_t idx = en->head;
        struct aq_slot *sl = &s->slots[idx - 1];
        struct mb_packet *h = sl->p;
        en->head = sl->next;
        sl->p = 0;
        sl->next = s->free;
        s->free = idx;
        e->held--;
        aq_send(e, s, h, en->mac);
    }
    en->tail = 0;
    en->nheld = 0;
}

static void aq_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct aq_state *s = e->state;
    uint64_t now = mb_now(e->eng);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        /* A batch carries packets of several arrival times: the clock is
         * the latest of the engine's time and the packets' so far. */
        if (p->ts_ns > now)
            now = p->ts_ns;
        if (p->port == 1)
            aq_reply(e, s, p, now);
        else
            aq_ip(e, s, p, now);
    }
    /* Expire a few entries, so held packets of addresses nobody asks for
     * any more are let go. */
    for (uint32_t k = 0; k < AQ_SWEEP; k++) {
        struct aq_entry *en = &s->t[s->sweep];
        s->sweep = (s->sweep + 1) & (s->tsize - 1);
        if ((en->flags & AQ_USED) && aq_expired(s, en, now))
            aq_clear(e, s, en);
    }
}

MB_KERNEL(arp_querier) = {
    .name = "arp_querier",
    .state_size = aq_state_size,
    .init = aq_init,
    .push = aq_push,
};

/* --- HostEtherFilter ------------------------------------------------------------ */

struct hef_state {
    uint8_t eth[ETH_ALEN];
    uint8_t drop_own;
    uint8_t drop_other;
    uint32_t offset;
};

static uint32_t hef_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct hef_state);
}

static int hef_init(struct mb_elem *e)
{
    struct hef_state *s = e->state;
    if (e->cfg_len != 12)
        return mb_fail(e, "bad configuration");
    memcpy(s->eth, e->cfg, ETH_ALEN);
    s->drop_own = e->cfg[6];
    s->drop_other = e->cfg[7];
    s->offset = mb_le32(e->cfg + 8);
    if (s->drop_own > 1 || s->drop_other > 1 || s->offset > 0xFFFFu)
        return mb_fail(e, "bad configuration");
    return 0;
}

static void hef_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct hef_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(!mb_has(p, s->offset, ETH_HLEN))) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        const uint8_t *h = p->data + s->offset;
        int other = s->drop_other && !(h[0] & 1) && memcmp(h, s->eth, ETH_ALEN) != 0;
        int own = s->drop_own && memcmp(h + 6, s->eth, ETH_ALEN) == 0;
        mb_emit(e, (other || own) ? 1 : 0, p);
    }
}

MB_KERNEL(host_ether_filter) = {
    .name = "host_ether_filter",
    .state_size = hef_state_size,
    .init = hef_init,
    .push = hef_push,
};

/* --- DropBroadcasts ---------------------------------------------------------------- */

static void db_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint32_t off = mb_u16_cfg(e);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(!mb_has(p, off, ETH_ALEN))) {
            e->xstat[1]++;
            mb_drop(e, p);
        } else if (p->data[off] & 1) {
            e->xstat[0]++;
            mb_drop(e, p);
        } else {
            mb_emit(e, 0, p);
        }
    }
}

MB_KERNEL(drop_broadcasts) = {
    .name = "drop_broadcasts",
    .state_size = mb_u16_cfg_size,
    .init = mb_u16_cfg_init,
    .push = db_push,
};
