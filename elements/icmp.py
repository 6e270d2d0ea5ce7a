"""ICMP elements and IP fragmentation: answering pings, making ICMP errors,
splitting datagrams larger than an MTU.

Kernels in icmp.c. Every element here works on the IPv4 header the network
header annotation points at, so CheckIPHeader or MarkIPHeader must come
first. A packet without the annotation, or without a complete IPv4 header
where it points (version 4, header length at least 20 and inside the
packet), is dropped and counted.
"""

import ipaddress
import struct

from middlebox.element import IPv4, Bool, Element, Int, Kind, List, Param

# ICMP error types and the codes that have names, as in Click's ICMPError.
ICMP_TYPES = {
    "unreachable": 3,
    "sourcequench": 4,
    "redirect": 5,
    "timeexceeded": 11,
    "parameterproblem": 12,
}
ICMP_CODES = {
    3: {"net": 0, "host": 1, "protocol": 2, "port": 3, "needfrag": 4, "srcroutefail": 5,
        "net-unknown": 6, "host-unknown": 7, "isolated": 8, "net-prohibited": 9,
        "host-prohibited": 10, "tos-net": 11, "tos-host": 12, "filter-prohibited": 13,
        "host-precedence": 14, "precedence-cutoff": 15},
    5: {"net": 0, "host": 1, "tos-net": 2, "tos-host": 3},
    11: {"transit": 0, "reassembly": 1},
    12: {"erroratptr": 0, "missingopt": 1, "length": 2},
}
MAX_BAD_ADDRS = 64

# IPFragmenter: queue room reserved downstream, per arriving packet, is the
# fragment count of a datagram of this many bytes (20-byte headers), capped.
FRAG_DESIGN_LEN = 10240
FRAG_CAP = 64


def _one_or_two(connected):
    return max(1, min(connected, 2))


class ICMPPingResponder(Element):
    """Answer ICMP echo requests with echo replies, as Click's ICMPPingResponder.

    The reply is the request turned around in place: IP source and
    destination swapped, fragment field cleared (no DF, no MF), TTL 255,
    ICMP type 0 and code 0; identifier, sequence number, data, IP options and
    any bytes in front of the IP header (e.g. the Ethernet header, which an
    EtherMirror can turn around) are kept. Both checksums are updated
    incrementally, so a request with a wrong ICMP checksum gets a reply with
    a wrong one. The reply's destination annotation is set to its new
    destination, its paint annotation cleared, its timestamp set to now.

    An echo request is an IPv4 packet of protocol 1, not a fragment (no MF,
    offset 0), whose total length covers the IP header and 8 ICMP bytes and
    lies inside the packet, and whose ICMP type is 8. Every other IP packet
    (including fragments and truncated ICMP) goes to output 1 if it is
    connected, else is dropped and counted. Extra counters: `replies`,
    `not_echo`, `no_ip` (no IPv4 header at the annotation: dropped).

        ping: {class: ICMPPingResponder}
    """

    kernel = "icmp_ping_responder"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or 2"
    xstats = ("replies", "not_echo", "no_ip")

    def noutputs(self, connected=0):
        return _one_or_two(connected)


class _NumberOrName(Kind):
    """An ICMP type or code: a number 0-255 or a name (checked in configure)."""

    name = "number 0-255 or name"

    def parse(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"expected a number or a name, got {value!r}")
        return value


class ICMPError(Element):
    """Make an ICMP error about each packet, as Click's ICMPError(SRC, TYPE, CODE).

    The error is a new IPv4 packet: header (TOS 0, a per-element counter as
    identifier starting at 1, no fragment bits, TTL 255, protocol 1, source
    `src`, destination the offending packet's source, no options), the
    8-byte ICMP header with `type` and `code`, then the offending packet's
    IP header and the first 8 bytes of its payload (RFC 792; fewer if its
    total length or the packet is shorter). Both checksums are valid. The
    packet data starts at the IP header (no link header; an EtherEncap or
    ARPQuerier adds one), the network header annotation points there, the
    destination annotation is the offending source, paint is 0 and the
    timestamp now. The offending packet's buffer is reused, so every packet
    in gives at most one out.

    `type` is a number or a name: unreachable (3), sourcequench (4),
    redirect (5), timeexceeded (11), parameterproblem (12). `code` (default
    0) is a number or a name: net, host, protocol, port, needfrag, ... for
    unreachable; net, host for redirect; transit, reassembly for
    timeexceeded; erroratptr, missingopt, length for parameterproblem.
    Unreachable/needfrag errors carry the next-hop MTU `mtu` (RFC 1191;
    Click's PMTU), required for that code only. A parameterproblem/erroratptr
    error carries `pointer` (Click reads it from an annotation). A redirect
    carries the destination annotation as the gateway address, as in Click,
    and is never sent about a source-routed packet.

    No error is made (the packet is dropped and counted as `suppressed`)
    about (RFC 1812 4.3.2.7): an ICMP error message (or an ICMP packet too
    short to tell), a fragment other than the first, a packet sent to the
    limited broadcast, a multicast address or one of `bad_addrs` (Click's
    BADADDRS, e.g. directed broadcasts), a packet whose source is not one
    host (0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4, a bad address), a
    link broadcast or multicast (when the packet still carries its Ethernet
    header in front of the IP header, that is the annotation lies at least
    14 bytes in, and the Ethernet destination has the group bit). Unlike
    Click, the quote is always header + 8 bytes (Click fills up to 576
    bytes) and source routes are not reversed into the error; there is no
    rate limit (follow with a rate limiter if needed). Extra counters:
    `errors`, `suppressed`, `no_ip`.

        ttlerr: {class: ICMPError, src: 10.0.0.1, type: timeexceeded, code: transit}
    """

    kernel = "icmp_error"
    inputs = 1
    outputs = 1
    xstats = ("errors", "suppressed", "no_ip")
    src = Param(IPv4(), doc="source address of the errors")
    type = Param(_NumberOrName(), doc="ICMP error type: number or name (timeexceeded, ...)")
    code = Param(_NumberOrName(), default=0,
                 doc="ICMP code: number or name (port, needfrag, transit, ...)")
    mtu = Param(Int(min=68, max=65535), default=None,
                doc="next-hop MTU, for unreachable/needfrag errors only")
    pointer = Param(Int(min=0, max=255), default=0,
                    doc="octet pointer of parameterproblem/erroratptr errors")
    bad_addrs = Param(List(IPv4()), default=[],
                      doc="more addresses never answered (e.g. directed broadcasts)")

    def configure(self):
        self.type = self._number("type", self.type, ICMP_TYPES)
        if self.type not in ICMP_TYPES.values():
            names = ", ".join(f"{k} ({v})" for k, v in ICMP_TYPES.items())
            self.error(f"parameter 'type': {self.type} is not an ICMP error type ({names})",
                       "type")
        self.code = self._number("code", self.code, ICMP_CODES.get(self.type, {}))
        needfrag = self.type == 3 and self.code == 4
        if needfrag and self.mtu is None:
            self.error("parameter 'mtu' is required for unreachable needfrag errors")
        if not needfrag and self.mtu is not None:
            self.error("parameter 'mtu' only applies to unreachable needfrag errors", "mtu")
        if self.pointer and not (self.type == 12 and self.code == 0):
            self.error("parameter 'pointer' only applies to parameterproblem erroratptr errors",
                       "pointer")
        if self.src == ipaddress.IPv4Address(0):
            self.error("parameter 'src': 0.0.0.0 is not a usable source address", "src")
        if len(self.bad_addrs) > MAX_BAD_ADDRS:
            self.error(f"parameter 'bad_addrs': at most {MAX_BAD_ADDRS} addresses", "bad_addrs")

    def _number(self, param, value, names):
        """A type or code as a number, from a number or one of `names`."""
        if isinstance(value, int):
            n = value
        elif isinstance(value, str) and value.strip().isdigit():
            n = int(value.strip())
        elif isinstance(value, str) and value.strip().lower() in names:
            return names[value.strip().lower()]
        elif isinstance(value, str):
            known = ", ".join(names) or "none for this type; use a number"
            self.error(f"parameter '{param}': unknown name {value!r} (names: {known})", param)
        if not 0 <= n <= 255:
            self.error(f"parameter '{param}': {n} is not between 0 and 255", param)
        return n

    def lower(self, ctx):
        bad = [int(a) for a in self.bad_addrs]
        return (struct.pack("<IBBHBBH", int(self.src), self.type, self.code, self.mtu or 0,
                            self.pointer, len(bad), 0)
                + b"".join(struct.pack("<I", a) for a in bad))


class IPFragmenter(Element):
    """Split IPv4 packets longer than MTU into fragments, as Click's IPFragmenter.

    A packet whose IP total length is at most `mtu` leaves output 0
    unchanged. A longer one with DF set goes, unchanged, to output 1 when
    `honor_df` is true (the default; output 1 normally feeds an ICMPError
    unreachable/needfrag), or is dropped and counted when output 1 is not
    connected. Otherwise it leaves output 0 as fragments, first to last,
    each at most `mtu` bytes of IP datagram: payloads are multiples of 8
    bytes (but the last), offsets and MF bits are set (a packet that is
    itself a fragment keeps its offset and, in the last piece, its MF bit),
    DF is cleared, header checksums recomputed. The first fragment keeps the
    whole original header; later ones carry only the options whose copied
    bit is set (RFC 791), padded with EOL to a 4-byte multiple. Bytes in
    front of the IP header (e.g. an Ethernet header) are copied in front of
    every fragment, annotations to every fragment.

    Packets with no usable IP header at the annotation, or a longer one that
    is truncated (total length beyond the packet) or malformed, are dropped
    (counter `bad`). Room for up to 64 fragments per arriving packet (enough
    for 10240-byte datagrams at common MTUs) is reserved downstream; a packet
    whose fragments do not all fit in what is left, or find no buffers, is
    dropped whole (counter `no_room`). Extra counters: `fragments` (made,
    first ones included), `df`, `bad`, `no_room`.

        frag: {class: IPFragmenter, mtu: 1500}
    """

    kernel = "ip_fragmenter"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or 2"
    xstats = ("fragments", "df", "bad", "no_room")
    mtu = Param(Int(min=68, max=65535), doc="largest IP datagram sent, in bytes")
    honor_df = Param(Bool(), default=True, doc="send DF packets to output 1 instead of fragmenting")

    def noutputs(self, connected=0):
        return _one_or_two(connected)

    def fragments_reserved(self):
        """Fragments per packet the graph makes room for."""
        per = (self.mtu - 20) & ~7
        return max(1, min(FRAG_CAP, -(-(FRAG_DESIGN_LEN - 20) // per)))

    def emit_bound(self, arriving):
        return arriving * self.fragments_reserved()

    def created_bound(self, arriving):
        return arriving * (self.fragments_reserved() - 1)

    def lower(self, ctx):
        return struct.pack("<II", self.mtu, 1 if self.honor_df else 0)
