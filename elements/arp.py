"""ARP and Ethernet host filtering: ARPResponder, ARPQuerier, HostEtherFilter,
DropBroadcasts (Click's elements of the same names). Kernels in arp.c.

Addresses are lowered in host byte order as little-endian u32 (IPv4) and as
6 raw bytes (Ethernet).
"""

import struct

from middlebox.element import MAC, Bool, Element, Int, IPv4, List, Param, Str

from .routing import parse_prefix, prefix_mask

ERROR_OUTPUT_DOC = "1 or 2 (output 1, if connected, gets what output 0 does not)"
MAX_ENTRIES = 4096


def _error_outputs(connected):
    return max(1, min(connected, 2))


def _mac_text(text):
    try:
        return MAC().parse(text)
    except ValueError:
        return None


class ARPResponder(Element):
    """Answer ARP who-has requests for configured addresses with is-at replies.

    Each entry is Click's "IP/MASK [IP/MASK...] ETH": requests for an address
    inside one of the prefixes (ADDR/LEN, ADDR/255.255.255.0 or a bare
    address) are answered with ETH, so an entry can be a host's own address
    or proxy ARP for a whole network. If several prefixes match, the longest
    wins (then the first listed). The request (an Ethernet frame: Ethernet,
    IPv4 over Ethernet ARP, op 1) is turned into the 42-byte reply in place:
    Ethernet to the requester from ETH, ARP op 2, sender ETH and the asked
    address, target the requester's addresses. Every other packet (not an ARP
    request, truncated, or for an address not configured) leaves on output
    1 if it is connected, as in Click, else it is dropped; either way it is
    counted (`unanswered`).

        arpr: {class: ARPResponder, entries: ["10.0.0.1 02:00:00:00:00:01", "10.0.0.0/24 02:00:00:00:00:02"]}
    """

    kernel = "arp_responder"
    inputs = 1
    outputs = 1
    outputs_doc = ERROR_OUTPUT_DOC
    xstats = ("replies", "unanswered")
    entries = Param(List(Str(), min_len=1), doc='"IP/MASK [IP/MASK...] ETH" lines')

    def configure(self):
        table = []
        for i, text in enumerate(self.entries, 1):
            words = text.split()
            if len(words) < 2:
                self.error(f"entry {i}: {text!r}: expected 'IP/MASK [IP/MASK...] ETH'", "entries")
            eth = _mac_text(words[-1])
            if eth is None:
                self.error(f"entry {i}: {words[-1]!r}: bad Ethernet address", "entries")
            for word in words[:-1]:
                try:
                    addr, length = parse_prefix(word)
                except ValueError as e:
                    self.error(f"entry {i}: {word!r}: {e}", "entries")
                table.append((length, len(table), addr, eth))
        if len(table) > MAX_ENTRIES:
            self.error(f"{len(table)} prefixes; at most {MAX_ENTRIES}", "entries")
        # Longest prefix first, then in the order given: the kernel takes the
        # first that matches.
        self.table = [(addr, length, eth) for length, _, addr, eth in
                      sorted(table, key=lambda t: (-t[0], t[1]))]

    def noutputs(self, connected=0):
        return _error_outputs(connected)

    def lower(self, ctx):
        out = [struct.pack("<I", len(self.table))]
        for addr, length, eth in self.table:
            out.append(struct.pack("<II6sxx", addr, prefix_mask(length), eth))
        return b"".join(out)


class ARPQuerier(Element):
    """Encapsulate IP packets in Ethernet, finding next hops' addresses by ARP.

    Click's ARPQuerier(IP, ETH). Input 0 takes IP packets (data starting
    with the IP header). The next hop is the `dst_ip` annotation (set by
    GetIPAddress or a route's gateway), or the IP destination when the
    annotation is 0.0.0.0; a packet with neither is dropped (`no_address`).
    If the next hop's Ethernet address is known, the packet leaves on output
    0 behind an Ethernet header (to that address, from ETH, type 0x0800).
    Otherwise the packet is held and an ARP who-has query (broadcast, from
    ETH and IP) leaves instead, at most one per second per address; when the
    reply arrives on input 1 (Ethernet frames), the entry is recorded and the
    held packets leave, in order, encapsulated. 255.255.255.255 and
    `broadcast` go to ff:ff:ff:ff:ff:ff and IP multicast to 01:00:5e:...
    without ARP. With two outputs, queries leave on output 1 (as in Click).

    Limits: at most `capacity` packets are held in all, and
    `entry_packet_capacity` per address (0: no limit but `capacity`). A
    packet over the total is dropped; over the per-address limit, the
    address's oldest held packet is dropped, as in Click; both count in
    `held_drops`. The table has `entry_capacity` entries in groups of 4
    chosen by a hash of the address; a new address whose group is full
    replaces the group's least recently refreshed entry (`evictions`),
    dropping what it held. Entries, resolved or not, expire `timeout`
    seconds (0: never) after they were learned or last queried; held packets
    of an expired entry are dropped. The clock is the engine's time or the
    packet's timestamp, whichever is later (pcap time when replaying).

    Accepted replies count in `replies` and, being consumed, in `dropped`
    (as in Click, a reply is learned even if nothing asked for it);
    input-1 packets that are not ARP replies from a unicast address count
    in `bad_arp`. `no_room`: no buffer room for the Ethernet header;
    `no_buffer`: no free packet for a query (it is tried again with the
    next packet for that address).

        arpq: {class: ARPQuerier, ip: 10.0.0.1, eth: "02:00:00:00:00:01", capacity: 2048, timeout: 300}
    """

    kernel = "arp_querier"
    inputs = 2
    outputs = 1
    outputs_doc = "1 or 2 (queries to output 1 when it is connected)"
    xstats = ("queries", "replies", "bad_arp", "no_address", "held_drops", "evictions",
              "no_room", "no_buffer")
    ip = Param(IPv4(), doc="this host's IPv4 address (sender of queries)")
    eth = Param(MAC(), doc="this host's Ethernet address")
    capacity = Param(Int(min=1, max=16384), default=2048, doc="most packets held in all")
    entry_capacity = Param(Int(min=4, max=65536), default=1024,
                           doc="ARP table entries (rounded up to a power of 2)")
    entry_packet_capacity = Param(Int(min=0, max=16384), default=8,
                                  doc="most packets held per address (0: no limit)")
    timeout = Param(Int(min=0, max=86400 * 365), default=300,
                    doc="seconds an entry lives (0: forever)")
    broadcast = Param(IPv4(), default=None,
                      doc="a broadcast address sent to ff:ff:ff:ff:ff:ff (e.g. 10.0.0.255)")

    def noutputs(self, connected=0):
        return _error_outputs(connected)

    def held_capacity(self):
        return self.capacity

    def emit_bound(self, arriving):
        # Each arriving packet leaves or makes one query; a reply can release
        # every held packet.
        return arriving + self.capacity

    def created_bound(self, arriving):
        return arriving             # at most one query per arriving packet

    def table_size(self):
        n = 4
        while n < self.entry_capacity:
            n *= 2
        return n

    def lower(self, ctx):
        bcast = int(self.broadcast) if self.broadcast is not None else 0
        return struct.pack("<I6sxxIIIQII", int(self.ip), self.eth, self.capacity,
                           self.table_size(), self.entry_packet_capacity,
                           self.timeout * 1_000_000_000, bcast, 0)


class HostEtherFilter(Element):
    """Pass Ethernet frames for this host: to ETH, broadcast or multicast.

    Click's HostEtherFilter(ETH, DROP_OWN, DROP_OTHER): with `drop_other`
    (default true), frames to another unicast address are filtered; with
    `drop_own` (default false), frames sent from ETH are filtered. Filtered
    frames leave on output 1 if it is connected, else they are dropped. The
    Ethernet header starts `offset` bytes into the packet; a packet too
    short for it is dropped and counted (`short`).

        hef: {class: HostEtherFilter, eth: "02:00:00:00:00:01", drop_own: false, drop_other: true}
    """

    kernel = "host_ether_filter"
    inputs = 1
    outputs = 1
    outputs_doc = "1 or 2 (filtered frames to output 1 when it is connected)"
    xstats = ("short",)
    eth = Param(MAC(), doc="this host's Ethernet address")
    drop_own = Param(Bool(), default=False, doc="filter frames whose source is ETH")
    drop_other = Param(Bool(), default=True, doc="filter frames to other unicast addresses")
    offset = Param(Int(min=0, max=65535), default=0, doc="where the Ethernet header starts")

    def noutputs(self, connected=0):
        return _error_outputs(connected)

    def lower(self, ctx):
        return struct.pack("<6sBBI", self.eth, self.drop_own, self.drop_other, self.offset)


class DropBroadcasts(Element):
    """Drop packets sent to a link-level broadcast or multicast address.

    Click decides by the packet-type annotation its FromDevice sets; this
    framework has no such annotation, so DropBroadcasts reads the Ethernet
    destination address itself: the header starts `offset` bytes into the
    packet (default 0: put it before Strip). A frame whose destination has
    the group bit set (ff:ff:ff:ff:ff:ff, 01:00:5e:..., 33:33:...) is dropped
    and counted (`drops`); a packet too short to hold the address is dropped
    and counted (`short`).

        nobcast: {class: DropBroadcasts}
    """

    kernel = "drop_broadcasts"
    inputs = 1
    outputs = 1
    xstats = ("drops", "short")
    offset = Param(Int(min=0, max=65535), default=0, doc="where the Ethernet header starts")

    def lower(self, ctx):
        return struct.pack("<I", self.offset)
