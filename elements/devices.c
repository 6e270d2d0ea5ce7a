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
    mb_emit_batch(e, 0, pkts, n);
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
 * offset by the flow number, checksums updated to match. With up to
 * SRC_MAX_VARS flows those changed fields are computed once per flow at
 * init (src_precompute), so making a packet is a copy and four stores;
 * above that they are computed per packet (src_vary), with the same result.
 */
struct src_state {
    uint64_t limit;
    uint64_t made;
    uint32_t burst;
    uint32_t flows;
    uint32_t flow;
    uint32_t len;
    uint32_t copy;          /* bytes copied per packet: len, or len rounded up
                             * to SRC_CHUNK when the buffer and tmpl have room */
    uint32_t nvar;          /* flows with a precomputed variant (0: none) */
    uint32_t var_off;       /* where the variants start, from tmpl */
    int l4;                 /* offset of the TCP/UDP header, or -1 */
    int l4csum;             /* offset of its checksum field, or -1 */
    uint8_t tmpl[];         /* template (padded to SRC_CHUNK), then variants */
};

/* What src_vary writes for one flow, precomputed when there are few flows:
 * the source address, the IP checksum, the source port and the transport
 * checksum, as bytes in network order. */
struct src_var {
    uint8_t addr[4];
    uint8_t ipcsum[2];
    uint8_t port[2];
    uint8_t l4csum[2];
    uint8_t pad[2];
};

#define SRC_CHUNK 32u
#define SRC_MAX_VARS 16384u    /* at most 192 KiB of variants per source */

static uint32_t src_tmpl_room(uint32_t tlen)
{
    return (tlen + SRC_CHUNK - 1) / SRC_CHUNK * SRC_CHUNK;
}

static uint32_t src_state_size(const uint8_t *cfg, uint32_t len)
{
    uint32_t tlen = len >= 20 ? mb_le32(cfg + 16) : 0, flows;
    if (len < 20 || tlen > len - 20)
        return (uint32_t)sizeof(struct src_state);
    flows = mb_le32(cfg + 12);
    return (uint32_t)sizeof(struct src_state) + src_tmpl_room(tlen) +
           (flows > 1 && flows <= SRC_MAX_VARS ? flows * (uint32_t)sizeof(struct src_var) : 0);
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

/* Fill the variant table: src_vary's result for every flow, so that
 * making a packet is a copy and four small stores. */
static void src_precompute(struct src_state *s)
{
    struct src_var *v = (struct src_var *)(s->tmpl + s->var_off);
    uint8_t d[96];          /* src_vary writes below l4csum + 2 <= 14 + 60 + 18 */
    uint32_t f;
    s->nvar = s->flows;
    for (f = 0; f < s->flows; f++) {
        uint32_t n = s->len < sizeof d ? s->len : (uint32_t)sizeof d;
        memcpy(d, s->tmpl, n);
        src_vary(s, d, f);
        memcpy(v[f].addr, d + 26, 4);
        memcpy(v[f].ipcsum, d + 24, 2);
        memcpy(v[f].port, d + s->l4, 2);
        if (s->l4csum >= 0)
            memcpy(v[f].l4csum, d + s->l4csum, 2);
        else
            memset(v[f].l4csum, 0, 2);
        v[f].pad[0] = v[f].pad[1] = 0;
    }
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
    s->copy = s->len;
    if (src_tmpl_room(s->len) <= mb_max_len(e->eng))
        s->copy = src_tmpl_room(s->len);
    s->var_off = src_tmpl_room(s->len);
    if (s->flows > 1 && s->flows <= SRC_MAX_VARS && s->l4 >= 0)
        src_precompute(s);
    return 0;
}

static uint32_t src_pull(struct mb_elem *e, uint32_t max)
{
    struct src_state *s = e->state;
    const struct src_var *vars = (const struct src_var *)(s->tmpl + s->var_off);
    struct mb_packet *made[MB_BATCH];
    uint32_t n = s->burst < max ? s->burst : max, i;
    if (n > MB_BATCH)
        n = MB_BATCH;
    if (s->limit - s->made < n)
        n = (uint32_t)(s->limit - s->made);
    n = mb_alloc_batch(e->eng, made, n);
    for (i = 0; i < n; i++) {
        struct mb_packet *p = made[i];
        uint8_t *d = p->data;
        if (MB_LIKELY(s->copy == SRC_CHUNK * 2)) {
            /* 64-byte frames: two fixed-size copies, inlined (the copy
             * may write up to SRC_CHUNK - 1 bytes past len, inside the
             * buffer: init checked). */
            __builtin_memcpy(d, s->tmpl, SRC_CHUNK);
            __builtin_memcpy(d + SRC_CHUNK, s->tmpl + SRC_CHUNK, SRC_CHUNK);
        } else {
            memcpy(d, s->tmpl, s->copy);
        }
        p->len = s->len;
        if (s->flows > 1) {
            uint32_t f = s->flow;
            if (s->nvar) {
                const struct src_var *v = &vars[f];
                if (f) {
                    __builtin_memcpy(d + 24, v->ipcsum, 2);
                    __builtin_memcpy(d + 26, v->addr, 4);
                    __builtin_memcpy(d + s->l4, v->port, 2);
                    if (s->l4csum >= 0)
                        __builtin_memcpy(d + s->l4csum, v->l4csum, 2);
                }
            } else {
                src_vary(s, d, f);
            }
            if (++f == s->flows)
                f = 0;
            s->flow = f;
        }
    }
    e->created += n;
    s->made += n;
    mb_emit_batch(e, 0, made, n);
    return n;
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
