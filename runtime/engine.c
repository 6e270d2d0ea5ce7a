/*
 * engine.c - loads a plan into one caller-provided arena and runs it.
 *
 * Run-to-completion and push-only: packets wait in the queue of the element
 * they were sent to; mb_engine_run() visits elements in plan (topological)
 * order and hands each its whole queue at once, so every kernel sees
 * batches and each packet crosses the graph in one pass. Plans only have
 * forward edges (checked here), so one pass empties every queue.
 *
 * Nothing is allocated after init; every offset in the plan is checked
 * before it is used, because plan bytes may come from a file.
 */
#include "engine.h"

#define ALIGN64(x) (((x) + 63u) & ~(uint64_t)63u)

static int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* Append src to dst[*pos..cap), keeping it NUL-terminated; bytes that
 * are not printable ASCII (a corrupt plan's names) become '?'. */
static void str_put(char *dst, uint32_t cap, uint32_t *pos, const char *src)
{
    for (; *src && *pos + 1 < cap; src++) {
        unsigned char c = (unsigned char)*src;
        dst[(*pos)++] = (char)(c >= 0x20 && c < 0x7f ? c : '?');
    }
    if (cap)
        dst[*pos < cap ? *pos : cap - 1] = 0;
}

static void set_err(char *err, uint32_t errlen, const char *a, const char *b,
                    const char *c)
{
    uint32_t pos = 0;
    if (!err || !errlen)
        return;
    err[0] = 0;
    str_put(err, errlen, &pos, a);
    if (b)
        str_put(err, errlen, &pos, b);
    if (c)
        str_put(err, errlen, &pos, c);
}

int mb_fail(struct mb_elem *e, const char *msg)
{
    set_err(e->eng->err, MB_ERRLEN, e->name, ": ", msg);
    return -1;
}

uint64_t mb_now(struct mb_engine *eng)
{
    return eng->now_ns;
}

uint32_t mb_max_len(const struct mb_engine *eng)
{
    return eng->bufsize - eng->headroom;
}

/* --- packet pool ---------------------------------------------------------- */

/* Packets are set up the first time the free list runs dry, a chunk at a
 * time, not when the engine is made: a pool of thousands costs nothing
 * until traffic needs it (the guest's boot time), and on the fast path the
 * only cost is the empty-list test mb_alloc makes anyway. */
#define MB_POOL_CHUNK 64u

static struct mb_packet *pool_grow(struct mb_engine *eng)
{
    uint32_t i, n = eng->npkts - eng->fresh;
    struct mb_packet *head = 0;
    if (n > MB_POOL_CHUNK)
        n = MB_POOL_CHUNK;
    for (i = eng->fresh + n; i-- > eng->fresh;) {
        struct mb_packet *p = &eng->pool[i];
        p->head = eng->bufs + (uint64_t)i * eng->bufsize;
        p->room = eng->bufsize;
        p->data = p->head + eng->headroom;
        p->flags = MB_PKT_FREE;
        p->next_free = head;
        head = p;
    }
    eng->fresh += n;
    eng->free_list = head;
    return head;
}

struct mb_packet *mb_alloc(struct mb_engine *eng)
{
    struct mb_packet *p = eng->free_list;
    if (MB_UNLIKELY(!p) && !(p = pool_grow(eng))) {
        eng->alloc_failed++;
        return 0;
    }
    eng->free_list = p->next_free;
    eng->nfree--;
    p->next_free = 0;
#ifdef MB_DEBUG
    if (!(p->flags & MB_PKT_FREE))
        __builtin_trap();
#endif
    p->data = p->head + eng->headroom;
    p->len = 0;
    p->port = 0;
    p->paint = 0;
    p->flags = 0;
    p->ts_ns = eng->now_ns;
    p->seq = eng->seq++;
    p->nh = 0;
    p->dst_ip = 0;
    return p;
}

void mb_free(struct mb_engine *eng, struct mb_packet *p)
{
#ifdef MB_DEBUG
    /* Checked builds (the sanitizer harness): a packet freed twice, or a
     * pointer that is not one of the pool's packets, stops the program. */
    if (p->flags & MB_PKT_FREE)
        __builtin_trap();
    p->flags |= MB_PKT_FREE;
#endif
    p->next_free = eng->free_list;
    eng->free_list = p;
    eng->nfree++;
}

uint32_t mb_alloc_batch(struct mb_engine *eng, struct mb_packet **out, uint32_t n)
{
    struct mb_packet *p = eng->free_list;
    const uint32_t headroom = eng->headroom;
    const uint64_t now = eng->now_ns;
    uint32_t i, seq = eng->seq;
    for (i = 0; i < n; i++) {
        struct mb_packet *next;
        if (MB_UNLIKELY(!p) && !(p = pool_grow(eng)))
            break;
        next = p->next_free;
#ifdef MB_DEBUG
        if (!(p->flags & MB_PKT_FREE))
            __builtin_trap();
#endif
        p->next_free = 0;
        p->data = p->head + headroom;
        p->len = 0;
        p->port = 0;
        p->paint = 0;
        p->flags = 0;
        p->ts_ns = now;
        p->seq = seq++;
        p->nh = 0;
        p->dst_ip = 0;
        out[i] = p;
        p = next;
    }
    eng->free_list = p;
    eng->nfree -= i;
    eng->seq = seq;
    if (MB_UNLIKELY(i < n))
        eng->alloc_failed++;
    return i;
}

void mb_free_batch(struct mb_engine *eng, struct mb_packet **pkts, uint32_t n)
{
    struct mb_packet *head = eng->free_list;
    uint32_t i;
    for (i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
#ifdef MB_DEBUG
        if (p->flags & MB_PKT_FREE)
            __builtin_trap();
        p->flags |= MB_PKT_FREE;
#endif
        p->next_free = head;
        head = p;
    }
    eng->free_list = head;
    eng->nfree += n;
}

struct mb_packet *mb_clone(struct mb_engine *eng, const struct mb_packet *p)
{
    struct mb_packet *c = mb_alloc(eng);
    if (!c)
        return 0;
    /* Same headroom as the original so Unstrip and the nh annotation keep
     * working on the copy. */
    c->data = c->head + mb_headroom(p);
    c->len = p->len;
    memcpy(c->head, p->head, mb_headroom(p) + p->len);
    c->port = p->port;
    c->paint = p->paint;
    c->flags = p->flags;
    c->ts_ns = p->ts_ns;
    c->seq = p->seq;
    c->nh = p->nh ? c->head + (p->nh - p->head) : 0;
    c->dst_ip = p->dst_ip;
    return c;
}

/* --- devices ---------------------------------------------------------------- */

int mb_dev_tx(struct mb_engine *eng, uint32_t dev, struct mb_packet *p)
{
    struct mb_queue *q;
    if (dev >= eng->ndev)
        return -1;
    q = &eng->devs[dev].tx;
    if (q->n >= q->cap)
        return -1;
    q->pkts[q->n++] = p;
    return 0;
}

void mb_host_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    uint32_t i;
    if (e->eng->host_push) {
        e->eng->host_push(e->eng->host, e, pkts, n);
        return;
    }
    for (i = 0; i < n; i++)
        mb_drop(e, pkts[i]);
}

int mb_engine_control(struct mb_engine *eng, uint32_t elem, const uint8_t *msg,
                      uint32_t len)
{
    struct mb_elem *e;
    if (elem >= eng->nelem) {
        set_err(eng->err, MB_ERRLEN, "no such element", 0, 0);
        return -1;
    }
    e = &eng->elems[elem];
    if (!e->k->control)
        return mb_fail(e, "has no write handlers");
    return e->k->control(e, msg, len);
}

uint32_t mb_engine_query(struct mb_engine *eng, uint32_t elem, uint32_t what,
                         uint8_t *out, uint32_t cap)
{
    struct mb_elem *e;
    if (elem >= eng->nelem || !eng->elems[elem].k->query)
        return 0;
    e = &eng->elems[elem];
    return e->k->query(e, what, out, cap);
}

int mb_engine_device(const struct mb_engine *eng, const char *name)
{
    uint32_t i;
    for (i = 0; i < eng->ndev; i++)
        if (str_eq(eng->devs[i].name, name))
            return (int)i;
    return -1;
}

uint32_t mb_engine_rx(struct mb_engine *eng, uint32_t dev,
                      struct mb_packet **pkts, uint32_t n)
{
    struct mb_device *d;
    struct mb_queue *q;
    uint32_t i, taken = 0;
    if (dev >= eng->ndev) {
        for (i = 0; i < n; i++)
            mb_free(eng, pkts[i]);
        return 0;
    }
    d = &eng->devs[dev];
    d->rx += n;
    q = d->from ? &d->from->q : 0;
    for (i = 0; i < n; i++) {
        if (q && q->n < q->cap) {
            pkts[i]->port = 0;
            pkts[i]->seq = eng->seq++;
            q->pkts[q->n++] = pkts[i];
            taken++;
        } else {
            d->rx_dropped++;
            mb_free(eng, pkts[i]);
        }
    }
    return taken;
}

uint32_t mb_engine_pull(struct mb_engine *eng)
{
    uint32_t i, made = 0;
    for (i = 0; i < eng->nsources; i++) {
        struct mb_elem *e = &eng->elems[eng->sources[i]];
        made += e->k->pull(e, MB_BATCH);
    }
    return made;
}

void mb_engine_run(struct mb_engine *eng)
{
    uint32_t i;
    for (i = 0; i < eng->nelem; i++) {
        struct mb_elem *e = &eng->elems[i];
        uint32_t n = e->q.n;
        if (!n)
            continue;
        e->q.n = 0;
        e->in += n;
        e->k->push(e, e->q.pkts, n);
    }
}

uint32_t mb_engine_tx(struct mb_engine *eng, uint32_t dev,
                      struct mb_packet **out, uint32_t max)
{
    struct mb_queue *q;
    uint32_t n, i;
    if (dev >= eng->ndev)
        return 0;
    q = &eng->devs[dev].tx;
    /* Branches that meet again deliver a pass's packets grouped by branch;
     * put them back in arrival order (stable: a Tee's copies keep theirs).
     * Insertion sort: the queue is short and usually already in order. */
    for (i = 1; i < q->n; i++) {
        struct mb_packet *p = q->pkts[i];
        uint32_t j = i;
        while (j > 0 && (int32_t)(q->pkts[j - 1]->seq - p->seq) > 0) {
            q->pkts[j] = q->pkts[j - 1];
            j--;
        }
        q->pkts[j] = p;
    }
    n = q->n < max ? q->n : max;
    for (i = 0; i < n; i++)
        out[i] = q->pkts[i];
    /* Keep the rest in order for the next call. */
    for (i = n; i < q->n; i++)
        q->pkts[i - n] = q->pkts[i];
    q->n -= n;
    eng->devs[dev].sent += n;
    return n;
}

/* --- plan loading ------------------------------------------------------------ */

struct plan_view {
    const uint8_t *b;
    uint32_t len;
    uint32_t nelem, nport, ndev;
    uint32_t elems_off, ports_off, devs_off, str_off, str_len, name_off;
    uint32_t min_packets;
};

static uint32_t fnv1a(const uint8_t *b, uint32_t n)
{
    uint32_t h = 2166136261u, i;
    for (i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

uint32_t mb_plan_checksum(const uint8_t *b, uint32_t n)
{
    return fnv1a(b, n);
}

/* A string in the string table; 0 if the offset or terminator is bad. */
static const char *plan_str(const struct plan_view *v, uint32_t off)
{
    uint32_t i;
    if (off >= v->str_len)
        return 0;
    for (i = off; i < v->str_len; i++)
        if (v->b[v->str_off + i] == 0)
            return (const char *)v->b + v->str_off + off;
    return 0;
}

static int in_plan(const struct plan_view *v, uint32_t off, uint64_t n)
{
    return off <= v->len && n <= (uint64_t)(v->len - off);
}

/* Index of the kernel called name in ks, or nk. */
static uint32_t find_kernel(const char *name, const struct mb_kernel *const *ks, uint32_t nk)
{
    uint32_t i;
    for (i = 0; i < nk; i++)
        if (ks[i] && str_eq(ks[i]->name, name))
            return i;
    return nk;
}

static int plan_parse(const uint8_t *b, uint32_t len, struct plan_view *v,
                      char *err, uint32_t errlen)
{
    uint32_t total, i, next_port;
    if (len < MB_PLAN_HEADER || mb_le32(b) != MB_PLAN_MAGIC) {
        set_err(err, errlen, "not a middlebox plan", 0, 0);
        return -1;
    }
    if (mb_le16(b + 4) != MB_PLAN_VERSION) {
        set_err(err, errlen, "unsupported plan version", 0, 0);
        return -1;
    }
    total = mb_le32(b + 8);
    if (total != len || mb_le16(b + 6) != MB_PLAN_HEADER) {
        set_err(err, errlen, "plan length does not match its header", 0, 0);
        return -1;
    }
    if (fnv1a(b + 16, len - 16) != mb_le32(b + 12)) {
        set_err(err, errlen, "plan checksum mismatch (corrupt plan)", 0, 0);
        return -1;
    }
    v->b = b;
    v->len = len;
    v->nelem = mb_le32(b + 16);
    v->nport = mb_le32(b + 20);
    v->ndev = mb_le32(b + 24);
    v->elems_off = mb_le32(b + 28);
    v->ports_off = mb_le32(b + 32);
    v->devs_off = mb_le32(b + 36);
    v->str_off = mb_le32(b + 40);
    v->str_len = mb_le32(b + 44);
    v->name_off = mb_le32(b + 48);
    v->min_packets = mb_le32(b + 52);
    if (v->nelem > 65536 || v->nport > 1u << 20 || v->ndev > 1024 ||
        v->min_packets > 1u << 18 ||
        !in_plan(v, v->elems_off, (uint64_t)v->nelem * MB_PLAN_ELEM) ||
        !in_plan(v, v->ports_off, (uint64_t)v->nport * MB_PLAN_PORT) ||
        !in_plan(v, v->devs_off, (uint64_t)v->ndev * MB_PLAN_DEV) ||
        !in_plan(v, v->str_off, v->str_len) || !plan_str(v, v->name_off)) {
        set_err(err, errlen, "plan tables out of bounds", 0, 0);
        return -1;
    }
    for (i = 0, next_port = 0; i < v->nelem; i++) {
        const uint8_t *r = b + v->elems_off + i * MB_PLAN_ELEM;
        uint32_t first = mb_le32(r + 16), nout = mb_le16(r + 20), j;
        uint32_t qcap = mb_le32(r + 24);
        /* Each element's outputs follow the previous element's: no port
         * record is shared (its count would be kept twice). */
        if (!plan_str(v, mb_le32(r)) || !plan_str(v, mb_le32(r + 4)) ||
            !in_plan(v, mb_le32(r + 8), mb_le32(r + 12)) || first != next_port ||
            (uint64_t)first + nout > v->nport || qcap > (1u << 20)) {
            set_err(err, errlen, "plan element record out of bounds", 0, 0);
            return -1;
        }
        next_port = first + nout;
        for (j = 0; j < nout; j++) {
            const uint8_t *pr = b + v->ports_off + (first + j) * MB_PLAN_PORT;
            uint32_t dst = mb_le32(pr);
            if (dst == MB_UNCONNECTED)
                continue;
            /* Forward edges only: what makes one pass in order enough. */
            if (dst <= i || dst >= v->nelem ||
                mb_le16(pr + 4) >= mb_le16(b + v->elems_off + dst * MB_PLAN_ELEM + 22)) {
                set_err(err, errlen, "plan connection out of order or range", 0, 0);
                return -1;
            }
        }
    }
    for (i = 0; i < v->ndev; i++) {
        const uint8_t *r = b + v->devs_off + i * MB_PLAN_DEV;
        uint32_t from = mb_le32(r + 4);
        if (!plan_str(v, mb_le32(r)) || (from != MB_UNCONNECTED && from >= v->nelem) ||
            mb_le32(r + 8) > (1u << 20)) {
            set_err(err, errlen, "plan device record out of bounds", 0, 0);
            return -1;
        }
    }
    return 0;
}

/* Walk the layout; with eng == 0 only measure it. Returns bytes, 0 on error. */
static uint64_t layout(const struct plan_view *v, const struct mb_engine_opts *o,
                       const struct mb_kernel *const *ks, uint32_t nk,
                       uint8_t *arena, char *err, uint32_t errlen)
{
    uint64_t off = 0, qslots = 0, states = 0, o_elems, o_outs, o_devs, o_src;
    uint64_t o_slots, o_states, o_pkts, o_bufs, o_plan;
    uint32_t i, nsrc = 0, npkts, bufsize = o->bufsize, headroom = o->headroom;
    struct mb_engine *eng;

    if (bufsize < 256 || headroom >= bufsize - 128 || bufsize > (1u << 20)) {
        set_err(err, errlen, "bad packet buffer size or headroom", 0, 0);
        return 0;
    }
    for (i = 0; i < v->nelem; i++) {
        const uint8_t *r = v->b + v->elems_off + i * MB_PLAN_ELEM;
        const char *kname = plan_str(v, mb_le32(r + 4));
        uint32_t ki = find_kernel(kname, ks, nk);
        const struct mb_kernel *k = ki < nk ? ks[ki] : 0;
        if (!k) {
            set_err(err, errlen, plan_str(v, mb_le32(r)),
                    ": this engine has no kernel ", kname);
            return 0;
        }
        if (k->pull)
            nsrc++;
        qslots += mb_le32(r + 24);
        states += ALIGN64((uint64_t)k->state_size(v->b + mb_le32(r + 8), mb_le32(r + 12)));
    }
    for (i = 0; i < v->ndev; i++)
        qslots += mb_le32(v->b + v->devs_off + i * MB_PLAN_DEV + 8);

    npkts = o->npkts ? o->npkts : v->min_packets + 4 * MB_BATCH;
    o_elems = off = ALIGN64(sizeof(struct mb_engine));
    off = o_outs = ALIGN64(off + (uint64_t)v->nelem * sizeof(struct mb_elem));
    off = o_devs = ALIGN64(off + (uint64_t)v->nport * sizeof(struct mb_out));
    off = o_src = ALIGN64(off + (uint64_t)v->ndev * sizeof(struct mb_device));
    off = o_slots = ALIGN64(off + (uint64_t)nsrc * sizeof(uint32_t));
    off = o_states = ALIGN64(off + qslots * sizeof(struct mb_packet *));
    /* Everything an engine is made of comes before the packet pool, so an
     * arena image (unikernel/arena.c) is this prefix; the pool and the
     * buffers start zero and are set up as packets are first needed. */
    off = o_plan = ALIGN64(off + states);
    off = o_pkts = ALIGN64(off + (o->shared_plan ? 0 : v->len));
    off = o_bufs = ALIGN64(off + (uint64_t)npkts * sizeof(struct mb_packet));
    off = ALIGN64(off + (uint64_t)npkts * bufsize);
    if (!arena)
        return off;

    /* Fill in. */
    memset(arena, 0, o_pkts);
    eng = (struct mb_engine *)arena;
    if (o->shared_plan) {
        eng->plan = v->b;
    } else {
        memcpy(arena + o_plan, v->b, v->len);
        eng->plan = arena + o_plan;
    }
    eng->plan_len = v->len;
    eng->nelem = v->nelem;
    eng->ndev = v->ndev;
    eng->elems = (struct mb_elem *)(arena + o_elems);
    eng->devs = (struct mb_device *)(arena + o_devs);
    eng->sources = (uint32_t *)(arena + o_src);
    eng->npkts = npkts;
    eng->bufsize = bufsize;
    eng->headroom = headroom;
    {
        const uint8_t *pb = eng->plan;
        const char *strs = (const char *)pb + v->str_off;
        struct mb_out *outs = (struct mb_out *)(arena + o_outs);
        struct mb_packet **slots = (struct mb_packet **)(arena + o_slots);
        uint8_t *st = arena + o_states;

        eng->graph_name = strs + v->name_off;
        for (i = 0; i < v->nelem; i++) {
            const uint8_t *r = pb + v->elems_off + i * MB_PLAN_ELEM;
            struct mb_elem *e = &eng->elems[i];
            uint32_t j, first = mb_le32(r + 16);
            e->eng = eng;
            e->index = i;
            e->name = strs + mb_le32(r);
            e->kernel = find_kernel(strs + mb_le32(r + 4), ks, nk);
            e->k = ks[e->kernel];
            e->cfg = pb + mb_le32(r + 8);
            e->cfg_len = mb_le32(r + 12);
            e->nout = mb_le16(r + 20);
            e->nin = mb_le16(r + 22);
            e->outs = outs + first;
            e->q.cap = mb_le32(r + 24);
            e->q.pkts = slots;
            slots += e->q.cap;
            e->state = st;
            st += ALIGN64((uint64_t)e->k->state_size(e->cfg, e->cfg_len));
            for (j = 0; j < e->nout; j++) {
                const uint8_t *pr = pb + v->ports_off + (first + j) * MB_PLAN_PORT;
                uint32_t dst = mb_le32(pr);
                e->outs[j].dst = dst == MB_UNCONNECTED ? 0 : &eng->elems[dst];
                e->outs[j].dst_port = mb_le16(pr + 4);
            }
            if (e->k->pull)
                eng->sources[eng->nsources++] = i;
        }
        for (i = 0; i < v->ndev; i++) {
            const uint8_t *r = pb + v->devs_off + i * MB_PLAN_DEV;
            struct mb_device *d = &eng->devs[i];
            uint32_t from = mb_le32(r + 4);
            d->name = strs + mb_le32(r);
            d->from = from == MB_UNCONNECTED ? 0 : &eng->elems[from];
            d->tx.cap = mb_le32(r + 8);
            d->tx.pkts = slots;
            slots += d->tx.cap;
        }
        eng->size = off;
        eng->pool = (struct mb_packet *)(arena + o_pkts);
        eng->bufs = arena + o_bufs;
        eng->free_list = 0;
        eng->fresh = 0;
        eng->nfree = npkts;
    }
    for (i = 0; i < eng->nelem; i++) {
        struct mb_elem *e = &eng->elems[i];
        if (e->k->init && e->k->init(e) != 0) {
            set_err(err, errlen, eng->err, 0, 0);
            return 0;
        }
    }
    return off;
}

uint64_t mb_engine_size(const uint8_t *plan, uint32_t len,
                        const struct mb_engine_opts *opts,
                        const struct mb_kernel *const *kernels, uint32_t nkernels,
                        char *err, uint32_t errlen)
{
    struct plan_view v;
    if (plan_parse(plan, len, &v, err, errlen) != 0)
        return 0;
    return layout(&v, opts, kernels, nkernels, 0, err, errlen);
}

struct mb_engine *mb_engine_init(void *arena, uint64_t size,
                                 const uint8_t *plan, uint32_t len,
                                 const struct mb_engine_opts *opts,
                                 const struct mb_kernel *const *kernels,
                                 uint32_t nkernels, char *err, uint32_t errlen)
{
    struct plan_view v;
    uint64_t need;
    if (plan_parse(plan, len, &v, err, errlen) != 0)
        return 0;
    need = layout(&v, opts, kernels, nkernels, 0, err, errlen);
    if (!need)
        return 0;
    if (need > size || ((uintptr_t)arena & 63)) {
        set_err(err, errlen, "engine arena too small or misaligned", 0, 0);
        return 0;
    }
    if (!layout(&v, opts, kernels, nkernels, (uint8_t *)arena, err, errlen))
        return 0;
    return (struct mb_engine *)arena;
}
