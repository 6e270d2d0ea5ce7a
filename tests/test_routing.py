"""StaticIPLookup and RadixIPLookup: longest-prefix match on dst_ip.

The expected route of every address is found here by brute force over the
route list with Python's ipaddress (the longest network that contains the
address), never with the lookup structure. The annotation a route leaves
is made visible with StoreIPAddress (into the IP source field) or through
the ARP query ARPQuerier sends for the next hop.
"""

import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from middlebox.elements import catalogue
from middlebox.graph import Graph
from middlebox import loader
from middlebox.errors import ConfigError
from middlebox.testing import run_element, run_graph

HOST, HOST_IP = "02:00:00:00:00:01", "10.0.0.1"
BRIEF_ROUTES = ["10.0.0.0/8 0", "192.168.1.0/24 10.0.0.254 1", "0.0.0.0/0 10.0.0.1 2"]


def check_invariant(res):
    assert res.all_stats
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


class BruteForce:
    """Longest-prefix match the plain way: routes parsed by ipaddress, kept
    by prefix length; an address is tried against every length, longest
    first (a dict per length keeps 100k routes quick)."""

    def __init__(self, routes):
        self.by_len = {}
        for text in routes:
            words = text.split()
            net = ipaddress.ip_network(words[0], strict=False)
            gw = ipaddress.ip_address(words[1]) if len(words) == 3 else None
            table = self.by_len.setdefault(net.prefixlen, {})
            table[int(net.network_address)] = (gw, int(words[-1]))
        self.lengths = sorted(self.by_len, reverse=True)

    def __call__(self, addr):
        """(port, annotation after the lookup) or None."""
        addr = ipaddress.ip_address(addr)
        a = int(addr)
        for plen in self.lengths:
            hit = self.by_len[plen].get(a & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF)
            if hit:
                gw, port = hit
                return port, (gw or addr)
        return None


def lookup_graph(routes, nports, cls="StaticIPLookup"):
    """lan -> GetIPAddress(16) -> rt; rt[k] -> StoreIPAddress(12) -> device pk.

    Packets are bare IPv4 headers; what leaves device pk went to output k,
    with the annotation the lookup left written over the IP source. Built
    as a Graph, not YAML text: PyYAML would spend seconds on 100k routes."""
    lib = catalogue()
    g = Graph(name="lookup", file="<test>")

    def add(name, cls_name, **cfg):
        g.add(name, lib[cls_name].from_config(name, cfg, file="<test>"))
    add("lan", "FromDevice", device="lan")
    add("get", "GetIPAddress", offset=16)
    add("rt", cls, routes=list(routes))
    g.connect("lan", "get")
    g.connect("get", "rt")
    for k in range(nports):
        add(f"st{k}", "StoreIPAddress", offset=12)
        add(f"p{k}", "ToDevice", device=f"p{k}")
        g.connect("rt", f"st{k}", k, 0)
        g.connect(f"st{k}", f"p{k}")
    return g


def probe(dst, i=0):
    return IP(src="0.0.0.0", dst=dst, id=i & 0xFFFF, ttl=9)


def after_lookup(pkt, anno):
    """The probe as StoreIPAddress(12) leaves it: source = annotation,
    checksum untouched."""
    raw = bytes(pkt)
    return bytes(IP(src=str(anno), dst=pkt.dst, id=pkt.id, ttl=9, chksum=IP(raw).chksum))


def run_lookup(routes, addrs, cls="StaticIPLookup"):
    ref = BruteForce(routes)
    nports = 1 + max(int(r.split()[-1]) for r in routes)
    pkts = [probe(a, i) for i, a in enumerate(addrs)]
    res = run_graph(lookup_graph(routes, nports, cls), {"lan": [bytes(p) for p in pkts]})
    expect = {k: [] for k in range(nports)}
    missing = 0
    for p in pkts:
        hit = ref(p.dst)
        if hit is None:
            missing += 1
        else:
            expect[hit[0]].append(after_lookup(p, hit[1]))
    for k in range(nports):
        assert res[f"p{k}"] == expect[k], f"output {k}"
    assert res.all_stats["rt"]["no_route"] == missing
    check_invariant(res)
    return res


# --- semantics ------------------------------------------------------------------------

def test_brief_routes():
    addrs = ["10.1.2.3", "10.255.255.255", "192.168.1.7", "192.168.2.7", "8.8.8.8",
             "0.0.0.0", "255.255.255.255"]
    res = run_lookup(BRIEF_ROUTES, addrs)
    assert [len(res[f"p{k}"]) for k in range(3)] == [2, 1, 4]
    # 192.168.1.7 -> output 1 with the gateway as annotation.
    assert IP(res["p1"][0]).src == "10.0.0.254"
    assert IP(res["p0"][0]).src == "10.1.2.3"


def test_nested_prefixes_at_their_edges():
    routes = ["10.0.0.0/8 1", "10.1.0.0/16 2", "10.1.128.0/17 3", "10.1.129.0/24 4",
              "10.1.129.128/25 5", "10.1.129.200/32 6", "10.1.129.202/31 7",
              "10.1.129.0/30 172.16.0.1 1"]
    addrs = []
    for text in routes:
        net = ipaddress.ip_network(text.split()[0])
        for a in (net.network_address, net.broadcast_address):
            addrs += [a - 1, a, a + 1]
    addrs = [str(a) for a in addrs] + ["11.0.0.0", "9.255.255.255"]
    res = run_lookup(routes, addrs)
    assert res.all_stats["rt"]["no_route"] == 2 + 2   # 9.255.255.255 and 11.0.0.0, twice


def test_radix_ip_lookup_is_the_same():
    addrs = ["10.9.9.9", "192.168.1.1", "1.2.3.4"]
    run_lookup(BRIEF_ROUTES, addrs, cls="RadixIPLookup")


def test_no_route_drops_and_counts():
    routes = ["10.0.0.0/8 0", "192.168.0.0/16 1"]
    res = run_lookup(routes, ["10.0.0.1", "172.16.0.1", "192.168.3.3", "8.8.8.8"])
    assert res.all_stats["rt"]["no_route"] == 2 and res.all_stats["rt"]["dropped"] == 2


def test_address_forms_and_host_bits():
    routes = ["10.1.2.3/8 0", "172.16.0.0/255.255.0.0 1", "192.168.7.7 2",
              "192.168.7.0/255.255.255.0 10.0.0.9 0"]
    t = loader.load("elements:\n  rt: {class: StaticIPLookup, routes: %s}\n"
                    % str(routes).replace("'", '"')).elements["rt"]
    assert t.noutputs() == 3
    run_lookup(["10.0.0.0/8 0", "172.16.0.0/16 1", "192.168.7.7/32 2",
                "192.168.7.0/24 10.0.0.9 0"],
               ["10.200.0.1", "172.16.255.255", "192.168.7.7", "192.168.7.8"])
    # The forms the brute force cannot read, through the element itself:
    res = run_graph(lookup_graph(routes, 3), {"lan": [bytes(probe(a)) for a in
                                                      ("10.200.0.1", "172.16.255.255",
                                                       "192.168.7.7", "192.168.7.8")]})
    assert [IP(b).dst for b in res["p0"]] == ["10.200.0.1", "192.168.7.8"]
    assert IP(res["p0"][1]).src == "10.0.0.9"
    assert [IP(b).dst for b in res["p1"]] == ["172.16.255.255"]
    assert [IP(b).dst for b in res["p2"]] == ["192.168.7.7"]


def test_outputs_follow_the_highest_port():
    g = loader.load('elements:\n  rt: {class: StaticIPLookup, routes: ["0.0.0.0/0 7"]}\n')
    assert g.elements["rt"].noutputs() == 8


def test_gateway_becomes_arp_next_hop():
    graph = """
name: router
elements:
  lan:   {class: FromDevice, device: lan}
  strip: {class: Strip, length: 14}
  get:   {class: GetIPAddress, offset: 16}
  rt:    {class: StaticIPLookup, routes: ["10.0.0.0/24 0", "0.0.0.0/0 10.0.0.254 0"]}
  arpq:  {class: ARPQuerier, ip: 10.0.0.1, eth: "02:00:00:00:00:01"}
  arp:   {class: FromDevice, device: arp}
  wan:   {class: ToDevice, device: wan}
connections:
  - lan -> strip -> get -> rt -> arpq -> wan
  - arp -> [1]arpq
"""
    frames = [bytes(Ether(src="02:00:00:00:00:0a", dst=HOST) / IP(src="10.0.0.10", dst=d)
                    / UDP(dport=7) / Raw(b"hi")) for d in ("8.8.8.8", "10.0.0.5", "1.1.1.1")]
    gw_mac = "02:00:00:00:00:fe"
    reply = bytes(Ether(src=gw_mac, dst=HOST) / ARP(op=2, hwsrc=gw_mac, psrc="10.0.0.254",
                                                    hwdst=HOST, pdst=HOST_IP))
    later = bytes(Ether(src="02:00:00:00:00:0a", dst=HOST) / IP(src="10.0.0.10", dst="9.9.9.9")
                  / UDP(dport=7))
    res = run_graph(graph, {"lan": [(0, f) for f in frames] + [(2 * 10**9, later)],
                            "arp": [(10**9, reply)]})
    q = res.scapy("wan")
    queries = [p for p in q if ARP in p]
    assert [p[ARP].pdst for p in queries] == ["10.0.0.254", "10.0.0.5"]
    assert all(p[ARP].op == 1 and p[ARP].psrc == HOST_IP for p in queries)
    # Released on the gateway's reply (8.8.8.8 then 1.1.1.1), then forwarded.
    data = [p for p in q if IP in p]
    assert [bytes(p) for p in data] == [
        bytes(Ether(dst=gw_mac, src=HOST, type=0x0800) / Raw(f[14:]))
        for f in (frames[0], frames[2], later)]
    check_invariant(res)


# --- the table builder -------------------------------------------------------------------

def random_routes(n, seed):
    """n distinct random routes; prefix lengths weighted like a BGP table
    (mostly /24, then /16-/23), with some gateways, 16 outputs."""
    rnd = random.Random(seed)
    lengths = list(range(33))
    weights = [1] * 8 + [2] * 8 + [8] + [4] * 7 + [50] + [2] * 7 + [4]
    seen, routes = set(), []
    while len(routes) < n:
        plen = rnd.choices(lengths, weights)[0]
        net = ipaddress.ip_network((rnd.getrandbits(32), plen), strict=False)
        if net in seen:
            continue
        seen.add(net)
        gw = f" {ipaddress.ip_address(rnd.getrandbits(32) | 1)}" if rnd.random() < 0.5 else ""
        routes.append(f"{net}{gw} {rnd.randrange(16)}")
    return routes


def sample_addresses(routes, n, seed):
    """Addresses inside random routes (at their edges too) and anywhere."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(str(ipaddress.ip_address(rnd.getrandbits(32))))
            continue
        net = ipaddress.ip_network(rnd.choice(routes).split()[0])
        pick = rnd.choice([0, -1, None])
        a = (net.network_address if pick == 0 else net.broadcast_address if pick == -1
             else net.network_address + rnd.randrange(net.num_addresses))
        out.append(str(a))
    return out


@pytest.fixture(scope="module")
def big_table():
    routes = random_routes(100_000, seed=1)
    return routes, BruteForce(routes)


def test_lowered_route_list_is_compact_and_sorted(big_table):
    """The plan carries the routes themselves (12 bytes each, sorted by
    prefix then length), not a table: decoded here with struct and compared
    with what ipaddress makes of the route text."""
    routes, _ = big_table
    el = catalogue()["StaticIPLookup"].from_config("rt", {"routes": routes}, file="<test>")
    cfg = el.lower(None)
    assert len(cfg) == 16 + 12 * len(routes)
    version, n, nout, zero = struct.unpack_from("<4I", cfg)
    assert (version, n, nout, zero) == (2, len(routes), 16, 0)
    got = [struct.unpack_from("<IIHBB", cfg, 16 + 12 * i) for i in range(n)]
    want = []
    for text in routes:
        words = text.split()
        net = ipaddress.ip_network(words[0])
        gw = int(ipaddress.ip_address(words[1])) if len(words) == 3 else 0
        want.append((int(net.network_address), gw, int(words[-1]), net.prefixlen, 0))
    assert got == sorted(want, key=lambda r: (r[0], r[3]))


def test_kernel_100k_routes_against_brute_force(big_table):
    routes, _ = big_table
    run_lookup(routes, sample_addresses(routes, 3000, seed=3))


def uniform_routes(n, seed):
    """n distinct routes with prefix lengths drawn evenly from 0-32: many
    more prefixes longer than /24 (level-3 chunks) than a BGP table has."""
    rnd = random.Random(seed)
    seen, routes = set(), []
    while len(routes) < n:
        net = ipaddress.ip_network((rnd.getrandbits(32), rnd.randrange(33)), strict=False)
        if net in seen:
            continue
        seen.add(net)
        routes.append(f"{net} {rnd.randrange(4)}")
    return routes


def test_kernel_100k_uniform_prefixes_against_brute_force():
    routes = uniform_routes(100_000, seed=4)
    run_lookup(routes, sample_addresses(routes, 3000, seed=5), cls="RadixIPLookup")


def test_small_and_large_first_level_at_the_threshold():
    """256 routes get an 8-bit first level, 257 a 16-bit one: the same
    nested prefixes must route the same either way."""
    nested = ["0.0.0.0/0 0", "10.0.0.0/7 1", "10.0.0.0/8 2", "10.0.0.0/15 3",
              "10.1.0.0/16 0", "10.1.2.0/23 1", "10.1.2.0/24 2", "10.1.2.128/25 3",
              "10.1.2.200/32 1", "11.255.255.255/32 2"]
    rnd = random.Random(6)
    filler = set()
    while len(filler) < 256 - len(nested):
        filler.add(f"{ipaddress.ip_address(rnd.randrange(100 << 24, 200 << 24))}/32")
    filler = [f"{f} 3" for f in sorted(filler)]
    addrs = []
    for text in nested:
        net = ipaddress.ip_network(text.split()[0])
        for a in (net.network_address, net.broadcast_address):
            addrs += [str(a - 1) if int(a) else "0.0.0.0", str(a),
                      str(a + 1) if int(a) < 0xFFFFFFFF else "255.255.255.255"]
    for extra in ([], ["250.0.0.0/8 1"]):
        routes = nested + filler + extra
        assert len(routes) in (256, 257)
        run_lookup(routes, addrs + [f.split("/")[0] for f in filler[:20]])


def test_table_of_only_long_or_only_short_prefixes():
    run_lookup(["1.2.3.4/32 0", "1.2.3.5/32 1", "200.1.1.0/25 2"],
               ["1.2.3.4", "1.2.3.5", "1.2.3.6", "200.1.1.127", "200.1.1.128"])
    run_lookup(["0.0.0.0/0 0", "128.0.0.0/1 1", "10.0.0.0/16 2"],
               ["1.1.1.1", "200.0.0.1", "10.0.200.1", "10.1.0.0"])


# --- configuration errors ------------------------------------------------------------------

@pytest.mark.parametrize("routes, msg", [
    (["10.0.0.0/8 0", "10.0.0.0/33 1"], "route 2: '10.0.0.0/33': bad prefix length"),
    (["10.0.0.0/x 0"], "route 1: '10.0.0.0/x': bad prefix length"),
    (["10.0.0.300/8 0"], "route 1: '10.0.0.300/8': bad address"),
    (["10.0.0.0/255.0.255.0 0"], "route 1: '10.0.0.0/255.0.255.0': netmask is not contiguous"),
    (["10.0.0.0/255.0.0.300 0"], "route 1: '10.0.0.0/255.0.0.300': bad netmask"),
    (["10.0.0.0/8 10.0.0.x 0"], "route 1: '10.0.0.x': bad gateway address"),
    (["10.0.0.0/8 out"], "route 1: 'out': bad output port"),
    (["10.0.0.0/8 -1"], "route 1: '-1': bad output port"),
    (["10.0.0.0/8 5000"], "route 1: '5000': output port above the maximum 1023"),
    (["10.0.0.0/8"], "route 1: '10.0.0.0/8': expected 'ADDR/MASK [GATEWAY] OUT'"),
    (["10.0.0.0/8 1.2.3.4 0 9"], "expected 'ADDR/MASK [GATEWAY] OUT'"),
    (["10.0.0.0/8 0", "10.9.0.0/8 1"], "route 2: '10.0.0.0/8' duplicates route 1"),
    ([], "needs at least 1 item"),
])
def test_route_errors(routes, msg):
    with pytest.raises(ConfigError) as err:
        run_element("StaticIPLookup", {"routes": routes}, [])
    text = str(err.value)
    assert "element 'element'" in text and msg in text, text


def test_route_error_names_file_and_line(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text('elements:\n  x: {class: Discard}\n'
                    '  rt: {class: RadixIPLookup, routes: ["1.0.0.0/8 0", "2.0.0.0/33 1"]}\n')
    with pytest.raises(ConfigError) as err:
        loader.load(str(path))
    assert str(err.value) == (f"{path}:3: element 'rt': route 2: '2.0.0.0/33': "
                              "bad prefix length")
