"""NAT: source NAT with port translation, between two CheckIPHeader(14)s.

Expected packets are built here with scapy from the element's documented
behaviour: an outbound packet is the original with the source address and
port (ICMP identifier) replaced by a public address and port and its
checksums recomputed by scapy; a reply is the remote's packet with the
destination replaced by the inside endpoint; an ICMP error is rebuilt by
scapy around the quote of the original packet. The public port the NAT
picked is read from its output, then checked against the documented rules
(in the range, preserved when possible, one flow one port, no sharing).
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

from middlebox import loader, plan
from middlebox.errors import ConfigError, RunError
from middlebox.runtime import Engine
from middlebox.testing import run_graph

PUB = "203.0.113.7"
ETH = dict(src="02:00:00:00:00:0a", dst="02:00:00:00:00:01")
T0 = 1_700_000_000
ERRORS = (3, 4, 11, 12)


def graph(cfg="address: 203.0.113.7", out2=True, check=True):
    """inside -> CheckIPHeader(14) -> nat[0]; outside -> CheckIPHeader(14) -> nat[1];
    nat[0..2] -> devices o0, o1 (and o2)."""
    lines = ["name: nat-test", "elements:",
             "  inside: {class: FromDevice, device: inside}",
             "  outside: {class: FromDevice, device: outside}",
             f"  nat: {{class: NAT, {cfg}}}",
             "  o0: {class: ToDevice, device: o0}",
             "  o1: {class: ToDevice, device: o1}"]
    if check:
        lines += ["  c0: {class: CheckIPHeader, offset: 14}",
                  "  c1: {class: CheckIPHeader, offset: 14}"]
    conns = ["connections:",
             "  - inside -> c0 -> nat" if check else "  - inside -> nat",
             "  - outside -> c1 -> [1]nat" if check else "  - outside -> [1]nat",
             "  - nat[0] -> o0", "  - nat[1] -> o1"]
    if out2:
        lines.append("  o2: {class: ToDevice, device: o2}")
        conns.append("  - nat[2] -> o2")
    return "\n".join(lines + conns) + "\n"


def check_counters(res):
    """in + created == out + dropped (+ held) everywhere; every NAT packet
    counted once among the outcome counters."""
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    n = res.all_stats["nat"]
    outcomes = ("translated", "table_full", "ports_exhausted", "no_mapping", "fragments",
                "untranslatable")
    assert sum(n[k] for k in outcomes) == n["in"], n
    assert n["translated"] == n["ports"][0] + n["ports"][1], n


def run(inside=(), outside=(), cfg="address: 203.0.113.7", out2=True, check=True):
    res = run_graph(graph(cfg, out2, check), {"inside": list(inside), "outside": list(outside)})
    res.nat = res.all_stats["nat"]
    check_counters(res)
    for dev in res.keys():
        for frame in res[dev]:
            assert_checksums_valid(frame)
    return res


def at(t, p):
    p.time = T0 + t
    return p


# --- independent checksum verification (scapy's checksum functions) -----------

def assert_ip_valid(raw, whole=True):
    """Header checksum of the IPv4 datagram in raw; with whole=True (the
    datagram is all there) also its TCP/UDP/ICMP checksum, and the quoted
    packet of an ICMP error."""
    hl = (raw[0] & 15) * 4
    assert checksum(raw[:10] + b"\0\0" + raw[12:hl]) == struct.unpack("!H", raw[10:12])[0], \
        "IP header checksum"
    if not whole:
        return
    total = struct.unpack("!H", raw[2:4])[0]
    ip = IP(raw[:total])
    seg = bytes(raw[hl:total])
    if ip.frag or ip.flags.MF:
        return
    if ip.proto == 6:
        got = struct.unpack("!H", seg[16:18])[0]
        assert in4_chksum(6, ip, seg[:16] + b"\0\0" + seg[18:]) == got, "TCP checksum"
    elif ip.proto == 17:
        got = struct.unpack("!H", seg[6:8])[0]
        if got:
            want = in4_chksum(17, ip, seg[:6] + b"\0\0" + seg[8:]) or 0xFFFF
            assert want == got, "UDP checksum"
    elif ip.proto == 1:
        got = struct.unpack("!H", seg[2:4])[0]
        assert checksum(seg[:2] + b"\0\0" + seg[4:]) == got, "ICMP checksum"
        if seg[0] in ERRORS and len(seg) >= 28:
            inner = seg[8:]
            inner_total = struct.unpack("!H", inner[2:4])[0]
            assert_ip_valid(inner, whole=inner_total <= len(inner))


def assert_checksums_valid(frame):
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00":
        assert_ip_valid(frame[14:])


# --- expected packets ------------------------------------------------------------

def outbound(pkt, addr, port):
    """What leaves output 0 for inside packet pkt mapped to addr:port."""
    q = pkt.copy()
    q[IP].src = addr
    del q[IP].chksum
    if TCP in q:
        q[TCP].sport = port
        del q[TCP].chksum
    elif UDP in q:
        q[UDP].sport = port
        if pkt[UDP].chksum != 0:
            del q[UDP].chksum
    else:
        q[ICMP].id = port
        del q[ICMP].chksum
    return bytes(q)


def inbound(pkt, addr, port):
    """What leaves output 1 for outside packet pkt sent back to addr:port."""
    q = pkt.copy()
    q[IP].dst = addr
    del q[IP].chksum
    if TCP in q:
        q[TCP].dport = port
        del q[TCP].chksum
    elif UDP in q:
        q[UDP].dport = port
        if pkt[UDP].chksum != 0:
            del q[UDP].chksum
    else:
        q[ICMP].id = port
        del q[ICMP].chksum
    return bytes(q)


def public_of(frame):
    """(address, port or identifier) a translated outbound frame carries."""
    ip = IP(frame[14:])
    l4 = ip[TCP] if TCP in ip else ip[UDP] if UDP in ip else ip[ICMP]
    return ip.src, (l4.id if ICMP in ip else l4.sport)


def reply_to(pkt, pub, pport, flags="SA"):
    """The remote's answer to inside packet pkt, sent to pub:pport."""
    ip = pkt[IP]
    if TCP in pkt:
        l4 = TCP(sport=pkt[TCP].dport, dport=pport, flags=flags, seq=99, ack=pkt[TCP].seq + 1)
    elif UDP in pkt:
        l4 = UDP(sport=pkt[UDP].dport, dport=pport)
    else:
        l4 = ICMP(type=0, id=pport, seq=pkt[ICMP].seq)
    return Ether(src=ETH["dst"], dst=ETH["src"]) / IP(src=ip.dst, dst=pub) / l4 / b"reply"


def tcp(src, sport, dst="198.51.100.1", dport=80, flags="S", seq=1000, t=0):
    return at(t, Ether(**ETH) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport,
                                                          flags=flags, seq=seq))


def udp(src, sport, dst="198.51.100.1", dport=53, t=0, payload=b"query", chksum=None):
    u = UDP(sport=sport, dport=dport) if chksum is None else UDP(sport=sport, dport=dport,
                                                                   chksum=chksum)
    return at(t, Ether(**ETH) / IP(src=src, dst=dst) / u / payload)


def ping(src, ident, dst="198.51.100.1", seq=1, t=0):
    return at(t, Ether(**ETH) / IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=seq) / b"ping")


def inside_hosts(n):
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


# --- many flows ------------------------------------------------------------------

@pytest.fixture(scope="module")
def many():
    """3000 flows (1000 each of TCP, UDP, ICMP echo) from 60 hosts, with
    inside ports that repeat across hosts, each flow sent twice; then a
    reply for every flow."""
    hosts = inside_hosts(60)
    flows = []
    for i in range(1000):
        h = hosts[i % 60]
        sport = 1000 + (i * 7) % 300       # some below the range, many repeated
        dst = f"198.51.100.{1 + i // 300}"       # the same inside port, other remotes
        flows.append(tcp(h, sport, dst=dst, dport=80 + i % 3, t=i * 0.001))
        flows.append(udp(h, sport, dst=dst, dport=53 + i % 2, t=i * 0.001))
        flows.append(ping(h, sport, dst=dst, t=i * 0.001))
    sent = flows + [at(5 + i * 0.0001, f.copy()) for i, f in enumerate(flows)]
    res1 = run(sent)
    maps = [public_of(f) for f in res1["o0"][:len(flows)]]
    replies = [at(10 + i * 0.0001, reply_to(f, *maps[i])) for i, f in enumerate(flows)]
    res2 = run(sent, replies)
    return flows, sent, res1, res2, maps


def test_every_outbound_packet_is_translated(many):
    flows, sent, res, _, maps = many
    assert len(res["o0"]) == len(sent) == 6000
    for pkt, frame, (addr, port) in zip(sent, res["o0"], maps + maps):
        assert addr == PUB and 1024 <= port <= 65535
        assert frame == outbound(pkt, PUB, port)
    assert res.nat["translated"] == 6000 and res.nat["new_flows"] == 3000
    assert res.nat["dropped"] == 0 and res["o1"] == [] and res["o2"] == []


def test_same_flow_keeps_its_port_and_no_two_flows_share_one(many):
    flows, sent, res, _, maps = many
    again = [public_of(f) for f in res["o0"][len(flows):]]
    assert again == maps
    keys = [(f[IP].proto, port) for f, (_, port) in zip(flows, maps)]
    assert len(set(keys)) == len(flows)


def test_inside_ports_are_preserved_when_in_range_and_free(many):
    flows, _, _, _, maps = many
    taken = set()
    for f, (_, port) in zip(flows, maps):
        l4 = f[TCP] if TCP in f else f[UDP] if UDP in f else f[ICMP]
        inside = l4.id if ICMP in f else l4.sport
        key = (f[IP].proto, inside)
        if inside >= 1024 and key not in taken:
            assert port == inside, (f.summary(), port)
        else:
            assert port != inside or inside < 1024
        taken.add((f[IP].proto, port))


def test_replies_are_translated_back(many):
    flows, _, _, res, maps = many
    assert len(res["o1"]) == len(flows)
    for f, frame, (addr, port) in zip(flows, res["o1"], maps):
        rep = reply_to(f, addr, port)
        l4 = f[TCP] if TCP in f else f[UDP] if UDP in f else f[ICMP]
        want = inbound(rep, f[IP].src, l4.id if ICMP in f else l4.sport)
        assert frame == want
    assert res["o2"] == []
    assert res.nat["translated"] == 6000 + 3000 and res.nat["new_flows"] == 3000


def test_several_public_addresses_pair_each_host_with_one():
    addrs = ["203.0.113.7", "203.0.113.8", "203.0.113.9"]
    hosts = inside_hosts(300)
    pkts = [udp(h, 4000 + k, t=0.001 * i) for i, h in enumerate(hosts) for k in range(3)]
    res = run(pkts, cfg=f"addresses: [{', '.join(addrs)}]")
    seen = {}
    used = set()
    for pkt, frame in zip(pkts, res["o0"]):
        addr, port = public_of(frame)
        assert addr in addrs
        assert frame == outbound(pkt, addr, port)
        assert seen.setdefault(pkt[IP].src, addr) == addr
        assert (addr, port) not in used
        used.add((addr, port))
    assert set(seen.values()) == set(addrs)
    assert res.nat["translated"] == len(pkts)


def test_without_port_preservation_ports_still_unique_and_in_range():
    pkts = [udp(h, 5000) for h in inside_hosts(200)]
    res = run(pkts, cfg='address: 203.0.113.7, ports: "20000-20999", preserve_ports: false')
    ports = [public_of(f)[1] for f in res["o0"]]
    assert len(set(ports)) == 200 and all(20000 <= p <= 20999 for p in ports)
    assert 5000 not in ports
    for pkt, frame, port in zip(pkts, res["o0"], ports):
        assert frame == outbound(pkt, PUB, port)


# --- unsolicited inbound ------------------------------------------------------------

def unsolicited():
    out = udp("10.0.0.5", 5000, dst="198.51.100.1", dport=53)
    e = dict(src=ETH["dst"], dst=ETH["src"])
    return out, [
        Ether(**e) / IP(src="198.51.100.1", dst=PUB) / UDP(sport=53, dport=5001) / b"x",  # no port
        Ether(**e) / IP(src="198.51.100.1", dst="203.0.113.99") / UDP(sport=53, dport=5000),
        Ether(**e) / IP(src="198.51.100.2", dst=PUB) / UDP(sport=53, dport=5000),  # other remote
        Ether(**e) / IP(src="198.51.100.1", dst=PUB) / UDP(sport=54, dport=5000),  # other port
        Ether(**e) / IP(src="198.51.100.1", dst=PUB) / TCP(sport=53, dport=5000),  # other proto
        Ether(**e) / IP(src="198.51.100.1", dst=PUB, proto=47) / (b"\x00" * 8),    # GRE
        Ether(**e) / IP(src="198.51.100.1", dst=PUB) / ICMP(type=8, id=5000),      # ping the NAT
    ]


def test_unsolicited_inbound_goes_to_output_2_unchanged():
    out, ins = unsolicited()
    res = run([at(0, out)], [at(1 + i, p) for i, p in enumerate(ins)])
    assert res["o2"] == [bytes(p) for p in ins]
    assert res["o1"] == []
    assert res.nat["no_mapping"] == len(ins) and res.nat["dropped"] == 0


def test_unsolicited_inbound_is_dropped_without_output_2():
    out, ins = unsolicited()
    res = run([at(0, out)], [at(1 + i, p) for i, p in enumerate(ins)], out2=False)
    assert "o2" not in res.keys() and res["o1"] == []
    assert res.nat["no_mapping"] == len(ins) == res.nat["dropped"]
    assert res.nat["ports"][:2] == [1, 0]


# --- ICMP errors ------------------------------------------------------------------

def error_about(frame, src, icmp_type=3, code=3, quote=None, to=None):
    """An ICMP error from `src` about the IP datagram in `frame`."""
    ip = bytes(frame[14:])
    q = ip if quote is None else ip[:quote]
    dst = to or IP(ip).src
    return Ether(src=ETH["dst"], dst=ETH["src"]) / IP(src=src, dst=dst) / \
        ICMP(type=icmp_type, code=code) / Raw(q)


@pytest.mark.parametrize("kind", ["udp", "tcp", "icmp", "udp0"])
@pytest.mark.parametrize("quote", [None, 28])
def test_icmp_errors_from_outside_are_translated(kind, quote):
    pkt = {"udp": udp("10.0.0.5", 40000), "tcp": tcp("10.0.0.5", 40001),
           "icmp": ping("10.0.0.5", 77), "udp0": udp("10.0.0.5", 40002, chksum=0)}[kind]
    res1 = run([pkt])
    sent = res1["o0"][0]
    addr, port = public_of(sent)
    errs = [error_about(sent, "192.0.2.1", 11, 0, quote=quote),
            error_about(sent, "198.51.100.1", 3, 3, quote=quote)]
    res = run([pkt], [at(1, e) for e in errs])
    orig = bytes(pkt[IP])
    q = orig if quote is None else orig[:quote]
    want = [bytes(Ether(src=ETH["dst"], dst=ETH["src"]) / IP(src=s, dst="10.0.0.5")
                  / ICMP(type=t, code=c) / Raw(q))
            for s, t, c in (("192.0.2.1", 11, 0), ("198.51.100.1", 3, 3))]
    assert res["o1"] == want
    assert res.nat["translated"] == 3 and res["o2"] == []


def test_icmp_errors_without_a_mapping_are_unmatched():
    pkt = udp("10.0.0.5", 40000)
    sent = run([pkt])["o0"][0]
    other = IP(sent[14:])
    other[UDP].sport = 40001                                 # another public port
    del other.chksum
    del other[UDP].chksum
    wrong_remote = IP(sent[14:])
    wrong_remote.dst = "198.51.100.77"
    del wrong_remote.chksum
    del wrong_remote[UDP].chksum
    errs = [error_about(bytes(Ether(**ETH) / other), "192.0.2.1", to=PUB),
            error_about(bytes(Ether(**ETH) / wrong_remote), "192.0.2.1", to=PUB)]
    res = run([pkt], [at(1, e) for e in errs])
    assert res["o2"] == [bytes(e) for e in errs]
    assert res.nat["no_mapping"] == 2


def test_icmp_errors_do_not_refresh_a_mapping():
    pkt = udp("10.0.0.5", 40000, t=0)
    sent = run([pkt])["o0"][0]
    addr, port = public_of(sent)
    err = at(200, error_about(sent, "192.0.2.1"))
    late = at(301, reply_to(pkt, addr, port))        # 301 s after the last real packet
    res = run([pkt], [err, late], cfg="address: 203.0.113.7, udp_timeout: 300")
    assert len(res["o1"]) == 1 and res["o2"] == [bytes(late)]


def test_icmp_errors_from_inside_about_inbound_packets_are_translated():
    pkt = udp("10.0.0.5", 40000)
    sent = run([pkt])["o0"][0]
    addr, port = public_of(sent)
    rep = at(1, reply_to(pkt, addr, port))
    delivered = run([pkt], [rep])["o1"][0]
    # the inside host answers the delivered packet with port unreachable
    err = at(2, Ether(**ETH) / IP(src="10.0.0.5", dst="198.51.100.1") / ICMP(type=3, code=3)
             / Raw(bytes(delivered[14:])))
    res = run([pkt, err], [rep])
    want = bytes(Ether(**ETH) / IP(src=PUB, dst="198.51.100.1") / ICMP(type=3, code=3)
                 / Raw(bytes(rep[IP])))
    assert res["o0"][1] == want
    # about a packet that never came in through a mapping: dropped
    stray = at(3, Ether(**ETH) / IP(src="10.0.0.6", dst="198.51.100.1") / ICMP(type=3, code=3)
               / Raw(bytes(IP(src="198.51.100.1", dst="10.0.0.6") / UDP(sport=53, dport=9))))
    res = run([pkt, err, stray], [rep])
    assert len(res["o0"]) == 2 and res.nat["no_mapping"] == 1


# --- timeouts ------------------------------------------------------------------------

def test_udp_mapping_expires_after_the_timeout():
    pkt = udp("10.0.0.5", 40000, t=0)
    addr, port = public_of(run([pkt])["o0"][0])
    r1 = at(299, reply_to(pkt, addr, port))          # refreshes: now lives until 599
    r2 = at(599.5, reply_to(pkt, addr, port))        # gone
    again = udp("10.0.0.5", 40000, t=600)            # a new flow: a new mapping
    res = run([pkt, again], [r1, r2])
    assert len(res["o1"]) == 1 and res["o2"] == [bytes(r2)]
    assert res.nat["expired"] == 1 and res.nat["new_flows"] == 2
    assert len(res["o0"]) == 2
    assert res["o0"][1] == outbound(again, PUB, public_of(res["o0"][1])[1])


def test_configured_timeouts_with_units():
    cfg = 'address: 203.0.113.7, udp_timeout: 500ms, icmp_timeout: 5'
    u = udp("10.0.0.5", 40000, t=0)
    p = ping("10.0.0.5", 9999, t=0)
    res0 = run([u, p], cfg=cfg)
    (ua, up), (pa, pp) = map(public_of, res0["o0"])
    ins = [at(0.4, reply_to(u, ua, up)), at(0.4 + 0.5, reply_to(u, ua, up)),
           at(4, reply_to(p, pa, pp)), at(9.5, reply_to(p, pa, pp))]
    res = run([u, p], ins, cfg=cfg)
    assert len(res["o1"]) == 2 and res["o2"] == [bytes(ins[1]), bytes(ins[3])]


def test_default_icmp_timeout_is_60_seconds():
    p = ping("10.0.0.5", 9999, t=0)
    pa, pp = public_of(run([p])["o0"][0])
    ins = [at(59, reply_to(p, pa, pp)), at(59 + 60.5, reply_to(p, pa, pp))]
    res = run([p], ins)
    assert len(res["o1"]) == 1 and res["o2"] == [bytes(ins[1])]


def test_tcp_syn_only_uses_the_transitory_timeout():
    syn = tcp("10.0.0.5", 40000, t=0)
    a, port = public_of(run([syn])["o0"][0])
    late = at(241, reply_to(syn, a, port, flags="SA"))
    res = run([syn], [late])
    assert res["o2"] == [bytes(late)] and res.nat["expired"] == 1


def test_established_tcp_lives_long_then_closing_is_short():
    syn = tcp("10.0.0.5", 40000, t=0)
    a, port = public_of(run([syn])["o0"][0])
    synack = at(1, reply_to(syn, a, port, flags="SA"))
    ack = tcp("10.0.0.5", 40000, flags="A", seq=1001, t=2)
    data_in = at(2 + 3600, reply_to(syn, a, port, flags="A"))      # an hour later
    fin_out = tcp("10.0.0.5", 40000, flags="FA", seq=1001, t=3700)
    fin_in = at(3701, reply_to(syn, a, port, flags="FA"))
    late = at(3701 + 241, reply_to(syn, a, port, flags="A"))
    res = run([syn, ack, fin_out], [synack, data_in, fin_in, late])
    assert len(res["o1"]) == 3 and res["o2"] == [bytes(late)]
    assert len(res["o0"]) == 3 and res.nat["new_flows"] == 1


def test_tcp_rst_uses_the_transitory_timeout():
    syn = tcp("10.0.0.5", 40000, t=0)
    a, port = public_of(run([syn])["o0"][0])
    synack = at(1, reply_to(syn, a, port, flags="SA"))
    rst = tcp("10.0.0.5", 40000, flags="R", seq=1001, t=2)
    late = at(2 + 241, reply_to(syn, a, port, flags="A"))
    res = run([syn, rst], [synack, late])
    assert res["o2"] == [bytes(late)]


def test_tcp_flow_seen_mid_stream_becomes_established_on_a_reply():
    mid = tcp("10.0.0.5", 40000, flags="A", t=0)
    a, port = public_of(run([mid])["o0"][0])
    back = at(1, reply_to(mid, a, port, flags="A"))
    later = at(1 + 1000, reply_to(mid, a, port, flags="A"))     # past 240 s, before 7440 s
    res = run([mid], [back, later])
    assert len(res["o1"]) == 2 and res["o2"] == []


# --- exhaustion ------------------------------------------------------------------

def test_full_table_drops_new_flows_and_recovers_after_expiry():
    cfg = "address: 203.0.113.7, capacity: 8"
    first = [udp("10.0.0.5", 41000 + i, t=0) for i in range(10)]
    second = [udp("10.0.1.5", 42000 + i, t=400) for i in range(10)]
    res = run(first + second, cfg=cfg)
    assert res.nat["table_full"] == 4 and res.nat["expired"] == 8
    assert res.nat["new_flows"] == 16 and res.nat["translated"] == 16
    got = res["o0"]
    assert got[:8] == [outbound(p, PUB, 41000 + i) for i, p in enumerate(first[:8])]
    assert got[8:] == [outbound(p, PUB, 42000 + i) for i, p in enumerate(second[:8])]
    # established flows keep their entries while the table is full
    more = [udp("10.0.0.5", 41000, t=1), udp("10.0.0.5", 41009, t=1)]
    res = run(first + more, cfg=cfg)
    assert res.nat["translated"] == 9 and res.nat["table_full"] == 3


def test_port_range_exhaustion_is_per_protocol_and_recovers():
    cfg = 'address: 203.0.113.7, ports: "2000-2003", capacity: 100'
    us = [udp(h, 5000, t=0) for h in inside_hosts(6)]
    ts = [tcp(h, 5000, t=0) for h in inside_hosts(4)]
    later = [udp(h, 5000, t=301) for h in inside_hosts(12)[6:]]
    res = run(us + ts + later, cfg=cfg)
    n = res.nat
    assert n["ports_exhausted"] == 2 + 2 and n["translated"] == 4 + 4 + 4
    ports_u = [public_of(f)[1] for f in res["o0"][:4]]
    ports_t = [public_of(f)[1] for f in res["o0"][4:8]]
    assert sorted(ports_u) == sorted(ports_t) == [2000, 2001, 2002, 2003]
    assert sorted(public_of(f)[1] for f in res["o0"][8:]) == [2000, 2001, 2002, 2003]
    assert n["expired"] == 4


def test_single_port_range():
    cfg = 'address: 203.0.113.7, ports: "7777"'
    res = run([udp("10.0.0.5", 1, t=0), udp("10.0.0.6", 1, t=0)], cfg=cfg)
    assert [public_of(f)[1] for f in res["o0"]] == [7777]
    assert res.nat["ports_exhausted"] == 1


def test_churn_keeps_ports_unique_among_live_flows():
    """Waves of flows through a small table and port range with short
    timeouts: inside each wave every flow has its own port."""
    cfg = 'address: 203.0.113.7, ports: "3000-3099", capacity: 128, udp_timeout: 1'
    pkts = []
    for wave in range(20):
        for k in range(90):
            pkts.append(udp(f"10.0.{wave}.{k % 30 + 1}", 6000 + k, t=wave * 2 + k * 0.001))
    res = run(pkts, cfg=cfg)
    assert res.nat["translated"] == len(pkts)
    assert res.nat["expired"] == 19 * 90
    ports = [public_of(f)[1] for f in res["o0"]]
    for wave in range(20):
        chunk = ports[wave * 90:(wave + 1) * 90]
        assert len(set(chunk)) == 90 and all(3000 <= p <= 3099 for p in chunk)


# --- checksums and odd packets ------------------------------------------------------

def test_udp_checksum_zero_stays_zero():
    pkt = udp("10.0.0.5", 40000, chksum=0)
    res = run([pkt])
    out = IP(res["o0"][0][14:])
    assert out[UDP].chksum == 0
    assert res["o0"][0] == outbound(pkt, PUB, 40000)


def test_checksum_sweep():
    """Many payloads and sequence numbers, so the checksums take many values."""
    pkts = []
    for i in range(256):
        pkts.append(udp("10.0.0.5", 40000 + i, payload=struct.pack("!H", i * 257) * 3))
        pkts.append(tcp("10.0.0.5", 40000 + i, seq=i * 65537))
    pkts.append(ping("10.0.0.5", 0, seq=0))
    res = run(pkts)
    for pkt, frame in zip(pkts, res["o0"]):
        assert frame == outbound(pkt, PUB, public_of(frame)[1])


def _word_for(make, csum_of, target):
    """A 16-bit value w for which csum_of(make(w)) == target. The checksum
    is the complement of a one's complement sum that w enters linearly, so
    w follows from the checksum at w = 0; scapy confirms it."""
    s0 = ~csum_of(make(0)) & 0xFFFF
    base = ((~target & 0xFFFF) - s0) % 0xFFFF
    for w in (base, base + 0xFFFF):
        if w <= 0xFFFF and csum_of(make(w)) == target:
            return w
    raise AssertionError("no such word")


def test_checksum_corners():
    """UDP: a translated checksum that computes to 0 is sent as 0xFFFF, and
    an original 0xFFFF is translated right; TCP: 0x0000 both ways."""
    def u(w):
        return udp("10.0.0.5", 40000, payload=struct.pack("!H", w))

    def t(w):
        return tcp("10.0.0.5", 40001, seq=w)

    def out_udp(p):
        return IP(outbound(p, PUB, 40000)[14:])[UDP].chksum

    def out_tcp(p):
        return IP(outbound(p, PUB, 40001)[14:])[TCP].chksum

    def in_udp(p):
        return IP(bytes(p)[14:])[UDP].chksum

    def in_tcp(p):
        return IP(bytes(p)[14:])[TCP].chksum

    pkts = [u(_word_for(u, out_udp, 0xFFFF)), u(_word_for(u, in_udp, 0xFFFF)),
            t(_word_for(t, out_tcp, 0x0000)), t(_word_for(t, in_tcp, 0x0000))]
    assert in_udp(pkts[1]) == 0xFFFF and in_tcp(pkts[3]) == 0
    for i, p in enumerate(pkts):
        res = run([p])                 # one at a time: each keeps its port
        assert res["o0"] == [outbound(p, PUB, 40000 if i < 2 else 40001)]
    assert out_udp(pkts[0]) == 0xFFFF and out_tcp(pkts[2]) == 0


def test_icmp_echo_reply_that_sums_to_zero():
    """A reply whose translated message is all zeros needs checksum 0xFFFF."""
    p = ping("10.0.0.5", 0, seq=0)
    pa, pp = public_of(run([p])["o0"][0])
    rep = at(1, Ether(src=ETH["dst"], dst=ETH["src"]) / IP(src="198.51.100.1", dst=pa)
             / ICMP(type=0, id=pp, seq=0))
    res = run([p], [rep])
    out = IP(res["o1"][0][14:])
    assert out[ICMP].id == 0 and out[ICMP].chksum == 0xFFFF
    assert res["o1"][0] == inbound(rep, "10.0.0.5", 0)


def test_ip_options_are_kept():
    pkt = at(0, Ether(**ETH) / IP(src="10.0.0.5", dst="198.51.100.1",
                                  options=b"\x94\x04\x00\x00") / TCP(sport=40000, dport=80))
    res = run([pkt])
    assert res["o0"] == [outbound(pkt, PUB, 40000)]


def test_fragments_are_dropped_and_counted():
    frags = [
        at(0, Ether(**ETH) / IP(src="10.0.0.5", dst="198.51.100.1", flags="MF")
           / UDP(sport=40000, dport=53) / (b"a" * 16)),
        at(0, Ether(**ETH) / IP(src="10.0.0.5", dst="198.51.100.1", frag=3, proto=17)
           / (b"b" * 16)),
    ]
    back = [at(1, Ether(src=ETH["dst"], dst=ETH["src"])
               / IP(src="198.51.100.1", dst=PUB, frag=2, proto=17) / (b"c" * 8))]
    res = run(frags, back)
    assert res.nat["fragments"] == 3 and res.nat["dropped"] == 3
    assert res["o0"] == res["o1"] == res["o2"] == []


def test_untranslatable_packets_are_dropped_and_counted():
    e = Ether(**ETH)
    bad = [
        e / IP(src="10.0.0.5", dst="198.51.100.1", proto=6) / b"short",       # TCP < 20
        e / IP(src="10.0.0.5", dst="198.51.100.1", proto=17) / b"abc",        # UDP < 8
        e / IP(src="10.0.0.5", dst="198.51.100.1", proto=47) / (b"gre!" * 3), # other proto
        e / IP(src="10.0.0.5", dst="198.51.100.1") / ICMP(type=0, id=3),      # echo reply
        e / IP(src="10.0.0.5", dst="198.51.100.1") / ICMP(type=13),           # timestamp
        e / IP(src="10.0.0.5", dst="198.51.100.1") / ICMP(type=3) / b"\x45",  # quote too short
    ]
    short_in = [Ether(src=ETH["dst"], dst=ETH["src"]) / IP(src="198.51.100.1", dst=PUB,
                                                          proto=6) / b"x"]
    res = run([at(0, p) for p in bad], [at(1, p) for p in short_in])
    assert res.nat["untranslatable"] == len(bad) + 1
    assert res.nat["dropped"] == len(bad) + 1


def test_packets_without_the_ip_annotation_are_dropped():
    res = run([udp("10.0.0.5", 40000)], [reply_to(udp("10.0.0.5", 40000), PUB, 40000)],
              check=False)
    assert res.nat["untranslatable"] == 2 and res.nat["dropped"] == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), max_size=40))
def test_any_bytes_survive(items):
    """Random tails behind real headers (behind MarkIPHeader, which checks
    nothing), in both directions: no crash, and the counters balance."""
    base = [bytes(udp("10.0.0.5", 40000)), bytes(tcp("10.0.0.5", 40001)),
            bytes(ping("10.0.0.5", 5)),
            bytes(Ether() / IP(src="198.51.100.1", dst=PUB) / ICMP(type=3, code=3))]
    ins, outs = [], []
    for i, (side, tail) in enumerate(items):
        frame = base[i % len(base)][:34 + (len(tail) % 20)] + tail
        (outs if side else ins).append(frame)
    res = run_graph(graph(check=False).replace("inside -> nat", "inside -> m0 -> nat")
                    .replace("outside -> [1]nat", "outside -> m1 -> [1]nat")
                    .replace("elements:\n", "elements:\n  m0: {class: MarkIPHeader, offset: 14}\n"
                             "  m1: {class: MarkIPHeader, offset: 14}\n"),
                    {"inside": ins, "outside": outs})
    res.nat = res.all_stats["nat"]
    check_counters(res)


# --- handlers --------------------------------------------------------------------

def test_mappings_flows_and_flush_handlers():
    eng = Engine(plan.build(loader.load(graph())))
    pkts = [udp("10.0.0.5", 40000, t=0), tcp("10.0.0.6", 40001, t=0), ping("10.0.0.7", 9, t=0)]
    out = eng.run({"inside": _cap(pkts), "outside": _cap([])})
    pubs = [public_of(out["o0"].packet(i)) for i in range(3)]
    assert eng.read("nat.flows") == "3"
    table = eng.read("nat.mappings").splitlines()
    assert table[0].split() == ["proto", "inside", "public", "remote", "state", "expires"]
    rows = sorted(line.split() for line in table[1:])
    assert rows == sorted([
        ["udp", "10.0.0.5:40000", f"{PUB}:{pubs[0][1]}", "198.51.100.1:53", "-", "300.000s"],
        ["tcp", "10.0.0.6:40001", f"{PUB}:{pubs[1][1]}", "198.51.100.1:80", "transitory",
         "240.000s"],
        ["icmp", "10.0.0.7:9", f"{PUB}:{pubs[2][1]}", "198.51.100.1:0", "-", "60.000s"],
    ])
    eng.write("nat.flush")
    assert eng.read("nat.flows") == "0"
    assert eng.read("nat.mappings").splitlines()[1:] == []
    rep = at(1, reply_to(pkts[0], *pubs[0]))
    out = eng.run({"inside": _cap([]), "outside": _cap([rep])})
    assert len(out["o1"]) == 0 and len(out["o2"]) == 1
    with pytest.raises(RunError, match="flush"):
        eng.write("nat.flush", "everything")


def _cap(pkts):
    from middlebox.testing import capture
    return capture(pkts)


# --- configuration ---------------------------------------------------------------

@pytest.mark.parametrize("cfg, message", [
    ("ports: 1024-2000", "missing parameter 'address'"),
    ("address: 203.0.113.300", "parameter 'address': '203.0.113.300' is not an IPv4 address"),
    ("address: 203.0.113.7, addresses: [203.0.113.8]", "give 'address' or 'addresses'"),
    ("addresses: [203.0.113.8, 203.0.113.8]", "203.0.113.8 is listed twice"),
    ("addresses: []", "needs at least one address"),
    ("address: 0.0.0.0", "0.0.0.0 is not a usable public address"),
    ("address: 224.0.0.5", "224.0.0.5 is a multicast address"),
    ("address: 255.255.255.255", "is the broadcast address"),
    ("address: 127.0.0.1", "is a loopback address"),
    ('address: 203.0.113.7, ports: "0-100"', "0 is not a port (1-65535)"),
    ('address: 203.0.113.7, ports: "1024-70000"', "70000 is not a port (1-65535)"),
    ('address: 203.0.113.7, ports: "2000-1000"', "the range is empty (2000 > 1000)"),
    ('address: 203.0.113.7, ports: "lots"', "'lots' is not a port range"),
    ("address: 203.0.113.7, capacity: 0", "parameter 'capacity': 0 is below the minimum 1"),
    ("address: 203.0.113.7, capacity: 99999999", "is above the maximum 4194304"),
    ("address: 203.0.113.7, udp_timeout: 0", "a timeout must be longer than 0"),
    ("address: 203.0.113.7, tcp_timeout: 5 parsecs", "'5 parsecs' is not a duration"),
    ("address: 203.0.113.7, icmp_timeout: 30d", "'30d' is not a duration"),
    ("address: 203.0.113.7, tcp_transitory_timeout: 999999999", "at most 604800 seconds"),
    ("address: 203.0.113.7, timeout: 5", "unknown parameter 'timeout'"),
])
def test_bad_configuration_is_refused(cfg, message):
    with pytest.raises(ConfigError) as err:
        loader.load(graph(cfg))
    assert "element 'nat'" in str(err.value)
    assert message in str(err.value)


def test_too_many_addresses():
    addrs = ", ".join(f"203.0.113.{i}" for i in range(1, 40))
    with pytest.raises(ConfigError, match="element 'nat'.*at most 32 addresses"):
        loader.load(graph(f"addresses: [{addrs}]"))
