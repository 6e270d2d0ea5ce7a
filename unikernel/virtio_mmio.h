/*
 * virtio_mmio.h - the virtio-mmio transport (virtio 1.x "version 2"
 * registers, and the legacy "version 1" layout QEMU shows by default) and
 * the split virtqueue it carries. Polled: the driver asks the device for
 * no interrupts and never waits on a device register.
 *
 * Devices are found on the kernel command line the way QEMU microvm and
 * Firecracker describe them (virtio_mmio.device=<size>@<base>:<irq>),
 * else by probing microvm's fixed windows (0xfeb00000 + 0x200 * n).
 * They are listed in ascending address order: the launcher places NIC k
 * in the k-th window.
 */
#ifndef UK_VIRTIO_MMIO_H
#define UK_VIRTIO_MMIO_H

#include <stdint.h>

#define VIRTIO_ID_NET 1
#define VIRTIO_F_VERSION_1 32

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
};

/* --- transport ---------------------------------------------------------------- */

struct vmmio {
    uintptr_t base;
    uint32_t version;           /* 2 modern, 1 legacy */
    uint32_t device_id;
    uint64_t features;          /* negotiated */
    uint64_t notifies;          /* QueueNotify writes */
};

/* Find up to max devices (any type); returns how many, ascending address. */
uint32_t vmmio_discover(struct vmmio *out, uint32_t max);

/* Reset, acknowledge and negotiate: accept the offered subset of want.
 * A modern device must offer VIRTIO_F_VERSION_1. 0, or -1 on failure. */
int vmmio_negotiate(struct vmmio *d, uint64_t want);

/* Set queue `index` up with at most max_size descriptors, its rings taken
 * from init-time memory and zeroed. 0, or -1 when the queue is missing. */
int vmmio_queue(struct vmmio *d, uint16_t index, uint16_t max_size, struct virtq *q);

/* Tell the device the driver is ready (after every queue is set up). */
void vmmio_ready(struct vmmio *d);

/* Mark the device failed (the driver gave up on it). */
void vmmio_fail(struct vmmio *d);

/* Byte `off` of the device configuration space. */
uint8_t vmmio_config8(struct vmmio *d, uint32_t off);

/* Publish avail entries added since the last publish, and notify the
 * device only if it asked to be (used->flags lacks NO_NOTIFY). */
void vmmio_publish(struct vmmio *d, struct virtq *q);

/* Used entries the device has returned that we have not consumed. */
static inline uint16_t virtq_pending(const struct virtq *q)
{
    uint16_t idx = *(volatile const uint16_t *)&q->used->idx;
    __asm__ volatile("" ::: "memory");  /* entries are read after the index */
    return (uint16_t)(idx - q->last_used);
}

#endif
