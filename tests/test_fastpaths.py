"""The engine's and kernels' fast paths give what the plain paths gave:
InfiniteSource's precomputed flow variants and its computed ones, packets
sent in runs (mb_emit_batch) keep their order when two outputs of one
element meet again, CheckIPHeader's quick check agrees with the full one,
and the bench graphs ippath-3 / ippath-20 filter as their descriptions say."""

import pathlib

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from middlebox import PythonElement, bench, loader
from middlebox.elements.classifier import Classifier
from middlebox.elements.devices import FromDevice, ToDevice
from middlebox.elements.ip import CheckIPHeader
from middlebox.graph import Graph
from middlebox.testing import run_graph

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "graphs"


def source_packets(tmpl, flows, limit):
    text = f"""
elements:
  src: {{class: InfiniteSource, limit: {limit}, flows: {flows}, data: "{bytes(tmpl).hex()}"}}
  out: {{class: ToDevice, device: out}}
connections: [src -> out]
"""
    return run_graph(text)["out"]


def expected_flow(tmpl, f):
    """Flow f of the template, from InfiniteSource's documented rule:
    source address and source port plus f, checksums recomputed."""
    p = Ether(bytes(tmpl))
    ip = p[IP]
    a = (int.from_bytes(bytes(map(int, ip.src.split("."))), "big") + f) & 0xFFFFFFFF
    ip.src = ".".join(str(b) for b in a.to_bytes(4, "big"))
    l4 = p[TCP] if p.haslayer(TCP) else p[UDP]
    l4.sport = (l4.sport + f) & 0xFFFF
    del ip.chksum
    if isinstance(l4, TCP) or l4.chksum:
        del l4.chksum
    return bytes(Ether(bytes(p)))


def test_source_table_and_computed_flows_match_the_rule():
    # 16384 flows: variants precomputed; 16385: computed per packet.
    for tmpl in (Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=2000, dport=80),
                 Ether() / IP(src="10.0.255.250", dst="10.2.0.1") / UDP(sport=65530, dport=53)
                 / Raw(b"x" * 30)):
        table = source_packets(tmpl, 16384, 70)
        computed = source_packets(tmpl, 16385, 70)
        assert table == computed
        assert table == [expected_flow(tmpl, f) for f in range(70)]


def test_source_lengths_around_the_copy_chunks():
    # Template lengths that are not a multiple of the 32-byte copy, and one
    # that fills the packet buffer (2048 bytes).
    for n in (60, 64, 65, 100, 2040, 2048):
        tmpl = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6))
        tmpl = bench.resize(tmpl, n)
        got = source_packets(tmpl, 3, 7)
        assert got == [expected_flow(tmpl, f % 3) for f in range(7)]


def test_source_zero_udp_checksum_is_left_alone():
    tmpl = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6, chksum=0)
    got = source_packets(tmpl, 4, 8)
    assert [Ether(p)[UDP].chksum for p in got] == [0] * 8
    assert [Ether(p)[UDP].sport for p in got] == [5, 6, 7, 8] * 2


class Recorder(PythonElement):
    """Passes packets on; remembers the order they arrived in."""

    def process(self, batch):
        for p in batch:
            self.seen.append(bytes(p.data))
            yield 0, p


def fan_in_graph(splitter):
    g = Graph("fan-in")
    g.add("lan", FromDevice(device="lan"))
    g.add("split", splitter)
    rec = Recorder()
    rec.seen = []
    g.add("rec", rec)
    g.add("out", ToDevice(device="out"))
    g.connect("lan", "split")
    g.connect("split", "rec", sport=0)
    g.connect("split", "rec", sport=1)
    g.connect("rec", "out")
    return g, rec


def test_classifier_outputs_meeting_again_keep_arrival_order():
    pkts = []
    for i in range(40):
        ip = Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=i) / UDP(sport=1, dport=2)
        arp = Ether(type=0x0806) / Raw(bytes([0, 1, 8, 0, 6, 4, 0, 1]) + bytes(20) + bytes([i]))
        pkts += [ip, ip, arp] if i % 3 else [arp, ip]
    g, rec = fan_in_graph(Classifier(patterns=["12/0800", "-"]))
    res = run_graph(g, {"lan": pkts})
    assert rec.seen == [bytes(p) for p in pkts]
    assert res["out"] == [bytes(p) for p in pkts]


def test_checkipheader_outputs_meeting_again_keep_arrival_order():
    good = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=i) / UDP()) for i in range(30)]
    bad = []
    for i, g in enumerate(good):
        b = bytearray(g)
        b[24] ^= 0xFF if i % 2 else 0               # wrong checksum on every other one
        bad.append(bytes(b))
    with_opts = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00")
                      / UDP())
    pkts = [x for pair in zip(good, bad) for x in pair] + [with_opts, bytes(10)]
    g, rec = fan_in_graph(CheckIPHeader(offset=14))
    res = run_graph(g, {"lan": pkts})
    assert rec.seen == pkts
    st = res.all_stats["split"]
    assert st["ports"] == [len(pkts) - 16, 16]      # 15 bad checksums, 1 too short
    assert st["bad_csum"] == 15 and st["short"] == 1


def bench_counts(name):
    r = bench.measure(loader.load(str(BENCH / name)), 3200, warmup=0)
    return r["elements"]


def test_ippath_3_bench_graph_filters_as_described():
    el = bench_counts("ippath-3.yaml")
    n = el["filter"]["in"]
    assert n == 3200 and el["check"]["dropped"] == 0
    assert el["filter"]["denied"] == n * 10 // 32 and el["filter"]["no_match"] == 0
    assert el["drop"]["in"] == n * 22 // 32


def test_ippath_20_bench_graph_filters_as_described():
    el = bench_counts("ippath-20.yaml")
    n = el["filter"]["in"]
    assert n == 3200 and el["check"]["dropped"] == 0
    assert el["filter"]["denied"] == n * 6 // 32 and el["filter"]["no_match"] == 0
    assert el["drop"]["in"] == n * 26 // 32
