/*
 * queue.c - kernel of Queue (elements/queue.py): a FIFO ring of packet
 * pointers. push stores (full: drop and count), pull emits up to max.
 *
 * Configuration: u32 capacity (little-endian).
 */
#include "mb.h"

#define QUEUE_MAX (1u << 14)

struct queue_state {
    uint32_t cap;
    uint32_t head;                  /* oldest packet */
    uint32_t count;
    uint32_t pad;
    struct mb_packet *ring[];
};

static uint32_t queue_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t cap = len == 4 ? mb_le32(cfg) : 0;
    if (cap > QUEUE_MAX)
        cap = 0;
    return (uint32_t)(sizeof(struct queue_state) + cap * sizeof(struct mb_packet *));
}

static int queue_init(struct mb_elem *e)
{
    struct queue_state *s = e->state;
    if (e->cfg_len != 4)
        return mb_fail(e, "bad configuration");
    s->cap = mb_le32(e->cfg);
    if (s->cap == 0 || s->cap > QUEUE_MAX)
        return mb_fail(e, "bad capacity");
    return 0;
}

static void queue_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct queue_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        if (MB_UNLIKELY(s->count == s->cap)) {
            e->xstat[0]++;
            mb_drop(e, pkts[i]);
            continue;
        }
        uint32_t at = s->head + s->count;
        if (at >= s->cap)
            at -= s->cap;
        s->ring[at] = pkts[i];
        s->count++;
    }
    e->held = s->count;
    if (s->count > e->xstat[1])
        e->xstat[1] = s->count;
}

static uint32_t queue_pull(struct mb_elem *e, uint32_t max)
{
    struct queue_state *s = e->state;
    uint32_t n = s->count < max ? s->count : max;
    for (uint32_t i = 0; i < n; i++) {
        mb_emit(e, 0, s->ring[s->head]);
        s->ring[s->head] = 0;
        if (++s->head == s->cap)
            s->head = 0;
    }
    s->count -= n;
    e->held = s->count;
    return n;
}

MB_KERNEL(queue) = {
    .name = "queue",
    .state_size = queue_state_size,
    .init = queue_init,
    .push = queue_push,
    .pull = queue_pull,
};
