"""LoadBalancer: a layer-4 load balancer (virtual IP to backends, NAT mode).

The kernel (loadbalancer.c) owns packets and the connection table; this
class owns configuration and the backend selection table, which it builds
here, in Python, when the graph is compiled and whenever the `backends`
handler is written. The kernel only reads that table.

Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
Balancer", NSDI 2016, section 3.4): the table has M entries, M prime. Each
backend has a preference list, the permutation of 0..M-1

    offset = h1(backend) mod M,  skip = h2(backend) mod (M - 1) + 1
    permutation[j] = (offset + j * skip) mod M

and backends take turns, in list order, each claiming the first entry of its
list not already claimed, until the table is full. With weights, a backend
takes `weight` turns per round (weight 0: no turn; it keeps its existing
connections but gets no new ones). h1 and h2 are the two halves of a
BLAKE2b digest of the backend's "IP:PORT" text, so a backend's permutation
depends only on its own address: removing a backend frees its entries, and
the others' entries stay where they were but for a few (the paper's
"minimal disruption": under 0.25% of the table for 3 to 10 backends and
M = 65537).

`round_robin` and `hash` use a table of sum(weights) entries, the smooth
weighted round-robin order (as nginx's): round_robin gives new flows the
entries in turn, hash picks entry hash(flow) mod sum(weights) (not
consistent: changing the backends moves most flows).

Lowered configuration (little-endian), read by lb_init():

    u32 vip (host order), u16 port, u8 protocols (1 tcp, 2 udp), u8 method
    (0 maglev, 1 round_robin, 2 hash), u32 capacity (connection entries,
    a power of 2), u32 table capacity (entries), u32 tcp, fin, udp timeouts
    (in units of 2^20 ns), then a backend set message (below).

Control message "set backends" (the `backends` write handler; also the tail
of the configuration):

    u32 op (1), u32 nbackends, u32 table length,
    nbackends x (u32 IP (host order), u16 port, u16 weight),
    table length x u16 backend index (into this message's list)

Queries: 0 connection counts (u32 live, u32 used, u32 capacity); 1 the
connection table (20-byte records: u32 client IP, u16 client port, u8
protocol, u8 TCP state bits, u32 backend IP, u16 backend port, u16 0, i32
units until expiry); 2 the backends (u32 n in the set, u32 n draining, then
16-byte records: u32 IP, u16 port, u16 weight, u32 connections, u32 1 if in
the set).
"""

import hashlib
import ipaddress
import struct

from middlebox.element import Element, Int, IPv4, Kind, Param, Str, read_handler, write_handler

METHODS = {"maglev": 0, "round_robin": 1, "hash": 2}
PROTOCOLS = {"tcp": 1, "udp": 2, "both": 3}
PROTO_NAMES = {6: "tcp", 17: "udp"}
MAX_BACKENDS = 512        # LB_MAX_SET in loadbalancer.c
MAX_WEIGHT = 1000
MAX_TABLE = 1048573       # largest prime below 2^20
MAX_CAPACITY = 1 << 22    # LB_MAX_CONNS in loadbalancer.c
TIME_SHIFT = 20           # timeouts in units of 2^20 ns (about 1.05 ms)
OP_SET = 1
Q_COUNT, Q_TABLE, Q_BACKENDS = 0, 1, 2
BACKEND_FORM = "expected 'IP[:PORT] [weight W]'"


# --- backends -------------------------------------------------------------

def _address(text):
    """'IP' or 'IP:PORT' -> (IPv4Address, port or None); ValueError if bad."""
    ip, sep, port = str(text).partition(":")
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    if not sep:
        return addr, None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be 1 to 65535")
    return addr, int(port)


def _weight(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: weight must be an integer, got {value!r}")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"{where}: weight must be an integer, got {value!r}")
        value = int(value)
    if not 0 <= value <= MAX_WEIGHT:
        raise ValueError(f"{where}: weight must be 0 to {MAX_WEIGHT}")
    return value


def _words(words, where):
    """Backends from words: ADDR [weight W] ADDR [weight W] ..."""
    out, i = [], 0
    while i < len(words):
        addr, port = _address(words[i])
        weight = 1
        if i + 1 < len(words) and words[i + 1].lower() == "weight":
            if i + 2 >= len(words):
                raise ValueError(f"{where}: 'weight' needs a number")
            weight = _weight(words[i + 2], f"{where}: {words[i]}")
            i += 3
        else:
            i += 1
        out.append((addr, port, weight))
    return out


def parse_backends(value):
    """Backends as [(IPv4Address, port or None, weight)] from any accepted form.

    - a list of strings "IP[:PORT] [weight W]" (or one-key mappings {IP[:PORT]: W})
    - a mapping {IP[:PORT]: W, ...}
    - a string of such items separated by commas, newlines or spaces
    """
    out = []
    if isinstance(value, dict):
        for k, w in value.items():
            addr, port = _address(k)
            out.append((addr, port, _weight(w, str(k))))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value, 1):
            if isinstance(item, dict):
                if len(item) != 1:
                    raise ValueError(f"item {i}: {BACKEND_FORM}")
                out += parse_backends(item)
                continue
            if not isinstance(item, str):
                raise ValueError(f"item {i}: {item!r}: {BACKEND_FORM}")
            got = _words(item.replace(",", " ").split(), f"item {i}")
            if len(got) != 1:
                raise ValueError(f"item {i}: {item!r}: {BACKEND_FORM}")
            out += got
    elif isinstance(value, str):
        out = _words(value.replace(",", " ").split(), "backends")
    else:
        raise ValueError(f"{value!r}: expected a list of backends")
    if not out:
        raise ValueError("needs at least one backend")
    if len(out) > MAX_BACKENDS:
        raise ValueError(f"{len(out)} backends (at most {MAX_BACKENDS})")
    return out


class Backends(Kind):
    name = "list of 'IP[:PORT] [weight W]' (or a mapping IP[:PORT]: weight)"

    def parse(self, value):
        return parse_backends(value)


def _resolve(backends, default_port):
    """[(ip, port, weight)] with ports filled in; ValueError on duplicates
    or when no backend has a weight."""
    out, seen = [], set()
    for addr, port, weight in backends:
        key = (addr, port or default_port)
        if key in seen:
            raise ValueError(f"backend {addr}:{key[1]} is listed twice")
        seen.add(key)
        out.append((addr, key[1], weight))
    if not any(w for _, _, w in out):
        raise ValueError("every backend has weight 0")
    return out


def backend_text(addr, port, weight=1):
    return f"{addr}:{port}" + (f" weight {weight}" if weight != 1 else "")


# --- selection tables ------------------------------------------------------------

def is_prime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _offset_skip(name, size):
    d = hashlib.blake2b(name.encode(), digest_size=16).digest()
    h1 = int.from_bytes(d[:8], "little")
    h2 = int.from_bytes(d[8:], "little")
    return h1 % size, h2 % (size - 1) + 1


def maglev_table(backends, size=65537):
    """The Maglev lookup table: numpy uint16 array of `size` backend indices.

    backends: [(ip, port, weight)] (ip anything str() gives the address of);
    size: a prime, at least the sum of the weights."""
    if not is_prime(size):
        raise ValueError(f"table size {size} is not a prime")
    weights = [w for _, _, w in backends]
    if sum(weights) == 0 or sum(weights) > size:
        raise ValueError("the weights must add up to 1 .. table size")
    turns = [(i, *_offset_skip(f"{ip}:{port}", size))
             for i, (ip, port, w) in enumerate(backends) for _ in range(w)]
    nxt = {i: 0 for i in range(len(backends))}
    table = [-1] * size
    filled = 0
    while True:
        for i, offset, skip in turns:
            j = nxt[i]
            c = (offset + j * skip) % size
            while table[c] >= 0:
                j += 1
                c = (offset + j * skip) % size
            table[c] = i
            nxt[i] = j + 1
            filled += 1
            if filled == size:
                import numpy as np   # here: importing the element library stays light
                return np.array(table, dtype=np.uint16)


def weighted_sequence(weights):
    """Smooth weighted round-robin order over sum(weights) turns (numpy uint16)."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    import numpy as np
    return np.array(out, dtype=np.uint16)


def _ms_units(seconds):
    return min(-(-seconds * 10**9 // (1 << TIME_SHIFT)), 0x7FFFFFFF)


# --- the element ------------------------------------------------------------------

class LoadBalancer(Element):
    """Spread connections to a virtual IP over backends (Maglev by default).

    A layer-4 load balancer in NAT mode. Input 0 takes client packets (IPv4,
    `nh` annotation set by CheckIPHeader; data before the IP header, such as
    an Ethernet header, is kept as is). A TCP or UDP packet (per `protocol`)
    to `vip`:`port` belongs to the connection of its 5-tuple: the first
    packet of a connection picks a backend (by `method`) and is recorded in
    the connection table; later packets go to the same backend. The packet
    leaves on output 0 with its destination address rewritten to the
    backend's (the port too when the backend gives IP:PORT), IP and TCP/UDP
    checksums updated incrementally (RFC 1624; a UDP checksum of 0 stays 0),
    and the `dst_ip` annotation set to the backend.

    Input 1 takes the backends' replies: a packet from a backend's IP:PORT
    to a client's endpoint of a recorded connection leaves on output 1 with
    its source rewritten to vip:port (checksums updated, `dst_ip` set to the
    client). A reply from a current (or draining) backend with no recorded
    connection, e.g. after the table filled up, is translated the same way
    and counted in `no_conn_replies`.

    Other traffic: packets on input 0 that are not TCP/UDP to vip:port
    (ICMP to the VIP, other addresses, other ports) and IP fragments (which
    carry no ports after the first; counted in `fragment`) leave on output 2
    if it is connected; packets on input 1 that are not replies from a
    backend leave on output 3 if connected; otherwise both are dropped.
    Either way they are counted (`not_vip`, `not_backend`). Packets without
    the `nh` annotation, with a malformed IP header or a truncated TCP/UDP
    header are dropped (`bad`).

    Connection table: `capacity` entries (rounded up to a power of 2, at
    least 4) in groups of 4; a connection may go in either of two groups
    chosen by a hash. When both are full of live entries, the new
    connection is still forwarded to the backend its method picks, but not
    recorded (`table_full`); with Maglev its packets keep going to the same
    backend as long as the backends do not change. Entries expire
    `timeout` seconds after the last packet (UDP: `udp_timeout`); a TCP
    connection that saw a FIN or RST (either way) expires `fin_timeout`
    seconds after its last packet, and a SYN on such an entry starts a new
    connection. Expired entries are reclaimed as new connections need their
    place and by a sweep of two groups (8 entries) per batch (`expired`).
    Time is the engine's: the pcap timestamps when replaying.
    `new_flows` counts backend choices: one per new connection, and one per
    packet of a connection that could not be recorded (as `table_full`).

    Backends: a list of "IP[:PORT] [weight W]" strings (the port defaults to
    `port`; weight 0 to 1000, default 1) or a mapping {"IP[:PORT]": W}.
    Handlers: `backends` (read: the set; write: a new set, e.g. "10.0.1.1,
    10.0.1.2:8080 weight 2" - established connections keep their backend,
    even a removed one, until they end; the table changes between two
    passes, no packet is lost), `connections` (live entries),
    `connection_table` (one line per entry) and `backend_connections`
    (entries per backend, removed ones marked draining).

        lb: {class: LoadBalancer, vip: 10.0.0.100, port: 80, backends: [10.0.1.1, 10.0.1.2, "10.0.1.3:8080 weight 2"], method: maglev}
    """

    kernel = "load_balancer"
    inputs = 2
    inputs_doc = "2 (0: from clients, 1: replies from backends)"
    outputs = 2
    outputs_doc = "2 to 4 (2: other traffic from clients, 3: from backends, if connected)"
    xstats = ("new_flows", "table_full", "not_vip", "not_backend", "fragment", "bad",
              "no_conn_replies", "expired")
    vip = Param(IPv4(), doc="virtual IP address clients connect to")
    port = Param(Int(min=1, max=65535), doc="service port on the VIP")
    backends = Param(Backends(), doc="backend servers: 'IP[:PORT] [weight W]' each")
    method = Param(Str(tuple(METHODS)), default="maglev",
                   doc="backend choice for new connections: maglev, round_robin or hash")
    protocol = Param(Str(tuple(PROTOCOLS)), default="tcp", doc="tcp, udp or both")
    capacity = Param(Int(min=4, max=MAX_CAPACITY), default=65536,
                     doc="connection table entries (rounded up to a power of 2)")
    table_size = Param(Int(min=2, max=MAX_TABLE), default=65537,
                       doc="Maglev table entries, a prime (about 100 x the backends or more)")
    timeout = Param(Int(min=0, max=86400), default=300, doc="seconds an idle TCP connection lives")
    fin_timeout = Param(Int(min=0, max=86400), default=10,
                        doc="seconds a TCP connection lives after FIN or RST")
    udp_timeout = Param(Int(min=0, max=86400), default=60, doc="seconds an idle UDP flow lives")

    def configure(self):
        if not is_prime(self.table_size):
            self.error(f"parameter 'table_size': {self.table_size} is not a prime "
                       "(e.g. 251, 4099, 65537)", "table_size")
        try:
            self._set = self.backend_set(self.backends)
        except ValueError as e:
            self.error(f"parameter 'backends': {e}", "backends")

    def noutputs(self, connected=0):
        return max(2, min(connected, 4))

    # -- tables and messages --

    def backend_set(self, parsed):
        """Resolved backends and their selection table, or ValueError."""
        backends = _resolve(parsed, self.port)
        total = sum(w for _, _, w in backends)
        if total > self.table_size:
            raise ValueError(f"weights add up to {total}, more than table_size {self.table_size}")
        if self.method == "maglev":
            table = maglev_table(backends, self.table_size)
        else:
            table = weighted_sequence([w for _, _, w in backends])
        return backends, table

    @staticmethod
    def set_message(backends, table):
        out = bytearray(struct.pack("<III", OP_SET, len(backends), len(table)))
        for ip, port, weight in backends:
            out += struct.pack("<IHH", int(ip), port, weight)
        import numpy as np
        out += np.asarray(table, dtype="<u2").tobytes()
        return bytes(out)

    def lower(self, ctx):
        capacity = 4
        while capacity < self.capacity:
            capacity *= 2
        header = struct.pack("<IHBBIIIII", int(self.vip), self.port, PROTOCOLS[self.protocol],
                             METHODS[self.method], capacity, self.table_size,
                             _ms_units(self.timeout), _ms_units(self.fin_timeout),
                             _ms_units(self.udp_timeout))
        return header + self.set_message(*self._set)

    # -- handlers --

    @write_handler("backends")
    def write_backends(self, value):
        return self.set_message(*self.backend_set(parse_backends(value)))

    @staticmethod
    def _backend_rows(data):
        nset, ndrain = struct.unpack_from("<II", data, 0)
        rows = []
        for i in range(nset + ndrain):
            ip, port, weight, conns, live = struct.unpack_from("<IHHII", data, 8 + 16 * i)
            rows.append((ipaddress.IPv4Address(ip), port, weight, conns, bool(live)))
        return rows

    @read_handler("backends")
    def read_backends(self, ctx):
        rows = self._backend_rows(ctx.query(Q_BACKENDS))
        return ", ".join(backend_text(ip, port, w) for ip, port, w, _, live in rows if live)

    @read_handler("backend_connections")
    def read_backend_connections(self, ctx):
        rows = self._backend_rows(ctx.query(Q_BACKENDS))
        return "\n".join(f"{ip}:{port} {conns}" + ("" if live else " draining")
                         for ip, port, _, conns, live in rows)

    @read_handler("connections")
    def read_connections(self, ctx):
        live, _, _ = struct.unpack("<III", ctx.query(Q_COUNT))
        return str(live)

    @read_handler("connection_table")
    def read_connection_table(self, ctx):
        data = ctx.query(Q_TABLE)
        lines = []
        for off in range(0, len(data) - 19, 20):
            cip, cport, proto, state, bip, bport, _, left = struct.unpack_from(
                "<IHBBIHHi", data, off)
            what = PROTO_NAMES.get(proto, str(proto))
            status = "closing" if state else "open"
            secs = max(left, 0) * (1 << TIME_SHIFT) / 1e9
            lines.append(f"{what} {ipaddress.IPv4Address(cip)}:{cport} -> "
                         f"{ipaddress.IPv4Address(bip)}:{bport} {status} {secs:.0f}s")
        return "\n".join(lines)
