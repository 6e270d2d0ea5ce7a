"""IPv4 header elements: checking, marking, checksums, TTL, encapsulation.

Kernels in ip.c. Most of these elements work on the IPv4 header that the
network header annotation (`nh`) points to; CheckIPHeader and MarkIPHeader
set it. The annotation is a pointer into the packet buffer, so it survives
Strip and Unstrip. An element that needs the annotation and finds none
(unset, or fewer than 20 bytes of packet after it) drops the packet and
counts it, in `dropped` and in one of its extra counters.

Addresses are lowered in network byte order; the destination address
annotation (`dst_ip`) is kept in host byte order, as the engine defines it.
"""

import struct

from middlebox.element import IPv4, Bool, Element, Int, Param

ERROR_OUTPUT_DOC = "1 or 2 (output 1: bad packets, if connected)"


def _error_outputs(connected):
    """1 output, or 2 when output 1 (the error output) is connected."""
    return max(1, min(connected, 2))


def _ip_header(proto, src, dst, ttl, tos, df):
    """A 20-byte IPv4 header with total length, ID and checksum left zero."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, tos, 0, 0, 0x4000 if df else 0,
                       ttl, proto, 0, src.packed, dst.packed)


class CheckIPHeader(Element):
    """Check the IPv4 header that starts OFFSET bytes into each packet.

    Valid packets (as in Click): at least 20 bytes from OFFSET on; version
    4; header length (IHL * 4) at least 20 and within the packet; total
    length at least the header length and within the packet; header
    checksum correct (unless `checksum: false`); source address not
    255.255.255.255 and not multicast (224.0.0.0/4). IP options are
    allowed and fragments pass. A valid packet gets the `nh` annotation
    (pointing at the header) and is trimmed to the IP total length (bytes
    after it, such as Ethernet padding, are removed), then leaves on output
    0. As in Click, a valid packet whose `dst_ip` annotation is not yet
    set gets the header's destination address there.

    Invalid packets leave on output 1 if it is connected, else they are
    dropped; either way they are counted in `bad` and in one of `short`,
    `bad_version`, `bad_hlen`, `bad_len`, `bad_csum`, `bad_src` (the first
    check that failed, in that order).

    Unlike Click, the source address check is fixed (no BADSRC/GOODDST
    lists).

        check: {class: CheckIPHeader, offset: 14}
    """

    kernel = "check_ip_header"
    inputs = 1
    outputs = 1
    outputs_doc = ERROR_OUTPUT_DOC
    xstats = ("bad", "short", "bad_version", "bad_hlen", "bad_len", "bad_csum", "bad_src")
    offset = Param(Int(min=0, max=65535), default=0, doc="bytes before the IPv4 header")
    checksum = Param(Bool(), default=True, doc="check the header checksum")

    def noutputs(self, connected=0):
        return _error_outputs(connected)

    def lower(self, ctx):
        return struct.pack("<II", self.offset, 1 if self.checksum else 0)


class MarkIPHeader(Element):
    """Set the `nh` annotation to the IPv4 header OFFSET bytes into each packet.

    Nothing is checked but the length (as in Click, no header field is
    checked and the packet is not trimmed): a packet shorter than
    offset + 20 bytes is dropped and counted (extra counter `short`).

        mark: {class: MarkIPHeader, offset: 14}
    """

    kernel = "mark_ip_header"
    inputs = 1
    outputs = 1
    xstats = ("short",)
    offset = Param(Int(min=0, max=65535), default=0, doc="bytes before the IPv4 header")

    def lower(self, ctx):
        return struct.pack("<I", self.offset)


class SetIPChecksum(Element):
    """Recompute the header checksum of the IPv4 header at the `nh` annotation.

    The checksum covers the IHL * 4 header bytes, options included. Packets
    without the annotation, with a header length below 20 or a header that
    runs past the end of the packet are dropped and counted (extra counter
    `bad`).

        fixsum: {class: SetIPChecksum}
    """

    kernel = "set_ip_checksum"
    inputs = 1
    outputs = 1
    xstats = ("bad",)


class SetTCPChecksum(Element):
    """Recompute the TCP checksum of the IPv4 packet at the `nh` annotation.

    The checksum covers the pseudo-header (source, destination, protocol,
    TCP length) and the TCP segment, which runs from the end of the IP
    header (IHL * 4, options skipped) to the IP total length; bytes after the
    total length are ignored and kept. Dropped and counted, in this order of
    checks: packets without the annotation, with a header length below 20
    or beyond the packet, or a total length beyond the packet or below the
    header length (`bad`); fragments (MF set or a non-zero offset: the
    checksum covers the whole datagram, which a fragment does not hold)
    (`fragment`); protocols other than TCP (6) (`not_tcp`); segments too
    short for a 20-byte TCP header (`bad`).

        tcpsum: {class: SetTCPChecksum}
    """

    kernel = "set_tcp_checksum"
    inputs = 1
    outputs = 1
    xstats = ("bad", "fragment", "not_tcp")


class SetUDPChecksum(Element):
    """Recompute the UDP checksum of the IPv4 packet at the `nh` annotation.

    As SetTCPChecksum, for UDP (protocol 17; extra counters `bad`,
    `fragment`, `not_udp`; at least an 8-byte UDP header). The checksum
    covers the IP payload (total length less header length, which is also
    the length used in the pseudo-header; the UDP length field is not
    read). A checksum that computes to 0 is written as 0xFFFF (RFC 768).

        udpsum: {class: SetUDPChecksum}
    """

    kernel = "set_udp_checksum"
    inputs = 1
    outputs = 1
    xstats = ("bad", "fragment", "not_udp")


class DecIPTTL(Element):
    """Decrement the TTL of the IPv4 header at the `nh` annotation.

    As in Click: a packet whose TTL is 0 or 1 has expired; it leaves
    unchanged on output 1 if that is connected, else it is dropped; either
    way it is counted in `expired`. Other packets get TTL - 1 and their
    header checksum updated incrementally (RFC 1624), and leave on output 0.
    Packets without the annotation are dropped and counted (`no_ip`).
    Click's MULTICAST option is not supported.

        dec: {class: DecIPTTL}
    """

    kernel = "dec_ip_ttl"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or 2 (output 1: expired packets, if connected)"
    xstats = ("expired", "no_ip")

    def noutputs(self, connected=0):
        return _error_outputs(connected)


class IPEncap(Element):
    """Prepend a 20-byte IPv4 header: protocol PROTO, source SRC, destination DST.

    As in Click: TTL `ttl` (default 250), TOS byte `tos` (default 0), the
    Don't Fragment bit if `df`, no options. The total length is the new
    packet's length, the ID counts packets (0, 1, 2, ... modulo 65536, over
    the whole run) and the header checksum is computed. Sets the `nh`
    annotation to the new header and the `dst_ip` annotation to DST.
    Packets that would exceed 65535 bytes (`too_long`) or for which the
    buffer has no room (`no_room`) are dropped and counted.

        encap: {class: IPEncap, proto: 4, src: 1.0.0.1, dst: 2.0.0.2, ttl: 250, tos: 0}
    """

    kernel = "ip_encap"
    inputs = 1
    outputs = 1
    xstats = ("too_long", "no_room")
    proto = Param(Int(min=0, max=255), doc="IP protocol number, e.g. 4 (IP-in-IP)")
    src = Param(IPv4(), doc="source address")
    dst = Param(IPv4(), doc="destination address")
    ttl = Param(Int(min=0, max=255), default=250, doc="time to live")
    tos = Param(Int(min=0, max=255), default=0, doc="type of service byte (DSCP and ECN)")
    df = Param(Bool(), default=False, doc="set the Don't Fragment bit")

    def lower(self, ctx):
        return _ip_header(self.proto, self.src, self.dst, self.ttl, self.tos, self.df)


class UDPIPEncap(Element):
    """Prepend IPv4 and UDP headers: SRC:SPORT to DST:DPORT.

    As in Click: the IPv4 header has TTL 250, TOS 0, no options, the total
    length, an ID counting packets (0, 1, 2, ... modulo 65536) and a valid
    checksum; the UDP header has the UDP length and, if `checksum` (the
    default), the UDP checksum (0 computes as 0xFFFF), else 0. Sets the `nh`
    annotation to the new IPv4 header and `dst_ip` to DST. Packets that
    would exceed 65535 bytes (`too_long`) or for which the buffer has no
    room (`no_room`) are dropped and counted.

        udpencap: {class: UDPIPEncap, src: 10.0.0.1, sport: 1234, dst: 10.0.0.2, dport: 5678, checksum: true}
    """

    kernel = "udp_ip_encap"
    inputs = 1
    outputs = 1
    xstats = ("too_long", "no_room")
    src = Param(IPv4(), doc="source address")
    sport = Param(Int(min=0, max=65535), doc="source port")
    dst = Param(IPv4(), doc="destination address")
    dport = Param(Int(min=0, max=65535), doc="destination port")
    checksum = Param(Bool(), default=True, doc="compute the UDP checksum")

    def lower(self, ctx):
        ip = _ip_header(17, self.src, self.dst, 250, 0, False)
        udp = struct.pack("!HHHH", self.sport, self.dport, 0, 0)
        return ip + udp + struct.pack("<I", 1 if self.checksum else 0)


class IPMirror(Element):
    """Swap the source and destination of the IPv4 packet at the `nh` annotation.

    As in Click: the addresses are swapped; a first fragment (fragment
    offset 0) of a UDP (17) packet with the 8-byte UDP header in the packet
    also has its ports swapped, and one of a TCP (6) packet with the full
    20-byte TCP header its ports and its sequence and acknowledgment numbers.
    Checksums are left alone: swapping 16-bit words does not change them.
    Packets without the annotation are dropped and counted (`no_ip`).

        mirror: {class: IPMirror}
    """

    kernel = "ip_mirror"
    inputs = 1
    outputs = 1
    xstats = ("no_ip",)


class GetIPAddress(Element):
    """Set the `dst_ip` annotation from the 4 bytes at OFFSET.

    OFFSET counts from the `nh` annotation if it is set, else from the start
    of the packet data; so `offset: 16` reads the destination of the IPv4
    header that CheckIPHeader or MarkIPHeader found (Click's
    GetIPAddress(16) counts from the packet data, which is the same after
    Strip(14)). The bytes are read in network byte order. A packet in which
    these 4 bytes do not lie entirely is dropped and counted (`short`).

        getaddr: {class: GetIPAddress, offset: 16}
    """

    kernel = "get_ip_address"
    inputs = 1
    outputs = 1
    xstats = ("short",)
    offset = Param(Int(min=0, max=65535), doc="where the address is, from the IP header")

    def lower(self, ctx):
        return struct.pack("<I", self.offset)


class StoreIPAddress(Element):
    """Write an IPv4 address into each packet at OFFSET (from the packet data).

    As in Click: without `address`, the `dst_ip` annotation is written, and a
    packet whose annotation is 0.0.0.0 is left unchanged; with it, ADDRESS
    is written. No checksum is updated (use SetIPChecksum and friends).
    Packets shorter than offset + 4 leave on output 1 if it is connected,
    else they are dropped; either way they are counted (`short`).

        store: {class: StoreIPAddress, offset: 30}
    """

    kernel = "store_ip_address"
    inputs = 1
    outputs = 1
    outputs_doc = ERROR_OUTPUT_DOC
    xstats = ("short",)
    offset = Param(Int(min=0, max=65535), doc="where to write, from the packet data")
    address = Param(IPv4(), default=None, doc="address to write (default: the dst_ip annotation)")

    def noutputs(self, connected=0):
        return _error_outputs(connected)

    def lower(self, ctx):
        if self.address is None:
            return struct.pack("<II", self.offset, 0) + bytes(4)
        return struct.pack("<II", self.offset, 1) + self.address.packed
