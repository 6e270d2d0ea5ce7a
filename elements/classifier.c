/*
 * classifier.c - the kernel of Classifier, IPClassifier and IPFilter: walks a
 * compiled decision program.
 *
 * The program (lowered by elements/classifier.py) is a forward DAG of word
 * tests. A test has a base: the packet data (0), the IPv4 header at the nh
 * annotation (1) or the transport header after it (2), each with a length.
 * It passes when the base's length is at least `need` and the big-endian
 * 32-bit word at `off` from the base (bytes past the base's length read as
 * zero), ANDed with `mask`, equals `value`. Targets: >= 0 a later node,
 * -(k+1) output k, CLS_DROP (no pattern matched) or CLS_DENY (a rule said
 * drop): dropped and counted in xstat[1] / xstat[2]. Because every node
 * target points forward, a walk performs at most nnodes tests; init checks
 * that, and every other field, before the first packet.
 *
 * Bases and lengths (IP programs, flag CLS_F_IP):
 *   data    p->data, p->len
 *   ip      the nh annotation; the datagram: min(bytes after nh, IP total
 *           length). Fewer than 20 bytes, or no annotation: the packet is
 *           dropped and counted in xstat[0].
 *   transp  nh + IHL*4; the datagram's length less IHL*4, or 0 when IHL < 5
 *           or IHL*4 is past the datagram's end.
 * Programs without the flag use base 0 only, and run a loop that knows it.
 *
 * Plan bytes (little-endian):
 *   u32 version (3), u16 noutputs, u16 flags, u32 nnodes, i32 entry,
 *   nnodes x { u32 where (bits 0-23 offset, 24-31 base), u32 need,
 *              u32 mask, u32 value, i32 yes, i32 no }
 */
#include "mb.h"

#define CLS_VERSION 3u
#define CLS_HDR 16u
#define CLS_NODE 24u
#define CLS_DROP INT32_MIN
#define CLS_DENY (INT32_MIN + 1)
#define CLS_F_IP 1u
#define CLS_OFF_MASK 0x00FFFFFFu    /* offsets stay far below 2^24: off+4 is sane */
#define CLS_BASE_SHIFT 24
#define CLS_NBASES 3u
#define CLS_MAX_NODES 0x00100000u

struct cls_node {
    uint32_t off;       /* base << 24 | offset: the offset alone when base is 0 */
    uint32_t need;
    uint32_t mask;      /* in the byte order of a native load of the word */
    uint32_t value;
    int32_t yes;
    int32_t no;
};

struct cls_state {
    uint32_t nnodes;
    uint32_t noutputs;
    int32_t entry;
    uint32_t flags;
    struct cls_node nodes[];
};

/* Node count the configuration claims, if its length agrees; else 0. */
static uint32_t cls_count(const uint8_t *cfg, uint32_t len)
{
    uint32_t n;
    if (cfg == 0 || len < CLS_HDR)
        return 0;
    n = mb_le32(cfg + 8);
    if (n > CLS_MAX_NODES || len - CLS_HDR != n * CLS_NODE)
        return 0;
    return n;
}

static uint32_t classifier_state_size(const uint8_t *cfg, uint32_t len)
{
    return (uint32_t)sizeof(struct cls_state) +
           cls_count(cfg, len) * (uint32_t)sizeof(struct cls_node);
}

static inline uint32_t cls_load(const uint8_t *b)
{
    uint32_t w;
    memcpy(&w, b, 4);
    return w;
}

/* A big-endian word value as a native load of its four bytes would see it. */
static uint32_t cls_native(uint32_t be)
{
    uint8_t b[4];
    mb_wr32(b, be);
    return cls_load(b);
}

/* A target is valid from node `from` (-1 for the entry) if it is a later
 * node, an output, drop or deny. */
static int cls_target_ok(int32_t t, int32_t from, uint32_t nnodes, uint32_t noutputs)
{
    if (t == CLS_DROP || t == CLS_DENY)
        return 1;
    if (t < 0)
        return (uint32_t)(-(t + 1)) < noutputs;
    return t > from && (uint32_t)t < nnodes;
}

static int classifier_init(struct mb_elem *e)
{
    struct cls_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t n, np, flags, i;

    if (c == 0 || e->cfg_len < CLS_HDR)
        return mb_fail(e, "classifier: configuration too short");
    if (mb_le32(c) != CLS_VERSION)
        return mb_fail(e, "classifier: unknown program version");
    np = mb_le16(c + 4);
    flags = mb_le16(c + 6);
    n = mb_le32(c + 8);
    if (np == 0)
        return mb_fail(e, "classifier: bad output count");
    if (flags & ~CLS_F_IP)
        return mb_fail(e, "classifier: unknown program flags");
    if (n > CLS_MAX_NODES || e->cfg_len - CLS_HDR != n * CLS_NODE)
        return mb_fail(e, "classifier: program length does not match its node count");
    if (s == 0)
        return mb_fail(e, "classifier: no state");
    s->nnodes = n;
    s->noutputs = np;
    s->flags = flags;
    s->entry = (int32_t)mb_le32(c + 12);
    if (!cls_target_ok(s->entry, -1, n, np))
        return mb_fail(e, "classifier: bad entry target");
    for (i = 0; i < n; i++) {
        const uint8_t *b = c + CLS_HDR + i * CLS_NODE;
        struct cls_node *nd = &s->nodes[i];
        uint32_t mask = mb_le32(b + 8), value = mb_le32(b + 12);
        uint32_t base;
        nd->off = mb_le32(b);
        nd->need = mb_le32(b + 4);
        nd->yes = (int32_t)mb_le32(b + 16);
        nd->no = (int32_t)mb_le32(b + 20);
        base = nd->off >> CLS_BASE_SHIFT;
        if (nd->off & 3u)
            return mb_fail(e, "classifier: bad test offset");
        if (base >= CLS_NBASES || (base != 0 && !(flags & CLS_F_IP)))
            return mb_fail(e, "classifier: bad test base");
        if (value & ~mask)
            return mb_fail(e, "classifier: test value outside its mask");
        if (!cls_target_ok(nd->yes, (int32_t)i, n, np) ||
            !cls_target_ok(nd->no, (int32_t)i, n, np))
            return mb_fail(e, "classifier: test target is not a later node or an output");
        nd->mask = cls_native(mask);
        nd->value = cls_native(value);
    }
    return 0;
}

/* The word at off from b, given the base is len bytes long; bytes past
 * the end read as zero. */
static inline uint32_t cls_word(const uint8_t *b, uint32_t len, uint32_t off)
{
    uint8_t w[4] = {0, 0, 0, 0};
    uint32_t k;
    if (MB_LIKELY(len >= 4 && off <= len - 4))
        return cls_load(b + off);
    for (k = 0; k < 4 && off + k < len; k++)
        w[k] = b[off + k];
    return cls_load(w);
}

static inline void cls_finish(struct mb_elem *e, struct mb_packet *p, int32_t t)
{
    if (MB_LIKELY(t > CLS_DENY)) {
        mb_emit(e, (uint32_t)(-(t + 1)), p);
    } else {
        e->xstat[t == CLS_DROP ? 1 : 2]++;
        mb_drop(e, p);
    }
}

/* Classifier: every test is on the packet data. */
static void cls_push_data(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct cls_state *s = e->state;
    const struct cls_node *nodes = s->nodes;
    const int32_t entry = s->entry;
    uint32_t i;

    for (i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        const uint8_t *d = p->data;
        const uint32_t len = p->len;
        int32_t t = entry;

        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            int ok = 0;
            if (nd->need <= len)
                ok = (cls_word(d, len, nd->off) & nd->mask) == nd->value;
            t = ok ? nd->yes : nd->no;
        }
        cls_finish(e, p, t);
    }
}

/* IPClassifier, IPFilter: tests on the data, IP header or transport header. */
static void cls_push_ip(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct cls_state *s = e->state;
    const struct cls_node *nodes = s->nodes;
    const int32_t entry = s->entry;
    uint32_t i;

    for (i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        const uint8_t *base[CLS_NBASES];
        uint32_t lim[CLS_NBASES];
        int32_t nho = mb_nh_off(p, 20);
        const uint8_t *nh;
        uint32_t dl, tot, hl;
        int32_t t = entry;

        if (MB_UNLIKELY(nho < 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        nh = p->data + nho;
        dl = p->len - (uint32_t)nho;
        tot = mb_rd16(nh + 2);
        if (tot < dl)
            dl = tot;
        if (MB_UNLIKELY(dl < 20)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        hl = (uint32_t)(nh[0] & 0x0F) * 4;
        base[0] = p->data;
        lim[0] = p->len;
        base[1] = nh;
        lim[1] = dl;
        if (MB_LIKELY(hl >= 20 && hl <= dl)) {
            base[2] = nh + hl;
            lim[2] = dl - hl;
        } else {
            base[2] = nh;
            lim[2] = 0;
        }

        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            const uint32_t b = nd->off >> CLS_BASE_SHIFT;
            const uint32_t len = lim[b];
            int ok = 0;
            if (nd->need <= len)
                ok = (cls_word(base[b], len, nd->off & CLS_OFF_MASK) & nd->mask) == nd->value;
            t = ok ? nd->yes : nd->no;
        }
        cls_finish(e, p, t);
    }
}

static void classifier_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct cls_state *s = e->state;
    if (s->flags & CLS_F_IP)
        cls_push_ip(e, pkts, n);
    else
        cls_push_data(e, pkts, n);
}

MB_KERNEL(classifier) = {
    .name = "classifier",
    .state_size = classifier_state_size,
    .init = classifier_init,
    .push = classifier_push,
};
