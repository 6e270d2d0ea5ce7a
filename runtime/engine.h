/*
 * engine.h - the scheduler that runs a compiled plan. Freestanding: the
 * host (Cython, runtime/_engine.pyx) and the guest (unikernel/) both drive
 * it through this interface. Plan format: docs/plan-format.md.
 */
#ifndef MB_ENGINE_H
#define MB_ENGINE_H

#include "mb.h"

#define MB_PLAN_MAGIC 0x4C50424Du /* "MBPL" little-endian */
#define MB_PLAN_VERSION 1
#define MB_PLAN_HEADER 64
#define MB_PLAN_ELEM 32
#define MB_PLAN_PORT 8
#define MB_PLAN_DEV 16
#define MB_ERRLEN 192

struct mb_device {
    const char *name;
    struct mb_elem *from;       /* FromDevice element, or 0 */
    struct mb_queue tx;         /* packets ToDevice handed over */
    uint64_t rx;                /* packets injected */
    uint64_t rx_dropped;        /* injected with no FromDevice, or no room */
    uint64_t sent;              /* packets taken for transmission */
};

/* Host hook for Python elements (kernel "python"); 0 in the guest. */
typedef void (*mb_host_push_fn)(void *host, struct mb_elem *e,
                                struct mb_packet **pkts, uint32_t n);

struct mb_engine {
    uint32_t nelem;
    uint32_t ndev;
    struct mb_elem *elems;      /* topological order */
    struct mb_device *devs;
    uint32_t *sources;          /* indices of elements with pull */
    uint32_t nsources;
    struct mb_packet *free_list;
    uint32_t nfree;             /* free packets, the never used included */
    uint32_t npkts;
    uint32_t bufsize;
    uint32_t headroom;
    uint64_t alloc_failed;
    uint64_t now_ns;            /* set by the driver: clock or pcap time */
    uint32_t seq;               /* next arrival sequence number */
    void *host;
    mb_host_push_fn host_push;
    const char *graph_name;
    const uint8_t *plan;        /* a private copy in the arena, or shared */
    uint32_t plan_len;
    /* Cold: the fields above keep the places the fast path knows. */
    uint32_t fresh;             /* pool[fresh..npkts) not yet set up */
    struct mb_packet *pool;     /* npkts packets ... */
    uint8_t *bufs;              /* ... and their buffers, bufsize each */
    uint64_t size;              /* arena bytes */
    char err[MB_ERRLEN];
};

struct mb_engine_opts {
    uint32_t npkts;             /* pool size; 0: what the plan asks + slack */
    uint32_t bufsize;           /* bytes per packet buffer, headroom included */
    uint32_t headroom;          /* bytes kept free in front of received data */
    uint32_t shared_plan;       /* 1: use the caller's plan bytes in place (they
                                 * must outlive the engine and never move); 0:
                                 * keep a private copy in the arena */
};

/* The plan checksum (FNV-1a over the bytes after the first 16), so that the
 * compiler (middlebox/plan.py, through the host extension) uses this code. */
uint32_t mb_plan_checksum(const uint8_t *b, uint32_t n);

/*
 * Check plan bytes; on success return the arena size (bytes) the engine
 * needs with these options, else 0 with a message in err.
 */
uint64_t mb_engine_size(const uint8_t *plan, uint32_t len,
                        const struct mb_engine_opts *opts,
                        const struct mb_kernel *const *kernels, uint32_t nkernels,
                        char *err, uint32_t errlen);

/*
 * Lay the engine out in arena (size from mb_engine_size, 64-byte aligned)
 * and run every kernel's init. Returns 0, or 0 with a message in err.
 */
struct mb_engine *mb_engine_init(void *arena, uint64_t size,
                                 const uint8_t *plan, uint32_t len,
                                 const struct mb_engine_opts *opts,
                                 const struct mb_kernel *const *kernels,
                                 uint32_t nkernels, char *err, uint32_t errlen);

/* Hand received packets to device dev's FromDevice; returns packets taken
 * (the rest were freed and counted in rx_dropped). */
uint32_t mb_engine_rx(struct mb_engine *eng, uint32_t dev,
                      struct mb_packet **pkts, uint32_t n);

/* Let every source make up to one batch; returns packets made. */
uint32_t mb_engine_pull(struct mb_engine *eng);

/* Run every queued packet through the graph, in plan order. */
void mb_engine_run(struct mb_engine *eng);

/* Take up to max packets waiting for transmission on dev (caller frees). */
uint32_t mb_engine_tx(struct mb_engine *eng, uint32_t dev,
                      struct mb_packet **out, uint32_t max);

/* Write handler: hand msg to element `elem`'s kernel control(); call only
 * between passes. 0, or -1 with a message in eng->err. */
int mb_engine_control(struct mb_engine *eng, uint32_t elem, const uint8_t *msg,
                      uint32_t len);

/* Read handler: the kernel's query(what) into out; bytes written (0 if the
 * kernel has none). Call only between passes. */
uint32_t mb_engine_query(struct mb_engine *eng, uint32_t elem, uint32_t what,
                         uint8_t *out, uint32_t cap);

/* Index of the device with this name, or -1. */
int mb_engine_device(const struct mb_engine *eng, const char *name);

#endif
