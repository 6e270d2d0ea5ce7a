/*
 * flowtable.h - the connection table of the NAT and StatefulFirewall
 * kernels: fixed entries, a bucketed cuckoo index over them, a free stack,
 * an expiry clock and an incremental sweep. Header-only and freestanding,
 * like program.h, so each kernel that uses it is self-contained in a guest
 * image.
 *
 * The kernel owns the entries' type and meaning; the table owns where they
 * are and how they are found. Everything the table must know about an
 * entry comes through small callbacks passed as constants (the kernel's
 * own static functions), which the compiler inlines:
 *
 *   match(ctx, i, key)   entry i against a lookup key: < 0 not it, else a
 *                        value ft_find hands back (e.g. a direction);
 *   hash(ctx, i)         the 64-bit hash of entry i's key, as the kernel
 *                        hashed it when it inserted it;
 *   state(ctx, i)        FT_FREE, FT_LIVE or FT_EXPIRED (in use, expired);
 *   release(ctx, i)      free entry i: the kernel's own bookkeeping, then
 *                        ft_remove;
 *   record(ctx, i, r)    write entry i's ft_query record at r.
 *
 * Layout, in the kernel's state block (ft_layout):
 *   entries  cap entries of esize bytes, 64-byte aligned. A free entry's
 *            first 4 bytes hold the free stack's link, so an entry must
 *            keep its in-use mark elsewhere and start with a 4-byte member
 *            that is written when it is created.
 *   buckets  2^k buckets of one cache line (at least two slots per entry),
 *            8 slots of (16-bit signature, 32-bit entry index); signature
 *            0 is an empty slot.
 *
 * A key hashes (the kernel's hash) to two buckets: bits 0.. and bits
 * shift2.. of the hash under the bucket mask; its signature is the top 16
 * bits (0 taken as 1). An entry sits in the first of its buckets with a
 * free slot, else the second, else one entry of either bucket moves to its
 * other bucket (one cuckoo step). A lookup reads the first bucket and, on
 * a miss, the second. Free entries are a stack (last freed, first used;
 * initially 0, 1, 2, ...).
 *
 * Time: the table's clock t->now (ns) only goes forward (ft_advance); an
 * entry whose expiry time is at or before it is expired (ft_expired).
 */
#ifndef MB_FLOWTABLE_H
#define MB_FLOWTABLE_H
#include "mb.h"

#define FT_SLOTS 8u
#define FT_NONE 0xFFFFFFFFu
#define FT_MAX_CAPACITY (1u << 22)

enum { FT_FREE, FT_LIVE, FT_EXPIRED };     /* what a state callback says */

#if defined(__GNUC__)
#define FT_INLINE static inline __attribute__((always_inline))
typedef uint32_t __attribute__((may_alias)) ft_link_t;
#else
#define FT_INLINE static inline
typedef uint32_t ft_link_t;
#endif

struct ft_bucket {
    uint16_t sig[FT_SLOTS];
    uint32_t idx[FT_SLOTS];
    uint8_t pad[16];
};

struct ft {
    uint8_t *ents;              /* cap entries of esize bytes */
    struct ft_bucket *bk;       /* mask + 1 buckets */
    uint64_t now;               /* clock, ns: never goes back */
    uint32_t cap, esize, mask, shift2;
    uint32_t free_head;         /* free stack top, FT_NONE when full */
    uint32_t live;              /* entries in use */
    uint32_t sweep;             /* sweep cursor (an entry index) */
    uint32_t pad;
};

typedef int (*ft_match_fn)(const void *ctx, uint32_t i, const void *key);
typedef uint64_t (*ft_hash_fn)(const void *ctx, uint32_t i);
typedef int (*ft_state_fn)(const void *ctx, uint32_t i);
typedef void (*ft_release_fn)(void *ctx, uint32_t i);
typedef void (*ft_record_fn)(const void *ctx, uint32_t i, uint8_t *r);

#define FT_ALIGN64(x) (((x) + 63u) & ~(uint64_t)63u)

static inline uint32_t ft_nbuckets(uint32_t cap)
{
    uint32_t nb = 1;
    while (nb * 4 < cap)
        nb <<= 1;
    return nb;
}

/* The table's arrays placed at byte offset `off` (64-byte aligned) of the
 * state block at `base`: returns the offset after them (64-byte aligned).
 * With t, also sets t up for cap (1..FT_MAX_CAPACITY) entries of esize
 * bytes (>= 4); call ft_reset before use. base may be 0 to only size. */
static inline uint64_t ft_layout(struct ft *t, uint8_t *base, uint64_t off, uint32_t cap,
                                 uint32_t esize, uint32_t shift2)
{
    uint64_t o_ents = FT_ALIGN64(off);
    uint64_t o_bk = FT_ALIGN64(o_ents + (uint64_t)cap * esize);
    uint32_t nb = ft_nbuckets(cap);
    if (t) {
        t->ents = base + o_ents;
        t->bk = (struct ft_bucket *)(base + o_bk);
        t->cap = cap;
        t->esize = esize;
        t->mask = nb - 1;
        t->shift2 = shift2;
    }
    return FT_ALIGN64(o_bk + (uint64_t)nb * sizeof(struct ft_bucket));
}

/* A free entry's first 4 bytes link it to the next free one, stored as
 * next - i - 1: a table whose free entries are in order (just reset) is
 * then all zero bytes but its last link, so a guest image, which carries
 * only what is not zero (unikernel/arena.c), does not carry the table. */
static inline ft_link_t *ft_link(const struct ft *t, uint32_t i)
{
    return (ft_link_t *)(t->ents + (uint64_t)i * t->esize);
}

static inline uint32_t ft_next_free(const struct ft *t, uint32_t i)
{
    return *ft_link(t, i) + i + 1;
}

static inline void ft_set_next_free(struct ft *t, uint32_t i, uint32_t next)
{
    *ft_link(t, i) = next - i - 1;
}

/* Empty the table: every entry zeroed and free, every bucket empty. */
static inline void ft_reset(struct ft *t)
{
    memset(t->ents, 0, (uint64_t)t->cap * t->esize);
    ft_set_next_free(t, t->cap - 1, FT_NONE);     /* the others link to i + 1: 0 */
    t->free_head = 0;
    memset(t->bk, 0, (uint64_t)(t->mask + 1) * sizeof(struct ft_bucket));
    t->live = 0;
    t->sweep = 0;
}

/* --- time -------------------------------------------------------------------- */

static inline void ft_advance(struct ft *t, uint64_t ns)
{
    if (ns > t->now)
        t->now = ns;
}

static inline int ft_expired(const struct ft *t, uint64_t expires)
{
    return expires <= t->now;
}

/* --- the index -------------------------------------------------------------- */

static inline uint16_t ft_sig(uint64_t h)
{
    uint16_t sg = (uint16_t)(h >> 48);
    return sg ? sg : 1;
}

static inline uint32_t ft_b1(const struct ft *t, uint64_t h)
{
    return (uint32_t)h & t->mask;
}

static inline uint32_t ft_b2(const struct ft *t, uint64_t h)
{
    return (uint32_t)(h >> t->shift2) & t->mask;
}

FT_INLINE uint32_t ft_bucket_find(const struct ft_bucket *b, uint16_t sg, ft_match_fn match,
                                  const void *ctx, const void *key, int *how)
{
    for (uint32_t j = 0; j < FT_SLOTS; j++)
        if (b->sig[j] == sg) {
            int m = match(ctx, b->idx[j], key);
            if (m >= 0) {
                if (how)
                    *how = m;
                return b->idx[j];
            }
        }
    return FT_NONE;
}

/* The entry that matches key (hash h), or FT_NONE; *how (if not 0) gets
 * what match returned for it. */
FT_INLINE uint32_t ft_find(const struct ft *t, uint64_t h, ft_match_fn match, const void *ctx,
                           const void *key, int *how)
{
    uint16_t sg = ft_sig(h);
    uint32_t i = ft_bucket_find(&t->bk[ft_b1(t, h)], sg, match, ctx, key, how);
    if (i != FT_NONE)
        return i;
    return ft_bucket_find(&t->bk[ft_b2(t, h)], sg, match, ctx, key, how);
}

/* Prefetch the first bucket of hash h. */
static inline void ft_prefetch_bucket(const struct ft *t, uint64_t h)
{
    MB_PREFETCH(&t->bk[ft_b1(t, h)]);
}

/* Prefetch the entry a lookup of h will most likely read: the first
 * signature match in its first bucket (prefetched before, ideally). */
static inline void ft_prefetch_entry(const struct ft *t, uint64_t h)
{
    const struct ft_bucket *b = &t->bk[ft_b1(t, h)];
    uint16_t sg = ft_sig(h);
    for (uint32_t j = 0; j < FT_SLOTS; j++)
        if (b->sig[j] == sg) {
            MB_PREFETCH(t->ents + (uint64_t)b->idx[j] * t->esize);
            return;
        }
}

static inline int ft_bucket_put(struct ft_bucket *b, uint16_t sg, uint32_t idx)
{
    for (uint32_t j = 0; j < FT_SLOTS; j++)
        if (b->sig[j] == 0) {
            b->sig[j] = sg;
            b->idx[j] = idx;
            return 0;
        }
    return -1;
}

static inline void ft_bucket_del(struct ft_bucket *b, uint32_t idx)
{
    for (uint32_t j = 0; j < FT_SLOTS; j++)
        if (b->sig[j] != 0 && b->idx[j] == idx) {
            b->sig[j] = 0;
            return;
        }
}

/* Bucket bi is full: move one of its entries to its other bucket (one
 * cuckoo step) and put (sg, idx) in that slot. 0, or -1 when none can. */
static inline int ft_displace(struct ft *t, uint32_t bi, uint16_t sg, uint32_t idx,
                              ft_hash_fn hash, const void *ctx)
{
    struct ft_bucket *b = &t->bk[bi];
    for (uint32_t j = 0; j < FT_SLOTS; j++) {
        uint64_t oh = hash(ctx, b->idx[j]);
        uint32_t alt = ft_b1(t, oh) == bi ? ft_b2(t, oh) : ft_b1(t, oh);
        if (alt != bi && ft_bucket_put(&t->bk[alt], b->sig[j], b->idx[j]) == 0) {
            b->sig[j] = sg;
            b->idx[j] = idx;
            return 0;
        }
    }
    return -1;
}

/* --- entries ------------------------------------------------------------------ */

static inline int ft_full(const struct ft *t)
{
    return t->free_head == FT_NONE;
}

/* Take a free entry for a new key of hash h and index it: its index (the
 * caller fills it in), or FT_NONE when no entry is free or both buckets
 * and every way out of them are full (2 + 16 buckets: vanishingly rare). */
static inline uint32_t ft_insert(struct ft *t, uint64_t h, ft_hash_fn hash, const void *ctx)
{
    uint32_t i = t->free_head;
    uint16_t sg = ft_sig(h);
    if (i == FT_NONE)
        return FT_NONE;
    if (ft_bucket_put(&t->bk[ft_b1(t, h)], sg, i) != 0 &&
        ft_bucket_put(&t->bk[ft_b2(t, h)], sg, i) != 0 &&
        ft_displace(t, ft_b1(t, h), sg, i, hash, ctx) != 0 &&
        ft_displace(t, ft_b2(t, h), sg, i, hash, ctx) != 0)
        return FT_NONE;
    t->free_head = ft_next_free(t, i);
    t->live++;
    return i;
}

/* Unindex entry i (its key hashed to h) and free it. The kernel clears its
 * in-use mark and anything else it keeps first; the entry's first 4 bytes
 * are overwritten. */
static inline void ft_remove(struct ft *t, uint32_t i, uint64_t h)
{
    if (MB_UNLIKELY(i >= t->cap))
        return;
    ft_bucket_del(&t->bk[ft_b1(t, h)], i);
    ft_bucket_del(&t->bk[ft_b2(t, h)], i);
    ft_set_next_free(t, i, t->free_head);
    t->free_head = i;
    t->live--;
}

/* Check up to `count` entries at the sweep cursor and release the expired
 * ones; how many it released. */
static inline uint32_t ft_sweep(struct ft *t, uint32_t count, ft_state_fn state,
                                ft_release_fn release, void *ctx)
{
    uint32_t freed = 0;
    if (count > t->cap)
        count = t->cap;
    while (count--) {
        uint32_t i = t->sweep;
        if (++t->sweep >= t->cap)
            t->sweep = 0;
        if (state(ctx, i) == FT_EXPIRED) {
            release(ctx, i);
            freed++;
        }
    }
    return freed;
}

/* --- the read handler ----------------------------------------------------------- */

static inline void ft_put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static inline void ft_put16(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

static inline void ft_put64(uint8_t *b, uint64_t v)
{
    ft_put32(b, (uint32_t)v);
    ft_put32(b + 4, (uint32_t)(v >> 32));
}

/* Live entries from entry `what` on, into out[0..cap): a header u32 next
 * entry to ask for (FT_NONE: done), u32 entries in use, u64 now (ns), then
 * an rsize-byte record (written by `record`) per FT_LIVE entry, as many as
 * fit. Little-endian. Returns the bytes written. */
static inline uint32_t ft_query(const struct ft *t, uint32_t what, uint8_t *out, uint32_t cap,
                                uint32_t rsize, ft_state_fn state, ft_record_fn record,
                                const void *ctx)
{
    uint32_t i, w = 16;
    if (cap < 16)
        return 0;
    for (i = what; i < t->cap; i++) {
        if (state(ctx, i) != FT_LIVE)
            continue;
        if (cap - w < rsize)
            break;
        record(ctx, i, out + w);
        w += rsize;
    }
    ft_put32(out, i >= t->cap ? FT_NONE : i);
    ft_put32(out + 4, t->live);
    ft_put64(out + 8, t->now);
    return w;
}

#endif /* MB_FLOWTABLE_H */
