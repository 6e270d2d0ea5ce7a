"""Discard, Counter, Tee, Paint, PaintSwitch, RoundRobinSwitch, HashSwitch.

Expected outputs come from the elements' documented behaviour, computed here
with scapy and plain Python list operations over the input packets.
"""

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader

from middlebox.errors import ConfigError
from middlebox.testing import run_element, run_graph

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MIXED = os.path.join(FIXTURES, "basic_mixed.pcap")
RUNTS = os.path.join(FIXTURES, "basic_runts.pcap")


def fixture_bytes(path):
    """The frames of a pcap, exactly as stored (no parsing)."""
    return [data for data, _meta in RawPcapReader(path)]


def check_invariant(res):
    """in + created == out + dropped for every element of the run (a
    ToDevice's `out` counts the packets it handed to its device; none of
    these graphs holds packets, `held` is there for completeness)."""
    assert res.all_stats, "the run reported no element counters"
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


def udp(i, size=None, src="10.0.0.1", sport=None):
    """A distinct UDP frame per i (the index sits in the source port and payload)."""
    p = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
         / IP(src=src, dst="10.0.0.2")
         / UDP(sport=sport if sport is not None else 1024 + i, dport=53)
         / Raw(i.to_bytes(4, "big")))
    if size is not None and size > len(p):
        p = p / Raw(b"\0" * (size - len(p)))
    return p


def flow(rng):
    """A random IPv4 TCP flow (5-tuple) as a frame."""
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                 dst=f"192.168.{rng.randrange(256)}.{rng.randrange(1, 255)}")
            / TCP(sport=rng.randrange(1024, 65536), dport=rng.choice([80, 443, 22, 8080]),
                  flags="A"))


# --- Discard -----------------------------------------------------------------

def test_discard_drops_everything():
    pkts = [udp(i) for i in range(40)]
    res = run_element("Discard", {}, pkts)
    assert res.stats["in"] == 40
    assert res.stats["dropped"] == 40
    assert res.stats["out"] == 0
    check_invariant(res)


def test_discard_runts_and_fixture():
    res = run_element("Discard", {}, RUNTS)
    n = len(fixture_bytes(RUNTS))
    assert res.stats["in"] == n == res.stats["dropped"]
    check_invariant(res)


# --- Counter -----------------------------------------------------------------

def test_counter_counts_and_passes_in_order():
    expected = fixture_bytes(MIXED)
    res = run_element("Counter", {}, MIXED)
    assert res[0] == expected
    assert res.stats["count"] == len(expected)
    assert res.stats["byte_count"] == sum(len(b) for b in expected)
    assert res.stats["dropped"] == 0
    assert res.stats["ports"] == [len(expected)]
    check_invariant(res)


def test_counter_counts_empty_and_runt_packets():
    expected = fixture_bytes(RUNTS)
    assert b"" in expected
    res = run_element("Counter", {}, RUNTS)
    assert res[0] == expected
    assert res.stats["count"] == len(expected)
    assert res.stats["byte_count"] == sum(len(b) for b in expected)
    check_invariant(res)


def test_counter_over_many_batches():
    pkts = [udp(i, size=60 + i % 50) for i in range(250)]
    res = run_element("Counter", {}, pkts)
    assert res[0] == [bytes(p) for p in pkts]
    assert res.stats["count"] == 250
    assert res.stats["byte_count"] == sum(len(p) for p in pkts)
    check_invariant(res)


# --- Tee ---------------------------------------------------------------------

def test_tee_copies_to_every_output():
    pkts = [udp(i) for i in range(70)]
    res = run_element("Tee", {"n": 3}, pkts)
    want = [bytes(p) for p in pkts]
    assert res[0] == want
    assert res[1] == want
    assert res[2] == want
    assert res.stats["created"] == 2 * 70
    assert res.stats["ports"] == [70, 70, 70]
    assert res.stats["dropped"] == 0
    check_invariant(res)


def test_tee_copies_runts_and_fixture():
    for path in (RUNTS, MIXED):
        want = fixture_bytes(path)
        res = run_element("Tee", {"n": 2}, path)
        assert res[0] == want
        assert res[1] == want
        check_invariant(res)


def test_tee_copies_are_independent_buffers():
    """Each branch changes its copy differently; no branch sees another's edits."""
    rw_src, rw_dst = "aa:aa:aa:aa:aa:01", "aa:aa:aa:aa:aa:02"
    graph = f"""
name: tee-independent
elements:
  lan:    {{class: FromDevice, device: lan}}
  tee:    {{class: Tee}}
  mirror: {{class: EtherMirror}}
  rw:     {{class: EtherRewrite, src: "{rw_src}", dst: "{rw_dst}"}}
  strip:  {{class: Strip, length: 14}}
  out0:   {{class: ToDevice, device: out0}}
  out1:   {{class: ToDevice, device: out1}}
  out2:   {{class: ToDevice, device: out2}}
  out3:   {{class: ToDevice, device: out3}}
connections:
  - lan -> tee
  - tee[0] -> mirror -> out0
  - tee[1] -> rw -> out1
  - tee[2] -> out2
  - tee[3] -> strip -> out3
"""
    pkts = [Ether(bytes(p)) for p in (udp(i) for i in range(45))]
    res = run_graph(graph, {"lan": pkts})
    assert res["out0"] == [bytes(Ether(src=p.dst, dst=p.src, type=p.type) / p.payload)
                           for p in pkts]
    assert res["out1"] == [bytes(Ether(src=rw_src, dst=rw_dst, type=p.type) / p.payload)
                           for p in pkts]
    assert res["out2"] == [bytes(p) for p in pkts]
    assert res["out3"] == [bytes(p.payload) for p in pkts]
    assert res.all_stats["tee"]["created"] == 3 * 45
    check_invariant(res)


def test_tee_default_n_is_connected_outputs():
    graph = """
name: tee-default
elements:
  lan: {class: FromDevice, device: lan}
  tee: {class: Tee}
  a:   {class: ToDevice, device: a}
  b:   {class: ToDevice, device: b}
connections:
  - lan -> tee
  - tee[0] -> a
  - tee[1] -> b
"""
    pkts = [udp(i) for i in range(10)]
    res = run_graph(graph, {"lan": pkts})
    assert res["a"] == res["b"] == [bytes(p) for p in pkts]
    assert res.all_stats["tee"]["created"] == 10
    check_invariant(res)


def test_tee_unconnected_output_drops_and_counts():
    graph = """
name: tee-gap
elements:
  lan: {class: FromDevice, device: lan}
  tee: {class: Tee, n: 3}
  a:   {class: ToDevice, device: a}
  c:   {class: ToDevice, device: c}
connections:
  - lan -> tee
  - tee[0] -> a
  - tee[2] -> c
"""
    pkts = [udp(i) for i in range(10)]
    res = run_graph(graph, {"lan": pkts})
    assert res["a"] == res["c"] == [bytes(p) for p in pkts]
    s = res.all_stats["tee"]
    assert s["created"] == 20
    assert s["dropped"] == 10          # the copies for output 1
    check_invariant(res)


def test_tee_output_beyond_n_is_a_config_error():
    graph = """
name: tee-too-many
elements:
  lan:  {class: FromDevice, device: lan}
  mytee: {class: Tee, n: 2}
  a:    {class: ToDevice, device: a}
  b:    {class: ToDevice, device: b}
connections:
  - lan -> mytee
  - mytee[0] -> a
  - mytee[2] -> b
"""
    with pytest.raises(ConfigError) as exc:
        run_graph(graph, {"lan": [udp(0)]})
    assert "mytee" in str(exc.value)


# --- Paint and PaintSwitch -----------------------------------------------------

def test_paint_passes_packets_unchanged():
    expected = fixture_bytes(MIXED) + fixture_bytes(RUNTS)
    res = run_element("Paint", {"color": 7}, [Raw(b) for b in expected])
    assert res[0] == expected
    check_invariant(res)


def test_paint_then_paintswitch_routes_by_color():
    graph = """
name: paint-switch
elements:
  a:   {class: FromDevice, device: a}
  b:   {class: FromDevice, device: b}
  c:   {class: FromDevice, device: c}
  d:   {class: FromDevice, device: d}
  p2:  {class: Paint, color: 2}
  p0:  {class: Paint, color: 0}
  p1:  {class: Paint, color: 1}
  p9:  {class: Paint, color: 255}
  ps:  {class: PaintSwitch}
  o0:  {class: ToDevice, device: o0}
  o1:  {class: ToDevice, device: o1}
  o2:  {class: ToDevice, device: o2}
connections:
  - a -> p2 -> ps
  - b -> p0 -> ps
  - c -> p1 -> ps
  - d -> p9 -> ps
  - ps[0] -> o0
  - ps[1] -> o1
  - ps[2] -> o2
"""
    pa = [udp(i, src="10.0.0.10") for i in range(40)]
    pb = [udp(i, src="10.0.0.11") for i in range(41)]
    pc = [udp(i, src="10.0.0.12") for i in range(3)]
    pd = [udp(i, src="10.0.0.13") for i in range(37)]
    res = run_graph(graph, {"a": pa, "b": pb, "c": pc, "d": pd})
    assert res["o2"] == [bytes(p) for p in pa]
    assert res["o0"] == [bytes(p) for p in pb]
    assert res["o1"] == [bytes(p) for p in pc]
    ps = res.all_stats["ps"]
    assert ps["dropped"] == len(pd)     # paint 255 >= 3 outputs
    assert ps["ports"] == [len(pb), len(pc), len(pa)]
    check_invariant(res)


def test_paint_round_robin_then_paintswitch_with_n():
    """Paint per round-robin branch; PaintSwitch(n=3) drops paint 3."""
    graph = """
name: rr-paint
elements:
  lan: {class: FromDevice, device: lan}
  rr:  {class: RoundRobinSwitch, n: 4}
  c0:  {class: Paint, color: 0}
  c1:  {class: Paint, color: 1}
  c2:  {class: Paint, color: 2}
  c3:  {class: Paint, color: 3}
  ps:  {class: PaintSwitch, n: 3}
  o0:  {class: ToDevice, device: o0}
  o1:  {class: ToDevice, device: o1}
  o2:  {class: ToDevice, device: o2}
connections:
  - lan -> rr
  - rr[0] -> c0 -> ps
  - rr[1] -> c1 -> ps
  - rr[2] -> c2 -> ps
  - rr[3] -> c3 -> ps
  - ps[0] -> o0
  - ps[1] -> o1
  - ps[2] -> o2
"""
    pkts = [udp(i) for i in range(130)]
    res = run_graph(graph, {"lan": pkts})
    for k in range(3):
        # Several branches merge at ps, so only the set per output is fixed.
        assert sorted(res[f"o{k}"]) == sorted(bytes(p) for p in pkts[k::4])
    assert res.all_stats["ps"]["dropped"] == len(pkts[3::4])
    check_invariant(res)


def test_paintswitch_unpainted_packets_take_output_0():
    pkts = [udp(i) for i in range(20)]
    res = run_element("PaintSwitch", {"n": 2}, pkts)
    assert res[0] == [bytes(p) for p in pkts]
    assert res[1] == []
    check_invariant(res)


# --- RoundRobinSwitch ----------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 4, 7])
def test_round_robin_across_batches(n):
    pkts = [udp(i) for i in range(157)]
    res = run_element("RoundRobinSwitch", {"n": n}, pkts)
    for k in range(n):
        assert res[k] == [bytes(p) for p in pkts[k::n]], f"output {k}"
    assert res.stats["ports"] == [len(pkts[k::n]) for k in range(n)]
    assert res.stats["dropped"] == 0
    check_invariant(res)


def test_round_robin_default_n_and_runts():
    graph = """
name: rr-default
elements:
  lan: {class: FromDevice, device: lan}
  rr:  {class: RoundRobinSwitch}
  a:   {class: ToDevice, device: a}
  b:   {class: ToDevice, device: b}
connections:
  - lan -> rr
  - rr[0] -> a
  - rr[1] -> b
"""
    pkts = fixture_bytes(RUNTS) + fixture_bytes(MIXED)
    res = run_graph(graph, {"lan": [Raw(b) for b in pkts]})
    assert res["a"] == pkts[0::2]
    assert res["b"] == pkts[1::2]
    check_invariant(res)


# --- HashSwitch ----------------------------------------------------------------

def port_of(res, n):
    """{packet bytes: output port} from a HashSwitch run."""
    where = {}
    for k in range(n):
        for b in res[k]:
            assert where.setdefault(b, k) == k, "one packet on two ports"
    return where


def test_hashswitch_same_flow_same_port_across_calls():
    rng = random.Random(1)
    flows = [flow(rng) for _ in range(60)]
    cfg = {"offset": 26, "length": 12, "n": 4}   # IPv4 addresses + TCP ports
    first = port_of(run_element("HashSwitch", cfg, flows), 4)
    assert len(first) == len(flows)
    # Same flows again, shuffled, in a separate run, with different payloads
    # and TTLs (bytes outside the hashed window).
    rng.shuffle(flows)
    again = []
    for f in flows:
        g = f.copy()
        g[IP].ttl = 3
        again.append(g / Raw(b"payload"))
    res = run_element("HashSwitch", cfg, again)
    second = port_of(res, 4)
    for f, g in zip(flows, again):
        assert second[bytes(g)] == first[bytes(f)]
    check_invariant(res)


def test_hashswitch_packets_of_one_flow_stay_together():
    rng = random.Random(2)
    flows = [flow(rng) for _ in range(8)]
    pkts = []
    for i in range(200):
        p = flows[i % 8].copy()
        p[TCP].seq = i                     # outside the hashed window
        pkts.append(p)
    res = run_element("HashSwitch", {"offset": 26, "length": 8, "n": 3}, pkts)
    where = port_of(res, 3)
    for f in range(8):
        ports = {where[bytes(p)] for p in pkts[f::8]}
        assert len(ports) == 1, f"flow {f} split over {ports}"
    # Order is kept within each output.
    for k in range(3):
        assert res[k] == [bytes(p) for p in pkts if where[bytes(p)] == k]
    check_invariant(res)


def test_hashswitch_spreads_random_flows():
    rng = random.Random(3)
    flows = [flow(rng) for _ in range(1000)]
    res = run_element("HashSwitch", {"offset": 26, "length": 12, "n": 4}, flows)
    counts = res.stats["ports"]
    assert sum(counts) == 1000
    # Expected 250 each, standard deviation about 14: allow +-75.
    for c in counts:
        assert 175 <= c <= 325, counts
    check_invariant(res)


def test_hashswitch_spreads_on_a_single_varying_byte():
    # Flows that differ in one byte only still spread (a weak hash would not).
    pkts = [Ether() / IP(src="10.0.0.1", dst=f"10.0.0.{i}") / UDP() for i in range(256)]
    res = run_element("HashSwitch", {"offset": 30, "length": 4, "n": 4}, pkts)
    for c in res.stats["ports"]:
        assert 30 <= c <= 100, res.stats["ports"]
    check_invariant(res)


def test_hashswitch_drops_short_packets():
    frames = fixture_bytes(RUNTS)
    res = run_element("HashSwitch", {"offset": 26, "length": 8, "n": 2}, RUNTS)
    long_enough = [b for b in frames if len(b) >= 34]
    short = [b for b in frames if len(b) < 34]
    assert any(len(b) == 33 for b in short) and any(len(b) == 34 for b in long_enough)
    assert sorted(res[0] + res[1]) == sorted(long_enough)
    assert res.stats["short"] == len(short)
    assert res.stats["dropped"] == len(short)
    check_invariant(res)


def test_hashswitch_one_output_and_default_n():
    pkts = [udp(i, size=50 + i) for i in range(50)]
    res = run_element("HashSwitch", {"offset": 0, "length": 60, "n": 1}, pkts)
    assert res[0] == [bytes(p) for p in pkts if len(p) >= 60]
    assert res.stats["short"] == sum(1 for p in pkts if len(p) < 60)
    check_invariant(res)
    graph = """
name: hs-default
elements:
  lan: {class: FromDevice, device: lan}
  hs:  {class: HashSwitch, offset: 26, length: 8}
  a:   {class: ToDevice, device: a}
  b:   {class: ToDevice, device: b}
connections:
  - lan -> hs
  - hs[0] -> a
  - hs[1] -> b
"""
    rng = random.Random(4)
    flows = [flow(rng) for _ in range(200)]
    res = run_graph(graph, {"lan": flows})
    assert sorted(res["a"] + res["b"]) == sorted(bytes(f) for f in flows)
    assert 50 <= len(res["a"]) <= 150
    check_invariant(res)


# --- robustness ----------------------------------------------------------------

ELEMENTS = [
    ("Discard", {}),
    ("Counter", {}),
    ("Tee", {"n": 3}),
    ("Paint", {"color": 9}),
    ("PaintSwitch", {"n": 2}),
    ("RoundRobinSwitch", {"n": 3}),
    ("HashSwitch", {"offset": 3, "length": 5, "n": 4}),
]


@pytest.mark.parametrize("cls,cfg", ELEMENTS)
def test_every_element_survives_runts(cls, cfg):
    res = run_element(cls, cfg, RUNTS)
    assert res.stats["in"] == len(fixture_bytes(RUNTS))
    check_invariant(res)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=70))
def test_counter_and_hashswitch_any_bytes(frames):
    res = run_element("Counter", {}, [Raw(f) for f in frames])
    assert res[0] == frames
    assert res.stats["byte_count"] == sum(len(f) for f in frames)
    check_invariant(res)
    res = run_element("HashSwitch", {"offset": 10, "length": 6, "n": 3}, [Raw(f) for f in frames])
    assert sorted(res[0] + res[1] + res[2]) == sorted(f for f in frames if len(f) >= 16)
    assert res.stats["short"] == sum(1 for f in frames if len(f) < 16)
    check_invariant(res)


# --- configuration errors --------------------------------------------------------

BAD_CONFIGS = [
    ("Discard", "{class: Discard, n: 2}"),
    ("Counter", "{class: Counter, colour: 1}"),
    ("Tee", "{class: Tee, n: 0}"),
    ("Tee", "{class: Tee, n: -2}"),
    ("Tee", "{class: Tee, n: three}"),
    ("Paint", "{class: Paint}"),
    ("Paint", "{class: Paint, color: 256}"),
    ("Paint", "{class: Paint, color: -1}"),
    ("Paint", "{class: Paint, colour: 1}"),
    ("PaintSwitch", "{class: PaintSwitch, n: 0}"),
    ("PaintSwitch", "{class: PaintSwitch, n: 257}"),
    ("RoundRobinSwitch", "{class: RoundRobinSwitch, outputs: 2}"),
    ("HashSwitch", "{class: HashSwitch, offset: 26}"),
    ("HashSwitch", "{class: HashSwitch, offset: 26, length: 0}"),
    ("HashSwitch", "{class: HashSwitch, offset: -1, length: 4}"),
    ("HashSwitch", "{class: HashSwitch, offset: 26, length: 4, seed: 1}"),
]


@pytest.mark.parametrize("cls,spec", BAD_CONFIGS)
def test_bad_config_names_the_element(cls, spec):
    graph = f"""
name: bad
elements:
  lan: {{class: FromDevice, device: lan}}
  culprit_el: {spec}
  wan: {{class: ToDevice, device: wan}}
connections:
  - lan -> culprit_el
"""
    if cls != "Discard":
        graph += "  - culprit_el -> wan\n"
    with pytest.raises(ConfigError) as exc:
        run_graph(graph, {"lan": [udp(0)]})
    assert "culprit_el" in str(exc.value)


def test_bad_config_in_run_element():
    with pytest.raises(ConfigError, match="'color'"):
        run_element("Paint", {"color": 300}, [udp(0)])
    with pytest.raises(ConfigError, match="unknown parameter"):
        run_element("Counter", {"bogus": 1}, [udp(0)])
