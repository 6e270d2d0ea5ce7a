/*
 * routing.c - kernel of StaticIPLookup and RadixIPLookup (elements/routing.py):
 * longest-prefix match of the dst_ip annotation (host byte order).
 *
 * The tables are built by elements/routing.py and read in place from the
 * plan (e->cfg); the layout is described there. In short: a 65536-entry
 * first level indexed by the top 16 address bits, and run-length compressed
 * 256-entry chunks for bits 16-23 and 24-31. Entries: 0 no route, k next hop
 * k-1, bit 31 set: chunk index. The config is little-endian and 8-byte
 * aligned in the plan; the kernel reads it as native words, so it needs a
 * little-endian CPU (checked at compile time) and checks the alignment.
 *
 * init checks every entry and chunk, so a lookup never leaves the tables and
 * ends after at most three levels: level-1 entries may only point to level-2
 * chunks, level-2 entries to level-3 chunks, level-3 entries are leaves.
 */
#include "mb.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "routing.c reads little-endian plan tables in place"
#endif

#define RT_VERSION 1u
#define RT_HEADER 32u
#define RT_L1 65536u
#define RT_CHUNK_BIT 0x80000000u
#define RT_MAX_OUTPUTS 1024u

struct rt_nexthop {
    uint32_t port;
    uint32_t gateway;               /* host order; 0: keep the annotation */
};

struct rt_chunk {
    uint64_t map[4];                /* bit i: entry i starts a new run */
    uint32_t base;                  /* first value in entries[] */
    uint8_t before[4];              /* bits set in map[0..w-1] */
};

struct rt_state {
    const struct rt_nexthop *nh;
    const uint32_t *l1;
    const struct rt_chunk *chunks;
    const uint32_t *entries;
    uint32_t nnh;
};

static uint32_t rt_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct rt_state);
}

/* Population count without libgcc (freestanding builds lack __popcountdi2). */
static inline uint32_t rt_popcount(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (uint32_t)((x * 0x0101010101010101ull) >> 56);
}

/* Entry i (0..255) of a chunk. */
static inline uint32_t rt_chunk_get(const struct rt_chunk *c, const uint32_t *entries,
                                    uint32_t i)
{
    uint32_t w = i >> 6;
    uint64_t upto = c->map[w] & (~0ull >> (63 - (i & 63)));
    return entries[c->base + c->before[w] + rt_popcount(upto) - 1];
}

/* Check one chunk: map bit 0 set, `before` consistent, values inside
 * entries[], and each value a leaf or a chunk in [lo, hi). */
static int rt_check_chunk(const struct rt_state *s, const struct rt_chunk *c,
                          uint32_t nentries, uint32_t lo, uint32_t hi)
{
    uint32_t w, k, count = 0;
    if (!(c->map[0] & 1))
        return -1;
    for (w = 0; w < 4; w++) {
        if (c->before[w] != count)
            return -1;
        count += rt_popcount(c->map[w]);
    }
    if (c->base > nentries || count > nentries - c->base)
        return -1;
    for (k = 0; k < count; k++) {
        uint32_t v = s->entries[c->base + k];
        if (v & RT_CHUNK_BIT) {
            v &= ~RT_CHUNK_BIT;
            if (v < lo || v >= hi)
                return -1;
        } else if (v > s->nnh) {
            return -1;
        }
    }
    return 0;
}

static int rt_init(struct mb_elem *e)
{
    struct rt_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t nnh, n2, n3, nent, nout, i;
    uint64_t need;
    if (e->cfg_len < RT_HEADER || ((uintptr_t)c & 7))
        return mb_fail(e, "bad configuration");
    nnh = mb_le32(c + 4);
    n2 = mb_le32(c + 8);
    n3 = mb_le32(c + 12);
    nent = mb_le32(c + 16);
    nout = mb_le32(c + 20);
    if (mb_le32(c) != RT_VERSION || nout != e->nout || nout == 0 || nout > RT_MAX_OUTPUTS ||
        n2 > RT_L1 || n3 > (RT_CHUNK_BIT - 1) - n2)
        return mb_fail(e, "bad configuration");
    need = (uint64_t)RT_HEADER + 8ull * nnh + 4ull * RT_L1 +
           (uint64_t)sizeof(struct rt_chunk) * (n2 + n3) + 4ull * nent;
    if (need != e->cfg_len)
        return mb_fail(e, "bad configuration length");
    s->nnh = nnh;
    s->nh = (const struct rt_nexthop *)(c + RT_HEADER);
    s->l1 = (const uint32_t *)(c + RT_HEADER + 8ull * nnh);
    s->chunks = (const struct rt_chunk *)(s->l1 + RT_L1);
    s->entries = (const uint32_t *)(s->chunks + n2 + n3);
    for (i = 0; i < nnh; i++)
        if (s->nh[i].port >= nout)
            return mb_fail(e, "route to a missing output");
    for (i = 0; i < RT_L1; i++) {
        uint32_t v = s->l1[i];
        if ((v & RT_CHUNK_BIT) ? (v & ~RT_CHUNK_BIT) >= n2 : v > nnh)
            return mb_fail(e, "bad route table");
    }
    for (i = 0; i < n2 + n3; i++) {
        int bad = i < n2 ? rt_check_chunk(s, &s->chunks[i], nent, n2, n2 + n3)
                         : rt_check_chunk(s, &s->chunks[i], nent, 0, 0);
        if (bad)
            return mb_fail(e, "bad route table chunk");
    }
    return 0;
}

static void rt_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct rt_state *s = e->state;
    const uint32_t *l1 = s->l1, *ent = s->entries;
    const struct rt_chunk *chunks = s->chunks;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint32_t a = p->dst_ip;
        uint32_t v = l1[a >> 16];
        if (MB_UNLIKELY(v & RT_CHUNK_BIT)) {
            v = rt_chunk_get(&chunks[v & ~RT_CHUNK_BIT], ent, (a >> 8) & 255);
            if (v & RT_CHUNK_BIT)
                v = rt_chunk_get(&chunks[v & ~RT_CHUNK_BIT], ent, a & 255);
        }
        if (MB_UNLIKELY(v == 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        const struct rt_nexthop *h = &s->nh[v - 1];
        if (h->gateway)
            p->dst_ip = h->gateway;
        mb_emit(e, h->port, p);
    }
}

MB_KERNEL(ip_lookup) = {
    .name = "ip_lookup",
    .state_size = rt_state_size,
    .init = rt_init,
    .push = rt_push,
};
