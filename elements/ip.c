/*
 * ip.c - kernels of the IPv4 header elements (elements/ip.py):
 * CheckIPHeader, MarkIPHeader, SetIPChecksum, SetTCPChecksum,
 * SetUDPChecksum, DecIPTTL, IPEncap, UDPIPEncap, IPMirror, GetIPAddress,
 * StoreIPAddress.
 *
 * Configuration blobs: integers are little-endian u32; addresses and header
 * templates are in network byte order, as they appear on the wire. The
 * dst_ip annotation is in host byte order.
 *
 * Extra counters (e->xstat[i]) follow the order of the Python class's
 * `xstats`; every packet counted there is also emitted on an error output
 * or counted in e->dropped.
 */
#include "mb.h"

#define IP_MIN_HLEN 20u
#define IP_MAX_LEN 65535u
#define UDP_HLEN 8u
#define TCP_HLEN 20u
#define IP_PROTO_TCP 6u
#define IP_PROTO_UDP 17u
#define IP_MF 0x2000u
#define IP_OFFMASK 0x1FFFu

static uint32_t ip_no_state(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return 0;
}

static int ip_no_config(struct mb_elem *e)
{
    if (e->cfg_len != 0)
        return mb_fail(e, "unexpected configuration");
    return 0;
}

/* Header length (IHL * 4) of the header at h, if it is at least 20 bytes
 * and lies within the avail bytes from h; else 0. */
static inline uint32_t ip_hlen(const uint8_t *h, uint32_t avail)
{
    uint32_t hlen = (uint32_t)(h[0] & 0x0F) << 2;
    if (hlen < IP_MIN_HLEN || hlen > avail)
        return 0;
    return hlen;
}

/* True when the hlen-byte header at h (hlen a multiple of 4) has a valid
 * checksum: its ones' complement sum is all ones. The sum is taken over
 * native 32-bit words; the ones' complement sum does not depend on byte
 * order, and all ones is the same in both, so this agrees with
 * mb_csum_fold(mb_csum_add(0, h, hlen)) == 0. */
static inline int ip_csum_ok(const uint8_t *h, uint32_t hlen)
{
    uint64_t sum = 0;
    uint32_t w, i;
    for (i = 0; i < hlen; i += 4) {
        memcpy(&w, h + i, 4);
        sum += w;
    }
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    w = (uint32_t)sum;
    w = (w & 0xFFFFu) + (w >> 16);
    w = (w & 0xFFFFu) + (w >> 16);
    return w == 0xFFFFu;
}

/* Make room for n bytes at the front: headroom if there is some, else shift
 * the data into the tailroom (moving the nh annotation with it). */
static inline int ip_prepend(struct mb_packet *p, uint32_t n)
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

/* --- CheckIPHeader: cfg = u32 offset, u32 check-checksum flag -------------
 * xstat: 0 bad (all invalid), 1 short, 2 bad_version, 3 bad_hlen, 4 bad_len,
 * 5 bad_csum, 6 bad_src. Invalid packets go to output 1 (dropped by
 * mb_emit when the element has one output). */

struct check_ip_state {
    uint32_t offset;
    uint32_t checksum;
};

static uint32_t check_ip_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct check_ip_state);
}

static int check_ip_init(struct mb_elem *e)
{
    struct check_ip_state *s = e->state;
    if (e->cfg_len != 8)
        return mb_fail(e, "bad configuration");
    s->offset = mb_le32(e->cfg);
    s->checksum = mb_le32(e->cfg + 4);
    if (s->offset > 0xFFFFu || s->checksum > 1)
        return mb_fail(e, "bad configuration");
    return 0;
}

/* 0 when valid, else the xstat index of the reason. */
static inline int check_ip_reason(const struct check_ip_state *s, const struct mb_packet *p,
                                  uint32_t *len_out)
{
    const uint32_t off = s->offset;
    if (!mb_has(p, off, IP_MIN_HLEN))
        return 1;
    const uint8_t *h = p->data + off;
    const uint32_t plen = p->len - off;
    if ((h[0] >> 4) != 4)
        return 2;
    const uint32_t hlen = ip_hlen(h, plen);
    if (hlen == 0)
        return 3;
    const uint32_t len = mb_rd16(h + 2);
    if (len < hlen || len > plen)
        return 4;
    if (s->checksum && !ip_csum_ok(h, hlen))
        return 5;
    /* 255.255.255.255 or multicast 224.0.0.0/4 */
    if ((h[12] & 0xF0) == 0xE0 || mb_rd32(h + 12) == 0xFFFFFFFFu)
        return 6;
    *len_out = len;
    return 0;
}

/* The common header: IPv4, 20 bytes, total length within the packet,
 * checksum right (when checked), a unicast source. Same verdict as
 * check_ip_reason() == 0 with fewer steps; *len_out is the total length. */
static inline int check_ip_plain(const struct check_ip_state *s, const struct mb_packet *p,
                                 uint32_t *len_out)
{
    const uint32_t off = s->offset;
    const uint8_t *h;
    uint32_t len, w[5];
    uint64_t sum;
    if (MB_UNLIKELY(off > p->len || p->len - off < IP_MIN_HLEN))
        return 0;
    h = p->data + off;
    len = mb_rd16(h + 2);
    if (h[0] != 0x45 || len < IP_MIN_HLEN || len > p->len - off ||
        (h[12] & 0xF0) == 0xE0 || mb_rd32(h + 12) == 0xFFFFFFFFu)
        return 0;
    if (s->checksum) {
        memcpy(w, h, 20);
        sum = (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4];
        sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
        sum = (sum & 0xFFFFu) + ((sum >> 16) & 0xFFFFu) + (sum >> 32);
        sum = (sum & 0xFFFFu) + (sum >> 16);
        sum = (sum & 0xFFFFu) + (sum >> 16);
        if (sum != 0xFFFFu)
            return 0;
    }
    *len_out = len;
    return 1;
}

static void check_ip_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct check_ip_state *s = e->state;
    uint32_t k = 0;     /* valid packets kept in pkts[0..k), not yet emitted */
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint32_t len = 0;
        if (MB_UNLIKELY(!check_ip_plain(s, p, &len))) {
            int why = check_ip_reason(s, p, &len);
            if (why) {
                e->xstat[0]++;
                e->xstat[why]++;
                /* earlier valid packets leave first, as one by one */
                mb_emit_batch(e, 0, pkts, k);
                k = 0;
                mb_emit(e, 1, p);
                continue;
            }
        }
        p->nh = p->data + s->offset;
        if (!p->dst_ip)             /* as Click: only when not yet set */
            p->dst_ip = mb_rd32(p->nh + 16);
        mb_take(p, p->len - s->offset - len);
        pkts[k++] = p;
    }
    mb_emit_batch(e, 0, pkts, k);
}

MB_KERNEL(check_ip_header) = {
    .name = "check_ip_header",
    .state_size = check_ip_state_size,
    .init = check_ip_init,
    .push = check_ip_push,
};

/* --- MarkIPHeader: cfg = u32 offset; xstat 0 short ------------------------ */

static void mark_ip_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint32_t off = mb_u16_cfg(e);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(!mb_has(p, off, IP_MIN_HLEN))) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        p->nh = p->data + off;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(mark_ip_header) = {
    .name = "mark_ip_header",
    .state_size = mb_u16_cfg_size,
    .init = mb_u16_cfg_init,
    .push = mark_ip_push,
};

/* --- SetIPChecksum: xstat 0 bad ------------------------------------------- */

static void set_ip_csum_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        int32_t off = mb_nh_off(p, IP_MIN_HLEN);
        uint32_t hlen = off < 0 ? 0 : ip_hlen(p->data + off, p->len - (uint32_t)off);
        if (MB_UNLIKELY(hlen == 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data + off;
        h[10] = 0;
        h[11] = 0;
        mb_wr16(h + 10, mb_csum_fold(mb_csum_add(0, h, hlen)));
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(set_ip_checksum) = {
    .name = "set_ip_checksum",
    .state_size = ip_no_state,
    .init = ip_no_config,
    .push = set_ip_csum_push,
};

/* --- SetTCPChecksum / SetUDPChecksum: xstat 0 bad, 1 fragment, 2 not_tcp/udp */

/* Transport checksum over the pseudo-header and [nh + hlen, nh + total
 * length); proto and the field positions are constants at each call. */
static inline void l4_csum_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n,
                                uint8_t proto, uint32_t min_l4, uint32_t csum_at)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        int32_t off = mb_nh_off(p, IP_MIN_HLEN);
        uint32_t avail = off < 0 ? 0 : p->len - (uint32_t)off;
        uint32_t hlen = off < 0 ? 0 : ip_hlen(p->data + off, avail);
        if (MB_UNLIKELY(hlen == 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data + off;
        uint32_t len = mb_rd16(h + 2);
        if (MB_UNLIKELY(len > avail || len < hlen)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        if (MB_UNLIKELY(mb_rd16(h + 6) & (IP_MF | IP_OFFMASK))) {
            e->xstat[1]++;
            mb_drop(e, p);
            continue;
        }
        if (MB_UNLIKELY(h[9] != proto)) {
            e->xstat[2]++;
            mb_drop(e, p);
            continue;
        }
        if (MB_UNLIKELY(len - hlen < min_l4)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *t = h + hlen;
        uint32_t l4len = len - hlen;
        t[csum_at] = 0;
        t[csum_at + 1] = 0;
        uint32_t sum = mb_csum_add(0, h + 12, 8);      /* source, destination */
        sum += proto + l4len;
        sum = mb_csum_add(sum, t, l4len);
        uint16_t c = mb_csum_fold(sum);
        if (proto == IP_PROTO_UDP && c == 0)
            c = 0xFFFF;
        mb_wr16(t + csum_at, c);
        mb_emit(e, 0, p);
    }
}

static void set_tcp_csum_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    l4_csum_push(e, pkts, n, IP_PROTO_TCP, TCP_HLEN, 16);
}

static void set_udp_csum_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    l4_csum_push(e, pkts, n, IP_PROTO_UDP, UDP_HLEN, 6);
}

MB_KERNEL(set_tcp_checksum) = {
    .name = "set_tcp_checksum",
    .state_size = ip_no_state,
    .init = ip_no_config,
    .push = set_tcp_csum_push,
};

MB_KERNEL(set_udp_checksum) = {
    .name = "set_udp_checksum",
    .state_size = ip_no_state,
    .init = ip_no_config,
    .push = set_udp_csum_push,
};

/* --- DecIPTTL: xstat 0 expired (to output 1), 1 no_ip --------------------- */

static void dec_ttl_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        int32_t off = mb_nh_off(p, IP_MIN_HLEN);
        if (MB_UNLIKELY(off < 0)) {
            e->xstat[1]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data + off;
        if (MB_UNLIKELY(h[8] <= 1)) {
            e->xstat[0]++;
            mb_emit(e, 1, p);
            continue;
        }
        uint16_t old = mb_rd16(h + 8);              /* TTL, protocol */
        h[8]--;
        mb_wr16(h + 10, mb_csum_update16(mb_rd16(h + 10), old, mb_rd16(h + 8)));
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(dec_ip_ttl) = {
    .name = "dec_ip_ttl",
    .state_size = ip_no_state,
    .init = ip_no_config,
    .push = dec_ttl_push,
};

/* --- IPEncap: cfg = 20-byte header (length, ID, checksum zero) -------------
 * --- UDPIPEncap: cfg = 20-byte IP header + 8-byte UDP header (lengths and
 *     checksums zero) + u32 compute-UDP-checksum flag.
 * xstat: 0 too_long, 1 no_room. */

struct ip_encap_state {
    uint8_t hdr[IP_MIN_HLEN + UDP_HLEN];
    uint32_t hsum;          /* sum of the template IP header's words */
    uint32_t psum;          /* UDP: sum of addresses, protocol and ports */
    uint32_t dst;           /* destination, host order, for dst_ip */
    uint32_t udp_csum;
    uint16_t id;
};

static uint32_t ip_encap_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct ip_encap_state);
}

static int ip_encap_setup(struct mb_elem *e, uint8_t proto)
{
    struct ip_encap_state *s = e->state;
    const uint8_t *h = e->cfg;
    if (h[0] != 0x45 || mb_rd16(h + 2) || mb_rd16(h + 4) || mb_rd16(h + 10) ||
        (mb_rd16(h + 6) & ~0x4000u) || (proto && h[9] != proto))
        return mb_fail(e, "bad header template");
    s->hsum = mb_csum_add(0, h, IP_MIN_HLEN);
    s->dst = mb_rd32(h + 16);
    return 0;
}

static int ip_encap_init(struct mb_elem *e)
{
    struct ip_encap_state *s = e->state;
    if (e->cfg_len != IP_MIN_HLEN)
        return mb_fail(e, "bad configuration");
    memcpy(s->hdr, e->cfg, IP_MIN_HLEN);
    return ip_encap_setup(e, 0);
}

static void ip_encap_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct ip_encap_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(p->len > IP_MAX_LEN - IP_MIN_HLEN)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        if (MB_UNLIKELY(ip_prepend(p, IP_MIN_HLEN) < 0)) {
            e->xstat[1]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data;
        uint16_t id = s->id++;
        memcpy(h, s->hdr, IP_MIN_HLEN);
        mb_wr16(h + 2, (uint16_t)p->len);
        mb_wr16(h + 4, id);
        mb_wr16(h + 10, mb_csum_fold(s->hsum + p->len + id));
        p->nh = h;
        p->dst_ip = s->dst;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(ip_encap) = {
    .name = "ip_encap",
    .state_size = ip_encap_state_size,
    .init = ip_encap_init,
    .push = ip_encap_push,
};

static int udp_ip_encap_init(struct mb_elem *e)
{
    struct ip_encap_state *s = e->state;
    const uint32_t hl = IP_MIN_HLEN + UDP_HLEN;
    if (e->cfg_len != hl + 4)
        return mb_fail(e, "bad configuration");
    memcpy(s->hdr, e->cfg, hl);
    s->udp_csum = mb_le32(e->cfg + hl);
    if (s->udp_csum > 1 || mb_rd32(s->hdr + IP_MIN_HLEN + 4) != 0)
        return mb_fail(e, "bad configuration");
    /* addresses, protocol, ports: the per-packet part is the length */
    s->psum = mb_csum_add(0, s->hdr + 12, 8) + IP_PROTO_UDP +
              mb_csum_add(0, s->hdr + IP_MIN_HLEN, 4);
    return ip_encap_setup(e, IP_PROTO_UDP);
}

static void udp_ip_encap_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct ip_encap_state *s = e->state;
    const uint32_t hl = IP_MIN_HLEN + UDP_HLEN;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(p->len > IP_MAX_LEN - hl)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint32_t payload_sum = s->udp_csum ? mb_csum_add(0, p->data, p->len) : 0;
        if (MB_UNLIKELY(ip_prepend(p, hl) < 0)) {
            e->xstat[1]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data;
        uint8_t *u = h + IP_MIN_HLEN;
        uint16_t id = s->id++;
        uint32_t ulen = p->len - IP_MIN_HLEN;
        memcpy(h, s->hdr, hl);
        mb_wr16(h + 2, (uint16_t)p->len);
        mb_wr16(h + 4, id);
        mb_wr16(h + 10, mb_csum_fold(s->hsum + p->len + id));
        mb_wr16(u + 4, (uint16_t)ulen);
        if (s->udp_csum) {
            /* pseudo-header length and UDP length field: ulen twice */
            uint16_t c = mb_csum_fold(s->psum + 2 * ulen + payload_sum);
            mb_wr16(u + 6, c ? c : 0xFFFF);
        }
        p->nh = h;
        p->dst_ip = s->dst;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(udp_ip_encap) = {
    .name = "udp_ip_encap",
    .state_size = ip_encap_state_size,
    .init = udp_ip_encap_init,
    .push = udp_ip_encap_push,
};

/* --- IPMirror: xstat 0 no_ip ---------------------------------------------- */

static inline void swap_bytes(uint8_t *a, uint8_t *b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

static void ip_mirror_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        int32_t off = mb_nh_off(p, IP_MIN_HLEN);
        if (MB_UNLIKELY(off < 0)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *h = p->data + off;
        uint32_t avail = p->len - (uint32_t)off;
        swap_bytes(h + 12, h + 16, 4);
        uint32_t hlen = ip_hlen(h, avail);
        if (hlen && (mb_rd16(h + 6) & IP_OFFMASK) == 0) {
            uint8_t *t = h + hlen;
            uint32_t tlen = avail - hlen;
            if (h[9] == IP_PROTO_UDP && tlen >= UDP_HLEN) {
                swap_bytes(t, t + 2, 2);
            } else if (h[9] == IP_PROTO_TCP && tlen >= TCP_HLEN) {
                swap_bytes(t, t + 2, 2);
                swap_bytes(t + 4, t + 8, 4);
            }
        }
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(ip_mirror) = {
    .name = "ip_mirror",
    .state_size = ip_no_state,
    .init = ip_no_config,
    .push = ip_mirror_push,
};

/* --- GetIPAddress: cfg = u32 offset; xstat 0 short -------------------------
 * The offset counts from nh when it is set (nh may lie before the data, e.g.
 * after a Strip past the header), else from the data. */

static void get_ip_address_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint32_t off = mb_u16_cfg(e);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint64_t pos = off;         /* position relative to p->data, + base */
        uint64_t base = 0;
        if (p->nh) {
            if (p->nh >= p->data)
                pos += (uint64_t)(p->nh - p->data);
            else
                base = (uint64_t)(p->data - p->nh);
        }
        if (MB_UNLIKELY(pos < base || pos - base > p->len || p->len - (pos - base) < 4)) {
            e->xstat[0]++;
            mb_drop(e, p);
            continue;
        }
        p->dst_ip = mb_rd32(p->data + (pos - base));
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(get_ip_address) = {
    .name = "get_ip_address",
    .state_size = mb_u16_cfg_size,
    .init = mb_u16_cfg_init,
    .push = get_ip_address_push,
};

/* --- StoreIPAddress: cfg = u32 offset, u32 has-address flag, 4-byte address
 * (network order); xstat 0 short (to output 1). */

struct store_ip_state {
    uint32_t offset;
    uint32_t fixed;
    uint8_t addr[4];
};

static uint32_t store_ip_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct store_ip_state);
}

static int store_ip_init(struct mb_elem *e)
{
    struct store_ip_state *s = e->state;
    if (e->cfg_len != 12)
        return mb_fail(e, "bad configuration");
    s->offset = mb_le32(e->cfg);
    s->fixed = mb_le32(e->cfg + 4);
    memcpy(s->addr, e->cfg + 8, 4);
    if (s->offset > 0xFFFFu || s->fixed > 1)
        return mb_fail(e, "bad configuration");
    return 0;
}

static void store_ip_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct store_ip_state *s = e->state;
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        if (MB_UNLIKELY(!mb_has(p, s->offset, 4))) {
            e->xstat[0]++;
            mb_emit(e, 1, p);
            continue;
        }
        if (s->fixed)
            memcpy(p->data + s->offset, s->addr, 4);
        else if (p->dst_ip)
            mb_wr32(p->data + s->offset, p->dst_ip);
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(store_ip_address) = {
    .name = "store_ip_address",
    .state_size = store_ip_state_size,
    .init = store_ip_init,
    .push = store_ip_push,
};
