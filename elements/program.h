/*
 * program.h - the compiled decision program of Classifier, IPClassifier,
 * IPFilter and StatefulFirewall: loading (with every field checked) and
 * walking it over a packet. Header-only so that each kernel that walks
 * programs is self-contained in a guest image.
 *
 * The program (lowered by elements/classifier.py) is a forward DAG of word
 * tests. A test has a base: the packet data (0), the IPv4 header at the nh
 * annotation (1) or the transport header after it (2), each with a length.
 * It passes when the base's length is at least `need` and the big-endian
 * 32-bit word at `off` from the base (bytes past the base's length read as
 * zero), ANDed with `mask`, equals `value`. Targets: >= 0 a later node,
 * -(k+1) output k, CLS_DROP (no pattern matched) or CLS_DENY (a rule said
 * drop). Because every node target points forward, a walk performs at most
 * nnodes tests; loading checks that, and every other field.
 *
 * Bases and lengths (IP programs, flag CLS_F_IP):
 *   data    p->data, p->len
 *   ip      the nh annotation; the datagram: min(bytes after nh, IP total
 *           length). Fewer than 20 bytes, or no annotation: CLS_NOIP.
 *   transp  nh + IHL*4; the datagram's length less IHL*4, or 0 when IHL < 5
 *           or IHL*4 is past the datagram's end.
 *
 * Program bytes (little-endian):
 *   u32 version (3), u16 noutputs, u16 flags, u32 nnodes, i32 entry,
 *   nnodes x { u32 where (bits 0-23 offset, 24-31 base), u32 need,
 *              u32 mask, u32 value, i32 yes, i32 no }
 */
#ifndef MB_PROGRAM_H
#define MB_PROGRAM_H
#include "mb.h"

#define CLS_VERSION 3u
#define CLS_HDR 16u
#define CLS_NODE 24u
#define CLS_DROP INT32_MIN
#define CLS_DENY (INT32_MIN + 1)
#define CLS_NOIP (INT32_MIN + 2)   /* cls_run_ip: no IPv4 header to test */
#define CLS_F_IP 1u
#define CLS_OFF_MASK 0x00FFFFFFu    /* offsets stay far below 2^24: off+4 is sane */
#define CLS_BASE_SHIFT 24
#define CLS_NBASES 3u
#define CLS_MAX_NODES 0x00100000u

/* In a walk, a test's outcome is best left to the branch predictor: a
 * conditional move would chain every test's load to the one before. This
 * empty asm in one arm keeps the compiler from making one. */
#if defined(__GNUC__)
#define CLS_KEEP_BRANCH(v) __asm__("" : "+r"(v))
#else
#define CLS_KEEP_BRANCH(v) ((void)0)
#endif

struct cls_node {
    uint32_t off;       /* offset of the word from its base */
    uint32_t base;      /* 0 data, 1 IP header, 2 transport header */
    uint32_t need;
    uint32_t full;      /* max(need, off + 4): a base this long holds the whole word */
    uint32_t mask;      /* in the byte order of a native load of the word */
    uint32_t value;
    int32_t yes;
    int32_t no;
};

struct cls_prog {
    uint32_t nnodes;
    uint32_t noutputs;
    int32_t entry;
    uint32_t flags;
    uint32_t full[CLS_NBASES];  /* largest node `full` per base: bases at least
                                 * this long need no bounds checks in a walk */
    uint32_t pad_;
    struct cls_node nodes[];
};

/* Node count the program bytes claim, if their length agrees; else 0. */
static inline uint32_t cls_count(const uint8_t *cfg, uint32_t len)
{
    uint32_t n;
    if (cfg == 0 || len < CLS_HDR)
        return 0;
    n = mb_le32(cfg + 8);
    if (n > CLS_MAX_NODES || len - CLS_HDR != n * CLS_NODE)
        return 0;
    return n;
}

/* Bytes a loaded program of these bytes takes. */
static inline uint32_t cls_prog_size(const uint8_t *cfg, uint32_t len)
{
    return (uint32_t)sizeof(struct cls_prog) +
           cls_count(cfg, len) * (uint32_t)sizeof(struct cls_node);
}

static inline uint32_t cls_load(const uint8_t *b)
{
    uint32_t w;
    memcpy(&w, b, 4);
    return w;
}

/* A big-endian word value as a native load of its four bytes would see it. */
static inline uint32_t cls_native(uint32_t be)
{
    uint8_t b[4];
    mb_wr32(b, be);
    return cls_load(b);
}

/* A target is valid from node `from` (-1 for the entry) if it is a later
 * node, an output, drop or deny. */
static inline int cls_target_ok(int32_t t, int32_t from, uint32_t nnodes, uint32_t noutputs)
{
    if (t == CLS_DROP || t == CLS_DENY)
        return 1;
    if (t < 0)
        return (uint32_t)(-(t + 1)) < noutputs;
    return t > from && (uint32_t)t < nnodes;
}

/* Load program bytes into pr (cls_prog_size(c, len) bytes). Returns 0, or
 * what is wrong with them. */
static inline const char *cls_prog_load(struct cls_prog *pr, const uint8_t *c, uint32_t len)
{
    uint32_t n, np, flags, i;

    if (c == 0 || len < CLS_HDR)
        return "classifier: configuration too short";
    if (mb_le32(c) != CLS_VERSION)
        return "classifier: unknown program version";
    np = mb_le16(c + 4);
    flags = mb_le16(c + 6);
    n = mb_le32(c + 8);
    if (np == 0)
        return "classifier: bad output count";
    if (flags & ~CLS_F_IP)
        return "classifier: unknown program flags";
    if (n > CLS_MAX_NODES || len - CLS_HDR != n * CLS_NODE)
        return "classifier: program length does not match its node count";
    if (pr == 0)
        return "classifier: no state";
    pr->nnodes = n;
    pr->noutputs = np;
    pr->flags = flags;
    pr->entry = (int32_t)mb_le32(c + 12);
    pr->full[0] = pr->full[1] = pr->full[2] = 0;
    pr->pad_ = 0;
    if (!cls_target_ok(pr->entry, -1, n, np))
        return "classifier: bad entry target";
    for (i = 0; i < n; i++) {
        const uint8_t *b = c + CLS_HDR + i * CLS_NODE;
        struct cls_node *nd = &pr->nodes[i];
        uint32_t mask = mb_le32(b + 8), value = mb_le32(b + 12);
        uint32_t base;
        uint32_t where = mb_le32(b);
        nd->off = where & CLS_OFF_MASK;
        nd->need = mb_le32(b + 4);
        nd->yes = (int32_t)mb_le32(b + 16);
        nd->no = (int32_t)mb_le32(b + 20);
        base = where >> CLS_BASE_SHIFT;
        nd->base = base;
        nd->full = nd->need > nd->off + 4 ? nd->need : nd->off + 4;
        if (where & 3u)
            return "classifier: bad test offset";
        if (base >= CLS_NBASES || (base != 0 && !(flags & CLS_F_IP)))
            return "classifier: bad test base";
        if (value & ~mask)
            return "classifier: test value outside its mask";
        if (!cls_target_ok(nd->yes, (int32_t)i, n, np) ||
            !cls_target_ok(nd->no, (int32_t)i, n, np))
            return "classifier: test target is not a later node or an output";
        nd->mask = cls_native(mask);
        nd->value = cls_native(value);
        if (nd->full > pr->full[base])
            pr->full[base] = nd->full;
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

/* Walk a program whose tests are all on the packet data: the final target. */
static inline int32_t cls_run_data(const struct cls_prog *pr, const struct mb_packet *p)
{
    const struct cls_node *nodes = pr->nodes;
    const uint8_t *d = p->data;
    const uint32_t len = p->len;
    int32_t t = pr->entry;

    if (MB_LIKELY(pr->full[0] <= len)) {
        /* Every word of every test lies inside the packet. */
        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            if ((cls_load(d + nd->off) & nd->mask) == nd->value) {
                t = nd->yes;
            } else {
                t = nd->no;
                CLS_KEEP_BRANCH(t);
            }
        }
        return t;
    }
    while (t >= 0) {
        const struct cls_node *nd = &nodes[t];
        int ok;
        if (MB_LIKELY(nd->full <= len))
            ok = (cls_load(d + nd->off) & nd->mask) == nd->value;
        else
            ok = nd->need <= len && (cls_word(d, len, nd->off) & nd->mask) == nd->value;
        t = ok ? nd->yes : nd->no;
    }
    return t;
}

/* Walk an IP program (tests on the data, IP header or transport header):
 * the final target, or CLS_NOIP when the packet has no IPv4 header of at
 * least 20 bytes at its nh annotation. */
static inline int32_t cls_run_ip(const struct cls_prog *pr, const struct mb_packet *p)
{
    const struct cls_node *nodes = pr->nodes;
    const uint8_t *base[CLS_NBASES];
    uint32_t lim[CLS_NBASES];
    int32_t nho = mb_nh_off(p, 20);
    const uint8_t *nh;
    uint32_t dl, tot, hl;
    int32_t t = pr->entry;

    if (MB_UNLIKELY(nho < 0))
        return CLS_NOIP;
    nh = p->data + nho;
    dl = p->len - (uint32_t)nho;
    tot = mb_rd16(nh + 2);
    if (tot < dl)
        dl = tot;
    if (MB_UNLIKELY(dl < 20))
        return CLS_NOIP;
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

    if (MB_LIKELY(pr->full[0] <= lim[0] && pr->full[1] <= lim[1] && pr->full[2] <= lim[2])) {
        /* Every word of every test lies inside its base. */
        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            if ((cls_load(base[nd->base] + nd->off) & nd->mask) == nd->value) {
                t = nd->yes;
            } else {
                t = nd->no;
                CLS_KEEP_BRANCH(t);
            }
        }
        return t;
    }
    while (t >= 0) {
        const struct cls_node *nd = &nodes[t];
        const uint32_t b = nd->base;
        const uint32_t len = lim[b];
        int ok;
        if (MB_LIKELY(nd->full <= len))
            ok = (cls_load(base[b] + nd->off) & nd->mask) == nd->value;
        else
            ok = nd->need <= len &&
                 (cls_word(base[b], len, nd->off) & nd->mask) == nd->value;
        t = ok ? nd->yes : nd->no;
    }
    return t;
}

#endif
