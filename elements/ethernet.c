/*
 * ethernet.c - kernels of the Ethernet-layer elements (elements/ethernet.py):
 * Strip, Unstrip, EtherEncap, EtherRewrite, EtherMirror.
 *
 * Each element counts the packets it cannot handle in xstat[0] as well as in
 * e->dropped.
 */
#include "mb.h"

#define ETH_HLEN 14u
#define ETH_ALEN 6u

/* --- Strip / Unstrip: cfg = u32 length (little-endian) -------------------- */

/* Both keep the packets they pass at the front of pkts and emit them at
 * once (dropped packets go to no queue, so the order is kept). */
static void strip_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint32_t len = mb_u16_cfg(e);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(mb_pull(p, len) < 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        pkts[k++] = p;
    }
    mb_emit_batch(e, 0, pkts, k);
}

MB_KERNEL(strip) = {
    .name = "strip",
    .state_size = mb_u16_cfg_size,
    .init = mb_u16_cfg_init,
    .push = strip_push,
};

static void unstrip_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint32_t len = mb_u16_cfg(e);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(mb_push(p, len) < 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        pkts[k++] = p;
    }
    mb_emit_batch(e, 0, pkts, k);
}

MB_KERNEL(unstrip) = {
    .name = "unstrip",
    .state_size = mb_u16_cfg_size,
    .init = mb_u16_cfg_init,
    .push = unstrip_push,
};

/* --- EtherEncap: cfg = the 14-byte header (dst, src, ethertype) ----------- */

struct ether_encap_state {
    uint8_t hdr[ETH_HLEN];
};

static uint32_t ether_encap_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct ether_encap_state);
}

static int ether_encap_init(struct mb_elem *e)
{
    struct ether_encap_state *s = e->state;
    if (e->cfg_len != ETH_HLEN)
        return mb_fail(e, "bad configuration");
    memcpy(s->hdr, e->cfg, ETH_HLEN);
    return 0;
}

/* Make room for n bytes at the front: headroom if there is some, else shift
 * the data into the tailroom. -1 if the buffer has neither. */
static inline int ether_encap_prepend(struct mb_packet *p, uint32_t n)
{
    if (MB_LIKELY(mb_push(p, n) == 0))
        return 0;
    if (mb_tailroom(p) < n)
        return -1;
    memmove(p->data + n, p->data, p->len);
    p->len += n;
    if (p->nh)
        p->nh += n;
    return 0;
}

static void ether_encap_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct ether_encap_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(ether_encap_prepend(p, ETH_HLEN) < 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        memcpy(p->data, s->hdr, ETH_HLEN);
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(ether_encap) = {
    .name = "ether_encap",
    .state_size = ether_encap_state_size,
    .init = ether_encap_init,
    .push = ether_encap_push,
};

/* --- EtherRewrite: cfg = dst (6 bytes), src (6 bytes) --------------------- */

struct ether_rewrite_state {
    uint8_t addrs[2 * ETH_ALEN];
};

static uint32_t ether_rewrite_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct ether_rewrite_state);
}

static int ether_rewrite_init(struct mb_elem *e)
{
    struct ether_rewrite_state *s = e->state;
    if (e->cfg_len != 2 * ETH_ALEN)
        return mb_fail(e, "bad configuration");
    memcpy(s->addrs, e->cfg, 2 * ETH_ALEN);
    return 0;
}

static void ether_rewrite_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct ether_rewrite_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(p->len < ETH_HLEN)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        memcpy(p->data, s->addrs, 2 * ETH_ALEN);
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(ether_rewrite) = {
    .name = "ether_rewrite",
    .state_size = ether_rewrite_state_size,
    .init = ether_rewrite_init,
    .push = ether_rewrite_push,
};

/* --- EtherMirror: swap destination and source addresses ------------------- */

static uint32_t ether_mirror_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return 0;
}

static int ether_mirror_init(struct mb_elem *e)
{
    if (e->cfg_len != 0)
        return mb_fail(e, "unexpected configuration");
    return 0;
}

static void ether_mirror_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(p->len < ETH_HLEN)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t tmp[ETH_ALEN];
        memcpy(tmp, p->data, ETH_ALEN);
        memcpy(p->data, p->data + ETH_ALEN, ETH_ALEN);
        memcpy(p->data + ETH_ALEN, tmp, ETH_ALEN);
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(ether_mirror) = {
    .name = "ether_mirror",
    .state_size = ether_mirror_state_size,
    .init = ether_mirror_init,
    .push = ether_mirror_push,
};
