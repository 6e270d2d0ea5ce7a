/*
 * virtio_pci.c - PCI configuration space, the virtio vendor capabilities
 * and the modern common configuration behind struct vdev_ops. Layouts
 * from the virtio 1.x specification, section 4.1.4, and the PCI local bus
 * specification (type 0 and type 1 headers, capability list).
 */
#include "virtio_pci.h"
#include "console.h"
#include "libc.h"
#include "platform.h"

/* Configuration mechanism #1. */
#define CFG_ADDR 0xcf8
#define CFG_DATA 0xcfc

/* Configuration header. */
#define PCI_VENDOR 0x00
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SECONDARY_BUS 0x19      /* type 1 (bridge) header */
#define PCI_MEMORY_BASE 0x20
#define PCI_MEMORY_LIMIT 0x22
#define PCI_SUBSYSTEM_ID 0x2e
#define PCI_CAP_PTR 0x34
#define CMD_IO 0x0001
#define CMD_MEM 0x0002
#define CMD_BUS_MASTER 0x0004
#define CMD_INTX_OFF 0x0400
#define STATUS_CAPS 0x0010
#define CAP_VENDOR 0x09

#define VENDOR_VIRTIO 0x1af4
#define MAX_DEPTH 8                 /* bridges under bridges */

/* virtio_pci_cap (4.1.4): vndr, next, len, cfg_type, bar, id, pad[2],
 * offset, length; the notify capability adds notify_off_multiplier. */
#define VCAP_TYPE 3
#define VCAP_BAR 4
#define VCAP_OFFSET 8
#define VCAP_LENGTH 12
#define VCAP_MULT 16
#define T_COMMON 1
#define T_NOTIFY 2
#define T_ISR 3
#define T_DEVICE 4

/* struct virtio_pci_common_cfg (4.1.4.3). */
#define C_DFSELECT 0
#define C_DF 4
#define C_GFSELECT 8
#define C_GF 12
#define C_NUM_QUEUES 18
#define C_STATUS 20
#define C_Q_SELECT 22
#define C_Q_SIZE 24
#define C_Q_MSIX 26
#define C_Q_ENABLE 28
#define C_Q_NOTIFY_OFF 30
#define C_Q_DESC 32
#define C_Q_DRIVER 40
#define C_Q_DEVICE 48
#define C_LEN 56
#define NO_VECTOR 0xffff

/* Where the guest puts BARs the firmware left unassigned: above q35's
 * MMCONFIG window (0xb0000000, 256 MiB) and low RAM, below the I/O APIC. */
#define WINDOW_START 0xc0000000ull
#define WINDOW_END 0xfec00000ull
#define MIB 0x100000ull             /* granularity of a bridge's window */

#define P(d) ((struct vpci *)(d))

/* --- configuration space ------------------------------------------------------ */

static uint32_t bdf(uint32_t bus, uint32_t dev, uint32_t fn)
{
    return bus << 8 | dev << 3 | fn;
}

static void select_reg(uint32_t loc, uint32_t off)
{
    outl(CFG_ADDR, 0x80000000u | loc << 8 | (off & 0xfc));
}

static uint32_t cfg32(uint32_t loc, uint32_t off)
{
    select_reg(loc, off);
    return inl(CFG_DATA);
}

static uint16_t cfg16(uint32_t loc, uint32_t off)
{
    select_reg(loc, off);
    return inw((uint16_t)(CFG_DATA + (off & 2)));
}

static uint8_t cfg8(uint32_t loc, uint32_t off)
{
    select_reg(loc, off);
    return inb((uint16_t)(CFG_DATA + (off & 3)));
}

static void wcfg32(uint32_t loc, uint32_t off, uint32_t v)
{
    select_reg(loc, off);
    outl(CFG_DATA, v);
}

static void wcfg16(uint32_t loc, uint32_t off, uint16_t v)
{
    select_reg(loc, off);
    outw((uint16_t)(CFG_DATA + (off & 2)), v);
}

int pci_present(void)
{
    uint16_t vendor = cfg16(0, PCI_VENDOR);
    return vendor != 0xffff && vendor != 0;
}

/* --- operations --------------------------------------------------------------------- */

static uint8_t op_status(struct vdev *d)
{
    return mmio_read8(P(d)->common + C_STATUS);
}

static void op_set_status(struct vdev *d, uint8_t s)
{
    mmio_write8(P(d)->common + C_STATUS, s);
}

static uint64_t op_features(struct vdev *d)
{
    uintptr_t c = P(d)->common;
    uint64_t f;
    mmio_write32(c + C_DFSELECT, 0);
    f = mmio_read32(c + C_DF);
    mmio_write32(c + C_DFSELECT, 1);
    return f | (uint64_t)mmio_read32(c + C_DF) << 32;
}

static void op_set_features(struct vdev *d, uint64_t f)
{
    uintptr_t c = P(d)->common;
    mmio_write32(c + C_GFSELECT, 0);
    mmio_write32(c + C_GF, (uint32_t)f);
    mmio_write32(c + C_GFSELECT, 1);
    mmio_write32(c + C_GF, (uint32_t)(f >> 32));
}

static uint32_t op_queue_max(struct vdev *d, uint16_t index)
{
    uintptr_t c = P(d)->common;
    if (index >= mmio_read16(c + C_NUM_QUEUES))
        return 0;
    mmio_write16(c + C_Q_SELECT, index);
    if (mmio_read16(c + C_Q_ENABLE))
        return 0;
    return mmio_read16(c + C_Q_SIZE);
}

static void write64(uintptr_t at, uint64_t v)
{
    mmio_write32(at, (uint32_t)v);
    mmio_write32(at + 4, (uint32_t)(v >> 32));
}

static int op_queue_set(struct vdev *d, struct virtq *q)
{
    struct vpci *p = P(d);
    uintptr_t c = p->common;
    uint64_t off;
    mmio_write16(c + C_Q_SELECT, q->index);
    off = (uint64_t)mmio_read16(c + C_Q_NOTIFY_OFF) * p->notify_mult;
    if (off + 2 > p->notify_len)
        return -1;              /* its doorbell lies outside the notify area */
    q->notify = p->notify + (uintptr_t)off;
    mmio_write16(c + C_Q_SIZE, q->size);
    mmio_write16(c + C_Q_MSIX, NO_VECTOR);     /* polled: no interrupts */
    write64(c + C_Q_DESC, (uintptr_t)q->desc);
    write64(c + C_Q_DRIVER, (uintptr_t)q->avail);
    write64(c + C_Q_DEVICE, (uintptr_t)q->used);
    mmio_write16(c + C_Q_ENABLE, 1);
    return 0;
}

static void op_notify(struct vdev *d, struct virtq *q)
{
    (void)d;
    mmio_write16(q->notify, q->index);     /* no VIRTIO_F_NOTIFICATION_DATA */
}

static uint8_t op_config8(struct vdev *d, uint32_t off)
{
    struct vpci *p = P(d);
    return off < p->device_len ? mmio_read8(p->device + off) : 0;
}

static const struct vdev_ops pci_ops = {
    .status = op_status,
    .set_status = op_set_status,
    .features = op_features,
    .set_features = op_set_features,
    .queue_max = op_queue_max,
    .queue_set = op_queue_set,
    .notify = op_notify,
    .config8 = op_config8,
};

/* --- one device ------------------------------------------------------------------------ */

struct vcap {
    int have;
    uint8_t bar;
    uint32_t offset, length;
};

static uint64_t window_next;   /* set by vpci_discover() */

/* `size` bytes (a power of two) of the guest's BAR window, or 0. */
static uint64_t window_alloc(uint64_t size)
{
    uint64_t at = (window_next + size - 1) & ~(size - 1);
    if (at < window_next || at >= WINDOW_END || size > WINDOW_END - at)
        return 0;
    window_next = at + size;
    return at;
}

/* Memory BAR `bar` of device loc: its address, in *addr. NULL, or what
 * is wrong with it. */
static const char *bar_addr(uint32_t loc, uint32_t bar, uint64_t *addr)
{
    uint32_t reg = PCI_BAR0 + 4 * bar, lo = cfg32(loc, reg);
    int is64 = (lo & 7) == 4;
    if (lo & 1)
        return "a virtio structure is in an I/O BAR";
    if (is64 && bar == 5)
        return "a 64-bit BAR in the last slot";
    *addr = (is64 ? (uint64_t)cfg32(loc, reg + 4) << 32 : 0) | (lo & ~0xfu);
    return 0;
}

/* Memory BAR `bar` of device loc (bar_addr() found nothing wrong): its
 * size and address, which is given one if the firmware left it
 * unassigned. Decoding must be off. NULL, or what is wrong with it. */
static const char *bar_size(uint32_t loc, uint32_t bar, uint64_t *addr, uint64_t *size)
{
    uint32_t reg = PCI_BAR0 + 4 * bar, lo = cfg32(loc, reg), hi = 0, slo, shi = 0xffffffffu;
    int is64 = (lo & 7) == 4;
    uint64_t mask;
    wcfg32(loc, reg, 0xffffffffu);
    slo = cfg32(loc, reg);
    wcfg32(loc, reg, lo);
    if (is64) {
        hi = cfg32(loc, reg + 4);
        wcfg32(loc, reg + 4, 0xffffffffu);
        shi = cfg32(loc, reg + 4);
        wcfg32(loc, reg + 4, hi);
    }
    mask = (uint64_t)shi << 32 | (slo & ~0xfu);
    *size = ~mask + 1;
    if (!(slo & ~0xfu) || (*size & (*size - 1)))
        return "a BAR it does not implement";
    *addr = (uint64_t)hi << 32 | (lo & ~0xfu);
    if (*addr == 0) {
        /* The firmware did not place it (qboot does not): we do. */
        *addr = window_alloc(*size < 4096 ? 4096 : *size);
        if (!*addr)
            return "no room for its BAR below 4 GiB";
        wcfg32(loc, reg, (uint32_t)*addr | (lo & 0xf));
        if (is64)
            wcfg32(loc, reg + 4, 0);
    }
    return 0;
}

/* The device at loc with virtio type `type`: read its capabilities, set
 * its BARs up, enable it; fill p. NULL, or why it cannot be driven. */
static const char *setup(struct vpci *p, uint32_t loc, uint32_t type)
{
    struct vcap cap[5];
    uint64_t base[6], size[6];
    uint32_t ptr, guard = 48, mult = 0, used = 0, i;
    uint16_t cmd, want;
    int placed;
    const char *why = 0;

    memset(cap, 0, sizeof(cap));
    if (!(cfg16(loc, PCI_STATUS) & STATUS_CAPS))
        return "no modern interface (legacy only: disable-modern=on?)";
    for (ptr = cfg8(loc, PCI_CAP_PTR) & 0xfc; ptr >= 0x40 && guard--;
         ptr = cfg8(loc, ptr + 1) & 0xfc) {
        uint32_t t, bar;
        if (cfg8(loc, ptr) != CAP_VENDOR || cfg8(loc, ptr + 2) < 16)
            continue;
        t = cfg8(loc, ptr + VCAP_TYPE);
        bar = cfg8(loc, ptr + VCAP_BAR);
        /* The first structure of each type the driver can use (4.1.4). */
        if (t < T_COMMON || t > T_DEVICE || bar > 5 || cap[t].have)
            continue;
        if (t == T_NOTIFY) {
            if (cfg8(loc, ptr + 2) < 20)
                continue;
            mult = cfg32(loc, ptr + VCAP_MULT);
        }
        cap[t].have = 1;
        cap[t].bar = (uint8_t)bar;
        cap[t].offset = cfg32(loc, ptr + VCAP_OFFSET);
        cap[t].length = cfg32(loc, ptr + VCAP_LENGTH);
        used |= 1u << bar;
    }
    if (!cap[T_COMMON].have || !cap[T_NOTIFY].have)
        return "no modern interface (legacy only: disable-modern=on?)";
    if (cap[T_COMMON].length < C_LEN)
        return "its common configuration is too short";

    cmd = cfg16(loc, PCI_COMMAND);
    placed = !!(cmd & CMD_MEM);
    for (i = 0; i < 6 && !why; i++)
        if (used & (1u << i)) {
            why = bar_addr(loc, i, &base[i]);
            placed &= base[i] != 0;
            size[i] = 0;
        }
    if (why)
        return why;
    if (placed) {
        /* Where the firmware put them, decoding on: leave them (every
         * change to a BAR or to decoding rebuilds QEMU's memory map).
         * What must be reachable is what the capabilities point at. */
        for (i = T_COMMON; i <= T_DEVICE; i++) {
            uint64_t end = (uint64_t)cap[i].offset + cap[i].length;
            if (cap[i].have && end > size[cap[i].bar])
                size[cap[i].bar] = end;
        }
    } else {
        wcfg16(loc, PCI_COMMAND, cmd & ~(CMD_IO | CMD_MEM));    /* off while sizing */
        for (i = 0; i < 6 && !why; i++)
            if (used & (1u << i))
                why = bar_size(loc, i, &base[i], &size[i]);
        for (i = T_COMMON; i <= T_DEVICE && !why; i++)
            if (cap[i].have && (uint64_t)cap[i].offset + cap[i].length > size[cap[i].bar])
                why = "a virtio structure lies outside its BAR";
    }
    for (i = 0; i < 6 && !why; i++)
        if ((used & (1u << i)) && platform_map_mmio(base[i], size[i]))
            why = "its BAR is beyond what the guest can map";
    if (why) {
        if (!placed)
            wcfg16(loc, PCI_COMMAND, cmd);
        return why;
    }
    /* Memory decoding and DMA on; no INTx (we poll, MSI-X stays off). */
    want = (uint16_t)((cmd & ~CMD_IO) | CMD_MEM | CMD_BUS_MASTER | CMD_INTX_OFF);
    if (!placed || want != cmd)
        wcfg16(loc, PCI_COMMAND, want);

    memset(p, 0, sizeof(*p));
    p->v.ops = &pci_ops;
    p->v.device_id = type;
    p->v.modern = 1;
    p->v.pci = (int32_t)loc;
    p->bus = (uint8_t)(loc >> 8);
    p->dev = (uint8_t)((loc >> 3) & 31);
    p->fn = (uint8_t)(loc & 7);
    p->common = (uintptr_t)(base[cap[T_COMMON].bar] + cap[T_COMMON].offset);
    p->v.addr = p->common;
    p->notify = (uintptr_t)(base[cap[T_NOTIFY].bar] + cap[T_NOTIFY].offset);
    p->notify_len = cap[T_NOTIFY].length;
    p->notify_mult = mult;
    if (cap[T_ISR].have)
        p->isr = (uintptr_t)(base[cap[T_ISR].bar] + cap[T_ISR].offset);
    if (cap[T_DEVICE].have) {
        p->device = (uintptr_t)(base[cap[T_DEVICE].bar] + cap[T_DEVICE].offset);
        p->device_len = cap[T_DEVICE].length;
    }
    return 0;
}

/* --- discovery ----------------------------------------------------------------------------- */

struct scan {
    struct vpci *out;
    uint32_t max, n;
    uint8_t seen[32];           /* buses already walked */
};

static void consider(struct scan *s, uint32_t loc, uint32_t device)
{
    uint32_t type;
    const char *why;
    if (device >= 0x1040 && device <= 0x107f)
        type = device - 0x1040;                         /* modern */
    else if (device >= 0x1000 && device <= 0x103f)
        type = cfg16(loc, PCI_SUBSYSTEM_ID);            /* transitional */
    else
        return;
    if (s->n == s->max)
        return;
    why = setup(&s->out[s->n], loc, type);
    if (why) {
        con_printf("middlebox: warning: virtio device at pci %02x:%02x.%x left out: %s\n",
                   loc >> 8, (loc >> 3) & 31, loc & 7, why);
        return;
    }
    s->n++;
}

static void scan_bus(struct scan *s, uint32_t bus, uint32_t depth);

/* The bus behind bridge loc. BARs the guest places there come from one
 * stretch of its window, which the bridge is then told to forward (a
 * firmware that leaves BARs unassigned leaves bridge windows closed). */
static void scan_bridge(struct scan *s, uint32_t loc, uint32_t sec, uint32_t depth)
{
    uint64_t start = (window_next + MIB - 1) & ~(MIB - 1), end;
    window_next = start;
    scan_bus(s, sec, depth);
    if (window_next == start)
        return;                 /* nothing placed behind it */
    end = (window_next + MIB - 1) & ~(MIB - 1);
    window_next = end;
    wcfg16(loc, PCI_MEMORY_BASE, (uint16_t)((start >> 16) & 0xfff0));
    wcfg16(loc, PCI_MEMORY_LIMIT, (uint16_t)(((end - 1) >> 16) & 0xfff0));
    wcfg16(loc, PCI_COMMAND, cfg16(loc, PCI_COMMAND) | CMD_MEM | CMD_BUS_MASTER);
}

static void scan_bus(struct scan *s, uint32_t bus, uint32_t depth)
{
    uint32_t dev, fn;
    s->seen[bus >> 3] |= (uint8_t)(1u << (bus & 7));
    for (dev = 0; dev < 32; dev++) {
        uint32_t nfn = 1;
        for (fn = 0; fn < nfn; fn++) {
            uint32_t loc = bdf(bus, dev, fn), id = cfg32(loc, PCI_VENDOR);
            uint8_t hdr;
            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
                continue;
            hdr = cfg8(loc, PCI_HEADER_TYPE);
            if (fn == 0 && (hdr & 0x80))
                nfn = 8;                                /* multi-function */
            if ((hdr & 0x7f) == 1) {
                /* A bridge: walk its bus if the firmware numbered it. */
                uint32_t sec = cfg8(loc, PCI_SECONDARY_BUS);
                if (sec > bus && depth < MAX_DEPTH && !(s->seen[sec >> 3] & (1u << (sec & 7))))
                    scan_bridge(s, loc, sec, depth + 1);
            } else if ((hdr & 0x7f) == 0 && (id & 0xffff) == VENDOR_VIRTIO) {
                consider(s, loc, id >> 16);
            }
        }
    }
}

uint32_t vpci_discover(struct vpci *out, uint32_t max)
{
    struct scan s;
    uint32_t i, j;
    memset(&s, 0, sizeof(s));
    s.out = out;
    s.max = max;
    if (!pci_present())
        return 0;
    window_next = (platform_ram_top32() + MIB - 1) & ~(MIB - 1);
    if (window_next < WINDOW_START)
        window_next = WINDOW_START;
    scan_bus(&s, 0, 0);
    /* Ascending bus:device.function (a bridge's bus may come first). */
    for (i = 1; i < s.n; i++) {
        struct vpci t = out[i];
        uint32_t key = bdf(t.bus, t.dev, t.fn);
        for (j = i; j > 0 && bdf(out[j - 1].bus, out[j - 1].dev, out[j - 1].fn) > key; j--)
            out[j] = out[j - 1];
        out[j] = t;
    }
    return s.n;
}
