/*
 * virtio_net.c - see virtio_net.h. Queue 0 receives, queue 1 transmits
 * (virtio 1.x section 5.1). The header in front of every frame is 12 bytes
 * with VIRTIO_F_VERSION_1 or mergeable buffers, 10 bytes otherwise; we
 * offer no offloads, so it is all zero on transmit and ignored on receive
 * except for num_buffers.
 */
#include "virtio_net.h"
#include "libc.h"
#include "platform.h"

#define F_MAC 5
#define F_MRG_RXBUF 15

int vnet_init(struct vnet *n, struct vdev *t, uint32_t max_frame, const char **why)
{
    uint64_t want = (1ull << VIRTIO_F_VERSION_1) | (1ull << F_MAC) | (1ull << F_MRG_RXBUF);
    uint64_t rx_bytes, tx_bytes;
    uint32_t i;
    memset(n, 0, sizeof(*n));
    n->t = t;
    if (t->device_id != VIRTIO_ID_NET) {
        *why = "not a network device";
        return -1;
    }
    if (virtio_negotiate(t, want) != 0) {
        *why = "feature negotiation failed";
        virtio_fail(t);
        return -1;
    }
    n->mergeable = !!(t->features & (1ull << F_MRG_RXBUF));
    n->hdr_len = (t->features & (1ull << VIRTIO_F_VERSION_1)) || n->mergeable ? 12 : 10;
    if (virtio_queue(t, 0, VNET_RING, &n->rxq) || virtio_queue(t, 1, VNET_RING, &n->txq)) {
        *why = "no memory for its rings (give the VM more with --mem), or a queue is missing";
        virtio_fail(t);
        return -1;
    }
    n->txstride = (n->hdr_len + max_frame + 63) & ~63u;
    /* One block: receive buffers, transmit buffers (both multiples of 64
     * bytes), the free stack, the busy flags. */
    rx_bytes = (uint64_t)n->rxq.size * VNET_BUF;
    tx_bytes = (uint64_t)n->txq.size * n->txstride;
    n->rxbuf = platform_alloc(rx_bytes + tx_bytes + 3ull * n->txq.size, 64);
    if (!n->rxbuf) {
        *why = "not enough memory for its buffers (give the VM more with --mem)";
        virtio_fail(t);
        return -1;
    }
    n->txbuf = n->rxbuf + rx_bytes;
    n->tx_free = (uint16_t *)(n->txbuf + tx_bytes);
    n->tx_busy = (uint8_t *)(n->tx_free + n->txq.size);
    for (i = 0; i < n->rxq.size; i++) {
        n->rxq.desc[i].addr = (uintptr_t)(n->rxbuf + (uint64_t)i * VNET_BUF);
        n->rxq.desc[i].len = VNET_BUF;
        n->rxq.desc[i].flags = VRING_DESC_F_WRITE;
        n->rxq.avail->ring[i] = (uint16_t)i;
    }
    n->rxq.avail_idx = n->rxq.size;
    for (i = 0; i < n->txq.size; i++) {
        /* Buffers are not touched here: every page touched costs boot time. */
        n->txq.desc[i].addr = (uintptr_t)(n->txbuf + (uint64_t)i * n->txstride);
        n->txq.desc[i].flags = 0;
        n->tx_free[i] = (uint16_t)(n->txq.size - 1 - i);
        n->tx_busy[i] = 0;
    }
    n->ntx_free = n->txq.size;
    if (t->features & (1ull << F_MAC)) {
        for (i = 0; i < 6; i++)
            n->mac[i] = virtio_config8(t, i);
        n->has_mac = 1;
    }
    virtio_ready(t);
    /* Hand the receive buffers over (the device may want a notification). */
    virtio_publish(t, &n->rxq);
    return 0;
}

uint32_t vnet_rx(struct vnet *n, struct mb_engine *eng, struct mb_packet **pkts, uint32_t max)
{
    struct virtq *q = &n->rxq;
    uint16_t pending = virtq_pending(q), mask = (uint16_t)(q->size - 1);
    uint32_t got = 0, recycled = 0, maxlen = mb_max_len(eng);
    if (pending > q->size)
        pending = q->size;      /* a device cannot return more than it has */
    while (pending && got < max) {
        struct vq_used_elem e = q->used->ring[q->last_used & mask];
        q->last_used++;
        pending--;
        if (e.id >= q->size) {
            n->st.rx_bad++;         /* not one of ours: nothing to give back */
            continue;
        }
        if (n->rx_skip) {
            n->rx_skip--;           /* rest of a frame too big for us */
        } else if (e.len < n->hdr_len || e.len > VNET_BUF) {
            n->st.rx_bad++;
        } else {
            const uint8_t *b = n->rxbuf + (uint64_t)e.id * VNET_BUF;
            uint32_t nbuf = n->mergeable ? (uint32_t)(b[10] | (b[11] << 8)) : 1;
            uint32_t flen = e.len - n->hdr_len;
            if (nbuf > 1) {
                /* A frame spread over several buffers is longer than one
                 * buffer, so longer than a packet: drop all its pieces
                 * (no more than the ring holds, whatever the device says). */
                n->rx_skip = nbuf - 1 < q->size ? nbuf - 1 : q->size;
                n->st.rx_oversize++;
            } else if (flen > maxlen) {
                n->st.rx_oversize++;
            } else {
                struct mb_packet *p = mb_alloc(eng);
                if (!p) {
                    n->st.rx_nomem++;
                } else {
                    memcpy(p->data, b + n->hdr_len, flen);
                    p->len = flen;
                    pkts[got++] = p;
                    n->st.rx_bytes += flen;
                }
            }
        }
        q->avail->ring[q->avail_idx & mask] = (uint16_t)e.id;
        q->avail_idx++;
        recycled++;
    }
    if (recycled)
        virtio_publish(n->t, q);
    n->st.rx += got;
    return got;
}

uint32_t vnet_tx_room(struct vnet *n)
{
    struct virtq *q = &n->txq;
    uint16_t pending = virtq_pending(q), mask = (uint16_t)(q->size - 1);
    if (pending > q->size)
        pending = q->size;
    while (pending--) {
        uint32_t id = q->used->ring[q->last_used & mask].id;
        q->last_used++;
        if (id < q->size && n->tx_busy[id]) {
            n->tx_busy[id] = 0;
            n->tx_free[n->ntx_free++] = (uint16_t)id;
        }
    }
    if (!n->ntx_free)
        n->st.tx_full++;
    return n->ntx_free;
}

void vnet_tx(struct vnet *n, struct mb_packet *const *pkts, uint32_t cnt)
{
    struct virtq *q = &n->txq;
    uint16_t mask = (uint16_t)(q->size - 1);
    uint32_t i, placed = 0, room = n->txstride - n->hdr_len;
    for (i = 0; i < cnt && n->ntx_free; i++) {
        const struct mb_packet *p = pkts[i];
        uint8_t *b;
        uint16_t id;
        if (p->len == 0 || p->len > room) {
            n->st.tx_bad++;
            continue;
        }
        id = n->tx_free[--n->ntx_free];
        b = n->txbuf + (uint64_t)id * n->txstride;
        memset(b, 0, n->hdr_len);       /* no offloads: an all-zero header */
        memcpy(b + n->hdr_len, p->data, p->len);
        q->desc[id].len = n->hdr_len + p->len;
        n->tx_busy[id] = 1;
        q->avail->ring[q->avail_idx & mask] = id;
        q->avail_idx++;
        n->st.tx_bytes += p->len;
        placed++;
    }
    if (placed)
        virtio_publish(n->t, q);
    n->st.tx += placed;
}
