/*
 * virtio_mmio.c - virtio-mmio register access behind struct vdev_ops.
 * Register offsets from the virtio 1.x specification, section 4.2.2
 * (modern) and 4.2.4 (legacy).
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
#define MICROVM_BASE 0xfeb00000u
#define MICROVM_STRIDE 0x200u
#define MICROVM_SLOTS 24
#define PAGE 4096u

#define M(d) ((struct vmmio *)(d))

static uint32_t rd(const struct vmmio *m, uint32_t reg)
{
    return mmio_read32(m->base + reg);
}

static void wr(const struct vmmio *m, uint32_t reg, uint32_t v)
{
    mmio_write32(m->base + reg, v);
}

/* --- operations ------------------------------------------------------------- */

static uint8_t op_status(struct vdev *d)
{
    return (uint8_t)rd(M(d), R_STATUS);
}

static void op_set_status(struct vdev *d, uint8_t s)
{
    wr(M(d), R_STATUS, s);
}

static uint64_t op_features(struct vdev *d)
{
    struct vmmio *m = M(d);
    uint64_t f;
    wr(m, R_DEVICE_FEATURES_SEL, 0);
    f = rd(m, R_DEVICE_FEATURES);
    if (m->version == 2) {
        wr(m, R_DEVICE_FEATURES_SEL, 1);
        f |= (uint64_t)rd(m, R_DEVICE_FEATURES) << 32;
    }
    return f;
}

static void op_set_features(struct vdev *d, uint64_t f)
{
    struct vmmio *m = M(d);
    wr(m, R_DRIVER_FEATURES_SEL, 0);
    wr(m, R_DRIVER_FEATURES, (uint32_t)f);
    if (m->version == 2) {
        wr(m, R_DRIVER_FEATURES_SEL, 1);
        wr(m, R_DRIVER_FEATURES, (uint32_t)(f >> 32));
    } else {
        wr(m, R_GUEST_PAGE_SIZE, PAGE);     /* legacy: before any queue */
    }
}

static uint32_t op_queue_max(struct vdev *d, uint16_t index)
{
    struct vmmio *m = M(d);
    wr(m, R_QUEUE_SEL, index);
    if (m->version == 2 && rd(m, R_QUEUE_READY))
        return 0;
    return rd(m, R_QUEUE_NUM_MAX);
}

static int op_queue_set(struct vdev *d, struct virtq *q)
{
    struct vmmio *m = M(d);
    wr(m, R_QUEUE_SEL, q->index);
    wr(m, R_QUEUE_NUM, q->size);
    q->notify = m->base + R_QUEUE_NOTIFY;
    if (m->version == 2) {
        uint64_t a = (uintptr_t)q->desc, b = (uintptr_t)q->avail, c = (uintptr_t)q->used;
        wr(m, R_QUEUE_DESC_LO, (uint32_t)a);
        wr(m, R_QUEUE_DESC_HI, (uint32_t)(a >> 32));
        wr(m, R_QUEUE_DRIVER_LO, (uint32_t)b);
        wr(m, R_QUEUE_DRIVER_HI, (uint32_t)(b >> 32));
        wr(m, R_QUEUE_DEVICE_LO, (uint32_t)c);
        wr(m, R_QUEUE_DEVICE_HI, (uint32_t)(c >> 32));
        wr(m, R_QUEUE_READY, 1);
    } else {
        /* The rings are one block from the descriptors on (virtio.c). */
        wr(m, R_QUEUE_ALIGN, PAGE);
        wr(m, R_QUEUE_PFN, (uint32_t)((uintptr_t)q->desc / PAGE));
    }
    return 0;
}

static void op_notify(struct vdev *d, struct virtq *q)
{
    (void)d;
    mmio_write32(q->notify, q->index);      /* a 32-bit register */
}

static uint8_t op_config8(struct vdev *d, uint32_t off)
{
    return off < 0x100 ? mmio_read8(M(d)->base + R_CONFIG + off) : 0;
}

static const struct vdev_ops mmio_ops = {
    .status = op_status,
    .set_status = op_set_status,
    .features = op_features,
    .set_features = op_set_features,
    .queue_max = op_queue_max,
    .queue_set = op_queue_set,
    .notify = op_notify,
    .config8 = op_config8,
};

/* --- discovery ----------------------------------------------------------------- */

/* A transport at base with a device behind it: fill m, return 1. */
static int probe(uintptr_t base, struct vmmio *m)
{
    m->base = base;
    if (rd(m, R_MAGIC) != MAGIC)
        return 0;
    m->version = rd(m, R_VERSION);
    m->v.ops = &mmio_ops;
    m->v.device_id = rd(m, R_DEVICE_ID);
    m->v.modern = m->version == 2;
    m->v.addr = base;
    m->v.pci = -1;
    m->v.features = 0;
    m->v.notifies = 0;
    return (m->version == 1 || m->version == 2) && m->v.device_id != 0;
}

/* "<size>[KMG]@<base>:<irq>[:<id>]" -> base address, or 0. Only the base
 * matters here: the size of a virtio-mmio window is fixed. */
static uintptr_t parse_device(const char *s)
{
    uint64_t base;
    while (*s && *s != '@' && *s != ' ')
        s++;
    if (*s++ != '@' || uk_parse_u64(&s, &base) || (*s != ':' && *s != ' ' && *s))
        return 0;
    if (base == 0 || base >= 0x100000000ull - MICROVM_STRIDE || (base & 3))
        return 0;       /* only the identity-mapped 4 GiB is reachable */
    return (uintptr_t)base;
}

uint32_t vmmio_discover(struct vmmio *out, uint32_t max, int probe_windows)
{
    const char *v = 0;
    uint32_t n = 0, i, j, k;
    for (k = 0; n < max && (v = cmdline_find("virtio_mmio.device=", v)); k++) {
        uintptr_t base = parse_device(v);
        int dup = 0;
        for (j = 0; j < n; j++)
            dup |= out[j].base == base;
        if (base && !dup && probe(base, &out[n]))
            n++;
    }
    if (k == 0 && probe_windows)    /* nothing announced: microvm's fixed windows */
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
