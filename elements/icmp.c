/*
 * icmp.c - kernels of the ICMP elements and IP fragmentation
 * (elements/icmp.py): ICMPPingResponder, ICMPError, IPFragmenter.
 *
 * All three work on the IPv4 header the nh annotation points at (set by
 * CheckIPHeader / MarkIPHeader). A packet whose nh annotation is unset, lies
 * outside the packet, or does not point at a complete IPv4 header (version
 * 4, header length >= 20 bytes, the whole header inside the packet) is
 * dropped and counted in the element's `no_ip` / `bad` counter.
 *
 * Addresses in configurations are host-order u32, little-endian like every
 * other configuration field.
 */
#include "mb.h"

#define IP_PROTO_ICMP 1u
#define IP_DF 0x4000u
#define IP_MF 0x2000u
#define IP_OFFMASK 0x1FFFu

#define ICMP_ECHOREPLY 0u
#define ICMP_UNREACH 3u
#define ICMP_SOURCEQUENCH 4u
#define ICMP_REDIRECT 5u
#define ICMP_ECHO 8u
#define ICMP_TIMXCEED 11u
#define ICMP_PARAMPROB 12u
#define ICMP_UNREACH_NEEDFRAG 4u

static uint32_t icmp_no_state(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return 0;
}

/* Offset of a complete IPv4 header at the nh annotation, or -1. On success
 * *hl is the header length in bytes. */
static inline int32_t icmp_ip_header(const struct mb_packet *p, uint32_t *hl)
{
    int32_t off = mb_nh_off(p, 20);
    if (MB_UNLIKELY(off < 0))
        return -1;
    const uint8_t *ip = p->data + off;
    uint32_t h = (uint32_t)(ip[0] & 0x0F) << 2;
    if (MB_UNLIKELY((ip[0] >> 4) != 4 || h < 20 || !mb_has(p, (uint32_t)off, h)))
        return -1;
    *hl = h;
    return off;
}

/* Internet checksum of n bytes (the checksum field must hold zero). */
static inline uint16_t icmp_cksum(const uint8_t *b, uint32_t n)
{
    return mb_csum_fold(mb_csum_add(0, b, n));
}

/* --- ICMPPingResponder -------------------------------------------------------
 *
 * cfg: empty. xstat[0] replies, xstat[1] not_echo (to output 1), xstat[2]
 * no_ip (dropped). An echo request is an unfragmented IPv4 packet of
 * protocol 1 whose total length covers the header and 8 ICMP bytes, lies
 * inside the packet, and whose ICMP type is 8. The reply is made in place:
 * addresses swapped, fragment field cleared, TTL 255, ICMP type and code 0;
 * both checksums updated incrementally (RFC 1624). Annotations: dst_ip =
 * the new destination, paint 0, timestamp now. An incremental ICMP checksum
 * of 0x0000 is recomputed over the message: it is ambiguous (RFC 1624 sec. 3),
 * and an all-zero reply needs 0xFFFF. */

static int icmp_ping_responder_init(struct mb_elem *e)
{
    if (e->cfg_len != 0)
        return mb_fail(e, "unexpected configuration");
    return 0;
}

static void icmp_ping_responder_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const uint64_t now = mb_now(e->eng);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint32_t hl;
        int32_t off = icmp_ip_header(p, &hl);
        if (MB_UNLIKELY(off < 0)) {
            e->xstat[2]++;
            mb_drop(e, p);
            continue;
        }
        uint8_t *ip = p->data + off;
        uint32_t avail = p->len - (uint32_t)off;
        uint32_t ip_len = mb_rd16(ip + 2);
        uint16_t frag = mb_rd16(ip + 6);
        if (ip[9] != IP_PROTO_ICMP || (frag & (IP_MF | IP_OFFMASK)) != 0 ||
            ip_len < hl + 8 || ip_len > avail || ip[hl] != ICMP_ECHO) {
            e->xstat[1]++;
            mb_emit(e, 1, p);
            continue;
        }
        uint8_t *icmp = ip + hl;
        uint8_t tmp[4];
        uint16_t sum = mb_rd16(ip + 10);

        /* Swapping the addresses leaves the header sum unchanged. */
        memcpy(tmp, ip + 12, 4);
        memcpy(ip + 12, ip + 16, 4);
        memcpy(ip + 16, tmp, 4);
        sum = mb_csum_update16(sum, frag, 0);
        mb_wr16(ip + 6, 0);
        uint16_t old = mb_rd16(ip + 8);
        ip[8] = 255;
        sum = mb_csum_update16(sum, old, mb_rd16(ip + 8));
        mb_wr16(ip + 10, sum);

        old = mb_rd16(icmp);
        icmp[0] = ICMP_ECHOREPLY;
        icmp[1] = 0;
        sum = mb_csum_update16(mb_rd16(icmp + 2), old, 0);
        if (MB_UNLIKELY(sum == 0)) {
            /* 0x0000 or 0xFFFF: only the data can tell (all-zero data sums
             * to +0 and needs 0xFFFF), so sum it as a sender would. */
            mb_wr16(icmp + 2, 0);
            sum = icmp_cksum(icmp, ip_len - hl);
        }
        mb_wr16(icmp + 2, sum);

        p->dst_ip = mb_rd32(ip + 16);
        p->paint = 0;
        p->ts_ns = now;
        e->xstat[0]++;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(icmp_ping_responder) = {
    .name = "icmp_ping_responder",
    .state_size = icmp_no_state,
    .init = icmp_ping_responder_init,
    .push = icmp_ping_responder_push,
};

/* --- ICMPError ---------------------------------------------------------------
 *
 * cfg (little-endian): u32 src (host order), u8 type, u8 code, u16 next-hop
 * MTU (unreachable/needfrag only), u8 pointer (parameterproblem), u8 nbad,
 * u16 zero, then nbad u32 bad addresses (host order).
 * xstat[0] errors (made), xstat[1] suppressed (no error allowed), xstat[2]
 * no_ip.
 *
 * The input packet's buffer is reused: the error is written at the
 * engine's standard headroom, as if freshly allocated: a 20-byte IPv4
 * header (TOS 0, id from a per-element counter, no fragment bits, TTL 255,
 * protocol 1, src = SRC, dst = the offending source), the 8-byte ICMP
 * header, then the offending IP header and up to 8 bytes of its payload
 * (within both its total length and the packet). nh = the new IP header,
 * dst_ip = the offending source, paint 0, timestamp now. */

#define ICMPERR_MAX_BAD 64u
#define ICMPERR_HDRS 28u

struct icmp_error_state {
    uint32_t src;
    uint8_t type;
    uint8_t code;
    uint16_t mtu;
    uint8_t pointer;
    uint8_t nbad;
    uint16_t next_id;
    uint32_t bad[ICMPERR_MAX_BAD];
};

static uint32_t icmp_error_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct icmp_error_state);
}

static inline int icmp_is_error_type(uint32_t t)
{
    return t == ICMP_UNREACH || t == ICMP_SOURCEQUENCH || t == ICMP_REDIRECT ||
           t == ICMP_TIMXCEED || t == ICMP_PARAMPROB;
}

static int icmp_error_init(struct mb_elem *e)
{
    struct icmp_error_state *s = e->state;
    const uint8_t *c = e->cfg;
    if (e->cfg_len < 12)
        return mb_fail(e, "bad configuration");
    s->src = mb_le32(c);
    s->type = c[4];
    s->code = c[5];
    s->mtu = mb_le16(c + 6);
    s->pointer = c[8];
    s->nbad = c[9];
    if (s->nbad > ICMPERR_MAX_BAD || e->cfg_len != 12 + 4u * s->nbad || mb_le16(c + 10) != 0)
        return mb_fail(e, "bad configuration");
    if (!icmp_is_error_type(s->type))
        return mb_fail(e, "not an ICMP error type");
    if (s->src == 0)
        return mb_fail(e, "bad source address");
    for (uint32_t i = 0; i < s->nbad; i++)
        s->bad[i] = mb_le32(c + 12 + 4 * i);
    s->next_id = 1;
    return 0;
}

/* Not limited broadcast, not multicast, not a configured bad address. */
static inline int icmp_error_unicast(const struct icmp_error_state *s, uint32_t a)
{
    if (a == 0xFFFFFFFFu || (a & 0xF0000000u) == 0xE0000000u)
        return 0;
    for (uint32_t i = 0; i < s->nbad; i++)
        if (s->bad[i] == a)
            return 0;
    return 1;
}

/* A source that names one host (RFC 1812 4.3.2.7, 5.3.7): unicast, not
 * network 0, not loopback, not class E. */
static inline int icmp_error_valid_source(const struct icmp_error_state *s, uint32_t a)
{
    uint32_t net = a >> 24;
    return icmp_error_unicast(s, a) && net != 0 && net != 127 && (net & 0xF0) != 0xF0;
}

/* True if the options in ip[20..hl) hold a loose or strict source route. */
static inline int icmp_source_routed(const uint8_t *ip, uint32_t hl)
{
    uint32_t i = 20;
    while (i < hl) {
        uint8_t t = ip[i];
        if (t == 0)
            return 0;
        if (t == 1) {
            i++;
            continue;
        }
        if (i + 1 >= hl)
            return 0;
        uint32_t ol = ip[i + 1];
        if (ol < 2 || i + ol > hl)
            return 0;
        if (t == 0x83 || t == 0x89)
            return 1;
        i += ol;
    }
    return 0;
}

static void icmp_error_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    struct icmp_error_state *s = e->state;
    const uint64_t now = mb_now(e->eng);
    const uint32_t max_len = mb_max_len(e->eng);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        uint32_t hl;
        int32_t off = icmp_ip_header(p, &hl);
        if (MB_UNLIKELY(off < 0 || p->room < max_len)) {
            e->xstat[2]++;
            mb_drop(e, p);
            continue;
        }
        const uint8_t *ip = p->data + off;
        uint32_t avail = p->len - (uint32_t)off;
        uint32_t ip_len = mb_rd16(ip + 2);
        uint32_t src = mb_rd32(ip + 12), dst = mb_rd32(ip + 16);
        int quiet =
            (mb_rd16(ip + 6) & IP_OFFMASK) != 0 ||              /* not the first fragment */
            !icmp_error_unicast(s, dst) || !icmp_error_valid_source(s, src) ||
            ((uint32_t)off >= 14 && (p->data[0] & 1)) ||        /* link broadcast/multicast */
            (s->type == ICMP_REDIRECT && icmp_source_routed(ip, hl));
        if (!quiet && ip[9] == IP_PROTO_ICMP)                   /* no errors about errors */
            quiet = avail < hl + 1 || ip_len < hl + 1 || icmp_is_error_type(ip[hl]);
        /* The quote: the header and up to 8 bytes of payload. */
        uint32_t end = ip_len < avail ? ip_len : avail;
        uint32_t qlen = hl + (end > hl ? (end - hl < 8 ? end - hl : 8) : 0);
        if (quiet || ICMPERR_HDRS + qlen > max_len) {
            e->xstat[1]++;
            mb_drop(e, p);
            continue;
        }

        uint8_t *base = p->head + (p->room - max_len);
        memmove(base + ICMPERR_HDRS, ip, qlen);
        uint8_t *nip = base, *icmp = base + 20;
        uint32_t total = ICMPERR_HDRS + qlen;
        nip[0] = 0x45;
        nip[1] = 0;
        mb_wr16(nip + 2, (uint16_t)total);
        mb_wr16(nip + 4, s->next_id++);
        mb_wr16(nip + 6, 0);
        nip[8] = 255;
        nip[9] = IP_PROTO_ICMP;
        mb_wr16(nip + 10, 0);
        mb_wr32(nip + 12, s->src);
        mb_wr32(nip + 16, src);
        mb_wr16(nip + 10, icmp_cksum(nip, 20));

        icmp[0] = s->type;
        icmp[1] = s->code;
        mb_wr32(icmp + 2, 0);   /* checksum + first half of the rest */
        mb_wr16(icmp + 6, 0);
        if (s->type == ICMP_UNREACH && s->code == ICMP_UNREACH_NEEDFRAG)
            mb_wr16(icmp + 6, s->mtu);
        else if (s->type == ICMP_REDIRECT)
            mb_wr32(icmp + 4, p->dst_ip);
        else if (s->type == ICMP_PARAMPROB && s->code == 0)
            icmp[4] = s->pointer;
        mb_wr16(icmp + 2, icmp_cksum(icmp, 8 + qlen));

        p->data = base;
        p->len = total;
        p->nh = base;
        p->dst_ip = src;
        p->paint = 0;
        p->flags = 0;
        p->ts_ns = now;
        e->xstat[0]++;
        mb_emit(e, 0, p);
    }
}

MB_KERNEL(icmp_error) = {
    .name = "icmp_error",
    .state_size = icmp_error_state_size,
    .init = icmp_error_init,
    .push = icmp_error_push,
};

/* --- IPFragmenter --------------------------------------------------------------
 *
 * cfg (little-endian): u32 mtu (68..65535), u32 honor_df (0 or 1).
 * xstat[0] fragments (emitted, first ones included), xstat[1] df (sent to
 * output 1), xstat[2] bad (dropped: no usable IP header, truncated, offset
 * overflow), xstat[3] no_room (dropped: no buffers or no room downstream
 * for all the fragments; no partial fragment train ever leaves).
 *
 * A packet is compared to the MTU by its IP total length. Bytes in front
 * of the IP header (a link header) are copied in front of every fragment.
 * The first fragment is the original packet, trimmed, with the whole
 * original header; later fragments are new packets whose header carries
 * only the options with the copied bit set (RFC 791), padded with EOL to
 * a 4-byte multiple. The fragments of a packet that is itself a fragment
 * keep its offset and, for the last one, its MF bit. DF is cleared in
 * fragments (only set when HONOR_DF is false). Annotations are copied;
 * nh points at each fragment's IP header. */

struct ip_fragmenter_state {
    uint32_t mtu;
    uint32_t honor_df;
};

static uint32_t ip_fragmenter_state_size(const uint8_t *cfg, uint32_t len)
{
    (void)cfg;
    (void)len;
    return sizeof(struct ip_fragmenter_state);
}

static int ip_fragmenter_init(struct mb_elem *e)
{
    struct ip_fragmenter_state *s = e->state;
    if (e->cfg_len != 8)
        return mb_fail(e, "bad configuration");
    s->mtu = mb_le32(e->cfg);
    s->honor_df = mb_le32(e->cfg + 4);
    if (s->mtu < 68 || s->mtu > 65535 || s->honor_df > 1)
        return mb_fail(e, "bad configuration");
    return 0;
}

/* Copy the options of ip[20..hl) whose copied bit is set to out (room for
 * 40 bytes); pad with EOL to a multiple of 4. Stops at EOL or at the first
 * malformed option. Returns the bytes written. */
static inline uint32_t ip_fragmenter_copy_options(const uint8_t *ip, uint32_t hl, uint8_t *out)
{
    uint32_t i = 20, o = 0;
    while (i < hl) {
        uint8_t t = ip[i];
        if (t == 0)
            break;
        if (t == 1) {
            i++;
            continue;
        }
        if (i + 1 >= hl)
            break;
        uint32_t ol = ip[i + 1];
        if (ol < 2 || i + ol > hl)
            break;
        if (t & 0x80) {
            memcpy(out + o, ip + i, ol);
            o += ol;
        }
        i += ol;
    }
    while (o & 3)
        out[o++] = 0;
    return o;
}

static void ip_fragmenter_push(struct mb_elem *e, struct mb_packet **pkts, uint32_t n)
{
    const struct ip_fragmenter_state *s = e->state;
    const uint32_t mtu = s->mtu;
    const uint32_t max_len = mb_max_len(e->eng);
    for (uint32_t i = 0; i < n; i++) {
        struct mb_packet *p = pkts[i];
        int32_t soff = mb_nh_off(p, 20);
        if (MB_UNLIKELY(soff < 0)) {
            e->xstat[2]++;
            mb_drop(e, p);
            continue;
        }
        uint32_t off = (uint32_t)soff;
        uint8_t *ip = p->data + off;
        uint32_t ip_len = mb_rd16(ip + 2);
        if (MB_LIKELY(ip_len <= mtu)) {
            mb_emit(e, 0, p);
            continue;
        }
        uint32_t hl = (uint32_t)(ip[0] & 0x0F) << 2;
        uint32_t frag = mb_rd16(ip + 6);
        uint32_t off0 = frag & IP_OFFMASK;
        if (MB_UNLIKELY((ip[0] >> 4) != 4 || hl < 20 || hl > ip_len ||
                        ip_len > p->len - off || off0 * 8 + (ip_len - hl) > 65536)) {
            e->xstat[2]++;
            mb_drop(e, p);
            continue;
        }
        if ((frag & IP_DF) && s->honor_df) {
            e->xstat[1]++;
            mb_emit(e, 1, p);
            continue;
        }

        /* Header of the later fragments. */
        uint8_t hdr[60];
        memcpy(hdr, ip, 20);
        uint32_t hl2 = 20 + ip_fragmenter_copy_options(ip, hl, hdr + 20);
        hdr[0] = (uint8_t)(0x40 | (hl2 >> 2));

        const uint32_t payload = ip_len - hl;
        const uint32_t first = (mtu - hl) & ~7u;        /* >= 8: mtu >= 68 */
        const uint32_t later = (mtu - hl2) & ~7u;
        const uint32_t nextra = (payload - first + later - 1) / later;
        if (MB_UNLIKELY(off + hl2 + later > max_len ||
                        mb_out_room(e, 0) < nextra + 1)) {
            e->xstat[3]++;
            mb_drop(e, p);
            continue;
        }

        /* Take every buffer first: all the fragments leave, or none. The
         * new packets are chained through next_free while they are ours. */
        struct mb_packet *headq = 0, *tailq = 0;
        uint32_t got = 0;
        for (; got < nextra; got++) {
            struct mb_packet *q = mb_alloc(e->eng);
            if (!q)
                break;
            q->next_free = 0;
            if (tailq)
                tailq->next_free = q;
            else
                headq = q;
            tailq = q;
        }
        if (MB_UNLIKELY(got < nextra)) {
            while (headq) {
                struct mb_packet *nx = headq->next_free;
                mb_free(e->eng, headq);
                headq = nx;
            }
            e->xstat[3]++;
            mb_drop(e, p);
            continue;
        }

        const uint32_t flags_keep = frag & ~(IP_DF | IP_MF | IP_OFFMASK); /* reserved bit */
        uint32_t pos = first;   /* payload bytes already placed */
        for (struct mb_packet *q = headq; q; q = q->next_free) {
            uint32_t d = payload - pos < later ? payload - pos : later;
            int last = pos + d == payload;
            uint8_t *qip = q->data + off;
            memcpy(q->data, p->data, off);
            memcpy(qip, hdr, hl2);
            memcpy(qip + hl2, ip + hl + pos, d);
            mb_wr16(qip + 2, (uint16_t)(hl2 + d));
            mb_wr16(qip + 6, (uint16_t)(flags_keep | ((last && !(frag & IP_MF)) ? 0 : IP_MF) |
                                        (off0 + (pos >> 3))));
            mb_wr16(qip + 10, 0);
            mb_wr16(qip + 10, icmp_cksum(qip, hl2));
            q->len = off + hl2 + d;
            q->nh = qip;
            q->paint = p->paint;
            q->flags = p->flags;
            q->ts_ns = p->ts_ns;
            q->seq = p->seq;    /* devices keep the fragments together, in order */
            q->dst_ip = p->dst_ip;
            pos += d;
        }

        /* The original becomes the first fragment. */
        mb_wr16(ip + 2, (uint16_t)(hl + first));
        mb_wr16(ip + 6, (uint16_t)(flags_keep | IP_MF | off0));
        mb_wr16(ip + 10, 0);
        mb_wr16(ip + 10, icmp_cksum(ip, hl));
        p->len = off + hl + first;
        mb_emit(e, 0, p);
        while (headq) {
            struct mb_packet *nx = headq->next_free;
            headq->next_free = 0;
            mb_emit(e, 0, headq);
            headq = nx;
        }
        e->created += nextra;
        e->xstat[0] += nextra + 1;
    }
}

MB_KERNEL(ip_fragmenter) = {
    .name = "ip_fragmenter",
    .state_size = ip_fragmenter_state_size,
    .init = ip_fragmenter_init,
    .push = ip_fragmenter_push,
};
