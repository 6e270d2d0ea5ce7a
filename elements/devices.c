/*
 * devices.c - where packets enter and leave a graph: FromDevice, ToDevice
 * (also behind FromPcap/ToPcap) and InfiniteSource.
 */
#include "mb.h"

struct dev_state {
    uint32_t dev;
};

static uint32_t dev_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct dev_state);
}

static int dev_init(struct mb_elem *e)
{
    struct dev_state *s = e->state;
    if (e->cfg_len != 4)
        return mb_fail(e, "bad device configuration");
    s->dev = mb_le32(e->cfg);
    return 0;
}

/* The driver already queued the packets here; pass them on. */
static void from_device_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        mb_emit(e, 0, pkts[i]);
}

static void to_device_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct dev_state *s = e->state;
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (mb_dev_tx(e->eng, s->dev, pkts[i]) == 0)
            e->sent++;
        else
            mb_drop(e, pkts[i]);
    }
}

MB_KERNEL(from_device) = {
    .name = "from_device",
    .state_size = dev_state_size,
    .init = dev_init,
    .push = from_device_push,
};

/* Packets handed to the device count as e->sent: they leave the graph. */
MB_KERNEL(to_device) = {
    .name = "to_device",
    .state_size = dev_state_size,
    .init = dev_init,
    .push = to_device_push,
};

/* --- InfiniteSource ----------------------------------------------------------
 * cfg: u64 limit (all ones = none), u32 burst, u32 flows, u32 len, bytes[len].
 * With flows > 1 and an Ethernet/IPv4 template, packet k is made flow
 * k % flows: the IPv4 source address and the TCP/UDP source port are
 * offset by the flow number, checksums updated to match.
 */
struct src_state {
    uint64_t limit;
    uint64_t made;
    uint32_t burst;
    uint32_t flows;
    uint32_t flow;
    uint32_t len;
    int l4;                 /* offset of the TCP/UDP header, or -1 */
    int l4csum;             /* offset of its checksum field, or -1 */
    uint8_t tmpl[];
};

static uint32_t src_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t tlen = len >= 20 ? mb_le32(cfg + 16) : 0;
    if (tlen > len - 20 || len < 20)
        tlen = 0;
    return (uint32_t)sizeof(struct src_state) + tlen;
}

static int src_init(struct mb_elem *e)
{
    struct src_state *s = e->state;
    const uint8_t *t;
    if (e->cfg_len < 20 || mb_le32(e->cfg + 16) != e->cfg_len - 20)
        return mb_fail(e, "bad source configuration");
    s->limit = mb_le64(e->cfg);
    s->burst = mb_le32(e->cfg + 8);
    s->flows = mb_le32(e->cfg + 12);
    s->len = mb_le32(e->cfg + 16);
    if (s->burst == 0 || s->burst > MB_BATCH)
        s->burst = MB_BATCH;
    if (s->flows == 0)
        s->flows = 1;
    memcpy(s->tmpl, e->cfg + 20, s->len);
    if (s->len > mb_max_len(e->eng))
        return mb_fail(e, "template packet larger than a packet buffer");
    s->l4 = -1;
    s->l4csum = -1;
    t = s->tmpl;
    if (s->len >= 34 && t[12] == 0x08 && t[13] == 0x00 && (t[14] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(t[14] & 15) * 4;
        if (ihl >= 20 && 14 + ihl + 4 <= s->len) {
            s->l4 = (int)(14 + ihl);
            if (t[23] == 6 && 14 + ihl + 18 <= s->len)
                s->l4csum = s->l4 + 16;
            else if (t[23] == 17 && 14 + ihl + 8 <= s->len && mb_rd16(t + s->l4 + 6))
                s->l4csum = s->l4 + 6;
        }
    }
    return 0;
}

/* Rewrite the copy of the template in p for flow f. */
static void src_vary(const struct src_state *s, uint8_t *d, uint32_t f)
{
    uint16_t hi, lo, nhi, nlo, port, nport, c;
    uint32_t a;
    if (!f || s->l4 < 0)
        return;
    a = mb_rd32(d + 26);
    hi = (uint16_t)(a >> 16);
    lo = (uint16_t)a;
    a += f;
    nhi = (uint16_t)(a >> 16);
    nlo = (uint16_t)a;
    mb_wr32(d + 26, a);
    c = mb_rd16(d + 24);
    c = mb_csum_update16(mb_csum_update16(c, hi, nhi), lo, nlo);
    mb_wr16(d + 24, c);
    port = mb_rd16(d + s->l4);
    nport = (uint16_t)(port + f);
    mb_wr16(d + s->l4, nport);
    if (s->l4csum >= 0) {
        c = mb_rd16(d + s->l4csum);
        c = mb_csum_update16(c, hi, nhi);
        c = mb_csum_update16(c, lo, nlo);
        c = mb_csum_update16(c, port, nport);
        if (c == 0 && d[23] == 17)
            c = 0xFFFF;     /* UDP sends a computed zero as all ones */
        mb_wr16(d + s->l4csum, c);
    }
}

static uint32_t src_pull(struct mb_elem *e, uint32_t max)
{
    struct src_state *s = e->state;
    uint32_t n = s->burst < max ? s->burst : max, i;
    if (s->limit - s->made < n)
        n = (uint32_t)(s->limit - s->made);
    for (i = 0; i < n; i++) {
        struct mb_packet *p = mb_alloc(e->eng);
        if (!p)
            break;
        memcpy(p->data, s->tmpl, s->len);
        p->len = s->len;
        if (s->flows > 1) {
            src_vary(s, p->data, s->flow);
            if (++s->flow == s->flows)
                s->flow = 0;
        }
        e->created++;
        mb_emit(e, 0, p);
    }
    s->made += i;
    return i;
}

static void src_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        mb_drop(e, pkts[i]);
}

MB_KERNEL(infinite_source) = {
    .name = "infinite_source",
    .state_size = src_state_size,
    .init = src_init,
    .push = src_push,
    .pull = src_pull,
};
