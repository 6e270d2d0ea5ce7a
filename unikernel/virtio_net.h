/*
 * virtio_net.h - a polled virtio-net driver that moves frames between a
 * device's rings and engine packets.
 *
 * Every descriptor points at its own fixed buffer, set once at init; a
 * receive buffer goes back on the ring as soon as its frame is copied into
 * a pool packet, and a transmit buffer is reused when the device returns
 * it. So the engine's pool never waits on the device, and nothing the
 * device reports (ids, lengths, buffer counts) is trusted beyond the
 * buffers it was given.
 */
#ifndef UK_VIRTIO_NET_H
#define UK_VIRTIO_NET_H

#include "engine.h"
#include "virtio.h"

#define VNET_RING 256           /* most descriptors per queue */
#define VNET_BUF 2048           /* bytes per receive buffer, header included */

struct vnet_stats {
    uint64_t rx;                /* frames handed to the engine */
    uint64_t rx_bytes;
    uint64_t rx_bad;            /* impossible id or length from the device */
    uint64_t rx_oversize;       /* larger than a packet buffer */
    uint64_t rx_nomem;          /* the packet pool was empty */
    uint64_t tx;                /* frames placed on the transmit ring */
    uint64_t tx_bytes;
    uint64_t tx_full;           /* calls that found the ring full */
    uint64_t tx_bad;            /* empty or too long for a transmit buffer */
};

struct vnet {
    struct vdev *t;             /* any transport */
    uint8_t mac[6];
    int has_mac;
    uint32_t hdr_len;           /* virtio-net header in front of frames */
    int mergeable;              /* VIRTIO_NET_F_MRG_RXBUF negotiated */
    uint32_t rx_skip;           /* buffers left of a frame being dropped */
    struct virtq rxq, txq;
    uint8_t *rxbuf;
    uint8_t *txbuf;
    uint32_t txstride;
    uint16_t *tx_free;          /* stack of free transmit descriptors */
    uint8_t *tx_busy;           /* 1 while the device owns a descriptor */
    uint32_t ntx_free;
    struct vnet_stats st;
};

/* Bring device t up as a NIC whose transmit buffers hold frames of up to
 * max_frame bytes. 0, or -1 with a reason in *why. */
int vnet_init(struct vnet *n, struct vdev *t, uint32_t max_frame, const char **why);

/* Copy up to max received frames into packets from eng's pool; buffers go
 * back on the ring at once. Returns the number of packets in pkts. */
uint32_t vnet_rx(struct vnet *n, struct mb_engine *eng, struct mb_packet **pkts, uint32_t max);

/* Take back the transmit buffers the device has finished with; returns
 * how many frames the ring can take now. */
uint32_t vnet_tx_room(struct vnet *n);

/* Copy cnt packets (cnt <= vnet_tx_room()) to the transmit ring and
 * notify the device if it wants it. The packets stay the caller's. */
void vnet_tx(struct vnet *n, struct mb_packet *const *pkts, uint32_t cnt);

#endif
