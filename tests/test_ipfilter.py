"""IPClassifier and IPFilter: Click's tcpdump-like expressions over IPv4.

Packets enter as Ethernet frames through CheckIPHeader(offset 14), which
sets the nh annotation and trims each frame to its IP total length; so a
truncated packet is one whose IP total length ends inside its transport
header (tests/fixtures/make_ipfilter_fixtures.py).

Expected outputs come from the documented semantics (elements/ipfilter.py),
evaluated here over scapy's view of each packet (`View`): a primitive holds
when its protocol/first-fragment conditions hold, every byte it reads lies in
the datagram, and its relation holds; `!=`, `>=`, `<=` negate `==`, `<`, `>`
after the src/dst combination; `not` negates the whole primitive. The
property test draws expressions as trees here, prints them as text and
evaluates the trees with scapy fields -- never with the compiled program.
"""

import ipaddress
import json
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.utils import checksum

from middlebox import pcap
from middlebox.errors import ConfigError, RunError
from middlebox.testing import run_element, run_graph
from middlebox.elements.ipfilter import IPClassifier, IPFilter

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CLICK = os.path.join(FIXTURES, "ipfilter_click.pcap")
SHORT = os.path.join(FIXTURES, "ipfilter_short.pcap")
SERVICES = os.path.join(FIXTURES, "ipfilter_services.pcap")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ETH = bytes.fromhex("020000000002" "020000000001" "0800")


def frames(path):
    cap = pcap.read(path)
    return [bytes(cap.packet(i)) for i in range(len(cap))]


ALL = frames(CLICK) + frames(SHORT) + frames(SERVICES)


# --- scapy's view of a packet ----------------------------------------------------

class View:
    """A frame as the documented semantics see it: the IPv4 datagram D (from
    the header to the smaller of the frame's end and the total length), its
    header fields from scapy, and its transport bytes T (after IHL * 4)."""

    def __init__(self, frame, offset=14):
        hdr = IP(frame[offset:offset + 60] + bytes(60))
        self.ip = hdr
        self.D = frame[offset:][:hdr.len]
        self.T = self.D[hdr.ihl * 4:] if hdr.ihl >= 5 else b""
        self.first = hdr.frag == 0
        self.proto = hdr.proto

    def has(self, n):
        return len(self.T) >= n

    @property
    def tcp(self):
        return TCP(self.T + bytes(60))

    @property
    def udp(self):
        return UDP(self.T + bytes(60))

    @property
    def icmp(self):
        return ICMP(self.T + bytes(60))

    def ports(self):
        l4 = self.tcp if self.proto == 6 else self.udp
        return l4.sport, l4.dport

    def transport(self, protos, need):
        """The conditions of a transport primitive."""
        return self.proto in protos and self.first and self.has(need)

    def tcp_flag(self, bit):
        return self.transport((6,), 14) and bool(int(self.tcp.flags) & bit)


def in_net(addr, net):
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


# --- running ------------------------------------------------------------------------

def graph_text(cls, key, items, nout, front="CheckIPHeader", extra=""):
    outs = "\n".join(f"  o{k}: {{class: ToDevice, device: o{k}}}" for k in range(nout))
    conns = "\n".join(f"  - f[{k}] -> o{k}" for k in range(nout))
    cfg = json.dumps({"class": cls, key: items})
    chk = f"  chk: {{class: {front}, offset: 14}}\n  " if front else "  "
    path = "lan -> chk -> f" if front else "lan -> f"
    return f"""name: t
elements:
  lan: {{class: FromDevice, device: lan}}
{chk}f: {cfg}
{outs}
{extra}connections:
  - {path}
{conns}
"""


def run(cls, items, packets, nout=None, front="CheckIPHeader"):
    key = "patterns" if cls == "IPClassifier" else "rules"
    if nout is None:
        el = (IPClassifier if cls == "IPClassifier" else IPFilter).from_config("f", {key: items})
        nout = el.noutputs()
    res = run_graph(graph_text(cls, key, items, nout, front), {"lan": packets})
    return res, nout


def check(res, packets, expected, nout):
    """Each packet left output `expected` (None: dropped), in order; the
    counters agree."""
    for k in range(nout):
        want = [p for p, e in zip(packets, expected) if e == k]
        got = res[f"o{k}"]
        if front_trims(res):
            want = [trimmed(p) for p in want]
        assert got == want, f"output {k}"
    s = res.all_stats["f"]
    assert s["in"] == len(packets)
    assert s["ports"] == [sum(e == k for e in expected) for k in range(nout)]
    assert s["dropped"] == sum(e is None for e in expected)
    assert s["in"] + s["created"] == s["out"] + s["dropped"]
    return s


def front_trims(res):
    return "chk" in res.all_stats and res.all_stats["chk"]["class"] == "CheckIPHeader"


def trimmed(frame):
    """What CheckIPHeader leaves of a frame: up to the IP total length."""
    return frame[:14 + struct.unpack("!H", frame[16:18])[0]]


def classify(patterns, packets, preds):
    """Run an IPClassifier; expected output = first predicate that holds."""
    res, n = run("IPClassifier", patterns, packets)
    expected = [next((k for k, f in enumerate(preds) if f(View(p))), None) for p in packets]
    s = check(res, packets, expected, n)
    assert s["no_match"] == expected.count(None) and s["no_ip"] == 0
    return expected


# --- Click's examples --------------------------------------------------------------------

def test_click_example_net_and_flags():
    net = "10.0.0.0/24"

    def from_net(v):
        return in_net(v.ip.src, net) or in_net(v.ip.dst, net)

    expected = classify(
        ["10.0.0.0/24 and syn", "10.0.0.0/24 and fin ack", "10.0.0.0/24 and tcp", "-"],
        frames(CLICK),
        [lambda v: from_net(v) and v.tcp_flag(0x02),
         lambda v: from_net(v) and v.tcp_flag(0x01) and v.tcp_flag(0x10),
         lambda v: from_net(v) and v.proto == 6,
         lambda v: True])
    assert set(expected) == {0, 1, 2, 3}


def test_click_example_ports():
    expected = classify(
        ["dst tcp port 8000 or 8080", "dst tcp port > 1023", "tcp"], frames(CLICK),
        [lambda v: v.transport((6,), 4) and v.tcp.dport in (8000, 8080),
         lambda v: v.transport((6,), 4) and v.tcp.dport > 1023,
         lambda v: v.proto == 6])
    assert set(expected) == {0, 1, 2, None}
    # the TCP fragment is 'tcp' but no port test matches it
    frag = [p for p in frames(CLICK) if View(p).ip.frag]
    assert frag and all(expected[frames(CLICK).index(p)] == 2 for p in frag)


def test_ipfilter_firewall_rules():
    rules = ["deny src net 10.1.0.0/16",
             "allow tcp && src port > 1023 && dst port www && syn",
             "1 udp dst port domain",
             "2 icmp type echo || icmp type echo-reply",
             "allow dst host 10.0.0.200 && tcp dst port 8000-8080 && ack",
             "drop all"]
    packets = frames(CLICK)
    res, n = run("IPFilter", rules, packets)
    assert n == 3

    def want(v):
        if in_net(v.ip.src, "10.1.0.0/16"):
            return "deny"
        if v.transport((6,), 14) and v.tcp.sport > 1023 and v.tcp.dport == 80 and v.tcp_flag(2):
            return 0
        if v.transport((17,), 4) and v.udp.dport == 53:
            return 1
        if v.transport((1,), 1) and v.icmp.type in (8, 0):
            return 2
        if v.ip.dst == "10.0.0.200" and v.transport((6,), 14) and 8000 <= v.tcp.dport <= 8080 \
                and v.tcp_flag(0x10):
            return 0
        return "deny"

    wants = [want(View(p)) for p in packets]
    expected = [None if w == "deny" else w for w in wants]
    assert set(expected) == {0, 1, 2, None}
    s = check(res, packets, expected, n)
    assert s["denied"] == wants.count("deny") and s["no_match"] == 0 and s["no_ip"] == 0


# --- Click's IPFilter-01..03: short packets and fragments ---------------------------

def transp1(v):
    """(byte transp[1] is in the datagram of a first fragment, its value)"""
    present = v.first and v.has(2)
    return present, v.T[1] if present else None


def test_short_packets_never_match_tests_on_missing_bytes():      # IPFilter-01
    packets = frames(SHORT)
    res, n = run("IPFilter", ["0 transp[1]&128==0"], packets)
    expected = [0 if transp1(View(p))[0] and not transp1(View(p))[1] & 128 else None
                for p in packets]
    # the fixture has cuts at 0, 1 and 2+ transport bytes, and fragments
    assert expected.count(0) > 10 and expected.count(None) > 20
    s = check(res, packets, expected, n)
    assert s["no_match"] == expected.count(None)


def test_length_checks_survive_both_outcomes_of_a_bit():          # IPFilter-02
    packets = frames(SHORT)
    # transp[1]&128 is 0 or 128 whenever the byte is there: the rule holds
    # exactly when it is, so the optimiser must keep the length test.
    res, n = run("IPFilter", ["0 transp[1]&128==0 || transp[1]&128==128"], packets)
    expected = [0 if transp1(View(p))[0] else None for p in packets]
    assert 0 in expected and None in expected
    check(res, packets, expected, n)
    res, n = run("IPFilter", ["0 transp[1]&128==0", "1 -"], packets)
    check(res, packets, [0 if transp1(View(p))[0] and not transp1(View(p))[1] & 128 else 1
                         for p in packets], n)


def test_not_equal_versus_not():                                  # IPFilter-03
    packets = frames(SHORT)
    a = [transp1(View(p))[0] and bool(transp1(View(p))[1] & 128) for p in packets]
    b = [not (transp1(View(p))[0] and not transp1(View(p))[1] & 128) for p in packets]
    assert a != b                   # they differ on short packets and fragments
    res, n = run("IPFilter", ["0 transp[1]&128!=0"], packets)
    check(res, packets, [0 if x else None for x in a], n)
    res, n = run("IPFilter", ["0 not (transp[1]&128==0)"], packets)
    check(res, packets, [0 if x else None for x in b], n)


@pytest.mark.parametrize("expr, pred", [
    ("tcp dst port 80", lambda v: v.transport((6,), 4) and v.tcp.dport == 80),
    ("not tcp dst port 80", lambda v: not (v.transport((6,), 4) and v.tcp.dport == 80)),
    ("tcp src port != 0", lambda v: v.transport((6,), 2) and v.tcp.sport != 0),
    ("not tcp src port 0", lambda v: not (v.transport((6,), 2) and v.tcp.sport == 0)),
    ("! (tcp && dst port 80)", lambda v: not (v.proto == 6 and v.transport((6, 17), 4)
                                             and v.ports()[1] == 80)),
    ("src port 128", lambda v: v.transport((6, 17), 2) and v.ports()[0] == 128),
    ("port 128", lambda v: v.transport((6, 17), 4) and 128 in v.ports()),
    ("udp src port < 1", lambda v: v.transport((17,), 2) and v.udp.sport < 1),
    ("tcp opt syn", lambda v: v.tcp_flag(0x02)),
    ("not syn", lambda v: not v.tcp_flag(0x02)),
    ("ip frag", lambda v: v.ip.frag != 0 or bool(v.ip.flags.MF)),
    ("ip unfrag", lambda v: v.ip.frag == 0 and not v.ip.flags.MF),
    ("unfrag or tcp", lambda v: (v.ip.frag == 0 and not v.ip.flags.MF) or v.proto == 6),
    ("transp[0:2] == 0x8080", lambda v: v.first and v.has(2) and v.T[:2] == b"\x80\x80"),
    ("ip[20] & 0x80 == 0x80", lambda v: len(v.D) >= 21 and v.D[20] & 0x80 == 0x80),
    ("ip[20:2] < 1", lambda v: len(v.D) >= 22 and v.D[20:22] == b"\0\0"),
    ("ip hl > 5", lambda v: v.ip.ihl > 5),
])
def test_fragments_and_truncations(expr, pred):
    expected = classify([expr], frames(SHORT), [pred])
    assert 0 in expected and None in expected


def test_padding_after_the_datagram_is_not_read():
    # MarkIPHeader does not trim: the classifier still stops at the IP
    # total length, whatever bytes the frame carries after it.
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=80))
    packets = [frame_of(pkt, cut=k, pad=pkt[k:] + b"\0" * 8) for k in range(20, 41)]
    res, n = run("IPClassifier", ["tcp dst port 80", "ip[23] == 0x50", "-"], packets,
                 front="MarkIPHeader")
    expected = [0 if k >= 24 else 2 for k in range(20, 41)]
    check(res, packets, expected, n)


def test_frame_shorter_than_total_length():
    # MarkIPHeader does not check the total length either: a frame cut
    # before it ends the datagram at the frame's end.
    pkt = frame_of(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=80)))
    packets = [pkt[:n] for n in range(14 + 20, len(pkt) + 1)]
    res, n = run("IPClassifier", ["tcp dst port 80", "tcp", "-"], packets, front="MarkIPHeader")
    expected = [0 if len(p) >= 14 + 24 else 1 for p in packets]
    check(res, packets, expected, n)


def test_packets_without_an_ip_header_are_dropped_and_counted():
    good = frame_of(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)))
    tiny = bytearray(good)
    tiny[16:18] = struct.pack("!H", 19)          # total length below 20
    packets = [good, bytes(tiny), good[:14 + 19], b"", good[:10]]
    # MarkIPHeader sets nh where 20 bytes follow; the classifier still wants
    # a datagram of 20 bytes (total length >= 20).
    res, n = run("IPClassifier", ["-"], packets, front="MarkIPHeader")
    s = res.all_stats["f"]
    assert res["o0"] == [good]
    assert s["in"] == 2 and s["no_ip"] == 1 and s["dropped"] == 1
    # Without any annotation, nothing gets through.
    res, n = run("IPFilter", ["allow all"], packets, front=None)
    s = res.all_stats["f"]
    assert res["o0"] == [] and s["no_ip"] == 5 and s["dropped"] == 5 and s["denied"] == 0


def frame_of(ip_bytes, cut=None, pad=b""):
    raw = bytearray(ip_bytes)
    if cut is not None:
        del raw[cut:]
        raw[2:4] = struct.pack("!H", len(raw))
    ihl = (raw[0] & 0x0F) * 4
    raw[10:12] = b"\0\0"
    raw[10:12] = struct.pack("!H", checksum(bytes(raw[:ihl])))
    return ETH + bytes(raw) + pad


# --- spellings, names, boundaries ------------------------------------------------------

@pytest.mark.parametrize("flag, bit", [("syn", 0x02), ("ack", 0x10), ("fin", 0x01),
                                       ("rst", 0x04), ("psh", 0x08), ("urg", 0x20)])
@pytest.mark.parametrize("spelling", ["tcp opt {}", "{}", "tcp {}", "opt {}"])
def test_tcp_flag_spellings(flag, bit, spelling):
    expected = classify([spelling.format(flag)], frames(SERVICES), [lambda v: v.tcp_flag(bit)])
    assert 0 in expected and None in expected


def test_tcp_flag_combinations():
    packets = frames(SERVICES)
    preds = [lambda v: v.tcp_flag(1) and v.tcp_flag(0x10),
             lambda v: v.tcp_flag(0x04) or v.tcp_flag(0x20),
             lambda v: v.transport((6,), 14) and int(v.tcp.flags) & 0x12 == 0x12,
             lambda v: v.proto == 6]
    expected = classify(["fin ack", "tcp opt rst || urg", "tcp[13] & 0x12 == 0x12", "tcp"],
                        packets, preds)
    assert set(expected) == {0, 1, 2, 3, None}
    # the TCP packet cut before its flags byte is 'tcp' but has no flags
    cut = [p for p in packets if View(p).proto == 6 and not View(p).has(14)]
    assert cut and all(expected[packets.index(p)] == 3 for p in cut)


@pytest.mark.parametrize("expr, port, srcdst, protos", [
    ("dst port http", 80, "dst", (6, 17)),
    ("dst port www", 80, "dst", (6, 17)),
    ("dst tcp port 80", 80, "dst", (6,)),
    ("tcp dst port https", 443, "dst", (6,)),
    ("src port domain", 53, "src", (6, 17)),
    ("udp src port dns", 53, "src", (17,)),
    ("port ssh", 22, "either", (6, 17)),
    ("ftp", 21, "either", (6, 17)),
    ("src or dst port 1023", 1023, "either", (6, 17)),
    ("src and dst port domain", 53, "both", (6, 17)),
    ("udp port 0x3e8", 1000, "either", (17,)),
])
def test_ports_and_names(expr, port, srcdst, protos):
    def pred(v):
        need = 2 if srcdst == "src" else 4
        if not v.transport(protos, need):
            return False
        s, d = v.ports()
        return {"src": s == port, "dst": d == port, "either": port in (s, d),
                "both": s == d == port}[srcdst]

    expected = classify([expr], frames(SERVICES), [pred])
    assert 0 in expected and None in expected


# The relation rule: '!=', '>=' and '<=' negate '==', '<' and '>' after the
# src/dst combination.
RELATIONS = {
    "==": lambda a, b: a == b, "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}
NEGATED = {"!=": "==", ">=": "<", "<=": ">"}


def relate(values, combine, op, k):
    """Documented: combine (any/all) the relation over the fields."""
    if isinstance(k, tuple):
        r = combine(k[0] <= v <= k[1] for v in values)
        return not r if op == "!=" else r
    if op in NEGATED:
        return not combine(RELATIONS[NEGATED[op]](v, k) for v in values)
    return combine(RELATIONS["==" if op == "=" else op](v, k) for v in values)


@pytest.mark.parametrize("op", ["==", "!=", "<", ">", "<=", ">="])
@pytest.mark.parametrize("k", [0, 1, 999, 1000, 1023, 1024, 2000, 65534, 65535])
def test_port_comparisons_at_the_boundaries(op, k):
    packets = frames(SERVICES)

    def pred_dst(v):
        return v.transport((6, 17), 4) and relate([v.ports()[1]], any, op, k)

    def pred_either(v):
        return v.transport((6, 17), 4) and relate(v.ports(), any, op, k)

    classify([f"dst port {op} {k}", f"port {op} {k}"], packets, [pred_dst, pred_either])


@pytest.mark.parametrize("expr, lo, hi, op", [
    ("dst port 1000-2000", 1000, 2000, "=="),
    ("dst port 1000 - 2000", 1000, 2000, "=="),
    ("dst port != 1000-2000", 1000, 2000, "!="),
    ("dst port 1023-1024", 1023, 1024, "=="),
    ("dst port 0-1023", 0, 1023, "=="),
    ("dst port 1024-65535", 1024, 65535, "=="),
    ("dst port 443-443", 443, 443, "=="),
    ("dst port 1-65534", 1, 65534, "=="),
])
def test_port_ranges(expr, lo, hi, op):
    expected = classify([expr, "src port 1000-2000"], frames(SERVICES), [
        lambda v: v.transport((6, 17), 4) and relate([v.ports()[1]], any, op, (lo, hi)),
        lambda v: v.transport((6, 17), 2) and 1000 <= v.ports()[0] <= 2000])
    assert 0 in expected


def test_port_comparisons_combine_like_click():
    packets = frames(SERVICES)
    # 'port > 1023': either port above; 'port >= 1024': not (either below),
    # i.e. both ports at least 1024.
    preds = [lambda v: v.transport((6, 17), 4) and max(v.ports()) > 1023,
             lambda v: v.transport((6, 17), 4) and min(v.ports()) >= 1024]
    e1 = classify(["port > 1023"], packets, preds[:1])
    e2 = classify(["port >= 1024"], packets, preds[1:])
    assert e1 != e2


@pytest.mark.parametrize("expr, pred", [
    ("icmp type echo", lambda v: v.transport((1,), 1) and v.icmp.type == 8),
    ("icmp echo-reply", lambda v: v.transport((1,), 1) and v.icmp.type == 0),
    ("icmp type unreachable or icmp type timeexceeded",
     lambda v: v.transport((1,), 1) and v.icmp.type in (3, 11)),
    ("icmp type != echo", lambda v: v.transport((1,), 1) and v.icmp.type != 8),
    ("icmp type > 11", lambda v: v.transport((1,), 1) and v.icmp.type > 11),
    ("icmp type <= redirect", lambda v: v.transport((1,), 1) and v.icmp.type <= 5),
    ("icmp[1] == 1", lambda v: v.transport((1,), 2) and v.icmp.code == 1),
    ("ip ttl 64", lambda v: v.ip.ttl == 64),
    ("ip ttl > 64", lambda v: v.ip.ttl > 64),
    ("ip ttl < 64", lambda v: v.ip.ttl < 64),
    ("ip ttl >= 64", lambda v: v.ip.ttl >= 64),
    ("ip ttl <= 1", lambda v: v.ip.ttl <= 1),
    ("ip ttl != 0", lambda v: v.ip.ttl != 0),
    ("ip ttl & 0xc0 == 0x40", lambda v: v.ip.ttl & 0xC0 == 0x40),
    ("ip ttl & 0x0f > 0", lambda v: v.ip.ttl & 0x0F > 0),
    ("ip tos 0xb8", lambda v: v.ip.tos == 0xB8),
    ("ip dscp 46", lambda v: v.ip.tos >> 2 == 46),
    ("ip dscp > 10", lambda v: v.ip.tos >> 2 > 10),
    ("ip ect", lambda v: v.ip.tos & 3 != 0),
    ("ip ce", lambda v: v.ip.tos & 3 == 3),
    ("ip len > 40", lambda v: v.ip.len > 40),
    ("ip len 20-28", lambda v: 20 <= v.ip.len <= 28),
    ("ip proto 47", lambda v: v.proto == 47),
    ("ip proto tcp", lambda v: v.proto == 6),
    ("ip proto > 6", lambda v: v.proto > 6),
    ("not ip proto 1 and not ip proto 6", lambda v: v.proto not in (1, 6)),
    ("tcp win 8192", lambda v: v.transport((6,), 16) and v.tcp.window == 8192),
    ("dst host 10.0.0.1", lambda v: v.ip.dst == "10.0.0.1"),
    ("host 10.0.0.1", lambda v: "10.0.0.1" in (v.ip.src, v.ip.dst)),
    ("src host != 10.0.0.7", lambda v: v.ip.src != "10.0.0.7"),
    ("host != 10.0.0.1", lambda v: "10.0.0.1" not in (v.ip.src, v.ip.dst)),
    ("src and dst net 10.0.0.0 mask 255.255.255.252",
     lambda v: in_net(v.ip.src, "10.0.0.0/30") and in_net(v.ip.dst, "10.0.0.0/30")),
    ("dst net 10.0.0.4/30", lambda v: in_net(v.ip.dst, "10.0.0.4/30")),
    ("10.0.0.8/29", lambda v: in_net(v.ip.src, "10.0.0.8/29") or in_net(v.ip.dst, "10.0.0.8/29")),
    ("10.0.0.5", lambda v: "10.0.0.5" in (v.ip.src, v.ip.dst)),
    ("src host 10.0.0.1 or 10.0.0.3",
     lambda v: v.ip.src in ("10.0.0.1", "10.0.0.3")),
    ("src port 80 or 443 or domain",
     lambda v: v.transport((6, 17), 2) and v.ports()[0] in (80, 443, 53)),
    ("ip ttl 0 or 255", lambda v: v.ip.ttl in (0, 255)),
    ("udp && (dst port 2 || src port 22) && ip ttl > 63",
     lambda v: v.transport((17,), 4) and (v.udp.dport == 2 or v.udp.sport == 22)
     and v.ip.ttl > 63),
    ("ip and not (tcp or udp)", lambda v: v.proto not in (6, 17)),
    ("true", lambda v: True),
    ("false or all", lambda v: True),
    ("tcp false", lambda v: False),
])
def test_primitives(expr, pred):
    classify([expr], frames(SERVICES) + frames(CLICK), [pred])


def test_classifier_and_filter_agree():
    packets = ALL
    pats = ["tcp syn && dst port 22", "udp port domain", "icmp", "ip frag", "-"]
    res, n = run("IPClassifier", pats, packets)
    res2, n2 = run("IPFilter", [f"{k} {p}" for k, p in enumerate(pats)], packets)
    assert n == n2 == 5
    for k in range(n):
        assert res[f"o{k}"] == res2[f"o{k}"]
    assert sum(len(res[f"o{k}"]) for k in range(n)) == len(packets)


def test_filter_outputs_and_counters():
    el = IPFilter.from_config("f", {"rules": ["3 udp", "allow tcp", "deny icmp"]})
    assert el.noutputs() == 4
    assert IPFilter.from_config("f", {"rules": ["deny all"]}).noutputs() == 1
    assert IPFilter.from_config("f", {"rules": ["allow"]}).noutputs() == 1
    packets = ALL
    res, n = run("IPFilter", ["3 udp", "allow tcp", "deny icmp"], packets)
    expected = [3 if View(p).proto == 17 else 0 if View(p).proto == 6 else None for p in packets]
    s = check(res, packets, expected, n)
    icmp = sum(View(p).proto == 1 for p in packets)
    assert s["denied"] == icmp > 0
    assert s["no_match"] == expected.count(None) - icmp > 0


# --- property test: random expressions, random packets --------------------------------

ADDRS = ["10.0.0.1", "10.0.0.2", "10.0.1.7", "192.168.1.1"]
PORTS = [0, 1, 20, 22, 53, 80, 443, 1023, 1024, 1999, 2000, 2001, 8080, 65535]
PORT_NAMES = {"ssh": 22, "domain": 53, "www": 80, "http": 80, "https": 443, "ftp-data": 20}
ICMP_TYPES = [0, 3, 5, 8, 11, 13, 255]
ICMP_NAMES = {"echo-reply": 0, "unreachable": 3, "redirect": 5, "echo": 8, "timeexceeded": 11,
              "timestamp": 13}
FLAGS = {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32}
OPS = ["==", "=", "!=", "<", ">", "<=", ">="]
NOPS = b"\x01\x01\x01\x00"


class Prim:
    """One primitive: its text and its meaning over a View."""

    def __init__(self, text, holds):
        self.text, self.holds = text, holds


def num(draw, v):
    return hex(v) if draw(st.integers(0, 5)) == 0 else str(v)


@st.composite
def relation(draw, full, names=None, values=None):
    """(text after the field, op, value) for an integer field."""
    vals = st.sampled_from(values) if values else st.integers(0, full)
    if draw(st.integers(0, 6)) == 0:
        lo = draw(vals)
        hi = draw(st.integers(lo, full))
        op = draw(st.sampled_from(["", "!= "]))
        return f"{op}{lo}-{hi}", "!=" if op else "==", (lo, hi)
    op = draw(st.sampled_from(OPS))
    v = draw(vals | st.integers(0, full))
    text = num(draw, v)
    if names and op in ("==", "=", "!=") and draw(st.booleans()):
        named = [n for n, x in names.items() if x == v]
        if named:
            text = draw(st.sampled_from(named))
    return f"{op} {text}", op, v


SRCDST = ["", "src ", "dst ", "src or dst ", "src and dst "]


def pick(srcdst, pair):
    return {"src ": pair[:1], "dst ": pair[1:]}.get(srcdst, pair)


def comb(srcdst):
    return all if srcdst == "src and dst " else any


@st.composite
def primitives(draw):
    kind = draw(st.sampled_from(["proto", "host", "net", "port", "port", "icmp", "opt",
                                 "field", "frag", "bytes", "const"]))
    if kind == "proto":
        name, n = draw(st.sampled_from([("tcp", 6), ("udp", 17), ("icmp", 1), ("", 47)]))
        if name and draw(st.booleans()):
            return Prim(draw(st.sampled_from([name, f"ip proto {name}"])), lambda v: v.proto == n)
        rel, op, k = draw(relation(255, values=[1, 6, 17, 47]))
        return Prim(f"ip proto {rel}", lambda v: relate([v.proto], any, op, k))
    if kind == "host":
        sd = draw(st.sampled_from(SRCDST))
        a = draw(st.sampled_from(ADDRS))
        op = draw(st.sampled_from(["", "== ", "!= "]))
        return Prim(f"{sd}host {op}{a}", lambda v: relate(
            [x for x in pick(sd, (v.ip.src, v.ip.dst))], comb(sd), op.strip() or "==", a))
    if kind == "net":
        sd = draw(st.sampled_from(SRCDST))
        a = draw(st.sampled_from(ADDRS))
        plen = draw(st.sampled_from([8, 16, 24, 30, 32, 0]))
        net = ipaddress.ip_network(f"{a}/{plen}", strict=False)
        text = f"{net}" if draw(st.booleans()) else f"{net.network_address} mask {net.netmask}"
        return Prim(f"{sd}net {text}", lambda v: comb(sd)(
            ipaddress.ip_address(x) in net for x in pick(sd, (v.ip.src, v.ip.dst))))
    if kind == "port":
        sd = draw(st.sampled_from(SRCDST))
        proto, protos = draw(st.sampled_from([("", (6, 17)), ("tcp ", (6,)), ("udp ", (17,))]))
        rel, op, k = draw(relation(65535, PORT_NAMES, PORTS))
        if draw(st.booleans()):
            text = f"{proto}{sd}port {rel}"
        else:
            text = f"{sd}{proto}port {rel}"
        need = 2 if sd == "src " else 4
        return Prim(text, lambda v: v.transport(protos, need) and relate(
            pick(sd, v.ports()), comb(sd), op, k))
    if kind == "icmp":
        rel, op, k = draw(relation(255, ICMP_NAMES, ICMP_TYPES))
        return Prim(f"icmp type {rel}", lambda v: v.transport((1,), 1) and relate(
            [v.icmp.type], any, op, k))
    if kind == "opt":
        flag = draw(st.sampled_from(list(FLAGS)))
        spelling = draw(st.sampled_from(["tcp opt {}", "{}", "tcp {}"]))
        return Prim(spelling.format(flag), lambda v: v.tcp_flag(FLAGS[flag]))
    if kind == "field":
        name, full, get = draw(st.sampled_from([
            ("ttl", 255, lambda v: v.ip.ttl), ("tos", 255, lambda v: v.ip.tos),
            ("dscp", 63, lambda v: v.ip.tos >> 2), ("len", 65535, lambda v: v.ip.len),
            ("id", 65535, lambda v: v.ip.id)]))
        mask = draw(st.one_of(st.none(), st.integers(1, full)))
        rel, op, k = draw(relation(full, values=[0, 1, 20, 40, 63, 64, 65, 128, 255]
                                   if full >= 255 else [0, 1, 10, 46, 63]))
        mtext = "" if mask is None else f" & {num(draw, mask)}"
        m = full if mask is None else mask
        return Prim(f"ip {name}{mtext} {rel}", lambda v: relate([get(v) & m], any, op, k))
    if kind == "frag":
        if draw(st.booleans()):
            return Prim(draw(st.sampled_from(["ip frag", "frag"])),
                        lambda v: v.ip.frag != 0 or bool(v.ip.flags.MF))
        return Prim(draw(st.sampled_from(["ip unfrag", "unfrag"])),
                    lambda v: v.ip.frag == 0 and not v.ip.flags.MF)
    if kind == "bytes":
        base = draw(st.sampled_from(["ip", "transp", "tcp", "udp"]))
        length = draw(st.integers(1, 4))
        off = draw(st.integers(0, 30 if base == "ip" else 18))
        full = (1 << (8 * length)) - 1
        mask = draw(st.one_of(st.none(), st.integers(1, full)))
        rel, op, k = draw(relation(full, values=[0, 1, 0x50, 0x80, full]))
        where = f"{base}[{off}:{length}]" if length > 1 or draw(st.booleans()) else f"{base}[{off}]"
        mtext = "" if mask is None else f" & {num(draw, mask)}"
        m = full if mask is None else mask

        def holds(v):
            if base == "ip":
                data, ok = v.D, len(v.D) >= off + length
            else:
                protos = {"transp": None, "tcp": (6,), "udp": (17,)}[base]
                data = v.T
                ok = v.first and v.has(off + length) and (protos is None or v.proto in protos)
            return ok and relate([int.from_bytes(data[off:off + length], "big") & m], any, op, k)

        return Prim(f"{where}{mtext} {rel}", holds)
    value = draw(st.booleans())
    return Prim("true" if value else "false", lambda v: value)


@st.composite
def expressions(draw, depth=3):
    """(text, holds) for a random expression tree."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        p = draw(primitives())
        return p.text, p.holds, False
    kind = draw(st.sampled_from(["and", "or", "not"]))
    a_text, a, a_compound = draw(expressions(depth - 1))

    def paren(text, compound):
        return f"({text})" if compound or draw(st.integers(0, 5)) == 0 else text

    if kind == "not":
        word = draw(st.sampled_from(["not ", "!", "! "]))
        return f"{word}{paren(a_text, a_compound)}", lambda v: not a(v), False
    b_text, b, b_compound = draw(expressions(depth - 1))
    if kind == "and":
        sep = draw(st.sampled_from([" and ", " && ", "&&", " "]))
        if sep == " ":              # juxtaposition: keep the right operand apart
            b_compound = True
        return f"{paren(a_text, a_compound)}{sep}{paren(b_text, b_compound)}", \
            lambda v: a(v) and b(v), True
    sep = draw(st.sampled_from([" or ", " || ", "||"]))
    return f"{paren(a_text, a_compound)}{sep}{paren(b_text, b_compound)}", \
        lambda v: a(v) or b(v), True


@st.composite
def packets(draw, frame_cuts=False):
    """A valid Ethernet/IPv4 frame with random fields, options, fragments,
    truncation (a short IP total length) and Ethernet padding; with
    frame_cuts (for MarkIPHeader, which checks neither), also frames cut
    short of their total length."""
    opts = draw(st.sampled_from([b"", b"", b"", NOPS, NOPS * 2]))
    flags = draw(st.sampled_from([0, 0, 0, 2, 1, 3]))          # DF=2, MF=1
    frag = draw(st.sampled_from([0] * 8 + [1, 3, 185]))
    ip = IP(src=draw(st.sampled_from(ADDRS)), dst=draw(st.sampled_from(ADDRS)),
            ttl=draw(st.sampled_from([0, 1, 63, 64, 65, 128, 255]) | st.integers(0, 255)),
            tos=draw(st.sampled_from([0, 1, 3, 0x28, 0xB8, 0xFC]) | st.integers(0, 255)),
            id=draw(st.sampled_from([0, 1, 0x50, 0xFFFF]) | st.integers(0, 0xFFFF)),
            flags=flags, frag=frag, options=opts)
    port = st.sampled_from(PORTS) | st.integers(0, 65535)
    kind = draw(st.sampled_from(["tcp", "tcp", "udp", "udp", "icmp", "gre"]))
    if kind == "tcp":
        l4 = TCP(sport=draw(port), dport=draw(port), flags=draw(st.integers(0, 63)),
                 window=draw(st.sampled_from([0, 8192, 65535])))
    elif kind == "udp":
        l4 = UDP(sport=draw(port), dport=draw(port))
    elif kind == "icmp":
        l4 = ICMP(type=draw(st.sampled_from(ICMP_TYPES) | st.integers(0, 255)),
                  code=draw(st.integers(0, 3)))
    else:
        ip.proto = 47
        l4 = b"\x00\x00\x08\x00"
    raw = bytes(ip / l4 / draw(st.binary(max_size=10)))
    hl = 20 + len(opts)
    cut = None
    if draw(st.integers(0, 3)) == 0:
        cut = min(len(raw), hl + draw(st.sampled_from([0, 1, 2, 3, 4, 13, 14, 15, 16])))
    pad = draw(st.sampled_from([b"", b"", bytes(6), b"\x50\x00\x12"]))
    frame = frame_of(raw, cut, pad)
    if frame_cuts and draw(st.integers(0, 3)) == 0:
        frame = frame[:14 + hl + draw(st.sampled_from([0, 1, 2, 3, 4, 13, 14, 15, 16]))]
    return frame


def run_oracle(data, cls, shared=True, rules=None):
    """Random expressions (or `rules`, a strategy for a list of them) over
    random packets: the element sends each packet where the first
    expression that holds over scapy's view of it says."""
    if rules is None:
        n = data.draw(st.integers(1, 4), label="n")
        exprs = [data.draw(expressions(), label=f"expr{i}") for i in range(n)]
    else:
        exprs = data.draw(rules, label="rules")
        n = len(exprs)
    if data.draw(st.integers(0, 9)) == 0:
        exprs[-1] = ("-", lambda v: True, False)
    front = data.draw(st.sampled_from(["CheckIPHeader", "CheckIPHeader", "MarkIPHeader"]))
    pkts = data.draw(st.lists(packets(front == "MarkIPHeader"), min_size=1, max_size=40),
                     label="packets")
    views = [View(p) for p in pkts]
    if cls == "IPClassifier":
        items = [t for t, _, _ in exprs]
        targets = list(range(n))
    else:
        targets = [data.draw(st.sampled_from([0, 1, 2, "deny"])) for _ in range(n)]
        words = {0: data.draw(st.sampled_from(["allow", "0"]))}
        items = [f"{words.get(t, t) if t != 'deny' else data.draw(st.sampled_from(['deny', 'drop']))}"
                 f" {text}" for t, (text, _, _) in zip(targets, exprs)]
    expected, reasons = [], []
    for v in views:
        hit = next((k for k, (_, holds, _) in enumerate(exprs) if holds(v)), None)
        target = None if hit is None else targets[hit]
        expected.append(None if target == "deny" else target)
        reasons.append("no_match" if hit is None else "denied" if target == "deny" else "out")
    cls_obj = IPClassifier if cls == "IPClassifier" else IPFilter
    key = "patterns" if cls == "IPClassifier" else "rules"
    saved = cls_obj.SHARED_MAX_STEPS
    cls_obj.SHARED_MAX_STEPS = saved if shared else 0
    try:
        el = cls_obj.from_config("f", {key: items})
        assert shared or not el.shared
        res, nout = run(cls, items, pkts, front=front)
    finally:
        cls_obj.SHARED_MAX_STEPS = saved
    s = check(res, pkts, expected, nout)
    assert s["no_match"] == reasons.count("no_match")
    if cls == "IPFilter":
        assert s["denied"] == reasons.count("denied")


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_expressions_ipclassifier(data):
    run_oracle(data, "IPClassifier")


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_expressions_ipfilter(data):
    run_oracle(data, "IPFilter")


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_expressions_chain_program(data):
    run_oracle(data, "IPClassifier", shared=False)


# --- many rules on one field: switch nodes ---------------------------------------------------
# Rule sets where many rules compare the same field (ports, protocols,
# addresses under one prefix length) with different values, as real
# filters do; the compiler decides such comparisons with switch nodes.
# Expectations still come from scapy's view of each packet only.

@st.composite
def same_field_primitives(draw):
    kind = draw(st.sampled_from(["port", "port", "port", "proto", "net", "net", "other"]))
    if kind == "port":
        sd = draw(st.sampled_from(["dst ", "dst ", "src ", ""]))
        proto, protos = draw(st.sampled_from([("tcp ", (6,)), ("udp ", (17,)), ("", (6, 17))]))
        shape = draw(st.integers(0, 9))
        if shape == 0:
            lo = draw(st.sampled_from(PORTS))
            hi = draw(st.sampled_from([p for p in PORTS if p >= lo]))
            rel, op, k = f"{lo}-{hi}", "==", (lo, hi)
        elif shape == 1:
            k = draw(st.sampled_from(PORTS))
            rel, op = f"!= {k}", "!="
        else:
            k = draw(st.sampled_from(PORTS))
            rel, op = str(k), "=="
        need = 2 if sd == "src " else 4
        return Prim(f"{proto}{sd}port {rel}", lambda v: v.transport(protos, need) and relate(
            pick(sd, v.ports()), comb(sd), op, k))
    if kind == "proto":
        name, n = draw(st.sampled_from([("tcp", 6), ("udp", 17), ("icmp", 1), ("ip proto 47", 47),
                                        ("ip proto 2", 2)]))
        return Prim(name, lambda v: v.proto == n)
    if kind == "net":
        sd = draw(st.sampled_from(["src ", "dst "]))
        a = draw(st.sampled_from(ADDRS))
        plen = draw(st.sampled_from([8, 16, 24, 32, 32]))
        net = ipaddress.ip_network(f"{a}/{plen}", strict=False)
        return Prim(f"{sd}net {net}", lambda v: ipaddress.ip_address(
            v.ip.src if sd == "src " else v.ip.dst) in net)
    return draw(primitives())


@st.composite
def same_field_rules(draw):
    """3 to 14 rules, each one or two such primitives (maybe negated)."""
    out = []
    for _ in range(draw(st.integers(3, 14))):
        parts = []
        for _ in range(draw(st.integers(1, 2))):
            p = draw(same_field_primitives())
            if draw(st.integers(0, 7)) == 0:
                parts.append((f"not ({p.text})", lambda v, h=p.holds: not h(v)))
            else:
                parts.append((p.text, p.holds))
        text = " and ".join(t for t, _ in parts)
        out.append((text, lambda v, hs=tuple(h for _, h in parts): all(h(v) for h in hs), True))
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_same_field_rules_ipfilter(data):
    run_oracle(data, "IPFilter", rules=same_field_rules())


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_same_field_rules_ipclassifier(data):
    run_oracle(data, "IPClassifier", rules=same_field_rules())


def port_packets():
    """TCP/UDP/ICMP packets to and from the ports of SWITCH_RULES and
    others, first and later fragments, and truncated just before, inside
    and after the port fields."""
    out = []
    for proto in ("tcp", "udp", "icmp"):
        for sport, dport in [(1024, 22), (22, 1024), (53, 53), (1024, 443), (2000, 80),
                             (1024, 8080), (1024, 9999), (0, 0), (1024, 25)]:
            for src, dst in [("10.0.0.1", "10.0.1.10"), ("192.0.2.9", "10.0.1.1"),
                             ("10.99.3.4", "172.16.5.5"), ("10.0.0.2", "192.168.10.5")]:
                l4 = {"tcp": TCP(sport=sport, dport=dport, flags="S"),
                      "udp": UDP(sport=sport, dport=dport),
                      "icmp": ICMP(type=8)}[proto]
                for frag, cut in [(0, None), (0, 2), (0, 3), (0, 4), (185, None)]:
                    raw = bytes(IP(src=src, dst=dst, frag=frag) / l4)
                    out.append(frame_of(raw, None if cut is None else 20 + cut))
    return out


SWITCH_RULES = [
    "deny src net 192.0.2.0/24", "deny src net 10.99.0.0/16",
    "allow tcp dst host 10.0.1.10 and dst port 22", "1 icmp",
    "allow udp dst port 53", "allow tcp dst net 172.16.0.0/16 and dst port 25",
    "deny tcp dst port 23", "allow tcp dst port 443", "1 tcp dst port 80 or tcp dst port 8080",
    "allow tcp dst host 192.168.10.5 and dst port 22", "deny udp dst port 137",
    "allow udp src port 53", "1 not tcp dst port 9999", "deny all",
]


def switch_rule_holds(rule, v):
    """SWITCH_RULES, read over scapy's view (documented semantics)."""
    def port(protos, which, k):
        return v.transport(protos, 4 if which == 1 else 2) and v.ports()[which] == k
    src, dst = v.ip.src, v.ip.dst
    return [
        in_net(src, "192.0.2.0/24"), in_net(src, "10.99.0.0/16"),
        dst == "10.0.1.10" and port((6,), 1, 22), v.proto == 1,
        port((17,), 1, 53), in_net(dst, "172.16.0.0/16") and port((6,), 1, 25),
        port((6,), 1, 23), port((6,), 1, 443), port((6,), 1, 80) or port((6,), 1, 8080),
        dst == "192.168.10.5" and port((6,), 1, 22), port((17,), 1, 137),
        port((17,), 0, 53), not port((6,), 1, 9999), True,
    ][rule]


def test_many_rules_on_one_field_make_switches():
    el = IPFilter.from_config("f", {"rules": SWITCH_RULES})
    text = el.program_text()
    assert "switch transp[0..3] & 0000ffff if transp.len >= 4:" in text
    assert "== 000001bb (443) then out 0" in text
    assert "switch ip[8..11] & 00ff0000 if ip.len >= 10:" in text
    # Every port test still needs a first fragment and the bytes of the port.
    assert "ip[4..7] & 00001fff == 00000000" in text
    packets = port_packets()
    targets = [None, None, 0, 1, 0, 0, None, 0, 1, 0, None, 0, 1, None]
    expected = []
    for p in packets:
        v = View(p)
        rule = next(r for r in range(len(SWITCH_RULES)) if switch_rule_holds(r, v))
        expected.append(targets[rule])
    res, n = run("IPFilter", SWITCH_RULES, packets)
    check(res, packets, expected, n)
    # Truncated packets and later fragments never match a port rule.
    assert {e for p, e in zip(packets, expected)
            if View(p).ip.frag and View(p).proto != 1} <= {None, 1}


def test_switch_program_matches_the_plain_one():
    """The same rules with switches off (the compiler's other mode) send
    every packet to the same place."""
    from middlebox.elements import classifier
    packets = port_packets()
    res, n = run("IPFilter", SWITCH_RULES, packets)
    saved = classifier.SWITCH_MIN
    try:
        classifier.SWITCH_MIN = 0
        plain = IPFilter.from_config("f", {"rules": SWITCH_RULES})
        assert "switch" not in plain.program_text()
        res0, _ = run("IPFilter", SWITCH_RULES, packets)
    finally:
        classifier.SWITCH_MIN = saved
    for k in range(n):
        assert res[f"o{k}"] == res0[f"o{k}"]
    assert res.all_stats["f"]["denied"] == res0.all_stats["f"]["denied"]


# --- configuration errors ----------------------------------------------------------------

@pytest.mark.parametrize("rules, message", [
    (["alow tcp"], "rule 1: unknown action 'alow' (expected allow, deny, drop or an output "
                   "number); did you mean 'allow'?"),
    (["allow tcp", "allow dst port 99999"], "rule 2: port 99999 is out of range (0 to 65535)"),
    (["deny src net 10.0.0.0/33"], "rule 1: bad prefix length 33 in '10.0.0.0/33' (0 to 32)"),
    (["allow (tcp or udp"], "rule 1: unbalanced parentheses: missing ')'"),
    (["allow tcp or udp)"], "rule 1: unbalanced parentheses: unexpected ')'"),
    (["allow tcp dts port 80"], "rule 1: unknown word 'dts'; did you mean 'dst'?"),
    (["allow tcp and"], "rule 1: missing expression after 'and'"),
    (["allow not"], "rule 1: missing expression after 'not'"),
    (["allow ()"], "rule 1: empty parentheses"),
    (["allow ip ttl 256"], "rule 1: ip ttl 256 is out of range (0 to 255)"),
    (["allow ip ttl > 300"], "rule 1: ip ttl 300 is out of range (0 to 255)"),
    (["allow src host 10.0.0.300"], "rule 1: '10.0.0.300' is not an IPv4 address"),
    (["allow host 10.0.0.0/8"], "rule 1: 'host' needs an IPv4 address, not '10.0.0.0 mask "
                                "255.0.0.0'"),
    (["allow icmp port 80"], "rule 1: 'port' needs tcp or udp, not 'icmp port'"),
    (["allow tcp opt sin"], "rule 1: bad TCP flag 'sin' (syn, ack, fin, rst, psh or urg); "
                            "did you mean 'syn'?"),
    (["allow icmp type echoo"], "rule 1: bad icmp type 'echoo'; did you mean 'echo'?"),
    (["allow echo"], "rule 1: 'echo' is ambiguous; try 'port echo' or 'icmp type echo'"),
    (["allow ip[2:5] == 1"], "rule 1: bad field length 5 in '[2:5]' (1 to 4 bytes)"),
    (["allow ip[2"], "rule 1: missing ']'"),
    (["allow ip[9]"], "rule 1: missing value after 'ip[9:1]'"),
    (["allow dst port 2000-1000"], "rule 1: empty range 2000-1000"),
    (["allow dst port > 1000-2000"], "rule 1: operator '>' does not apply to a range"),
    (["allow dst host < 10.0.0.1"], "rule 1: operator '<' does not apply to 'host'"),
    (["allow src ip ttl 4"], "rule 1: 'src'/'dst' does not apply to 'ttl'"),
    (["allow tcp udp"], "rule 1: transport protocol given twice"),
    (["allow port & 0x10000 == 1"], "rule 1: mask 0x10000 is out of range for 'port' "
                                    "(at most 0xffff)"),
    (["allow ip ttl & 0 == 0"], "rule 1: zero mask"),
    (["allow 80"], "rule 1: bare number '80' needs a field before it"),
    (["allow tcp $"], "rule 1: unexpected character '$'"),
    (["allow tcp", ""], "rule 2: empty rule"),
    (["99999 tcp"], "rule 1: output 99999 is too large (at most 65534)"),
    (["allow tcp ? udp : icmp"], "rule 1: unexpected '?'"),
])
def test_bad_rules(rules, message):
    with pytest.raises(ConfigError) as info:
        IPFilter.from_config("fw", {"rules": rules})
    assert str(info.value).startswith(f"element 'fw': {message}"), str(info.value)


@pytest.mark.parametrize("patterns, message", [
    (["tcp", "udp dst port 70000"], "pattern 2: port 70000 is out of range (0 to 65535)"),
    (["tcp", "src net 10.0.0.0/33"], "pattern 2: bad prefix length 33"),
    (["((tcp)"], "pattern 1: unbalanced parentheses: missing ')'"),
    (["  "], "pattern 1: empty expression"),
    (["tcp", "tpc"], "pattern 2: unknown word 'tpc'; did you mean 'tcp'?"),
    ([], "parameter 'patterns'"),
])
def test_bad_patterns(patterns, message):
    with pytest.raises(ConfigError) as info:
        IPClassifier.from_config("ipc", {"patterns": patterns})
    assert f"element 'ipc': {message}" in str(info.value)


BAD_GRAPH = """name: bad
elements:
  lan: {{class: FromDevice, device: lan}}
  chk: {{class: CheckIPHeader, offset: 14}}
  fw:
    class: IPFilter
    rules:
      - allow tcp dst port 80
      - {rule}
      - deny all
  out: {{class: ToDevice, device: out}}
connections:
  - lan -> chk -> fw -> out
"""


def middlebox(*args):
    return subprocess.run([sys.executable, "-m", "middlebox", *args], capture_output=True,
                          text=True, cwd=ROOT)


@pytest.mark.parametrize("rule, message", [
    ("alow tcp", "rule 2: unknown action 'alow' (expected allow, deny, drop or an output "
                 "number); did you mean 'allow'?"),
    ("allow udp dst port 99999", "rule 2: port 99999 is out of range (0 to 65535)"),
    ("deny src net 10.0.0.0/33", "rule 2: bad prefix length 33 in '10.0.0.0/33' (0 to 32)"),
    ("allow (tcp && syn", "rule 2: unbalanced parentheses: missing ')'"),
    ("allow udp dts port 53", "rule 2: unknown word 'dts'; did you mean 'dst'?"),
])
def test_check_reports_the_rule_line(tmp_path, rule, message):
    path = tmp_path / "fw.yaml"
    path.write_text(BAD_GRAPH.format(rule=rule))
    r = middlebox("check", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"{path}:9: element 'fw': {message}"
    assert r.stdout == ""


def test_check_reports_the_pattern_line_in_a_flow_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("""name: bad
elements:
  lan: {class: FromDevice, device: lan}
  chk: {class: CheckIPHeader, offset: 14}
  ipc: {class: IPClassifier,
        patterns: ["tcp",
                   "udp port 99999"]}
  out: {class: ToDevice, device: out}
connections:
  - lan -> chk -> ipc -> out
""")
    r = middlebox("check", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{path}:7: element 'ipc': pattern 2: port 99999 is out of "
                                "range (0 to 65535)")


def test_show_prints_the_program(tmp_path):
    path = tmp_path / "fw.yaml"
    path.write_text(BAD_GRAPH.format(rule="1 icmp type echo"))
    r = middlebox("check", str(path))
    assert r.returncode == 0, r.stderr
    r = middlebox("show", str(path), "--programs")
    assert r.returncode == 0, r.stderr
    assert "ip[8..11] & 00ff0000 == 00060000" in r.stdout       # protocol TCP
    assert "ip[4..7] & 00001fff == 00000000" in r.stdout        # first fragment
    assert "transp.len >= 4 and transp[0..3] & 0000ffff == 00000050" in r.stdout
    assert "deny" in r.stdout and "out 1" in r.stdout


def test_program_for_match_all_and_match_none():
    el = IPClassifier.from_config("c", {"patterns": ["-", "tcp"]})
    assert el.nodes == [] and el.entry == -1
    el = IPFilter.from_config("c", {"rules": ["allow false", "deny true"]})
    assert el.nodes == [] and "start: deny" in el.program_text()


# --- the kernel checks IP programs --------------------------------------------------------

class CorruptIP(IPClassifier):
    damage = None

    def lower(self, ctx):
        return type(self).damage(bytearray(super().lower(ctx)))


def _set(off, value, size=4):
    def f(b):
        b[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        return bytes(b)
    return f


def _switch_program():
    """The lowered bytes of SWITCH_RULES and the index of a switch node."""
    from middlebox.elements.classifier import Switch
    el = IPFilter.from_config("f", {"rules": SWITCH_RULES})
    i = next(k for k, (t, _, _) in enumerate(el.nodes) if isinstance(t, Switch))
    return el, i, 16 + 24 * len(el.nodes)


class CorruptSwitch(IPFilter):
    damage = None

    def lower(self, ctx):
        _, i, cases = _switch_program()
        return type(self).damage(bytearray(super().lower(ctx)), 16 + 24 * i, cases)


def _node_field(field, value):
    def f(b, node, cases):
        b[node + field:node + field + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(b)
    return f


def _swap_cases(b, node, cases):
    first = int.from_bytes(b[node + 12:node + 16], "little")
    a = cases + 8 * first
    b[a:a + 8], b[a + 8:a + 16] = b[a + 8:a + 16], b[a:a + 8]
    return bytes(b)


def _case_field(k, field, value):
    def f(b, node, cases):
        first = int.from_bytes(b[node + 12:node + 16], "little")
        a = cases + 8 * (first + k) + field
        b[a:a + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(b)
    return f


@pytest.mark.parametrize("damage", [
    _node_field(16, 0),                     # no cases
    _node_field(16, 1 << 20),               # more cases than there are
    _node_field(12, 1),                     # cases not where the switch before ended
    _swap_cases,                            # cases out of order
    _case_field(0, 0, 0xFFFFFFFF),          # case value outside the mask
    _case_field(1, 4, 0),                   # case target back to node 0
    _case_field(1, 4, -0x80000000 + 3),     # a target below DENY
    lambda b, node, cases: bytes(b) + bytes(8),     # a case no switch uses
    lambda b, node, cases: bytes(b[:-4]),           # a case cut short
])
def test_kernel_rejects_a_bad_switch(damage):
    CorruptSwitch.damage = staticmethod(damage)
    el = CorruptSwitch.from_config("f", {"rules": SWITCH_RULES})
    with pytest.raises(RunError) as info:
        run_element(el, None, [])
    assert "classifier: " in str(info.value)


@pytest.mark.parametrize("damage", [
    _set(16, 3 << 24),              # node 0: base 3 does not exist
    _set(6, 0, 2),                  # no IP flag, but tests on ip/transp bases
    _set(6, 3, 2),                  # unknown flag
    _set(4, 0, 2),                  # zero outputs
    _set(16 + 16, -0x80000000 + 2),  # a target below DENY
])
def test_kernel_rejects_a_bad_ip_program(damage):
    CorruptIP.damage = staticmethod(damage)
    el = CorruptIP.from_config("ipc", {"patterns": ["tcp dst port 80", "udp", "-"]})
    with pytest.raises(RunError) as info:
        run_element(el, None, [])
    assert "classifier: " in str(info.value)
