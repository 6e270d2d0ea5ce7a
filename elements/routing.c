/*
 * routing.c - kernel of StaticIPLookup and RadixIPLookup (elements/routing.py):
 * longest-prefix match of the dst_ip annotation (host byte order).
 *
 * The plan carries the route list (layout in elements/routing.py), sorted by
 * (prefix, length). init checks it and builds the lookup table into the
 * element's state, which rt_state_size() sizes from the same list:
 *
 *   level 1   2^S entries indexed by the top S address bits: S = 16, or 8
 *             for tables of at most RT_SMALL routes (1 KiB instead of 256)
 *   chunks    256 entries for the next 8 bits, one per address group (of
 *             S, S+8, ... 24 leading bits) holding a prefix longer than the
 *             group; a chunk's entries start as the entry it replaced
 *
 * Entries: 0 no route, k route k-1 of the list, bit 31 set: chunk index.
 * State: the header below, level 1 (4 * 2^S bytes), then 1 KiB per chunk.
 *
 * Building: in (prefix, length) order a prefix comes before every prefix
 * inside it, so each route is painted over whatever covers its range (a
 * shorter route or nothing) and a range being painted never holds a chunk.
 * The chunk count is then the number of distinct groups, counted in one
 * pass over the sorted list, which init checks before it builds. Nothing
 * is allocated: the state is the engine's, zeroed, sized before init.
 */
#include "mb.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "routing.c reads little-endian plan records in place"
#endif

#define RT_VERSION 2u
#define RT_HEADER 16u
#define RT_ROUTE 12u
#define RT_CHUNK_BIT 0x80000000u
#define RT_MAX_OUTPUTS 1024u
#define RT_MAX_ROUTES (1u << 20)
#define RT_SMALL 256u               /* tables this small get an 8-bit level 1 */

struct rt_route {                   /* the plan's record, 4-byte aligned */
    uint32_t prefix;
    uint32_t gateway;               /* host order; 0: keep the annotation */
    uint16_t port;
    uint8_t len;
    uint8_t zero;
};

struct rt_state {
    const struct rt_route *routes;
    uint32_t *l1;
    uint32_t *chunks;               /* 256 entries each */
    uint32_t nchunks;               /* made so far */
    uint32_t maxchunks;             /* room for */
    uint32_t l1bits;                /* S */
    uint32_t nroutes;
};

#define RT_STATE_HEAD ((sizeof(struct rt_state) + 63u) & ~63u)

_Static_assert(sizeof(struct rt_route) == RT_ROUTE, "route record layout");

static uint32_t rt_count(const uint8_t *cfg, uint32_t len)
{
    uint32_t n;
    if (len < RT_HEADER)
        return 0;
    n = mb_le32(cfg + 4);
    if (n > RT_MAX_ROUTES || (uint64_t)len != RT_HEADER + (uint64_t)RT_ROUTE * n)
        return 0;
    return n;
}

static uint32_t rt_l1bits(uint32_t nroutes)
{
    return nroutes <= RT_SMALL ? 8 : 16;
}

/* Chunks the sorted list needs: per boundary b (S, S+8, ..., 24), the
 * distinct values of prefix >> (32 - b) among routes longer than b. On an
 * unsorted list the figure is wrong, but init refuses such a list. */
static uint32_t rt_chunks_needed(const uint8_t *cfg, uint32_t n)
{
    uint32_t b, i, total = 0;
    for (b = rt_l1bits(n); b < 32; b += 8) {
        uint32_t last = 0, any = 0;
        for (i = 0; i < n; i++) {
            const uint8_t *r = cfg + RT_HEADER + RT_ROUTE * i;
            uint32_t g;
            if (r[10] <= b)
                continue;
            g = mb_le32(r) >> (32 - b);
            if (!any || g != last)
                total++;
            any = 1;
            last = g;
        }
    }
    return total;
}

static uint32_t rt_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t n = rt_count(cfg, len);
    uint64_t size;
    if (!n)
        return (uint32_t)RT_STATE_HEAD;     /* init refuses it */
    /* At most 3 chunks a route (2 with a 16-bit level 1): < 2 GiB + 256 KiB. */
    size = RT_STATE_HEAD + (4ull << rt_l1bits(n)) + 1024ull * rt_chunks_needed(cfg, n);
    return (uint32_t)size;
}

/* The chunk an entry points to, made from the leaf it holds if it is one. */
static uint32_t *rt_descend(struct rt_state *s, uint32_t *entry)
{
    uint32_t *c, i, v = *entry;
    if (v & RT_CHUNK_BIT)
        return s->chunks + ((uint64_t)(v & ~RT_CHUNK_BIT) << 8);
    if (s->nchunks == s->maxchunks)
        return 0;
    c = s->chunks + ((uint64_t)s->nchunks << 8);
    for (i = 0; i < 256; i++)
        c[i] = v;
    *entry = RT_CHUNK_BIT | s->nchunks++;
    return c;
}

static void rt_fill(uint32_t *t, uint32_t n, uint32_t v)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        t[i] = v;
}

static int rt_init(struct mb_elem *e)
{
    struct rt_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t n = rt_count(c, e->cfg_len), nout, i, S;
    if (e->cfg_len < RT_HEADER || ((uintptr_t)c & 7) || mb_le32(c) != RT_VERSION ||
        mb_le32(c + 12) != 0)
        return mb_fail(e, "bad configuration");
    if (!n)
        return mb_fail(e, mb_le32(c + 4) > RT_MAX_ROUTES ? "too many routes"
                                                         : "bad configuration length");
    nout = mb_le32(c + 8);
    if (nout != e->nout || nout == 0 || nout > RT_MAX_OUTPUTS)
        return mb_fail(e, "bad configuration");
    s->routes = (const struct rt_route *)(c + RT_HEADER);
    for (i = 0; i < n; i++) {
        const struct rt_route *r = &s->routes[i];
        uint32_t mask;
        if (r->len > 32 || r->zero)
            return mb_fail(e, "bad route");
        mask = r->len ? 0xFFFFFFFFu << (32 - r->len) : 0;
        if (r->prefix & ~mask)
            return mb_fail(e, "bad route");
        if (r->port >= nout)
            return mb_fail(e, "route to a missing output");
        if (i && (r->prefix < s->routes[i - 1].prefix ||
                  (r->prefix == s->routes[i - 1].prefix && r->len <= s->routes[i - 1].len)))
            return mb_fail(e, "routes not sorted, or a prefix twice");
    }
    S = rt_l1bits(n);
    s->l1bits = S;
    s->nroutes = n;
    s->l1 = (uint32_t *)((uint8_t *)s + RT_STATE_HEAD);
    s->chunks = s->l1 + (1u << S);
    s->maxchunks = rt_chunks_needed(c, n);
    s->nchunks = 0;
    /* Level 1 and the chunks are zero (no route): the engine zeroes state. */
    for (i = 0; i < n; i++) {
        const struct rt_route *r = &s->routes[i];
        uint32_t leaf = i + 1, a = r->prefix, bits = S, *t;
        if (r->len <= S) {
            rt_fill(s->l1 + (a >> (32 - S)), 1u << (S - r->len), leaf);
            continue;
        }
        t = rt_descend(s, &s->l1[a >> (32 - S)]);
        while (t && r->len > bits + 8) {
            bits += 8;
            t = rt_descend(s, &t[(a >> (32 - bits)) & 255]);
        }
        if (!t)
            return mb_fail(e, "route table larger than its state");
        bits += 8;
        rt_fill(t + ((a >> (32 - bits)) & 255), 1u << (bits - r->len), leaf);
    }
    return 0;
}

static void rt_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct rt_state *s = e->state;
    const uint32_t *l1 = s->l1, *chunks = s->chunks;
    const uint32_t top = 32 - s->l1bits, nroutes = s->nroutes;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint32_t a = p->dst_ip, shift = top;
        uint32_t v = l1[a >> top];
        /* Chunks at the last level (shift 0) hold only leaves. */
        while (MB_UNLIKELY(v & RT_CHUNK_BIT) && shift) {
            shift -= 8;
            v = chunks[((uint64_t)(v & ~RT_CHUNK_BIT) << 8) | ((a >> shift) & 255)];
        }
        if (MB_UNLIKELY(v - 1 >= nroutes)) {     /* 0: no route */
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        const struct rt_route *r = &s->routes[v - 1];
        if (r->gateway)
            p->dst_ip = r->gateway;
        mb_emit(e, r->port, p);
    }
}

MB_KERNEL(ip_lookup) = {
    .name = "ip_lookup",
    .state_size = rt_state_size,
    .init = rt_init,
    .push = rt_push,
};
