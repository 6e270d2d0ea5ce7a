"""IPv4 route lookup: StaticIPLookup and RadixIPLookup (Click's names).

Routes are Click's "ADDR/MASK [GATEWAY] OUT" lines. They are parsed and
checked here and lowered as a compact route list; the C kernel (routing.c)
builds its longest-prefix-match structure from that list at init, in the
element's state memory, whose size the kernel computes from the same list
(so the host and a guest both size memory from the plan alone):

    level 1   2^16 entries indexed by the top 16 address bits (2^8 and the
              top 8 bits for tables of at most 256 routes)
    chunks    256 entries each, for the next 8 bits, one per group of
              addresses (a /16 or /24; a /8 too with an 8-bit level 1) that
              holds a prefix longer than the group

An entry is 0 (no route), k (route k-1 of the list) or, with bit 31 set,
the index of a chunk. A lookup reads at most 3 levels (4 with the 8-bit
first level). See routing.c for the memory it takes.

Plan layout (little-endian), read by rt_init():

    header   u32 version (2), u32 nroutes, u32 noutputs, u32 0      (16 bytes)
    routes   per route (12 bytes): u32 prefix (host order, host bits 0),
             u32 gateway (host order, 0: none), u16 output port,
             u8 prefix length (0-32), u8 0
             sorted by (prefix, length), strictly increasing

The order matters to the kernel: a prefix comes before every prefix it
contains, so the table is built by painting each route over what the
shorter ones left, and the number of chunks is a count of distinct groups.
"""

import struct

from middlebox.element import Element, List, Param, Str

VERSION = 2
MAX_OUTPUTS = 1024
MAX_ROUTES = 1 << 20
HEADER = struct.Struct("<4I")
ROUTE = struct.Struct("<IIHBx")
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
    """A checked route list, lowered in the order the kernel builds from."""

    def __init__(self, routes):
        self.routes = sorted(routes, key=lambda r: (r.addr, r.length))
        self.noutputs = 1 + max((r.port for r in routes), default=0)

    def lower(self):
        head = HEADER.pack(VERSION, len(self.routes), self.noutputs, 0)
        return head + b"".join(ROUTE.pack(r.addr, r.gateway, r.port, r.length)
                               for r in self.routes)


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

    The routes travel in the plan as a list (12 bytes a route); the kernel
    builds a DIR-16-8-8 table from them when the graph starts (8-8-8-8 for
    256 routes or fewer; see elements/routing.py): a lookup reads at most 3
    table levels (4). At most 1048576 routes.

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
        if len(parsed) > MAX_ROUTES:
            self.error(f"{len(parsed)} routes: at most {MAX_ROUTES}", "routes")
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
