"""IPv4 route lookup: StaticIPLookup and RadixIPLookup (Click's names).

Routes are Click's "ADDR/MASK [GATEWAY] OUT" lines. The longest-prefix-match
structure is built here, in Python (numpy), when the graph is compiled, and
lowered as read-only tables that the C kernel (routing.c) walks in place:

    DIR-16-8-8 with compressed chunks
    level 1   65536 entries, indexed by the top 16 bits of the address
    level 2   one 256-entry chunk per /16 that holds a prefix longer than /16
    level 3   one 256-entry chunk per /24 that holds a prefix longer than /24

An entry is either a leaf (0: no route, k: next hop k-1) or, with bit 31 set,
the index of a chunk. A chunk stores its 256 entries run-length compressed:
a 256-bit map with bit i set where entry i differs from entry i-1, and the
distinct values in order; entry i is value number popcount(map[0..i]) - 1.
So memory is 256 KiB plus about 40 bytes and 4 bytes per distinct run for
each chunk: proportional to the route set, whatever its shape.

Plan layout (little-endian), read by route_init():

    header   u32 version (1), u32 nnexthops, u32 nchunks2, u32 nchunks3,
             u32 nentries, u32 noutputs, u32 0, u32 0          (32 bytes)
    nexthop  u32 output port, u32 gateway (host order, 0: none)  per next hop
    level 1  u32 x 65536
    chunk    u64 map[4], u32 base, u8 before[4]     (40 bytes) per chunk,
             level-2 chunks first; before[w] = bits set in map[0..w-1]
    entries  u32 x nentries: chunk c's values are entries[base .. base+n)
"""

import struct

import numpy as np

from middlebox.element import Element, List, Param, Str

VERSION = 1
MAX_OUTPUTS = 1024
CHUNK = 0x80000000
HEADER = struct.Struct("<8I")
CHUNK_DTYPE = np.dtype([("map", "<u8", (4,)), ("base", "<u4"), ("before", "u1", (4,))])
ROUTE_FORM = "expected 'ADDR/MASK [GATEWAY] OUT'"


# --- addresses -----------------------------------------------------------------

def parse_ipv4(text):
    """A dotted-quad IPv4 address as a host-order int, or None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3:
            return None
        byte = int(part)
        if byte > 255:
            return None
        value = (value << 8) | byte
    return value


def mask_length(mask):
    """Prefix length of a contiguous netmask (host-order int), or None."""
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        return None
    return 32 - inverted.bit_length()


def parse_prefix(text):
    """ADDR/LEN, ADDR/MASK or a bare ADDR (a /32), as (addr, length) with the
    host bits cleared, as Click does. Raises ValueError with the reason."""
    addr_text, slash, mask_text = text.partition("/")
    addr = parse_ipv4(addr_text)
    if addr is None:
        raise ValueError("bad address")
    if not slash:
        return addr, 32
    if mask_text.isascii() and mask_text.isdigit() and len(mask_text) <= 2:
        length = int(mask_text)
        if length > 32:
            raise ValueError("bad prefix length")
    else:
        mask = parse_ipv4(mask_text)
        if mask is None:
            raise ValueError("bad prefix length" if "." not in mask_text else "bad netmask")
        length = mask_length(mask)
        if length is None:
            raise ValueError("netmask is not contiguous")
    return addr & prefix_mask(length), length


def prefix_mask(length):
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


def format_ipv4(value):
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


# --- routes ----------------------------------------------------------------------

class Route(tuple):
    """One parsed route: (addr, length, gateway or 0, output port)."""

    __slots__ = ()
    addr = property(lambda r: r[0])
    length = property(lambda r: r[1])
    gateway = property(lambda r: r[2])
    port = property(lambda r: r[3])


def parse_route(text):
    """Parse "ADDR/MASK [GATEWAY] OUT"; raises ValueError(message)."""
    words = text.split()
    if len(words) not in (2, 3):
        raise ValueError(f"{text!r}: {ROUTE_FORM}")
    try:
        addr, length = parse_prefix(words[0])
    except ValueError as e:
        raise ValueError(f"{words[0]!r}: {e}") from None
    gateway = 0
    if len(words) == 3:
        gateway = parse_ipv4(words[1])
        if gateway is None:
            raise ValueError(f"{words[1]!r}: bad gateway address")
    out = words[-1]
    if not (out.isascii() and out.isdigit()):
        raise ValueError(f"{out!r}: bad output port")
    port = int(out)
    if port >= MAX_OUTPUTS:
        raise ValueError(f"{out!r}: output port above the maximum {MAX_OUTPUTS - 1}")
    return Route((addr, length, gateway, port))


class RouteTable:
    """The lowered lookup structure (numpy arrays) for a list of Routes."""

    def __init__(self, routes):
        self.routes = routes
        hops = {}
        leaf = np.empty(len(routes), dtype=np.uint32)
        for i, r in enumerate(routes):
            leaf[i] = hops.setdefault((r.port, r.gateway), len(hops)) + 1
        self.nexthops = np.array(list(hops) or np.zeros((0, 2)), dtype="<u4").reshape(-1, 2)
        self.noutputs = 1 + max((r.port for r in routes), default=0)
        addr = np.fromiter((r.addr for r in routes), dtype=np.uint32, count=len(routes))
        length = np.fromiter((r.length for r in routes), dtype=np.uint8, count=len(routes))
        self._build(addr, length, leaf)

    def _build(self, addr, length, leaf):
        # Level 1: paint prefixes up to /16, shortest first.
        l1 = np.zeros(65536, dtype=np.uint32)
        for plen in range(0, 17):
            sel = length == plen
            if sel.any():
                _paint(l1[None, :], np.zeros(int(sel.sum()), np.intp),
                       (addr[sel] >> 16).astype(np.intp), 1 << (16 - plen), leaf[sel])
        # Level 2: a 256-entry row per /16 with longer prefixes, starting from
        # what level 1 says for that /16.
        long2 = length > 16
        groups2 = np.unique(addr[long2] >> 16)
        rows2 = np.repeat(l1[groups2][:, None], 256, axis=1)
        for plen in range(17, 25):
            sel = length == plen
            if sel.any():
                row = np.searchsorted(groups2, addr[sel] >> 16)
                _paint(rows2, row, ((addr[sel] >> 8) & 255).astype(np.intp),
                       1 << (24 - plen), leaf[sel])
        # Level 3: a row per /24 with prefixes longer than /24.
        long3 = length > 24
        groups3 = np.unique(addr[long3] >> 8)
        parent = np.searchsorted(groups2, groups3 >> 8)
        rows3 = np.repeat(rows2[parent, groups3 & 255][:, None], 256, axis=1)
        for plen in range(25, 33):
            sel = length == plen
            if sel.any():
                row = np.searchsorted(groups3, addr[sel] >> 8)
                _paint(rows3, row, (addr[sel] & 255).astype(np.intp), 1 << (32 - plen), leaf[sel])
        # Link the levels.
        n2, n3 = len(groups2), len(groups3)
        l1[groups2] = CHUNK | np.arange(n2, dtype=np.uint32)
        rows2[parent, groups3 & 255] = CHUNK | (n2 + np.arange(n3, dtype=np.uint32))
        self.l1 = l1
        self.nchunks2, self.nchunks3 = n2, n3
        self.chunks, self.entries = _compress(np.concatenate([rows2, rows3]))

    def lookup(self, addr):
        """(port, gateway) for a host-order address, or None: reads the
        lowered tables the way the kernel does (for tests and tools)."""
        v = int(self.l1[addr >> 16])
        for shift in (8, 0):
            if not v & CHUNK:
                break
            c = self.chunks[v & ~CHUNK]
            i = (addr >> shift) & 255
            word = int(c["map"][i >> 6]) & ((2 << (i & 63)) - 1)
            v = int(self.entries[int(c["base"]) + int(c["before"][i >> 6]) + bin(word).count("1") - 1])
        if v == 0:
            return None
        port, gw = self.nexthops[v - 1]
        return int(port), int(gw)

    def lower(self):
        head = HEADER.pack(VERSION, len(self.nexthops), self.nchunks2, self.nchunks3,
                           len(self.entries), self.noutputs, 0, 0)
        return b"".join((head, self.nexthops.astype("<u4").tobytes(),
                         self.l1.astype("<u4").tobytes(), self.chunks.tobytes(),
                         self.entries.astype("<u4").tobytes()))


def _paint(rows, row, start, width, value):
    """rows[row[k], start[k]:start[k]+width] = value[k] for every k."""
    cols = start[:, None] + np.arange(width, dtype=np.intp)
    rows[row[:, None], cols] = value[:, None]


def _compress(rows):
    """Run-length compress 256-entry rows into (chunk records, entries)."""
    n = len(rows)
    chunks = np.zeros(n, dtype=CHUNK_DTYPE)
    if n == 0:
        return chunks, np.zeros(0, dtype=np.uint32)
    starts = np.ones(rows.shape, dtype=bool)
    starts[:, 1:] = rows[:, 1:] != rows[:, :-1]
    entries = rows[starts]
    counts = starts.sum(axis=1)
    chunks["base"] = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chunks["map"] = np.packbits(starts, axis=1, bitorder="little").view("<u8")
    per_word = starts.reshape(n, 4, 64).sum(axis=2)
    chunks["before"] = np.cumsum(per_word, axis=1) - per_word
    return chunks, entries


# --- elements -------------------------------------------------------------------

class StaticIPLookup(Element):
    """Longest-prefix-match IPv4 routing on the destination address annotation.

    Each route is Click's "ADDR/MASK [GATEWAY] OUT": a prefix (ADDR/LEN,
    ADDR/255.255.0.0 or a bare address for a /32; host bits are ignored), an
    optional gateway, and an output port. A packet whose destination
    annotation (set by GetIPAddress or a previous lookup) matches goes to the
    output of the longest matching prefix; if the route has a gateway (not
    0.0.0.0), the annotation becomes the gateway, so ARPQuerier resolves the
    next hop. A
    packet no route matches is dropped and counted (extra counter
    `no_route`). There are 1 + the highest OUT outputs; two routes with the
    same prefix are an error.

    The table is compiled once, into a DIR-16-8-8 structure with compressed
    chunks (see elements/routing.py): a lookup reads at most 3 table levels,
    and 100k routes compile in well under a second.

        rt: {class: StaticIPLookup, routes: ["10.0.0.0/8 0", "192.168.1.0/24 10.0.0.254 1", "0.0.0.0/0 10.0.0.1 2"]}
    """

    kernel = "ip_lookup"
    inputs = 1
    outputs = 1
    outputs_doc = "1 + the highest OUT in the routes"
    xstats = ("no_route",)
    routes = Param(List(Str(), min_len=1), doc='"ADDR/MASK [GATEWAY] OUT" lines')

    def configure(self):
        parsed, seen = [], {}
        for i, text in enumerate(self.routes, 1):
            try:
                r = parse_route(text)
            except ValueError as e:
                self.error(f"route {i}: {e}", "routes")
            key = (r.addr, r.length)
            if key in seen:
                self.error(f"route {i}: '{format_ipv4(r.addr)}/{r.length}' duplicates "
                           f"route {seen[key]}", "routes")
            seen[key] = i
            parsed.append(r)
        self.table = RouteTable(parsed)

    def noutputs(self, connected=0):
        return self.table.noutputs

    def lower(self, ctx):
        return self.table.lower()


class RadixIPLookup(StaticIPLookup):
    """Longest-prefix-match IPv4 routing; the same element as StaticIPLookup.

    Click's RadixIPLookup is the variant whose routes change at run time;
    here the routes are fixed when the graph is compiled, and both names
    compile to the same table and kernel. Routes are "ADDR/MASK [GATEWAY]
    OUT"; see StaticIPLookup.

        rt: {class: RadixIPLookup, routes: ["10.0.0.0/8 0", "0.0.0.0/0 10.0.0.1 1"]}
    """
