/*
 * classifier.c - the Classifier kernel: walks a compiled decision program.
 *
 * The program (lowered by elements/classifier.py) is a forward DAG of word
 * tests. A test passes when the packet is at least `need` bytes long and
 * the big-endian 32-bit word at `off` (bytes past the packet's end read as
 * zero), ANDed with `mask`, equals `value`. Targets: >= 0 a later node,
 * -(k+1) output k, CLS_DROP drop. Because every node target points forward,
 * a walk performs at most nnodes tests; init checks that, and every other
 * field, before the first packet.
 *
 * Plan bytes (little-endian):
 *   u32 version, u32 npatterns, u32 nnodes, i32 entry,
 *   nnodes x { u32 off, u32 need, u32 mask, u32 value, i32 yes, i32 no }
 */
#include "mb.h"

#define CLS_VERSION 1u
#define CLS_HDR 16u
#define CLS_NODE 24u
#define CLS_DROP INT32_MIN
#define CLS_MAX_OFF 0x01000000u     /* far beyond any packet; keeps off+4 sane */
#define CLS_MAX_NODES 0x00100000u

struct cls_node {
    uint32_t off;
    uint32_t need;
    uint32_t mask;      /* in the byte order of a native load of the word */
    uint32_t value;
    int32_t yes;
    int32_t no;
};

struct cls_state {
    uint32_t nnodes;
    uint32_t npatterns;
    int32_t entry;
    uint32_t pad;
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
 * node, an output, or drop. */
static int cls_target_ok(int32_t t, int32_t from, uint32_t nnodes, uint32_t npatterns)
{
    if (t == CLS_DROP)
        return 1;
    if (t < 0)
        return (uint32_t)(-(t + 1)) < npatterns;
    return t > from && (uint32_t)t < nnodes;
}

static int classifier_init(struct mb_elem *e)
{
    struct cls_state *s = e->state;
    const uint8_t *c = e->cfg;
    uint32_t n, np, i;

    if (c == 0 || e->cfg_len < CLS_HDR)
        return mb_fail(e, "classifier: configuration too short");
    if (mb_le32(c) != CLS_VERSION)
        return mb_fail(e, "classifier: unknown program version");
    np = mb_le32(c + 4);
    n = mb_le32(c + 8);
    if (np == 0 || np > 0xFFFFu)
        return mb_fail(e, "classifier: bad pattern count");
    if (n > CLS_MAX_NODES || e->cfg_len - CLS_HDR != n * CLS_NODE)
        return mb_fail(e, "classifier: program length does not match its node count");
    if (s == 0)
        return mb_fail(e, "classifier: no state");
    s->nnodes = n;
    s->npatterns = np;
    s->entry = (int32_t)mb_le32(c + 12);
    if (!cls_target_ok(s->entry, -1, n, np))
        return mb_fail(e, "classifier: bad entry target");
    for (i = 0; i < n; i++) {
        const uint8_t *b = c + CLS_HDR + i * CLS_NODE;
        struct cls_node *nd = &s->nodes[i];
        uint32_t mask = mb_le32(b + 8), value = mb_le32(b + 12);
        nd->off = mb_le32(b);
        nd->need = mb_le32(b + 4);
        nd->yes = (int32_t)mb_le32(b + 16);
        nd->no = (int32_t)mb_le32(b + 20);
        if ((nd->off & 3u) || nd->off > CLS_MAX_OFF)
            return mb_fail(e, "classifier: bad test offset");
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

static void classifier_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
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
            if (nd->need <= len) {
                uint32_t w;
                if (MB_LIKELY(len >= 4 && nd->off <= len - 4)) {
                    w = cls_load(d + nd->off);
                } else {
                    /* The word runs past the end: missing bytes read as 0. */
                    uint8_t b[4] = {0, 0, 0, 0};
                    uint32_t k;
                    for (k = 0; k < 4 && nd->off + k < len; k++)
                        b[k] = d[nd->off + k];
                    w = cls_load(b);
                }
                ok = (w & nd->mask) == nd->value;
            }
            t = ok ? nd->yes : nd->no;
        }
        if (t == CLS_DROP)
            mb_drop(e, p);
        else
            mb_emit(e, (uint32_t)(-(t + 1)), p);
    }
}

MB_KERNEL(classifier) = {
    .name = "classifier",
    .state_size = classifier_state_size,
    .init = classifier_init,
    .push = classifier_push,
};
