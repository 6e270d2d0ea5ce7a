"""Network address and port translation (source NAT / NAPT) for IPv4.

Kernel in nat.c (which documents the table layout). The NAT works on the
IPv4 header the network header annotation points at (CheckIPHeader sets
it); bytes in front of the header, such as an Ethernet header, are kept.
"""

import ipaddress
import re
import struct

from middlebox.element import Bool, Element, Int, IPv4, Kind, List, Param
from middlebox.element import read_handler, write_handler

MAGIC = 0x3154414E          # "NAT1"
MAX_ADDRESSES = 32
MAX_CAPACITY = 1 << 22
MAX_TIMEOUT = 7 * 86400     # seconds
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}
QUERY_DONE = 0xFFFFFFFF


class PortRange(Kind):
    """A port range "LO-HI" (or one port), 1-65535."""

    name = "port range LO-HI"
    _re = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")

    def parse(self, value):
        if isinstance(value, bool):
            raise ValueError(f"expected a port range like 1024-65535, got {value!r}")
        if isinstance(value, int):
            value = str(value)
        m = self._re.match(value) if isinstance(value, str) else None
        if not m:
            raise ValueError(f"{value!r} is not a port range like 1024-65535")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        for port in (lo, hi):
            if not 1 <= port <= 65535:
                raise ValueError(f"{value!r}: {port} is not a port (1-65535)")
        if lo > hi:
            raise ValueError(f"{value!r}: the range is empty ({lo} > {hi})")
        return lo, hi


class Seconds(Kind):
    """A duration: seconds as a number, or a number with a unit (ms, s, m, h)."""

    name = "duration (seconds, or with a unit: 500ms, 30s, 5m, 2h)"
    _re = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
    _unit = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}

    def parse(self, value):
        if isinstance(value, bool):
            raise ValueError(f"expected a duration, got {value!r}")
        if isinstance(value, (int, float)):
            secs = float(value)
        else:
            m = self._re.match(value) if isinstance(value, str) else None
            if not m:
                raise ValueError(f"{value!r} is not a duration (e.g. 300, 30s, 500ms, 2h)")
            secs = float(m.group(1)) * self._unit[m.group(2)]
        if not secs > 0:
            raise ValueError(f"{value!r}: a timeout must be longer than 0")
        if secs > MAX_TIMEOUT:
            raise ValueError(f"{value!r}: at most {MAX_TIMEOUT} seconds (7 days)")
        return secs


def _usable(addr):
    """Why a public address cannot be used, or None."""
    if addr == ipaddress.IPv4Address(0):
        return "0.0.0.0 is not a usable public address"
    if addr.is_multicast:
        return f"{addr} is a multicast address"
    if addr == ipaddress.IPv4Address("255.255.255.255"):
        return f"{addr} is the broadcast address"
    if addr.is_loopback:
        return f"{addr} is a loopback address"
    return None


class NAT(Element):
    """Source NAT with port translation (NAPT) between an inside and an outside.

    Input 0 takes packets from the inside. A TCP or UDP packet's source
    address and port become a public address and port; an ICMP echo
    request's source address and identifier likewise (the identifier plays
    the port's role). Translated packets leave on output 0. Input 1 takes
    packets from the outside: a packet to a public address and port of a
    live mapping, from that mapping's remote address and port, has its
    destination translated back to the inside endpoint and leaves on
    output 1 (the destination address annotation set to the new
    destination). Inbound packets that match no mapping (other addresses,
    other protocols, unknown ports, a remote that is not the mapping's:
    address-and-port-dependent filtering, RFC 4787) go to output 2 when it
    is connected (e.g. to an ICMPPingResponder for the public address),
    else are dropped; both are counted as `no_mapping`.

    ICMP errors (unreachable, source quench, time exceeded, parameter
    problem) from the outside that quote a translated packet are
    translated: the quoted header's source address and port (identifier),
    its IP checksum and transport checksum (when quoted), the ICMP
    checksum and the outer destination. ICMP errors from the inside about a
    packet that came in through a mapping are translated the same way the
    other way round (quoted destination; outer source becomes the public
    address); without a mapping they are dropped (`no_mapping`). Errors do
    not refresh a mapping.

    A flow (protocol, inside address and port, remote address and port)
    keeps its public address and port for its lifetime, and no two live
    flows share a public (address, port, protocol). The public address is
    chosen by a hash of the inside address (one inside host, one public
    address: paired pooling, RFC 4787). The port is the inside port itself
    when `preserve_ports` is true, it lies in `ports` and is free; else the
    first free port at or after a start point hashed from the flow,
    upwards, wrapping around the range. Checksums are updated
    incrementally (RFC 1624); a UDP checksum of 0 stays 0.

    A mapping expires after a quiet time (refreshed by packets in either
    direction): `udp_timeout` (default 300 s, RFC 4787), `icmp_timeout`
    (60 s, RFC 5508), `tcp_timeout` for established connections (7440 s,
    RFC 5382) and `tcp_transitory_timeout` (240 s) before the outside
    answered a SYN, or after an RST or FINs both ways. Time comes from
    packet timestamps (pcap times when replaying, so replays are
    deterministic; the clock when live). The flow table has `capacity`
    entries: when it is full, or the public address's port range for the
    protocol is used up, the new flow's packet is dropped and counted
    (`table_full`, `ports_exhausted`). Expired mappings are reclaimed when
    met, by a sweep of a few entries per batch, and on demand before a new
    flow is refused.

    Dropped and counted: fragments (`fragments`; without reassembly only
    the first fragment carries ports, so they are not translated), and
    (`untranslatable`) packets with no IPv4 header at the annotation,
    truncated transport headers, outbound protocols other than TCP, UDP and
    ICMP, outbound ICMP other than echo requests and errors. Every packet
    is counted once in `translated`, `table_full`, `ports_exhausted`,
    `no_mapping`, `fragments` or `untranslatable`; `new_flows` and
    `expired` count mappings made and reclaimed.

    Not supported: static (port-forwarding) mappings, hairpinning (an
    inside host reaching another through the public address), application
    level gateways (FTP, SIP), fragment reassembly.

    Handlers: read `mappings` (a table of live mappings), `flows` (how many
    are live); write `flush` (remove every mapping).

        nat: {class: NAT, address: 203.0.113.7, ports: "1024-65535"}
    """

    kernel = "nat"
    inputs = 2
    outputs = 2
    inputs_doc = "2 (0: from the inside, 1: from the outside)"
    outputs_doc = "2 or 3 (0: to the outside, 1: to the inside, 2: unmatched inbound, if connected)"
    xstats = ("translated", "new_flows", "expired", "table_full", "ports_exhausted",
              "no_mapping", "fragments", "untranslatable")

    address = Param(IPv4(), default=None, doc="the public address (or use addresses)")
    addresses = Param(List(IPv4()), default=None,
                      doc=f"several public addresses (at most {MAX_ADDRESSES})")
    ports = Param(PortRange(), default="1024-65535", doc="public ports to allocate, LO-HI")
    capacity = Param(Int(min=1, max=MAX_CAPACITY), default=65536,
                     doc="flow table size (live mappings)")
    udp_timeout = Param(Seconds(), default=300, doc="UDP mapping idle timeout")
    tcp_timeout = Param(Seconds(), default=7440, doc="established TCP idle timeout")
    tcp_transitory_timeout = Param(Seconds(), default=240,
                                   doc="TCP timeout before establishment and after FIN/RST")
    icmp_timeout = Param(Seconds(), default=60, doc="ICMP echo mapping idle timeout")
    preserve_ports = Param(Bool(), default=True,
                           doc="keep the inside port when it is in range and free")

    def configure(self):
        if isinstance(self.ports, str):
            self.ports = PortRange().parse(self.ports)
        if self.address is None and self.addresses is None:
            self.error("missing parameter 'address' (or 'addresses')")
        if self.address is not None and self.addresses is not None:
            self.error("give 'address' or 'addresses', not both", "addresses")
        param = "address" if self.address is not None else "addresses"
        addrs = [self.address] if self.address is not None else list(self.addresses)
        if not addrs:
            self.error("parameter 'addresses': needs at least one address", "addresses")
        if len(addrs) > MAX_ADDRESSES:
            self.error(f"parameter 'addresses': at most {MAX_ADDRESSES} addresses "
                       f"(got {len(addrs)})", "addresses")
        seen = set()
        for a in addrs:
            why = _usable(a)
            if why:
                self.error(f"parameter '{param}': {why}", param)
            if a in seen:
                self.error(f"parameter 'addresses': {a} is listed twice", "addresses")
            seen.add(a)
        self.public = addrs

    def noutputs(self, connected=0):
        return max(2, min(connected, 3))

    def lower(self, ctx):
        lo, hi = self.ports
        ns = [round(t * 1e9) for t in (self.udp_timeout, self.tcp_timeout,
                                       self.tcp_transitory_timeout, self.icmp_timeout)]
        return (struct.pack("<IIIHHI4Q", MAGIC, len(self.public), self.capacity, lo, hi,
                            1 if self.preserve_ports else 0, *ns)
                + b"".join(struct.pack("<I", int(a)) for a in self.public))

    # -- handlers ---------------------------------------------------------------

    @staticmethod
    def _records(ctx):
        """(now_ns, live, [mapping dicts]) from the kernel's query."""
        cursor, out, now, live = 0, [], 0, 0
        while True:
            data = ctx.query(cursor)
            if len(data) < 16:
                raise ValueError("the NAT kernel gave no mapping table")
            nxt, live, now = struct.unpack_from("<IIQ", data)
            for off in range(16, len(data) - 31, 32):
                (proto, tcp, est, _aidx, ia, ra, pa, ip, rp, pp, _z,
                 exp) = struct.unpack_from("<BBBBIIIHHHHQ", data, off)
                out.append(dict(proto=proto, tcp=tcp, established=bool(est), inside=(ia, ip),
                                remote=(ra, rp), public=(pa, pp), expires=exp))
            if nxt == QUERY_DONE:
                return now, live, out
            if nxt <= cursor and len(data) == 16:
                raise ValueError("the mapping table does not fit the query buffer")
            cursor = nxt

    @read_handler("mappings")
    def read_mappings(self, ctx):
        now, _live, recs = self._records(ctx)
        rows = [("proto", "inside", "public", "remote", "state", "expires")]

        def ep(addr, port):
            return f"{ipaddress.IPv4Address(addr)}:{port}"
        for r in recs:
            name = PROTOCOLS.get(r["proto"], str(r["proto"]))
            if r["proto"] == 6:
                state = "established" if r["established"] else "transitory"
            else:
                state = "-"
            rows.append((name, ep(*r["inside"]), ep(*r["public"]), ep(*r["remote"]), state,
                         f"{(r['expires'] - now) / 1e9:.3f}s"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                         for row in rows)

    @read_handler("flows")
    def read_flows(self, ctx):
        return str(len(self._records(ctx)[2]))

    @write_handler("flush")
    def write_flush(self, value):
        if str(value).strip() not in ("", "1", "true", "yes"):
            raise ValueError(f"flush takes no value (got {value!r})")
        return b"\x01"
