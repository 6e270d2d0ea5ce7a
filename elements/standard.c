/*
 * standard.c - kernels of the basic elements (elements/standard.py):
 * Discard, Counter, Tee, Paint, PaintSwitch, RoundRobinSwitch, HashSwitch.
 *
 * Switches send to e->nout outputs: the plan sizes each element's output
 * table from the Python class's noutputs(), so the kernel never needs the
 * count in its configuration. mb_emit() drops (and counts) packets sent to
 * an unconnected port.
 */
#include "mb.h"

static uint32_t std_no_state(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return 0;
}

static int std_no_config(struct mb_elem *e)
{
    if (e->cfg_len != 0)
        return mb_fail(e, "unexpected configuration");
    return 0;
}

/* --- Discard ------------------------------------------------------------ */

static void discard_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    mb_drop_batch(e, pkts, n);
}

MB_KERNEL(discard) = {
    .name = "discard",
    .state_size = std_no_state,
    .init = std_no_config,
    .push = discard_push,
};

/* --- Counter: xstat[0] packets, xstat[1] bytes ---------------------------- */

static void counter_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += pkts[i]->len;
    mb_emit_batch(e, 0, pkts, n);
    e->xstat[0] += n;
    e->xstat[1] += bytes;
}

/* Write handler "reset": zero count and byte_count (any message). */
static int counter_control(struct mb_elem *e, const uint8_t *msg, uint32_t len)
{
    (void)msg;
    (void)len;
    e->xstat[0] = 0;
    e->xstat[1] = 0;
    return 0;
}

MB_KERNEL(counter) = {
    .name = "counter",
    .state_size = std_no_state,
    .init = std_no_config,
    .push = counter_push,
    .control = counter_control,
};

/* --- Tee: the original on output 0, a clone on each other output ---------- */

static void tee_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    uint32_t nout = e->nout;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(nout == 0)) {
            mb_drop(e, p);
            continue;
        }
        for (uint32_t o = 1; o < nout; o++) {
            struct mb_packet *c = mb_clone(e->eng, p);
            if (MB_UNLIKELY(c == 0)) {
                e->dropped++;       /* the copy that could not be made */
                e->created++;
                continue;
            }
            e->created++;
            mb_emit(e, o, c);
        }
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(tee) = {
    .name = "tee",
    .state_size = std_no_state,
    .init = std_no_config,
    .push = tee_push,
};

/* --- Paint: cfg = u8 color ------------------------------------------------ */

struct paint_state {
    uint8_t color;
};

static uint32_t paint_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct paint_state);
}

static int paint_init(struct mb_elem *e)
{
    struct paint_state *s = e->state;
    if (e->cfg_len != 1)
        return mb_fail(e, "bad configuration");
    s->color = e->cfg[0];
    return 0;
}

static void paint_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint8_t color = ((struct paint_state *)e->state)->color;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        p->paint = color;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(paint) = {
    .name = "paint",
    .state_size = paint_state_size,
    .init = paint_init,
    .push = paint_push,
};

/* --- PaintSwitch: output = paint annotation; paint >= nout drops ---------- */

static void paint_switch_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    /* mb_emit drops and counts a packet whose port is >= e->nout. */
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        mb_emit(e, p->paint, p);
    }
}

MB_KERNEL(paint_switch) = {
    .name = "paint_switch",
    .state_size = std_no_state,
    .init = std_no_config,
    .push = paint_switch_push,
};

/* --- RoundRobinSwitch: packet k of the run goes to output k % nout -------- */

struct rrs_state {
    uint32_t next;
};

static uint32_t rrs_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct rrs_state);
}

static void round_robin_switch_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct rrs_state *s = e->state;
    uint32_t nout = e->nout;
    if (MB_UNLIKELY(nout == 0)) {
        for (uint32_t i = 0; i < n; i++)
            mb_drop(e, pkts[i]);
        return;
    }
    uint32_t next = s->next;
    if (MB_UNLIKELY(next >= nout))
        next = 0;
    for (uint32_t i = 0; i < n; i++) {
        mb_emit(e, next, pkts[i]);
        if (++next == nout)
            next = 0;
    }
    s->next = next;
}

MB_KERNEL(round_robin_switch) = {
    .name = "round_robin_switch",
    .state_size = rrs_state_size,
    .init = std_no_config,
    .push = round_robin_switch_push,
};

/* --- HashSwitch: cfg = u32 offset, u32 length (little-endian) -------------
 *
 * Hash of bytes [offset, offset+length): the bytes are read as 64-bit
 * little-endian words (the last one zero-padded); starting from
 * h = 0x9E3779B97F4A7C15, each word w does h = (h ^ w) * 0xBF58476D1CE4E5B9,
 * h ^= h >> 31; then h ^= length and the murmur3 64-bit finalizer mixes h.
 * Output = h % nout. Defined on bytes only, so it is the same on every
 * machine and run. Packets shorter than offset+length: xstat[0] + dropped. */

struct hash_switch_state {
    uint32_t offset;
    uint32_t length;
};

static uint32_t hash_switch_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct hash_switch_state);
}

static int hash_switch_init(struct mb_elem *e)
{
    struct hash_switch_state *s = e->state;
    if (e->cfg_len != 8)
        return mb_fail(e, "bad configuration");
    s->offset = mb_le32(e->cfg);
    s->length = mb_le32(e->cfg + 4);
    if (s->length == 0 || s->offset > 0xFFFFu || s->length > 0xFFFFu)
        return mb_fail(e, "bad offset or length");
    return 0;
}

static inline uint64_t hash_switch_word(const uint8_t *b, uint32_t n)
{
    uint64_t w = 0;
    for (uint32_t i = 0; i < n; i++)
        w |= (uint64_t)b[i] << (8 * i);
    return w;
}

static inline uint64_t hash_switch_hash(const uint8_t *b, uint32_t len)
{
    uint64_t h = 0x9E3779B97F4A7C15ull;
    uint32_t i = 0;
    for (; i + 8 <= len; i += 8) {
        h = (h ^ hash_switch_word(b + i, 8)) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    if (i < len) {
        h = (h ^ hash_switch_word(b + i, len - i)) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    h ^= len;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}

static void hash_switch_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct hash_switch_state *s = e->state;
    const uint32_t off = s->offset, len = s->length;
    const uint32_t nout = e->nout;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(!mb_has(p, off, len))) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        if (MB_UNLIKELY(nout == 0)) {
            mb_drop(e, p);
            continue;
        }
        uint64_t h = hash_switch_hash(p->data + off, len);
        mb_emit(e, (uint32_t)(h % nout), p);
    }
}

MB_KERNEL(hash_switch) = {
    .name = "hash_switch",
    .state_size = hash_switch_state_size,
    .init = hash_switch_init,
    .push = hash_switch_push,
};
