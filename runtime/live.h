/*
 * live.h - the host's live-interface driver: Linux interfaces through
 * AF_PACKET memory-mapped rings, and TAP devices, feeding the engine.
 *
 * Host only (libc and Linux headers): linked into the Cython extension,
 * never into the freestanding core library or a guest.
 *
 * A port is one bound device of the graph. Opening it (mb_live_open) makes
 * its sockets, rings and memberships; mb_live_run drives the engine over a
 * set of ports until a signal, a deadline or a failure; mb_live_close
 * undoes everything. See docs/live.md for the design.
 */
#ifndef MB_LIVE_H
#define MB_LIVE_H

#include <stdint.h>
#include <signal.h>

#include "engine.h"

#define MB_LIVE_PACKET 1        /* AF_PACKET socket on an interface */
#define MB_LIVE_TAP 2           /* /dev/net/tun, IFF_TAP | IFF_NO_PI */

#define MB_LIVE_RING_V3 3       /* TPACKET_V3 blocks (default: batching) */
#define MB_LIVE_RING_V2 2       /* TPACKET_V2 frames (lower latency) */
#define MB_LIVE_MAX_PORTS 32

/* One receive ring (TPACKET_V3 or TPACKET_V2) mapped from a packet socket. */
struct mb_live_ring {
    uint8_t *map;
    uint64_t map_len;
    uint32_t version;           /* 0: no ring */
    uint32_t block_size, nblocks;
    uint32_t frame_size, nframes;   /* V2 */
    uint32_t cur;               /* V3: current block; V2: current frame */
    uint32_t left;              /* V3: packets left in the current block */
    uint8_t *next;              /* V3: next packet header in the block */
};

struct mb_live_counters {
    uint64_t rx;                /* frames taken from the kernel */
    uint64_t rx_bytes;
    uint64_t tx;                /* frames the kernel accepted */
    uint64_t tx_bytes;
    uint64_t tx_errors;         /* frames the kernel refused (too big, ...) */
    uint64_t tx_dropped;        /* no room in the socket / TAP queue */
    uint64_t oversize;          /* frames truncated by the ring or too big */
    uint64_t csum_fixed;        /* partial checksums completed (CSUMNOTREADY) */
    uint64_t kernel_drops;      /* PACKET_STATISTICS tp_drops, summed */
    uint64_t kernel_freezes;    /* PACKET_STATISTICS tp_freeze_q_cnt (V3) */
};

struct mb_live_port {
    int kind;
    int fd;                     /* packet socket (ring + send) or TAP fd */
    int fd2;                    /* workers: socket for non-IP frames, or -1 */
    struct mb_live_ring ring, ring2;
    int ifindex;
    uint32_t mtu;
    uint32_t dev;               /* engine device index */
    int rx, tx;                 /* the graph receives from / sends to it */
    int created;                /* TAP: we made it (it goes when we close) */
    int was_up;                 /* the link was up when we opened it */
    uint32_t fanout_id;         /* PACKET_FANOUT group, if in_fanout */
    int in_fanout;
    char ifname[16];
    struct mb_live_counters c;
};

struct mb_live_cfg {
    int kind;
    const char *ifname;
    uint32_t dev;
    int rx, tx;
    int ring_version;           /* MB_LIVE_RING_V3 or MB_LIVE_RING_V2 */
    uint32_t ring_bytes;        /* receive ring size (0: 4 MiB) */
    uint32_t retire_ms;         /* V3 block retire timeout (0: 1 ms) */
    int fanout;                 /* be in a PACKET_FANOUT_HASH group: */
    int fanout_join;            /* join group fanout_id, else make one */
    uint32_t fanout_id;         /* (the kernel's unique ids start at 0) */
};

/* Open a port; 0, or -1 with a one-line message in err. */
int mb_live_open(struct mb_live_port *p, const struct mb_live_cfg *cfg, char *err,
                 uint32_t errlen);
/* Unmap and close; the kernel's ring counters are not read (a forked
 * copy closes what another process goes on using). */
void mb_live_close(struct mb_live_port *p);
/* Fold the kernel's ring counters (PACKET_STATISTICS, which reading
 * resets) into p->c. */
void mb_live_kernel_stats(struct mb_live_port *p);

/* The driver loop's hooks into its host (the Cython engine). */
struct mb_live_hooks {
    volatile int *pending;      /* handler requests are waiting */
    void (*service)(void *arg); /* serve them (takes the GIL) */
    volatile int *failed;       /* a Python element failed: stop */
    void *arg;
};

struct mb_live_opts {
    uint64_t duration_ns;       /* 0: until a signal */
    int busy_poll;              /* never sleep in poll() */
    int poll_ms;                /* idle poll timeout (0: 10 ms) */
};

/*
 * Run the engine over the ports until SIGINT/SIGTERM (see
 * mb_live_signals), the duration, mb_live_stop() or a failure. Returns 0,
 * or -1 with a message in err (a fatal socket error).
 */
int mb_live_run(struct mb_engine *eng, struct mb_live_port *const *ports, uint32_t nports,
                const struct mb_live_opts *o, const struct mb_live_hooks *h, char *err,
                uint32_t errlen);

/* SIGINT and SIGTERM set the stop flag while installed (the previous
 * handlers come back on restore). Installing (not nested) clears the flag. */
void mb_live_signals_install(void);
void mb_live_signals_restore(void);
void mb_live_stop(void);
int mb_live_stopping(void);

#endif
