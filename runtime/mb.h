/*
 * mb.h - the freestanding ABI shared by the engine, every element kernel,
 * the host runtime (Cython) and the unikernel guest.
 *
 * Rules for code that includes this header:
 *   - no libc beyond memcpy/memset/memcmp (declared here, not included);
 *   - no allocation after init: packets come from the engine's pool,
 *     kernel state is sized by the kernel and laid out by the engine;
 *   - every packet read is bounds-checked against p->len (mb_has()).
 */
#ifndef MB_H
#define MB_H

#include <stddef.h>
#include <stdint.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

#define MB_BATCH 32          /* packets a device hands over per call */
#define MB_XSTATS 8          /* kernel-specific counters per element */
#define MB_UNCONNECTED 0xFFFFFFFFu
#define MB_PKT_FREE 0x80        /* p->flags: in the pool (checked builds) */

#if defined(__GNUC__)
#define MB_LIKELY(x) __builtin_expect(!!(x), 1)
#define MB_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MB_PREFETCH(p) __builtin_prefetch(p)
#else
#define MB_LIKELY(x) (x)
#define MB_UNLIKELY(x) (x)
#define MB_PREFETCH(p) ((void)0)
#endif

struct mb_engine;
struct mb_elem;

/* One packet. The buffer [head, head+room) is owned by the engine's pool;
 * the packet is [data, data+len). Annotations travel with the packet. */
struct mb_packet {
    uint8_t *data;
    uint32_t len;
    uint16_t port;          /* input port at the element that holds it */
    uint8_t paint;          /* Paint / PaintSwitch annotation */
    uint8_t flags;
    uint64_t ts_ns;         /* arrival time: pcap timestamp or clock */
    uint8_t *nh;            /* network (IP) header annotation, or 0 */
    uint32_t dst_ip;        /* destination address annotation (host order) */
    uint32_t room;
    uint32_t seq;           /* arrival order: devices send in this order */
    uint8_t *head;
    struct mb_packet *next_free;
};

static inline uint32_t mb_headroom(const struct mb_packet *p)
{
    return (uint32_t)(p->data - p->head);
}

static inline uint32_t mb_tailroom(const struct mb_packet *p)
{
    return p->room - mb_headroom(p) - p->len;
}

/* True when bytes [off, off+n) lie inside the packet. */
static inline int mb_has(const struct mb_packet *p, uint32_t off, uint32_t n)
{
    return off <= p->len && n <= p->len - off;
}

/* Offset of the network header annotation from p->data when it is set,
 * lies inside the packet and has at least n bytes after it; else -1. */
static inline int32_t mb_nh_off(const struct mb_packet *p, uint32_t n)
{
    uint32_t off;
    if (!p->nh || p->nh < p->data)
        return -1;
    off = (uint32_t)(p->nh - p->data);
    return mb_has(p, off, n) ? (int32_t)off : -1;
}

/* Remove n bytes from the front; 0 on success, -1 if the packet is shorter. */
static inline int mb_pull(struct mb_packet *p, uint32_t n)
{
    if (n > p->len)
        return -1;
    p->data += n;
    p->len -= n;
    return 0;
}

/* Expose n bytes in front of the data (headroom); -1 if there is none. */
static inline int mb_push(struct mb_packet *p, uint32_t n)
{
    if (n > mb_headroom(p))
        return -1;
    p->data -= n;
    p->len += n;
    return 0;
}

/* Grow the packet by n bytes at its tail; -1 without tailroom. */
static inline int mb_put(struct mb_packet *p, uint32_t n)
{
    if (n > mb_tailroom(p))
        return -1;
    p->len += n;
    return 0;
}

/* Shrink the packet by n bytes at its tail. */
static inline int mb_take(struct mb_packet *p, uint32_t n)
{
    if (n > p->len)
        return -1;
    p->len -= n;
    return 0;
}

/* Network byte order loads and stores (callers check bounds first). */
static inline uint16_t mb_rd16(const uint8_t *b)
{
    return (uint16_t)((b[0] << 8) | b[1]);
}

static inline uint32_t mb_rd32(const uint8_t *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
           ((uint32_t)b[2] << 8) | (uint32_t)b[3];
}

static inline void mb_wr16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static inline void mb_wr32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* Little-endian loads, for reading lowered configuration blobs. */
static inline uint32_t mb_le32(const uint8_t *b)
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
           ((uint32_t)b[3] << 24);
}

static inline uint16_t mb_le16(const uint8_t *b)
{
    return (uint16_t)(b[0] | (b[1] << 8));
}

static inline uint64_t mb_le64(const uint8_t *b)
{
    return (uint64_t)mb_le32(b) | ((uint64_t)mb_le32(b + 4) << 32);
}

/* An output port: where its packets go. */
struct mb_out {
    struct mb_elem *dst;    /* 0 when unconnected: packets are dropped */
    uint16_t dst_port;
    uint64_t count;         /* packets emitted on this port */
};

/* Packets waiting at an element's inputs, run at its turn. */
struct mb_queue {
    struct mb_packet **pkts;
    uint32_t n;
    uint32_t cap;
};

struct mb_elem {
    const struct mb_kernel *k;
    struct mb_engine *eng;
    void *state;                    /* zeroed, k->state_size bytes */
    const uint8_t *cfg;             /* lowered configuration (plan bytes) */
    uint32_t cfg_len;
    uint32_t index;                 /* position in the plan (topological) */
    const char *name;
    struct mb_out *outs;
    uint16_t nout;
    uint16_t nin;
    uint32_t kernel;                /* k's index in the engine's kernel table */
    struct mb_queue q;
    uint64_t in;                    /* packets received */
    uint64_t created;               /* packets made here (sources, Tee copies) */
    uint64_t dropped;               /* packets freed here, for any reason */
    uint64_t sent;                  /* packets handed to a device here */
    uint64_t held;                  /* packets kept for later now (Queue, ARPQuerier) */
    uint64_t xstat[MB_XSTATS];      /* named by the element's Python class */
};

/*
 * A kernel: the C half of an element class. Invariant kept by every kernel:
 * in + created == sum(outs[].count) + sent + dropped + held.
 * A kernel that keeps packets across calls counts them in e->held and
 * declares the most it keeps (Python: held_capacity()), so the pool has room.
 */
struct mb_kernel {
    const char *name;
    /* Bytes of state this configuration needs (may be 0). */
    uint32_t (*state_size)(const uint8_t *cfg, uint32_t len);
    /* Check the configuration and set up state; 0, or -1 with mb_fail(). */
    int (*init)(struct mb_elem *e);
    /* Process n queued packets; each is emitted, dropped or kept. */
    void (*push)(struct mb_elem *e, struct mb_packet **pkts, uint32_t n);
    /* Sources only: emit up to max new packets; return how many. */
    uint32_t (*pull)(struct mb_elem *e, uint32_t max);
    /* Optional, write handlers: apply a message the element's Python class
     * made (e.g. a new backend table), between passes; 0, or -1 with
     * mb_fail() leaving the element as it was. */
    int (*control)(struct mb_elem *e, const uint8_t *msg, uint32_t len);
    /* Optional, read handlers: write what query `what` asks for (e.g. the
     * NAT's mappings) into out[0..cap); return the bytes written. */
    uint32_t (*query)(struct mb_elem *e, uint32_t what, uint8_t *out, uint32_t cap);
};

/* Every kernel file declares its kernels with MB_KERNEL(name); the build
 * collects these into the table the engine looks names up in. */
#define MB_KERNEL(nm) const struct mb_kernel mb_kernel_##nm

/* Engine services available to kernels (engine.c). */
struct mb_packet *mb_alloc(struct mb_engine *eng);
void mb_free(struct mb_engine *eng, struct mb_packet *p);
/* Up to n fresh packets into out[], as n calls of mb_alloc would make them
 * (stopping at the first failure, counted); returns how many. */
uint32_t mb_alloc_batch(struct mb_engine *eng, struct mb_packet **out, uint32_t n);
/* mb_free for each of pkts[0..n). */
void mb_free_batch(struct mb_engine *eng, struct mb_packet **pkts, uint32_t n);
struct mb_packet *mb_clone(struct mb_engine *eng, const struct mb_packet *p);
int mb_fail(struct mb_elem *e, const char *msg);

/* Kernels whose whole configuration is one little-endian u32 below 65536
 * (an offset or a length: Strip, Unstrip, MarkIPHeader, DropBroadcasts...)
 * share this state, its size and its init. */
struct mb_u16_cfg {
    uint32_t value;
};

static inline uint32_t mb_u16_cfg_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct mb_u16_cfg);
}

static inline int mb_u16_cfg_init(struct mb_elem *e)
{
    struct mb_u16_cfg *s = e->state;
    if (e->cfg_len != 4)
        return mb_fail(e, "bad configuration");
    s->value = mb_le32(e->cfg);
    if (s->value > 0xFFFFu)
        return mb_fail(e, "configuration out of range");
    return 0;
}

static inline uint32_t mb_u16_cfg(const struct mb_elem *e)
{
    return ((const struct mb_u16_cfg *)e->state)->value;
}

uint64_t mb_now(struct mb_engine *eng);
/* Largest packet a fresh buffer holds (buffer size less headroom). */
uint32_t mb_max_len(const struct mb_engine *eng);
/* Hand a packet to logical device dev for transmission (ToDevice). */
int mb_dev_tx(struct mb_engine *eng, uint32_t dev, struct mb_packet *p);
/* Run a host-side (Python) element over a batch; see runtime/_engine.pyx. */
void mb_host_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n);

static inline void mb_drop(struct mb_elem *e, struct mb_packet *p)
{
    e->dropped++;
    mb_free(e->eng, p);
}

/* mb_drop for each of pkts[0..n). */
static inline void mb_drop_batch(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    e->dropped += n;
    mb_free_batch(e->eng, pkts, n);
}

/* Send p out of output port `port`; unconnected ports drop and count. */
static inline void mb_emit(struct mb_elem *e, uint32_t port, struct mb_packet *p)
{
    if (MB_LIKELY(port < e->nout)) {
        struct mb_out *o = &e->outs[port];
        struct mb_elem *d = o->dst;
        if (MB_LIKELY(d != 0 && d->q.n < d->q.cap)) {
            p->port = o->dst_port;
            d->q.pkts[d->q.n++] = p;
            o->count++;
            return;
        }
    }
    mb_drop(e, p);
}

/* Send pkts[0..n) out of output `port`, in order: exactly what n calls of
 * mb_emit(e, port, pkts[i]) do (what does not fit, or an unconnected port,
 * is dropped and counted), with the port's checks made once. A kernel may
 * compact the packets it keeps into its own pkts array and emit them so;
 * to keep the order of packets sent to different outputs, emit a run
 * before sending a packet to another port. */
static inline void mb_emit_batch(struct mb_elem *e, uint32_t port, struct mb_packet **pkts,
                                 uint32_t n)
{
    uint32_t i;
    if (MB_LIKELY(port < e->nout)) {
        struct mb_out *o = &e->outs[port];
        struct mb_elem *d = o->dst;
        if (MB_LIKELY(d != 0)) {
            const uint32_t room = d->q.n < d->q.cap ? d->q.cap - d->q.n : 0;
            const uint32_t m = n < room ? n : room;
            struct mb_packet **q = d->q.pkts + d->q.n;
            const uint16_t dp = o->dst_port;
            for (i = 0; i < m; i++) {
                pkts[i]->port = dp;
                q[i] = pkts[i];
            }
            d->q.n += m;
            o->count += m;
            pkts += m;
            n -= m;
        }
    }
    for (i = 0; i < n; i++)
        mb_drop(e, pkts[i]);
}

/* Packets output `port` can still take in this pass (unconnected: any,
 * since mb_emit drops and counts them). For kernels that must emit a set
 * of packets whole (IPFragmenter). */
static inline uint32_t mb_out_room(const struct mb_elem *e, uint32_t port)
{
    const struct mb_queue *q;
    if (port >= e->nout || e->outs[port].dst == 0)
        return 0xFFFFFFFFu;
    q = &e->outs[port].dst->q;
    return q->n < q->cap ? q->cap - q->n : 0;
}

/* Internet checksum helpers (RFC 1071 sum, RFC 1624 incremental update). */
static inline uint32_t mb_csum_add(uint32_t sum, const uint8_t *b, uint32_t n)
{
    uint32_t i;
    for (i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)((b[i] << 8) | b[i + 1]);
    if (n & 1)
        sum += (uint32_t)(b[n - 1] << 8);
    return sum;
}

static inline uint16_t mb_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

/* New checksum when a 16-bit field changes from old to new (RFC 1624 eq. 3). */
static inline uint16_t mb_csum_update16(uint16_t csum, uint16_t old, uint16_t new_)
{
    uint32_t sum = (uint16_t)~csum;
    sum += (uint16_t)~old;
    sum += new_;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

#endif /* MB_H */
