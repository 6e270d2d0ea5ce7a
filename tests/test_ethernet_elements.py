"""Strip, Unstrip, EtherEncap, EtherRewrite, EtherMirror.

Expected outputs are built here with scapy from each element's documented
behaviour (e.g. Strip(14) gives bytes(pkt)[14:]).
"""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader

from middlebox.errors import ConfigError
from middlebox.testing import run_element, run_graph

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MIXED = os.path.join(FIXTURES, "basic_mixed.pcap")
RUNTS = os.path.join(FIXTURES, "basic_runts.pcap")

SRC = "00:11:22:33:44:55"
DST = "66:77:88:99:aa:bb"


def fixture_bytes(path):
    """The frames of a pcap, exactly as stored (no parsing)."""
    return [data for data, _meta in RawPcapReader(path)]


def mixed_frames():
    """The mixed fixture, parsed as Ethernet."""
    return [Ether(b) for b in fixture_bytes(MIXED)]


def check_invariant(res):
    """in + created == out + dropped for every element of the run (a
    ToDevice's `out` counts the packets it handed to its device; none of
    these graphs holds packets, `held` is there for completeness)."""
    assert res.all_stats, "the run reported no element counters"
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


def frames(n=40):
    out = []
    for i in range(n):
        out.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                   / IP(src="10.0.0.1", dst="10.0.0.2")
                   / UDP(sport=1000 + i, dport=53) / Raw(b"x" * i))
    return out


def chain(*specs):
    """A graph lan -> e0 -> e1 ... -> wan, from {class: ...} YAML snippets."""
    lines = ["name: chain", "elements:", "  lan: {class: FromDevice, device: lan}",
             "  wan: {class: ToDevice, device: wan}"]
    names = []
    for i, spec in enumerate(specs):
        names.append(f"e{i}")
        lines.append(f"  e{i}: {spec}")
    lines += ["connections:", "  - " + " -> ".join(["lan"] + names + ["wan"])]
    return "\n".join(lines) + "\n"


# --- Strip ---------------------------------------------------------------------

def test_strip_removes_ethernet_header():
    pkts = mixed_frames()
    res = run_element("Strip", {"length": 14}, pkts)
    assert res[0] == [bytes(p)[14:] for p in pkts]
    assert res[0][0] == bytes(pkts[0][IP])
    assert res.stats["dropped"] == 0
    check_invariant(res)


@pytest.mark.parametrize("length", [0, 1, 13, 14, 33, 34, 100])
def test_strip_runts_dropped_and_counted(length):
    data = fixture_bytes(RUNTS) + fixture_bytes(MIXED)
    res = run_element("Strip", {"length": length}, RUNTS)
    runts = fixture_bytes(RUNTS)
    assert res[0] == [b[length:] for b in runts if len(b) >= length]
    short = sum(1 for b in runts if len(b) < length)
    assert res.stats["dropped"] == short
    assert res.stats["short"] == short
    check_invariant(res)
    res = run_element("Strip", {"length": length}, [Raw(b) for b in data])
    assert res[0] == [b[length:] for b in data if len(b) >= length]
    check_invariant(res)


def test_strip_exact_length_leaves_empty_packet():
    res = run_element("Strip", {"length": 14}, [Ether(src=SRC, dst=DST, type=0x0800)])
    assert res[0] == [b""]
    check_invariant(res)


# --- Unstrip -------------------------------------------------------------------

def test_strip_then_unstrip_restores_original():
    pkts = mixed_frames() + [Raw(b) for b in fixture_bytes(RUNTS) if len(b) >= 14]
    res = run_graph(chain("{class: Strip, length: 14}", "{class: Counter}",
                          "{class: Unstrip, length: 14}"), {"lan": pkts})
    assert res["wan"] == [bytes(p) for p in pkts]
    check_invariant(res)


def test_strip_then_partial_unstrip():
    pkts = [p for p in mixed_frames() if IP in p and p.type == 0x0800]
    # Strip Ethernet + IPv4 header (34 bytes), put the IPv4 header (20) back.
    plain = [p for p in pkts if p[IP].ihl == 5]
    res = run_graph(chain("{class: Strip, length: 34}", "{class: Unstrip, length: 20}"),
                    {"lan": plain})
    assert res["wan"] == [bytes(p[IP]) for p in plain]
    check_invariant(res)


def test_unstrip_without_headroom_drops_and_counts():
    pkts = frames(10)
    res = run_element("Unstrip", {"length": 65535}, pkts)
    assert res[0] == []
    assert res.stats["dropped"] == 10
    assert res.stats["no_headroom"] == 10
    check_invariant(res)


def test_unstrip_zero_is_identity():
    data = fixture_bytes(RUNTS)
    res = run_element("Unstrip", {"length": 0}, RUNTS)
    assert res[0] == data
    check_invariant(res)


def test_unstrip_restores_after_strip_in_same_graph_on_runts():
    data = fixture_bytes(RUNTS)
    res = run_graph(chain("{class: Strip, length: 13}", "{class: Unstrip, length: 13}"),
                    {"lan": RUNTS})
    assert res["wan"] == [b for b in data if len(b) >= 13]
    assert res.all_stats["e0"]["dropped"] == sum(1 for b in data if len(b) < 13)
    check_invariant(res)


# --- EtherEncap ----------------------------------------------------------------

def test_etherencap_prepends_header():
    payloads = [IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80),
                IP(src="10.0.0.3", dst="10.0.0.4") / UDP(dport=53) / Raw(b"q" * 300),
                IP(src="10.0.0.5", dst="10.0.0.6") / ICMP()]
    res = run_element("EtherEncap", {"ethertype": 0x0800, "src": SRC, "dst": DST}, payloads)
    assert res[0] == [bytes(Ether(src=SRC, dst=DST, type=0x0800) / p) for p in payloads]
    parsed = res.scapy(0)
    assert parsed[0][TCP].dport == 80
    assert parsed[0].src == SRC and parsed[0].dst == DST
    check_invariant(res)


@pytest.mark.parametrize("ethertype,value", [("0x86dd", 0x86DD), ("0x0806", 0x0806),
                                             (2048, 0x0800), ("34525", 0x86DD), (0, 0)])
def test_etherencap_ethertype_forms(ethertype, value):
    payload = IPv6(src="fe80::1", dst="fe80::2") / UDP()
    res = run_element("EtherEncap", {"ethertype": ethertype, "src": SRC, "dst": DST}, [payload])
    assert res[0] == [bytes(Ether(src=SRC, dst=DST, type=value)) + bytes(payload)]
    check_invariant(res)


def test_etherencap_hex_ethertype_in_yaml_and_strip_roundtrip():
    pkts = mixed_frames()
    graph = chain("{class: Strip, length: 14}",
                  f'{{class: EtherEncap, ethertype: 0x88b5, src: "{SRC}", dst: "{DST}"}}')
    res = run_graph(graph, {"lan": pkts})
    assert res["wan"] == [bytes(Ether(src=SRC, dst=DST, type=0x88B5)) + bytes(p)[14:] for p in pkts]
    check_invariant(res)


def test_etherencap_unquoted_yaml_addresses():
    # The catalogue's own form: addresses and ethertype written bare in YAML.
    graph = chain("{class: EtherEncap, ethertype: 0x0800, src: 00:11:22:33:44:55, "
                  "dst: 66:77:88:99:aa:bb}")
    payloads = [IP(dst="10.0.0.9") / UDP(dport=9), IP(dst="10.0.0.8") / TCP()]
    res = run_graph(graph, {"lan": [Raw(bytes(p)) for p in payloads]})
    assert res["wan"] == [bytes(Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") / p)
                          for p in payloads]
    check_invariant(res)


def test_etherencap_runts_and_odd_sizes():
    data = fixture_bytes(RUNTS) + [b"\x01" * n for n in (1, 59, 60, 1499, 1500)]
    res = run_element("EtherEncap", {"ethertype": "0x0800", "src": SRC, "dst": "ff-ff-ff-ff-ff-ff"},
                      [Raw(b) for b in data])
    hdr = bytes(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff", type=0x0800))
    assert res[0] == [hdr + b for b in data]
    assert res.stats["dropped"] == 0
    check_invariant(res)


# --- EtherRewrite ---------------------------------------------------------------

def test_etherrewrite_sets_addresses():
    pkts = mixed_frames()
    res = run_element("EtherRewrite", {"src": SRC, "dst": DST}, pkts)
    assert res[0] == [bytes(Ether(src=SRC, dst=DST, type=p.type) / p.payload) for p in pkts]
    check_invariant(res)


def test_etherrewrite_runts_dropped_and_counted():
    data = fixture_bytes(RUNTS)
    res = run_element("EtherRewrite", {"src": SRC, "dst": DST}, RUNTS)
    # 802.3 length fields (<= 1500) make scapy parse a Dot3, so the type is
    # taken from the frame and the rest appended as it is.
    kept = [b for b in data if len(b) >= 14]
    assert res[0] == [bytes(Ether(src=SRC, dst=DST, type=int.from_bytes(b[12:14], "big"))) + b[14:]
                      for b in kept]
    short = sum(1 for b in data if len(b) < 14)
    assert short > 0
    assert res.stats["dropped"] == short == res.stats["short"]
    check_invariant(res)


# --- EtherMirror ----------------------------------------------------------------

def test_ethermirror_swaps_addresses():
    pkts = mixed_frames() + [Ether(src=SRC, dst=DST) / ARP(psrc="10.0.0.1")]
    res = run_element("EtherMirror", {}, pkts)
    assert res[0] == [bytes(Ether(src=p.dst, dst=p.src, type=p.type) / p.payload) for p in pkts]
    check_invariant(res)


def test_ethermirror_twice_is_identity():
    pkts = mixed_frames()
    res = run_graph(chain("{class: EtherMirror}", "{class: EtherMirror}"), {"lan": pkts})
    assert res["wan"] == [bytes(p) for p in pkts]
    check_invariant(res)


def test_ethermirror_runts_dropped_and_counted():
    data = fixture_bytes(RUNTS)
    res = run_element("EtherMirror", {}, RUNTS)
    kept = [(Ether(b), b) for b in data if len(b) >= 14]
    assert res[0] == [bytes(Ether(src=p.dst, dst=p.src, type=int.from_bytes(b[12:14], "big"))) + b[14:]
                      for p, b in kept]
    short = sum(1 for b in data if len(b) < 14)
    assert res.stats["dropped"] == short == res.stats["short"]
    check_invariant(res)


# --- any bytes ------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=70))
def test_any_bytes(data):
    res = run_graph(chain("{class: Strip, length: 14}", "{class: Unstrip, length: 14}"),
                    {"lan": [Raw(b) for b in data]})
    assert res["wan"] == [b for b in data if len(b) >= 14]
    check_invariant(res)
    res = run_element("EtherMirror", {}, [Raw(b) for b in data])
    assert res[0] == [b[6:12] + b[0:6] + b[12:] for b in data if len(b) >= 14]
    check_invariant(res)


# --- configuration errors ---------------------------------------------------------

BAD_CONFIGS = [
    "{class: Strip, length: -1}",
    "{class: Strip}",
    "{class: Strip, length: 14, offset: 2}",
    "{class: Strip, length: fourteen}",
    "{class: Strip, length: 70000}",
    "{class: Unstrip, length: -14}",
    "{class: Unstrip, lenght: 14}",
    '{class: EtherEncap, ethertype: 0x0800, src: "00:11:22:33:44", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, ethertype: 0x0800, src: "00:11:22:33:44:55:66", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, ethertype: 0x0800, src: "00:11:22:33:44:zz", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, ethertype: ipv4, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, ethertype: 0x10000, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, ethertype: -1, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherEncap, src: "00:11:22:33:44:55", dst: "66:77:88:99:aa:bb"}',
    '{class: EtherRewrite, src: "00:11:22:33:44:55"}',
    '{class: EtherRewrite, src: "00:11:22:33:44:55", dst: "not-a-mac"}',
    '{class: EtherRewrite, src: 12, dst: "66:77:88:99:aa:bb"}',
    "{class: EtherMirror, swap: true}",
]


@pytest.mark.parametrize("spec", BAD_CONFIGS)
def test_bad_config_names_the_element(spec):
    graph = f"""
name: bad
elements:
  lan: {{class: FromDevice, device: lan}}
  bad_eth: {spec}
  wan: {{class: ToDevice, device: wan}}
connections:
  - lan -> bad_eth -> wan
"""
    with pytest.raises(ConfigError) as exc:
        run_graph(graph, {"lan": frames(1)})
    assert "bad_eth" in str(exc.value)


def test_bad_config_in_run_element():
    with pytest.raises(ConfigError, match="'length'"):
        run_element("Strip", {"length": -1}, frames(1))
    with pytest.raises(ConfigError, match="'dst'"):
        run_element("EtherRewrite", {"src": SRC, "dst": "00:11:22"}, frames(1))
    with pytest.raises(ConfigError, match="'ethertype'"):
        run_element("EtherEncap", {"ethertype": "0xZZ", "src": SRC, "dst": DST}, frames(1))
