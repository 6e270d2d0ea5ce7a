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
 * A switch node decides many equalities of one masked word at once: with
 * the base at least `need` long, the word ANDed with `mask` is looked up
 * among the node's cases; a case with that value gives the target, else
 * (or when the base is too short) `no` does. Case v thus holds exactly
 * when the test (need, mask, v) would. Loading builds each switch a hash
 * table (open addressing, at most a quarter full, keyed on the masked word
 * as a native load sees it), so a lookup is mostly one multiply and one
 * probe.
 *
 * Program bytes (little-endian):
 *   u32 version (4), u16 noutputs, u16 flags, u32 nnodes, i32 entry,
 *   nnodes x { u32 where (bits 0-23 offset, 24-30 base, 31 switch),
 *              u32 need, u32 mask, u32 value, i32 yes, i32 no }
 *   then the rest: ncases x { u32 value, i32 target }
 * A switch node's `value` is the index of its first case, `yes` the number
 * of its cases (>= 1), `no` its default; its case values are strictly
 * increasing and inside its mask. Switches use the cases in node order,
 * each the run after the previous one's, and together all of them.
 */
#ifndef MB_PROGRAM_H
#define MB_PROGRAM_H
#include "mb.h"

#define CLS_VERSION 4u
#define CLS_HDR 16u
#define CLS_NODE 24u
#define CLS_CASE 8u
#define CLS_DROP INT32_MIN
#define CLS_DENY (INT32_MIN + 1)
#define CLS_NOIP (INT32_MIN + 2)   /* cls_run_ip: no IPv4 header to test */
#define CLS_F_IP 1u
#define CLS_OFF_MASK 0x00FFFFFFu    /* offsets stay far below 2^24: off+4 is sane */
#define CLS_BASE_SHIFT 24
#define CLS_BASE_MASK 0x7Fu
#define CLS_SWITCH_BIT 0x80000000u
#define CLS_NBASES 3u
#define CLS_MAX_NODES 0x00100000u
#define CLS_MAX_CASES 0x00100000u
#define CLS_EMPTY (INT32_MIN + 3)  /* an unused slot of a switch's hash table */
#define CLS_HASH_MUL 0x9E3779B1u
#define CLS_SLOTS_PER_CASE 8u      /* bound on table slots per case: 4n rounded up to 2^k */

/* In a walk, a test's outcome is best left to the branch predictor: a
 * conditional move would chain every test's load to the one before. This
 * empty asm in one arm keeps the compiler from making one. */
#if defined(__GNUC__)
#define CLS_KEEP_BRANCH(v) __asm__("" : "+r"(v))
#else
#define CLS_KEEP_BRANCH(v) ((void)0)
#endif

/* A loaded node. Masks and values are in the byte order of a native load
 * of the word, so a walk compares loads as they are. */
struct cls_node {
    uint16_t base;      /* 0 data, 1 IP header, 2 transport header */
    uint16_t shift;     /* 0: a test; else a switch whose table has
                         * 2^(32 - shift) slots (shift 10 to 30) */
    uint32_t off;       /* offset of the word from its base */
    uint32_t need;
    uint32_t full;      /* max(need, off + 4): a base this long holds the whole word */
    uint32_t mask;
    uint32_t value;     /* test: the value; switch: its table, as an index
                         * into the program's nodes counted in slots */
    int32_t yes;        /* test: target if it holds; switch: slots - 1 */
    int32_t no;         /* target if the test fails / no case matches */
};

/* A slot of a switch's hash table: a case, or empty (target CLS_EMPTY, and
 * the value of the switch's first case, so that it never matches a value
 * being searched for but that one, whose own slot a search meets first). */
struct cls_case {
    uint32_t value;     /* native byte order, like the masked word */
    int32_t target;
};

#define CLS_SLOTS_PER_NODE (sizeof(struct cls_node) / sizeof(struct cls_case))

struct cls_prog {
    uint32_t nnodes;
    uint32_t noutputs;
    int32_t entry;
    uint32_t flags;
    uint32_t full[CLS_NBASES];  /* largest node `full` per base: bases at least
                                 * this long need no bounds checks in a walk */
    uint32_t nslots;
    struct cls_node nodes[];    /* then nslots struct cls_case: the switches' tables */
};

/* Node and case counts the program bytes claim, if their length agrees:
 * 1, else 0 (and both counts 0). */
static inline int cls_shape(const uint8_t *cfg, uint32_t len, uint32_t *nn, uint32_t *nc)
{
    uint32_t n, rest;
    *nn = *nc = 0;
    if (cfg == 0 || len < CLS_HDR)
        return 0;
    n = mb_le32(cfg + 8);
    if (n > CLS_MAX_NODES || len - CLS_HDR < n * CLS_NODE)
        return 0;
    rest = len - CLS_HDR - n * CLS_NODE;
    if (rest % CLS_CASE != 0 || rest / CLS_CASE > CLS_MAX_CASES)
        return 0;
    *nn = n;
    *nc = rest / CLS_CASE;
    return 1;
}

/* Bytes a loaded program of these bytes takes (room for the tables of
 * any switches its cases can make). */
static inline uint32_t cls_prog_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t nn, nc;
    cls_shape(cfg, len, &nn, &nc);
    return (uint32_t)sizeof(struct cls_prog) + nn * (uint32_t)sizeof(struct cls_node) +
           nc * CLS_SLOTS_PER_CASE * (uint32_t)sizeof(struct cls_case);
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

/* Home slot of a masked word in a table of 2^(32 - shift) slots. */
static inline uint32_t cls_hash(uint32_t key, uint32_t shift)
{
    return (key * CLS_HASH_MUL) >> shift;
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

/* Check the `count` cases from `first` (in bytes cs) of switch node i,
 * whose mask is `mask` (big-endian), and build its hash table at tab
 * (2^(32 - shift) slots, at least 4 x count). Returns 0, or what is wrong. */
static inline const char *cls_table_load(struct cls_case *tab, uint32_t shift, const uint8_t *cs,
                                         uint32_t first, uint32_t count, uint32_t mask,
                                         uint32_t i, uint32_t n, uint32_t np)
{
    const uint32_t size = 1u << (32 - shift), m = size - 1;
    const uint32_t v0 = cls_native(mb_le32(cs + first * CLS_CASE) & mask);
    uint32_t k, prev = 0;
    for (k = 0; k < size; k++) {
        tab[k].value = v0;
        tab[k].target = CLS_EMPTY;
    }
    for (k = first; k < first + count; k++) {
        const uint8_t *b = cs + k * CLS_CASE;
        const uint32_t v = mb_le32(b);
        const int32_t t = (int32_t)mb_le32(b + 4);
        uint32_t h;
        if (v & ~mask)
            return "classifier: case value outside its mask";
        if (k > first && v <= prev)
            return "classifier: switch cases not in increasing order";
        if (!cls_target_ok(t, (int32_t)i, n, np))
            return "classifier: case target is not a later node or an output";
        prev = v;
        /* At most a quarter full: an empty slot is always found. */
        for (h = cls_hash(cls_native(v), shift); tab[h].target != CLS_EMPTY; h = (h + 1) & m)
            ;
        tab[h].value = cls_native(v);
        tab[h].target = t;
    }
    return 0;
}

/* Load program bytes into pr (cls_prog_size(c, len) bytes). Returns 0, or
 * what is wrong with them. */
static inline const char *cls_prog_load(struct cls_prog *pr, const uint8_t *c, uint32_t len)
{
    uint32_t n, nc, np, flags, i, used = 0, slots = 0;
    struct cls_case *tab;

    if (c == 0 || len < CLS_HDR)
        return "classifier: configuration too short";
    if (mb_le32(c) != CLS_VERSION)
        return "classifier: unknown program version";
    np = mb_le16(c + 4);
    flags = mb_le16(c + 6);
    if (np == 0)
        return "classifier: bad output count";
    if (flags & ~CLS_F_IP)
        return "classifier: unknown program flags";
    if (!cls_shape(c, len, &n, &nc))
        return "classifier: program length does not match its node count";
    if (pr == 0)
        return "classifier: no state";
    pr->nnodes = n;
    pr->noutputs = np;
    pr->flags = flags;
    pr->entry = (int32_t)mb_le32(c + 12);
    pr->full[0] = pr->full[1] = pr->full[2] = 0;
    pr->nslots = 0;
    tab = (struct cls_case *)(void *)(pr->nodes + n);
    if (!cls_target_ok(pr->entry, -1, n, np))
        return "classifier: bad entry target";
    for (i = 0; i < n; i++) {
        const uint8_t *b = c + CLS_HDR + i * CLS_NODE;
        struct cls_node *nd = &pr->nodes[i];
        const uint32_t where = mb_le32(b);
        const uint32_t mask = mb_le32(b + 8), value = mb_le32(b + 12);
        const uint32_t base = (where >> CLS_BASE_SHIFT) & CLS_BASE_MASK;
        nd->off = where & CLS_OFF_MASK;
        nd->base = (uint16_t)base;
        nd->shift = 0;
        nd->need = mb_le32(b + 4);
        nd->full = nd->need > nd->off + 4 ? nd->need : nd->off + 4;
        nd->mask = cls_native(mask);
        nd->yes = (int32_t)mb_le32(b + 16);
        nd->no = (int32_t)mb_le32(b + 20);
        if (where & 3u)
            return "classifier: bad test offset";
        if (base >= CLS_NBASES || (base != 0 && !(flags & CLS_F_IP)))
            return "classifier: bad test base";
        if (!cls_target_ok(nd->no, (int32_t)i, n, np))
            return "classifier: test target is not a later node or an output";
        if (where & CLS_SWITCH_BIT) {
            /* value: its first case; yes: how many */
            const uint32_t count = (uint32_t)nd->yes;
            uint32_t shift = 30;        /* 4 slots */
            const char *err;
            if (count == 0 || value != used || count > nc - used)
                return "classifier: switch cases out of range";
            while ((1u << (32 - shift)) < 4 * count)
                shift--;
            err = cls_table_load(tab + slots, shift, c + CLS_HDR + n * CLS_NODE, value, count,
                                 mask, i, n, np);
            if (err)
                return err;
            used += count;
            nd->shift = (uint16_t)shift;
            nd->value = n * (uint32_t)CLS_SLOTS_PER_NODE + slots;
            nd->yes = (int32_t)((1u << (32 - shift)) - 1);
            slots += 1u << (32 - shift);
        } else {
            if (value & ~mask)
                return "classifier: test value outside its mask";
            if (!cls_target_ok(nd->yes, (int32_t)i, n, np))
                return "classifier: test target is not a later node or an output";
            nd->value = cls_native(value);
        }
        if (nd->full > pr->full[base])
            pr->full[base] = nd->full;
    }
    if (used != nc)
        return "classifier: cases no switch uses";
    pr->nslots = slots;
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

/* Switch node nd's target for its masked word w (native byte order). */
static inline int32_t cls_switch(const struct cls_node *nodes, const struct cls_node *nd,
                                 uint32_t w)
{
    const struct cls_case *tab = (const struct cls_case *)(const void *)nodes + nd->value;
    uint32_t h = cls_hash(w, nd->shift);
    for (;;) {
        if (tab[h].value == w)
            return tab[h].target;
        if (tab[h].target == CLS_EMPTY)
            return nd->no;
        h = (h + 1) & (uint32_t)nd->yes;
    }
}

/* One step of a walk whose word w (masked) has been read: the next target. */
#define CLS_STEP(t, nodes, nd, w)                                             \
    do {                                                                      \
        if (nd->shift != 0) {                                                 \
            t = cls_switch(nodes, nd, w);                                     \
        } else if (w == nd->value) {                                          \
            t = nd->yes;                                                      \
        } else {                                                              \
            t = nd->no;                                                       \
            CLS_KEEP_BRANCH(t);                                               \
        }                                                                     \
    } while (0)

/* Walk a program whose tests are all on the packet data: the final target. */
static inline int32_t cls_run_data(const struct cls_prog *pr, const struct mb_packet *p)
{
    const struct cls_node *nodes = pr->nodes;
    const uint8_t *d = p->data;
    const uint32_t len = p->len;
    int32_t t = pr->entry;

    if (MB_LIKELY(pr->full[0] <= len)) {
        /* Every word of every node lies inside the packet. */
        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            const uint32_t w = cls_load(d + nd->off) & nd->mask;
            CLS_STEP(t, nodes, nd, w);
        }
        return t;
    }
    while (t >= 0) {
        const struct cls_node *nd = &nodes[t];
        uint32_t w;
        if (MB_LIKELY(nd->full <= len))
            w = cls_load(d + nd->off) & nd->mask;
        else if (nd->need <= len)
            w = cls_word(d, len, nd->off) & nd->mask;
        else {
            t = nd->no;     /* too short: the test fails, no case holds */
            continue;
        }
        CLS_STEP(t, nodes, nd, w);
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
        /* Every word of every node lies inside its base. */
        while (t >= 0) {
            const struct cls_node *nd = &nodes[t];
            const uint32_t w = cls_load(base[nd->base] + nd->off) & nd->mask;
            CLS_STEP(t, nodes, nd, w);
        }
        return t;
    }
    while (t >= 0) {
        const struct cls_node *nd = &nodes[t];
        const uint32_t b = nd->base;
        const uint32_t len = lim[b];
        uint32_t w;
        if (MB_LIKELY(nd->full <= len))
            w = cls_load(base[b] + nd->off) & nd->mask;
        else if (nd->need <= len)
            w = cls_word(base[b], len, nd->off) & nd->mask;
        else {
            t = nd->no;     /* too short: the test fails, no case holds */
            continue;
        }
        CLS_STEP(t, nodes, nd, w);
    }
    return t;
}

#endif
