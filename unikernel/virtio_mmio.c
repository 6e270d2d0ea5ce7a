/*
 * virtio_mmio.c - virtio-mmio register access, feature negotiation and
 * split virtqueue set-up. Register offsets from the virtio 1.x
 * specification, section 4.2.2 (modern) and 4.2.4 (legacy).
 *
 * Rings are laid out as the legacy interface requires (descriptors, then
 * the available ring, then the used ring on the next 4 KiB boundary),
 * which also satisfies the modern interface's alignment rules.
 */
#include "virtio_mmio.h"
#include "libc.h"
#include "platform.h"

#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_GUEST_PAGE_SIZE 0x028     /* legacy */
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_ALIGN 0x03c         /* legacy */
#define R_QUEUE_PFN 0x040           /* legacy */
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC_LO 0x080
#define R_QUEUE_DESC_HI 0x084
#define R_QUEUE_DRIVER_LO 0x090
#define R_QUEUE_DRIVER_HI 0x094
#define R_QUEUE_DEVICE_LO 0x0a0
#define R_QUEUE_DEVICE_HI 0x0a4
#define R_CONFIG 0x100

#define MAGIC 0x74726976u           /* "virt" */
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 128

#define MICROVM_BASE 0xfeb00000u
#define MICROVM_STRIDE 0x200u
#define MICROVM_SLOTS 24
#define PAGE 4096u

static uint32_t rd(const struct vmmio *d, uint32_t reg)
{
    return mmio_read32(d->base + reg);
}

static void wr(const struct vmmio *d, uint32_t reg, uint32_t v)
{
    mmio_write32(d->base + reg, v);
}

/* A transport at base with a device behind it: fill d, return 1. */
static int probe(uintptr_t base, struct vmmio *d)
{
    d->base = base;
    if (rd(d, R_MAGIC) != MAGIC)
        return 0;
    d->version = rd(d, R_VERSION);
    d->device_id = rd(d, R_DEVICE_ID);
    d->features = 0;
    d->notifies = 0;
    return (d->version == 1 || d->version == 2) && d->device_id != 0;
}

/* "<size>[KMG]@<base>:<irq>[:<id>]" -> base address, or 0. */
static uintptr_t parse_device(const char *s)
{
    uint64_t size, base;
    if (uk_parse_u64(&s, &size))
        return 0;
    if (*s == 'K' || *s == 'k' || *s == 'M' || *s == 'm' || *s == 'G' || *s == 'g')
        s++;
    if (*s++ != '@' || uk_parse_u64(&s, &base) || (*s && *s != ':'))
        return 0;
    if (base == 0 || base >= 0x100000000ull - MICROVM_STRIDE || (base & 3))
        return 0;       /* only the identity-mapped 4 GiB is reachable */
    return (uintptr_t)base;
}

uint32_t vmmio_discover(struct vmmio *out, uint32_t max)
{
    char buf[96];
    uint32_t n = 0, i, j, k;
    for (k = 0; n < max && cmdline_get("virtio_mmio.device", k, buf, sizeof(buf)) >= 0; k++) {
        uintptr_t base = parse_device(buf);
        int dup = 0;
        for (j = 0; j < n; j++)
            dup |= out[j].base == base;
        if (base && !dup && probe(base, &out[n]))
            n++;
    }
    if (k == 0)     /* nothing announced: try microvm's fixed windows */
        for (i = 0; i < MICROVM_SLOTS && n < max; i++)
            if (probe(MICROVM_BASE + i * MICROVM_STRIDE, &out[n]))
                n++;
    /* Ascending address: NIC k is the k-th window the launcher filled. */
    for (i = 1; i < n; i++) {
        struct vmmio t = out[i];
        for (j = i; j > 0 && out[j - 1].base > t.base; j--)
            out[j] = out[j - 1];
        out[j] = t;
    }
    return n;
}

int vmmio_negotiate(struct vmmio *d, uint64_t want)
{
    uint64_t offered;
    wr(d, R_STATUS, 0);     /* reset */
    wr(d, R_STATUS, S_ACKNOWLEDGE);
    wr(d, R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(d, R_DEVICE_FEATURES_SEL, 0);
    offered = rd(d, R_DEVICE_FEATURES);
    if (d->version == 2) {
        wr(d, R_DEVICE_FEATURES_SEL, 1);
        offered |= (uint64_t)rd(d, R_DEVICE_FEATURES) << 32;
        if (!(offered & (1ull << VIRTIO_F_VERSION_1)))
            return -1;
    } else {
        want &= 0xffffffffull;  /* a legacy device has 32 feature bits */
    }
    d->features = offered & want;
    wr(d, R_DRIVER_FEATURES_SEL, 0);
    wr(d, R_DRIVER_FEATURES, (uint32_t)d->features);
    if (d->version == 2) {
        wr(d, R_DRIVER_FEATURES_SEL, 1);
        wr(d, R_DRIVER_FEATURES, (uint32_t)(d->features >> 32));
        wr(d, R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if (!(rd(d, R_STATUS) & S_FEATURES_OK))
            return -1;
    } else {
        wr(d, R_GUEST_PAGE_SIZE, PAGE);
    }
    return 0;
}

int vmmio_queue(struct vmmio *d, uint16_t index, uint16_t max_size, struct virtq *q)
{
    uint32_t qmax, size = 1, avail_bytes, used_off, total;
    uint8_t *mem;
    wr(d, R_QUEUE_SEL, index);
    qmax = rd(d, R_QUEUE_NUM_MAX);
    if (qmax == 0)
        return -1;
    if (d->version == 2 && rd(d, R_QUEUE_READY))
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
    q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;   /* we poll */
    wr(d, R_QUEUE_NUM, size);
    if (d->version == 2) {
        uint64_t a = (uintptr_t)q->desc, b = (uintptr_t)q->avail, c = (uintptr_t)q->used;
        wr(d, R_QUEUE_DESC_LO, (uint32_t)a);
        wr(d, R_QUEUE_DESC_HI, (uint32_t)(a >> 32));
        wr(d, R_QUEUE_DRIVER_LO, (uint32_t)b);
        wr(d, R_QUEUE_DRIVER_HI, (uint32_t)(b >> 32));
        wr(d, R_QUEUE_DEVICE_LO, (uint32_t)c);
        wr(d, R_QUEUE_DEVICE_HI, (uint32_t)(c >> 32));
        wr(d, R_QUEUE_READY, 1);
    } else {
        wr(d, R_QUEUE_ALIGN, PAGE);
        wr(d, R_QUEUE_PFN, (uint32_t)((uintptr_t)mem / PAGE));
    }
    return 0;
}

void vmmio_ready(struct vmmio *d)
{
    uint32_t s = S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK;
    if (d->version == 2)
        s |= S_FEATURES_OK;
    wr(d, R_STATUS, s);
}

void vmmio_fail(struct vmmio *d)
{
    wr(d, R_STATUS, rd(d, R_STATUS) | S_FAILED);
}

uint8_t vmmio_config8(struct vmmio *d, uint32_t off)
{
    return mmio_read8(d->base + R_CONFIG + off);
}

void vmmio_publish(struct vmmio *d, struct virtq *q)
{
    uint16_t flags;
    barrier();      /* ring entries before the index (x86: stores in order) */
    *(volatile uint16_t *)&q->avail->idx = q->avail_idx;
    mb_full();      /* the index is visible before we read the device's flags */
    flags = *(volatile uint16_t *)&q->used->flags;
    if (!(flags & VRING_USED_F_NO_NOTIFY)) {
        wr(d, R_QUEUE_NOTIFY, q->index);
        d->notifies++;
    }
}
