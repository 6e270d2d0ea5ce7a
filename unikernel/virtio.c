/*
 * virtio.c - the transport-independent part of a virtio driver: device
 * initialisation (virtio 1.x section 3.1.1) and split virtqueue set-up
 * and publishing, over the transport operations of struct vdev_ops.
 *
 * Rings are laid out as the legacy interface requires (descriptors, then
 * the available ring, then the used ring on the next 4 KiB boundary),
 * which also satisfies the modern interface's alignment rules.
 */
#include "virtio.h"
#include "libc.h"
#include "platform.h"

#define PAGE 4096u
#define RESET_SPINS 1000000     /* reads of the status while a reset completes */

int virtio_negotiate(struct vdev *d, uint64_t want)
{
    const struct vdev_ops *o = d->ops;
    const uint8_t ad = VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER;
    uint64_t offered;
    uint32_t spins = 0;
    o->set_status(d, 0);        /* reset; done when the status reads 0 */
    while (o->status(d) != 0)
        if (++spins == RESET_SPINS)
            return -1;
    o->set_status(d, VIRTIO_S_ACKNOWLEDGE);
    o->set_status(d, ad);
    offered = o->features(d);
    if (d->modern) {
        if (!(offered & (1ull << VIRTIO_F_VERSION_1)))
            return -1;
    } else {
        want &= 0xffffffffull;  /* a legacy device has 32 feature bits */
    }
    d->features = offered & want;
    o->set_features(d, d->features);
    if (d->modern) {
        o->set_status(d, ad | VIRTIO_S_FEATURES_OK);
        if (!(o->status(d) & VIRTIO_S_FEATURES_OK))
            return -1;          /* the device refused our subset */
    }
    return 0;
}

int virtio_queue(struct vdev *d, uint16_t index, uint16_t max_size, struct virtq *q)
{
    uint32_t qmax = d->ops->queue_max(d, index), size = 1, avail_bytes, used_off, total;
    uint8_t *mem;
    if (qmax == 0)
        return -1;
    while (size * 2 <= qmax && size * 2 <= max_size)
        size *= 2;
    avail_bytes = 6 + 2 * size;
    used_off = (16 * size + avail_bytes + PAGE - 1) & ~(PAGE - 1);
    total = used_off + ((6 + 8 * size + PAGE - 1) & ~(PAGE - 1));
    mem = platform_alloc(total, PAGE);
    if (!mem)
        return -1;
    memset(mem, 0, total);
    q->size = (uint16_t)size;
    q->index = index;
    q->avail_idx = 0;
    q->last_used = 0;
    q->desc = (struct vq_desc *)mem;
    q->avail = (struct vq_avail *)(mem + 16 * size);
    q->used = (struct vq_used *)(mem + used_off);
    q->notify = 0;
    q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;   /* we poll */
    return d->ops->queue_set(d, q);
}

void virtio_ready(struct vdev *d)
{
    uint8_t s = VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_DRIVER_OK;
    if (d->modern)
        s |= VIRTIO_S_FEATURES_OK;
    d->ops->set_status(d, s);
}

void virtio_fail(struct vdev *d)
{
    d->ops->set_status(d, d->ops->status(d) | VIRTIO_S_FAILED);
}

void virtio_publish(struct vdev *d, struct virtq *q)
{
    uint16_t flags;
    barrier();      /* ring entries before the index (x86: stores in order) */
    *(volatile uint16_t *)&q->avail->idx = q->avail_idx;
    mb_full();      /* the index is visible before we read the device's flags */
    flags = *(volatile uint16_t *)&q->used->flags;
    if (!(flags & VRING_USED_F_NO_NOTIFY)) {
        d->ops->notify(d, q);
        d->notifies++;
    }
}
