/*
 * virtio.h - what a virtio driver sees of a device whatever carries it
 * (virtio-mmio on microvm, virtio-pci on q35): a small transport interface
 * (status, features, queue set-up, notification, device configuration),
 * and on top of it the transport-independent steps of the virtio 1.x
 * specification (section 3.1: reset, feature negotiation, queues, ready)
 * and the split virtqueue (section 2.7). Polled: the driver asks for no
 * interrupts and never waits on a device register.
 */
#ifndef UK_VIRTIO_H
#define UK_VIRTIO_H

#include <stdint.h>

#define VIRTIO_ID_NET 1
#define VIRTIO_F_VERSION_1 32

/* Device status bits (section 2.1). */
#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER 2
#define VIRTIO_S_DRIVER_OK 4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_FAILED 128

/* --- split virtqueue (virtio 1.x section 2.7) ------------------------------ */

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct vq_avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[];
};

struct vq_used_elem {
    uint32_t id;
    uint32_t len;
};

struct vq_used {
    uint16_t flags;
    uint16_t idx;
    struct vq_used_elem ring[];
};

struct virtq {
    uint16_t size;              /* descriptors (a power of two) */
    uint16_t index;             /* queue number on the device */
    uint16_t avail_idx;         /* next avail slot we fill (shadow) */
    uint16_t last_used;         /* next used entry we consume */
    struct vq_desc *desc;
    struct vq_avail *avail;
    struct vq_used *used;
    uintptr_t notify;           /* where the transport writes to notify */
};

/* --- the transport interface --------------------------------------------------- */

struct vdev;

struct vdev_ops {
    uint8_t (*status)(struct vdev *d);
    void (*set_status)(struct vdev *d, uint8_t status);
    /* Feature bits the device offers (a legacy device has 32). */
    uint64_t (*features)(struct vdev *d);
    void (*set_features)(struct vdev *d, uint64_t features);
    /* Most descriptors queue `index` takes; 0 when it is missing or
     * already in use. */
    uint32_t (*queue_max)(struct vdev *d, uint16_t index);
    /* Hand queue q (size, index and rings set) to the device; 0 or -1. */
    int (*queue_set)(struct vdev *d, struct virtq *q);
    /* Tell the device queue q has new available entries. */
    void (*notify)(struct vdev *d, struct virtq *q);
    /* Byte `off` of the device configuration space (0 beyond it). */
    uint8_t (*config8)(struct vdev *d, uint32_t off);
};

/* One device; each transport's own structure starts with this. */
struct vdev {
    const struct vdev_ops *ops;
    uint32_t device_id;         /* virtio device type (1: network) */
    int modern;                 /* virtio 1.x interface, else legacy */
    uint64_t addr;              /* its registers (mmio) or common configuration (pci) */
    int32_t pci;                /* bus << 8 | device << 3 | function; -1 if not PCI */
    uint64_t features;          /* negotiated */
    uint64_t notifies;          /* notifications sent */
};

/* Reset, acknowledge and negotiate: accept the offered subset of want.
 * A modern device must offer VIRTIO_F_VERSION_1. 0, or -1 on failure. */
int virtio_negotiate(struct vdev *d, uint64_t want);

/* Set queue `index` up with at most max_size descriptors (a power of
 * two), its rings taken from init-time memory and zeroed. 0, or -1 when
 * the queue is missing or memory ran out. */
int virtio_queue(struct vdev *d, uint16_t index, uint16_t max_size, struct virtq *q);

/* Tell the device the driver is ready (after every queue is set up). */
void virtio_ready(struct vdev *d);

/* Mark the device failed (the driver gave up on it). */
void virtio_fail(struct vdev *d);

static inline uint8_t virtio_config8(struct vdev *d, uint32_t off)
{
    return d->ops->config8(d, off);
}

/* Publish avail entries added since the last publish, and notify the
 * device only if it asked to be (used->flags lacks NO_NOTIFY). */
void virtio_publish(struct vdev *d, struct virtq *q);

/* Used entries the device has returned that we have not consumed. */
static inline uint16_t virtq_pending(const struct virtq *q)
{
    uint16_t idx = *(volatile const uint16_t *)&q->used->idx;
    __asm__ volatile("" ::: "memory");  /* entries are read after the index */
    return (uint16_t)(idx - q->last_used);
}

#endif
