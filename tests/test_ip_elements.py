"""CheckIPHeader, MarkIPHeader, SetIPChecksum, SetTCPChecksum, SetUDPChecksum,
DecIPTTL, IPEncap, UDPIPEncap, IPMirror, GetIPAddress, StoreIPAddress.

Expected outputs are built here with scapy from each element's documented
behaviour: e.g. DecIPTTL's output is the input with ttl - 1 and the IP
checksum recomputed by scapy; SetTCPChecksum's output is the packet scapy
builds with its own checksum.
"""

import json
import os
import socket
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader

from middlebox import loader
from middlebox import plan as plans
from middlebox.errors import ConfigError
from middlebox.runtime import Engine
from middlebox.testing import capture, run_element, run_graph

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
VALID = os.path.join(FIXTURES, "ip_valid.pcap")
INVALID = os.path.join(FIXTURES, "ip_invalid.pcap")

A = "02:00:00:00:00:01"
B = "02:00:00:00:00:02"
REASONS = ("short", "bad_version", "bad_hlen", "bad_len", "bad_csum", "bad_src")


# --- helpers -------------------------------------------------------------------

def fixture_bytes(path):
    """The frames of a pcap, exactly as stored (no parsing)."""
    return [data for data, _meta in RawPcapReader(path)]


def check_invariant(res):
    """in + created == out + dropped for every element of the run."""
    assert res.all_stats, "the run reported no element counters"
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"], (name, s)


def pipeline(specs, packets, outputs=1):
    """Run lan -> e0 -> e1 -> ... ; the last element's outputs 0..outputs-1
    go to devices out0, out1, ... . specs: config dicts (with "class")."""
    lines = ["name: pipeline", "elements:", "  lan: {class: FromDevice, device: lan}"]
    names = []
    for i, spec in enumerate(specs):
        names.append(f"e{i}")
        lines.append(f"  e{i}: {json.dumps(spec)}")
    for o in range(outputs):
        lines.append(f"  out{o}: {{class: ToDevice, device: out{o}}}")
    lines += ["connections:", "  - " + " -> ".join(["lan"] + names)]
    for o in range(outputs):
        lines.append(f"  - {names[-1]}[{o}] -> out{o}")
    res = run_graph("\n".join(lines) + "\n", {"lan": packets})
    check_invariant(res)
    return res


def run_sized(specs, packets, bufsize, headroom):
    """pipeline() on an engine with the given buffer size and headroom."""
    lines = ["name: sized", "elements:", "  lan: {class: FromDevice, device: lan}",
             "  wan: {class: ToDevice, device: wan}"]
    lines += [f"  e{i}: {json.dumps(spec)}" for i, spec in enumerate(specs)]
    lines += ["connections:", "  - " + " -> ".join(
        ["lan"] + [f"e{i}" for i in range(len(specs))] + ["wan"])]
    eng = Engine(plans.build(loader.load("\n".join(lines) + "\n")),
                 buffer_size=bufsize, headroom=headroom)
    out = eng.run({"lan": capture(packets)})
    res = types.SimpleNamespace(wan=[out["wan"].packet(i) for i in range(len(out["wan"]))],
                                all_stats=eng.stats())
    check_invariant(res)
    return res


def mark(offset=14):
    return {"class": "MarkIPHeader", "offset": offset}


def ip_rebuilt(frame, **fields):
    """The frame with IP fields changed and the IP checksum recomputed by
    scapy (everything else as it was)."""
    p = Ether(frame)
    for k, v in fields.items():
        setattr(p[IP], k, v)
    del p[IP].chksum
    return bytes(p)


def ip_total(frame, offset=14):
    """The frame cut to the end of its IP packet (scapy's reading of the
    IP total length)."""
    return frame[: offset + Ether(frame)[IP].len]


def valid_frames():
    frames = fixture_bytes(VALID)
    # Expectations rebuild frames with scapy: it must reproduce them exactly.
    assert all(bytes(Ether(b)) == b for b in frames)
    return frames


def is_fragment(frame):
    ip = Ether(frame)[IP]
    return ip.frag != 0 or ip.flags.MF


def aton(addr):
    return socket.inet_aton(addr)


def options(ihl):
    """Valid options filling IHL words: Record Route padded with EOL."""
    room = 4 * (ihl - 5)
    slots = (room - 4) // 4
    opt = bytes([7, 3 + 4 * slots, 4]) + bytes(4 * slots)
    return opt + bytes(room - len(opt))


# --- CheckIPHeader -------------------------------------------------------------

def test_check_valid_fixture_passes_trimmed_to_ip_length():
    frames = valid_frames()
    res = run_element("CheckIPHeader", {"offset": 14}, VALID)
    assert res[0] == [ip_total(b) for b in frames]
    assert any(len(ip_total(b)) < len(b) for b in frames)   # padding was there
    assert res.stats["bad"] == 0 and res.stats["dropped"] == 0
    check_invariant(res)


def test_check_invalid_fixture_reasons_counted_and_dropped():
    frames = fixture_bytes(INVALID)
    res = run_element("CheckIPHeader", {"offset": 14}, INVALID)
    assert res[0] == []
    assert res.stats["dropped"] == len(frames) == res.stats["bad"]
    for i, reason in enumerate(REASONS, start=1):
        expected = sum(1 for b in frames if Ether(b).src == f"02:00:00:00:00:{i:02x}")
        assert expected > 0
        assert res.stats[reason] == expected, reason
    check_invariant(res)


def test_check_output_1_only_when_connected():
    good, bad = valid_frames(), fixture_bytes(INVALID)
    mixed = [x for pair in zip(good, bad) for x in pair] + good[len(bad):]
    res = run_element("CheckIPHeader", {"offset": 14}, mixed, outputs=2)
    assert res[0] == [ip_total(b) for b in good]
    assert res[1] == bad                       # unchanged, in order
    assert res.stats["ports"] == [len(good), len(bad)]
    assert res.stats["dropped"] == 0 and res.stats["bad"] == len(bad)
    check_invariant(res)
    res = run_element("CheckIPHeader", {"offset": 14}, mixed, outputs=1)
    assert res[0] == [ip_total(b) for b in good]
    assert res.stats["dropped"] == len(bad) == res.stats["bad"]
    check_invariant(res)


def _udp_frame(**ip):
    return Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", **ip) / UDP(
        sport=1, dport=2) / Raw(b"payload")


def _set_byte(frame, i, value):
    b = bytearray(bytes(frame))
    b[i] = value
    return bytes(b)


def _with_ip_len(length, ihl=5):
    """A valid header (checksum computed by scapy) claiming `length`."""
    opts = options(ihl) if ihl > 5 else b""
    return bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", ihl=ihl, options=opts, len=length)
                 / Raw(b"x" * 30))


REJECTS = {
    "version-0": (_set_byte(_udp_frame(), 14, 0x05), "bad_version"),
    "version-6": (_set_byte(_udp_frame(), 14, 0x65), "bad_version"),
    "ihl-0": (_set_byte(_udp_frame(), 14, 0x40), "bad_hlen"),
    "ihl-4": (_set_byte(_udp_frame(), 14, 0x44), "bad_hlen"),
    "ihl-beyond-packet": (bytes(Ether() / IP(ihl=15, options=options(15)))[:14 + 59], "bad_hlen"),
    "ihl-6-beyond-packet": (bytes(Ether() / IP(ihl=6, options=options(6)))[:14 + 23], "bad_hlen"),
    "len-beyond-packet": (_with_ip_len(51), "bad_len"),
    "len-65535": (_with_ip_len(65535), "bad_len"),
    "len-below-ihl": (_with_ip_len(19), "bad_len"),
    "len-below-ihl-options": (_with_ip_len(24, ihl=7), "bad_len"),
    "len-0": (_with_ip_len(0), "bad_len"),
    "checksum-zero": (bytes(_udp_frame(chksum=0)), "bad_csum"),
    "checksum-off-by-one": (_set_byte(_udp_frame(), 25, bytes(_udp_frame())[25] ^ 1), "bad_csum"),
    "checksum-options": (bytes(Ether() / IP(ihl=9, options=options(9), chksum=7)), "bad_csum"),
    "ttl-changed-not-checksum": (_set_byte(_udp_frame(ttl=64), 22, 63), "bad_csum"),
    "src-broadcast": (bytes(Ether() / IP(src="255.255.255.255", dst="10.0.0.2") / UDP()),
                      "bad_src"),
    "src-multicast": (bytes(Ether() / IP(src="224.0.0.5", dst="10.0.0.2") / UDP()), "bad_src"),
    "src-multicast-top": (bytes(Ether() / IP(src="239.255.255.255") / UDP()), "bad_src"),
}


@pytest.mark.parametrize("name", sorted(REJECTS))
def test_check_reject_matrix(name):
    frame, reason = REJECTS[name]
    for outputs in (1, 2):
        res = run_element("CheckIPHeader", {"offset": 14}, [frame], outputs=outputs)
        assert res[0] == []
        assert res.stats[reason] == 1 and res.stats["bad"] == 1
        assert sum(res.stats[r] for r in REASONS) == 1
        if outputs == 2:
            assert res[1] == [frame] and res.stats["dropped"] == 0
        else:
            assert res.stats["dropped"] == 1
        check_invariant(res)


@pytest.mark.parametrize("ihl", range(5, 16))
def test_check_accepts_options(ihl):
    opts = options(ihl) if ihl > 5 else b""
    frame = Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2", ihl=ihl, options=opts) / TCP(
        sport=1, dport=2) / Raw(b"z" * ihl)
    assert Ether(bytes(frame))[IP].ihl == ihl
    res = run_element("CheckIPHeader", {"offset": 14}, [frame])
    assert res[0] == [bytes(frame)]
    check_invariant(res)


def test_check_trims_ethernet_padding():
    frames = []
    for n in range(0, 8):
        b = bytes(_udp_frame() / Raw(b"q" * n))
        frames.append(b + bytes(60 - len(b)) if len(b) < 60 else b + b"\xee" * n)
    res = run_element("CheckIPHeader", {"offset": 14}, frames)
    assert res[0] == [ip_total(b) for b in frames]
    assert [len(b) for b in res[0]] == [14 + Ether(b)[IP].len for b in frames]
    check_invariant(res)


def test_check_truncated_at_every_length():
    frame = bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(
        sport=5, dport=6) / Raw(b"abcdef"))
    cuts = [frame[:n] for n in range(len(frame) + 1)]
    res = run_element("CheckIPHeader", {"offset": 14}, cuts, outputs=2)
    assert res[0] == [frame]
    assert res[1] == cuts[:-1]
    assert res.stats["short"] == 34               # lengths 0..33: < 20 IP bytes
    assert res.stats["bad_len"] == len(frame) - 34   # header there, data cut
    check_invariant(res)


def test_check_fragments_accepted():
    frags = [Ether() / IP(src="10.0.0.1", flags="MF", frag=0, proto=17) / Raw(b"a" * 16),
             Ether() / IP(src="10.0.0.1", flags="MF", frag=2, proto=17) / Raw(b"b" * 16),
             Ether() / IP(src="10.0.0.1", frag=4, proto=17) / Raw(b"c" * 5)]
    res = run_element("CheckIPHeader", {"offset": 14}, frags)
    assert res[0] == [bytes(f) for f in frags]
    check_invariant(res)


def test_check_checksum_false_skips_only_the_checksum():
    bad_sum = bytes(_udp_frame(chksum=0x1234))
    bad_version = _set_byte(_udp_frame(), 14, 0x65)
    res = run_element("CheckIPHeader", {"offset": 14, "checksum": False},
                      [bad_sum, bad_version], outputs=2)
    assert res[0] == [bad_sum] and res[1] == [bad_version]
    assert res.stats["bad_csum"] == 0 and res.stats["bad_version"] == 1
    check_invariant(res)


def test_check_offsets():
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()
    res = run_element("CheckIPHeader", {}, [ip, bytes(ip) + b"\0\0", Ether() / ip])
    assert res[0] == [bytes(ip), bytes(ip)]
    assert res.stats["bad_version"] == 1
    vlan = Ether() / Dot1Q(vlan=3) / ip
    res = run_element("CheckIPHeader", {"offset": 18}, [vlan, bytes(vlan) + b"\1\2"])
    assert res[0] == [bytes(vlan)] * 2
    res = run_element("CheckIPHeader", {"offset": 65535}, [vlan])
    assert res.stats["short"] == 1
    check_invariant(res)


def test_check_sets_nh_through_strip_and_unstrip():
    frames = valid_frames()
    yaml = """
name: nh-survives
elements:
  lan:     {class: FromDevice, device: lan}
  check:   {class: CheckIPHeader, offset: 14}
  strip:   {class: Strip, length: 14}
  dec:     {class: DecIPTTL}
  unstrip: {class: Unstrip, length: 14}
  wan:     {class: ToDevice, device: wan}
  expired: {class: ToDevice, device: expired}
connections:
  - lan -> check -> strip -> dec -> unstrip -> wan
  - dec[1] -> expired
"""
    res = run_graph(yaml, {"lan": VALID})
    live = [b for b in frames if Ether(b)[IP].ttl > 1]
    assert res["wan"] == [ip_rebuilt(ip_total(b), ttl=Ether(b)[IP].ttl - 1) for b in live]
    assert res["expired"] == [bytes(Ether(b)[IP])[:Ether(b)[IP].len]
                              for b in frames if Ether(b)[IP].ttl <= 1]
    check_invariant(res)


# --- MarkIPHeader ----------------------------------------------------------------

def test_mark_sets_nh_without_checking_or_trimming():
    frames = valid_frames()
    res = pipeline([mark(14), {"class": "DecIPTTL"}], VALID, outputs=2)
    assert res["out0"] == [ip_rebuilt(b, ttl=Ether(b)[IP].ttl - 1)
                           for b in frames if Ether(b)[IP].ttl > 1]
    assert res["out1"] == [b for b in frames if Ether(b)[IP].ttl <= 1]
    # Not checked: a bad checksum and a bad version still get their TTL cut.
    odd = _set_byte(_udp_frame(chksum=0x1111, ttl=9), 14, 0x65)
    res = pipeline([mark(14), {"class": "DecIPTTL"}], [odd])
    out = res["out0"]
    assert len(out) == 1 and out[0][22] == 8 and out[0][14] == 0x65
    assert out[0][:22] == odd[:22] and out[0][26:] == odd[26:]


def test_mark_offset_for_vlan():
    frame = Ether(src=A, dst=B) / Dot1Q(vlan=7) / IP(src="10.0.0.1", ttl=33) / UDP() / Raw(b"v")
    res = pipeline([mark(18), {"class": "DecIPTTL"}], [frame])
    exp = frame.copy()
    exp[IP].ttl = 32
    del exp[IP].chksum
    assert res["out0"] == [bytes(exp)]


def test_mark_drops_short_packets():
    frame = bytes(_udp_frame())
    cuts = [frame[:n] for n in range(len(frame) + 1)]
    res = run_element("MarkIPHeader", {"offset": 14}, cuts)
    assert res[0] == cuts[34:]
    assert res.stats["short"] == res.stats["dropped"] == 34
    check_invariant(res)
    res = run_element("MarkIPHeader", {}, cuts)
    assert res[0] == cuts[20:] and res.stats["short"] == 20
    check_invariant(res)


# --- DecIPTTL --------------------------------------------------------------------

@pytest.mark.parametrize("ttl", [2, 3, 64, 128, 255])
def test_dec_ttl_matches_scapy(ttl):
    pkts = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2", ttl=ttl) / TCP(),
            Ether() / IP(src="10.9.0.1", dst="192.168.0.2", ttl=ttl, id=0xFFFF, tos=0xFC)
            / UDP() / Raw(b"x" * 11),
            Ether() / IP(ttl=ttl, ihl=11, options=options(11), frag=3, flags="MF", proto=6)
            / Raw(b"frag")]
    res = pipeline([mark(), {"class": "DecIPTTL"}], pkts)
    assert res["out0"] == [ip_rebuilt(bytes(p), ttl=ttl - 1) for p in pkts]
    assert res.all_stats["e1"]["expired"] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 255), st.integers(0, 0xFFFF), st.integers(0, 255),
                          st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF),
                          st.integers(5, 15), st.integers(0, 255)),
                min_size=1, max_size=40))
def test_dec_ttl_incremental_equals_full_recompute(rows):
    pkts = []
    for ttl, ident, tos, src, dst, ihl, proto in rows:
        opts = options(ihl) if ihl > 5 else b""
        pkts.append(Ether() / IP(ttl=ttl, id=ident, tos=tos, proto=proto, ihl=ihl, options=opts,
                                 src=socket.inet_ntoa(src.to_bytes(4, "big")),
                                 dst=socket.inet_ntoa(dst.to_bytes(4, "big"))) / Raw(b"p"))
    res = pipeline([mark(), {"class": "DecIPTTL"}], pkts)
    assert res["out0"] == [ip_rebuilt(bytes(p), ttl=p[IP].ttl - 1) for p in pkts]


@pytest.mark.parametrize("outputs", [1, 2])
def test_dec_ttl_expired(outputs):
    pkts = [Ether() / IP(ttl=t) / UDP() for t in (0, 1, 2, 1, 0, 5)]
    res = pipeline([mark(), {"class": "DecIPTTL"}], pkts, outputs=outputs)
    assert res["out0"] == [ip_rebuilt(bytes(p), ttl=p[IP].ttl - 1) for p in pkts if p[IP].ttl > 1]
    s = res.all_stats["e1"]
    assert s["expired"] == 4
    if outputs == 2:
        assert res["out1"] == [bytes(p) for p in pkts if p[IP].ttl <= 1]
        assert s["dropped"] == 0
    else:
        assert s["dropped"] == 4


def test_dec_ttl_without_nh_drops():
    res = run_element("DecIPTTL", {}, valid_frames(), outputs=2)
    assert res[0] == [] and res[1] == []
    assert res.stats["no_ip"] == res.stats["dropped"] == len(valid_frames())
    check_invariant(res)


# --- SetIPChecksum -------------------------------------------------------------

def test_set_ip_checksum_fixes_header_checksum():
    frames = valid_frames()
    broken = []
    for i, b in enumerate(frames):
        p = Ether(b)
        p[IP].chksum = (i * 7919) & 0xFFFF
        broken.append(bytes(p))
    res = pipeline([mark(), {"class": "SetIPChecksum"}], broken)
    assert res["out0"] == frames
    assert res.all_stats["e1"]["bad"] == 0


def test_set_ip_checksum_bad_headers_dropped():
    good = _udp_frame(chksum=0)
    pkts = [good, _set_byte(good, 14, 0x44), _set_byte(good, 14, 0x4F),
            bytes(Ether() / IP(ihl=6, options=options(6), chksum=0))[:14 + 23]]
    res = pipeline([mark(), {"class": "SetIPChecksum"}], pkts)
    assert res["out0"] == [ip_rebuilt(bytes(good))]
    s = res.all_stats["e1"]
    assert s["bad"] == s["dropped"] == 3
    res = run_element("SetIPChecksum", {}, pkts)
    assert res[0] == [] and res.stats["bad"] == 4
    check_invariant(res)


# --- SetTCPChecksum / SetUDPChecksum ---------------------------------------------

def _zero_l4(pkt, layer):
    p = pkt.copy()
    p[layer].chksum = 0
    return bytes(p)


def test_set_tcp_and_udp_checksum_on_fixture():
    frames = [b for b in valid_frames() if not is_fragment(b)]
    for layer, cls in ((TCP, "SetTCPChecksum"), (UDP, "SetUDPChecksum")):
        mine = [b for b in frames if layer in Ether(b)]
        assert len(mine) >= 8
        res = pipeline([mark(), {"class": cls}], [_zero_l4(Ether(b), layer) for b in mine])
        assert res["out0"] == mine                      # scapy's checksums, padding kept
        assert res.all_stats["e1"]["dropped"] == 0


@pytest.mark.parametrize("ihl", [5, 6, 9, 15])
@pytest.mark.parametrize("layer", [TCP, UDP])
def test_transport_checksum_odd_lengths_and_options(layer, ihl):
    opts = options(ihl) if ihl > 5 else b""
    pkts = []
    for n in range(0, 12):
        hdr = TCP(sport=1000 + n, dport=80, seq=n * 99991, flags="PA") if layer is TCP else UDP(
            sport=1000 + n, dport=53)
        pkts.append(Ether() / IP(src="10.1.1.1", dst="172.16.5.4", ihl=ihl, options=opts) / hdr
                    / Raw(bytes(range(256))[n * 7 % 200:][:n]))
    cls = "SetTCPChecksum" if layer is TCP else "SetUDPChecksum"
    res = pipeline([mark(), {"class": cls}], [_zero_l4(p, layer) for p in pkts])
    assert res["out0"] == [bytes(p) for p in pkts]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 0xFFFF), st.booleans()),
                min_size=1, max_size=30))
def test_transport_checksum_random_payloads(rows):
    tcp = [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=port, seq=port * 3) / Raw(d)
           for d, port, _ in rows]
    udp = [Ether() / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=port) / Raw(d)
           for d, port, _ in rows]
    res = pipeline([mark(), {"class": "SetTCPChecksum"}], [_zero_l4(p, TCP) for p in tcp])
    assert res["out0"] == [bytes(p) for p in tcp]
    res = pipeline([mark(), {"class": "SetUDPChecksum"}], [_zero_l4(p, UDP) for p in udp])
    assert res["out0"] == [bytes(p) for p in udp]


def test_udp_checksum_zero_is_written_as_ffff():
    base = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=9)
    with_zero_word = Ether(bytes(base / Raw(b"\0\0")))
    # A payload word equal to the checksum scapy computes with a zero word
    # makes the one's complement sum 0xFFFF, i.e. a computed checksum of 0.
    word = with_zero_word[UDP].chksum.to_bytes(2, "big")
    pkt = base / Raw(word)
    assert Ether(bytes(pkt))[UDP].chksum == 0xFFFF    # scapy agrees
    res = pipeline([mark(), {"class": "SetUDPChecksum"}], [_zero_l4(pkt, UDP)])
    assert res["out0"] == [bytes(pkt)]


@pytest.mark.parametrize("layer", [TCP, UDP])
def test_transport_checksum_drops(layer):
    cls = "SetTCPChecksum" if layer is TCP else "SetUDPChecksum"
    other = UDP if layer is TCP else TCP
    good = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / layer() / Raw(b"data!")
    g = _zero_l4(good, layer)
    hl = 20 if layer is TCP else 8
    proto = 6 if layer is TCP else 17
    pkts = {
        "good": g,
        "frag-first": _zero_l4(Ether() / IP(flags="MF") / layer() / Raw(b"x" * 16), layer),
        "frag-middle": bytes(Ether() / IP(frag=3, flags="MF", proto=proto) / Raw(b"y" * 24)),
        "frag-last": bytes(Ether() / IP(frag=9, proto=proto) / Raw(b"z" * 24)),
        "other-proto": bytes(Ether() / IP() / other() / Raw(b"o")),
        "truncated": g[:-1],
        "too-short-for-header": bytes(Ether() / IP(proto=proto) / Raw(b"h" * (hl - 1))),
        "bad-ihl": _set_byte(g, 14, 0x44),
    }
    res = pipeline([mark(), {"class": cls}], list(pkts.values()))
    assert res["out0"] == [bytes(good)]
    s = res.all_stats["e1"]
    assert s["fragment"] == 3
    assert s["not_tcp" if layer is TCP else "not_udp"] == 1
    assert s["bad"] == 3
    assert s["dropped"] == len(pkts) - 1
    res = run_element(cls, {}, [g])
    assert res[0] == [] and res.stats["bad"] == 1
    check_invariant(res)


def test_transport_checksum_ignores_trailing_bytes():
    pkts = [Ether() / IP() / TCP() / Raw(b"abc"), Ether() / IP() / UDP() / Raw(b"abcd")]
    trailer = b"\xff\x01\x02"
    for p, layer, cls in zip(pkts, (TCP, UDP), ("SetTCPChecksum", "SetUDPChecksum")):
        res = pipeline([mark(), {"class": cls}], [_zero_l4(p, layer) + trailer])
        assert res["out0"] == [bytes(p) + trailer]


# --- IPEncap --------------------------------------------------------------------

def test_ipencap_header_matches_scapy():
    payloads = [bytes(IP(src="192.168.0.1", dst="192.168.0.2") / TCP()), b"", b"x",
                bytes(range(255)), b"\xff" * 1400] + [bytes([i]) * i for i in range(40)]
    cfg = {"proto": 4, "src": "1.0.0.1", "dst": "2.0.0.2", "ttl": 250, "tos": 0}
    res = run_element("IPEncap", cfg, payloads)
    assert res[0] == [bytes(IP(proto=4, src="1.0.0.1", dst="2.0.0.2", ttl=250, tos=0, id=i)
                            / Raw(pl)) for i, pl in enumerate(payloads)]
    for b in res[0]:
        p = IP(b)
        assert p.len == len(b) and p.ihl == 5 and p.flags == 0
        del p.chksum
        assert bytes(p) == b
    check_invariant(res)


def test_ipencap_options_df_tos_ttl_and_defaults():
    res = run_element("IPEncap", {"proto": 17, "src": "10.0.0.1", "dst": "10.0.0.9",
                                  "tos": 0xB8, "ttl": 1, "df": True}, [b"abc"] * 3)
    assert res[0] == [bytes(IP(proto=17, src="10.0.0.1", dst="10.0.0.9", tos=0xB8, ttl=1,
                               flags="DF", id=i) / Raw(b"abc")) for i in range(3)]
    res = run_element("IPEncap", {"proto": 4, "src": "10.0.0.1", "dst": "10.0.0.9"}, [b"q"])
    assert res[0] == [bytes(IP(proto=4, src="10.0.0.1", dst="10.0.0.9", ttl=250, id=0)
                            / Raw(b"q"))]
    check_invariant(res)


def test_ipencap_id_counts_across_batches_and_wraps():
    res = run_element("IPEncap", {"proto": 4, "src": "1.0.0.1", "dst": "2.0.0.2"},
                      [b""] * 65540)
    out = res[0]
    assert len(out) == 65540
    for i in (0, 1, 31, 32, 33, 1000, 65535, 65536, 65539):
        p = IP(out[i])
        assert p.id == i % 65536
        del p.chksum
        assert bytes(p) == out[i]
    check_invariant(res)


def test_ipencap_sets_nh_and_dst_ip():
    payloads = [b"abcdefgh", b"\0" * 30]
    specs = [{"class": "IPEncap", "proto": 4, "src": "1.0.0.1", "dst": "2.0.0.2"},
             {"class": "DecIPTTL"},
             {"class": "StoreIPAddress", "offset": 20}]
    res = pipeline(specs, payloads)
    assert res["out0"] == [bytes(IP(proto=4, src="1.0.0.1", dst="2.0.0.2", ttl=249, id=i)
                                 / Raw(aton("2.0.0.2") + pl[4:]))
                           for i, pl in enumerate(payloads)]


def test_ipencap_without_headroom():
    """After Unstrip eats the headroom, the header goes in front by moving
    the data into the tailroom; with neither, the packet is dropped."""
    headroom, bufsize = 128, 2048 + 128         # chosen here, passed to the engine
    biggest = bufsize - headroom
    body = bytes(range(100))
    specs = [{"class": "Unstrip", "length": headroom},
             {"class": "IPEncap", "proto": 4, "src": "1.0.0.1", "dst": "2.0.0.2"}]
    res = run_sized(specs, [body], bufsize, headroom)
    (out,) = res.wan
    assert len(out) == 20 + headroom + 100 and out[20 + headroom:] == body
    p = IP(out)
    assert p.len == len(out) and p.src == "1.0.0.1"
    del p.chksum
    assert bytes(p) == out
    # A full buffer: no headroom after Unstrip, no tailroom.
    res = run_sized(specs, [bytes(biggest), bytes(biggest - 20), body], bufsize, headroom)
    assert [len(b) for b in res.wan] == [20 + headroom + biggest - 20, 20 + headroom + 100]
    assert res.all_stats["e1"]["no_room"] == 1
    assert res.all_stats["e1"]["dropped"] == 1


# --- UDPIPEncap -----------------------------------------------------------------

def test_udpipencap_matches_scapy():
    payloads = [b"", b"a", b"ab", b"abc", bytes(range(256)) * 4, b"\xff" * 77]
    cfg = {"src": "10.0.0.1", "sport": 1234, "dst": "10.0.0.2", "dport": 5678, "checksum": True}
    res = run_element("UDPIPEncap", cfg, payloads)
    assert res[0] == [bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=250, id=i)
                            / UDP(sport=1234, dport=5678) / Raw(pl))
                      for i, pl in enumerate(payloads)]
    for b in res[0]:
        p = IP(b)
        assert p[UDP].chksum != 0 and p[UDP].len == len(b) - 20
        del p.chksum
        del p[UDP].chksum
        assert bytes(p) == b
    check_invariant(res)


def test_udpipencap_checksum_false_and_ffff():
    res = run_element("UDPIPEncap", {"src": "10.0.0.1", "sport": 1, "dst": "10.0.0.2",
                                     "dport": 2, "checksum": False}, [b"xyz", b""])
    assert res[0] == [bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=250, id=i)
                            / UDP(sport=1, dport=2, chksum=0) / Raw(pl))
                      for i, pl in enumerate([b"xyz", b""])]
    # A payload word that makes the sum 0xFFFF: the checksum is sent as 0xFFFF.
    zero = IP(src="10.0.0.1", dst="10.0.0.2", ttl=250) / UDP(sport=1, dport=2) / Raw(b"\0\0")
    word = IP(bytes(zero))[UDP].chksum.to_bytes(2, "big")
    res = run_element("UDPIPEncap", {"src": "10.0.0.1", "sport": 1, "dst": "10.0.0.2",
                                     "dport": 2}, [word])
    (out,) = res[0]
    assert IP(out)[UDP].chksum == 0xFFFF
    assert out == bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=250, id=0)
                        / UDP(sport=1, dport=2) / Raw(word))
    check_invariant(res)


def test_udpipencap_sets_nh_and_dst_ip():
    specs = [{"class": "UDPIPEncap", "src": "10.0.0.1", "sport": 1, "dst": "10.7.7.7",
              "dport": 2},
             {"class": "SetUDPChecksum"},
             {"class": "StoreIPAddress", "offset": 28}]
    res = pipeline(specs, [b"abcdefgh"])
    # SetUDPChecksum finds the header (nh) and leaves the right checksum;
    # StoreIPAddress then writes the dst_ip annotation over the payload.
    built = bytes(IP(src="10.0.0.1", dst="10.7.7.7", ttl=250, id=0) / UDP(sport=1, dport=2)
                  / Raw(b"abcdefgh"))
    assert res["out0"] == [built[:28] + aton("10.7.7.7") + built[32:]]
    assert res.all_stats["e1"]["dropped"] == 0


# --- IPMirror -------------------------------------------------------------------

def test_ipmirror_swaps_like_scapy():
    a, b = "10.0.0.1", "192.168.9.9"
    cases = [
        (IP(src=a, dst=b) / TCP(sport=1, dport=2, seq=10, ack=20) / Raw(b"t"),
         IP(src=b, dst=a) / TCP(sport=2, dport=1, seq=20, ack=10) / Raw(b"t")),
        (IP(src=a, dst=b) / UDP(sport=53, dport=5353) / Raw(b"odd"),
         IP(src=b, dst=a) / UDP(sport=5353, dport=53) / Raw(b"odd")),
        (IP(src=a, dst=b, ihl=8, options=options(8)) / UDP(sport=3, dport=4),
         IP(src=b, dst=a, ihl=8, options=options(8)) / UDP(sport=4, dport=3)),
        (IP(src=a, dst=b, flags="MF") / TCP(sport=5, dport=6, seq=1, ack=2),
         IP(src=b, dst=a, flags="MF") / TCP(sport=6, dport=5, seq=2, ack=1)),
        (IP(src=a, dst=b) / ICMP(id=4, seq=5),
         IP(src=b, dst=a) / ICMP(id=4, seq=5)),
        # not first fragments, or no full transport header: addresses only
        (IP(src=a, dst=b, frag=7, proto=17) / Raw(b"\0\1\0\2rest"),
         IP(src=b, dst=a, frag=7, proto=17) / Raw(b"\0\1\0\2rest")),
        (IP(src=a, dst=b, proto=17) / Raw(b"\0\1\0\2\0\0\0"),
         IP(src=b, dst=a, proto=17) / Raw(b"\0\1\0\2\0\0\0")),
        (IP(src=a, dst=b, proto=6) / Raw(bytes(range(19))),
         IP(src=b, dst=a, proto=6) / Raw(bytes(range(19)))),
    ]
    pkts = [Ether(src=A, dst=B) / i for i, _ in cases]
    res = pipeline([mark(), {"class": "IPMirror"}], pkts)
    assert res["out0"] == [bytes(Ether(src=A, dst=B) / o) for _, o in cases]


def test_ipmirror_keeps_fixture_checksums_valid():
    frames = valid_frames()
    res = pipeline([mark(), {"class": "IPMirror"}], VALID)
    assert len(res["out0"]) == len(frames)
    for before, after in zip(frames, res["out0"]):
        p, q = Ether(before)[IP], Ether(after)[IP]
        assert (q.src, q.dst) == (p.dst, p.src)
        chk = Ether(after)
        del chk[IP].chksum
        if not is_fragment(before):
            for layer in (TCP, UDP):
                if layer in chk:
                    assert (q[layer].sport, q[layer].dport) == (p[layer].dport, p[layer].sport)
                    del chk[layer].chksum
        assert bytes(chk) == after


def test_ipmirror_twice_is_identity_and_needs_nh():
    frames = valid_frames()
    res = pipeline([mark(), {"class": "IPMirror"}, {"class": "IPMirror"}], frames)
    assert res["out0"] == frames
    res = run_element("IPMirror", {}, frames)
    assert res[0] == [] and res.stats["no_ip"] == len(frames)
    check_invariant(res)


# --- GetIPAddress / StoreIPAddress ------------------------------------------------

def test_get_ip_address_relative_to_nh():
    frames = valid_frames()
    res = pipeline([mark(), {"class": "GetIPAddress", "offset": 16},
                    {"class": "StoreIPAddress", "offset": 0}], frames)
    assert res["out0"] == [aton(Ether(b)[IP].dst) + b[4:] for b in frames]
    # source: offset 12
    res = pipeline([mark(), {"class": "GetIPAddress", "offset": 12},
                    {"class": "StoreIPAddress", "offset": 0}], frames)
    # (an address of 0.0.0.0 is an unset annotation: StoreIPAddress leaves
    # the packet alone)
    assert any(Ether(b)[IP].src == "0.0.0.0" for b in frames)
    assert res["out0"] == [aton(Ether(b)[IP].src) + b[4:] if Ether(b)[IP].src != "0.0.0.0"
                           else b for b in frames]


def test_get_ip_address_relative_to_data_without_nh():
    frames = valid_frames()
    res = pipeline([{"class": "GetIPAddress", "offset": 30},
                    {"class": "StoreIPAddress", "offset": 0}], frames)
    assert res["out0"] == [aton(Ether(b)[IP].dst) + b[4:] for b in frames]


def test_get_ip_address_click_style_after_strip():
    """CheckIPHeader(14) -> Strip(14) -> GetIPAddress(12): nh == data."""
    frames = valid_frames()
    res = pipeline([{"class": "CheckIPHeader", "offset": 14}, {"class": "Strip", "length": 14},
                    {"class": "GetIPAddress", "offset": 12},
                    {"class": "StoreIPAddress", "offset": 16}], frames)
    ips = [bytes(Ether(b)[IP])[:Ether(b)[IP].len] for b in frames]
    assert res["out0"] == [ip[:16] + ip[12:16] + ip[20:] if ip[12:16] != bytes(4) else ip
                           for ip in ips]


def test_get_ip_address_nh_before_data():
    """After Strip(34) the nh annotation lies 20 bytes before the data, so
    offset 24 from it is byte 4 of the TCP header (the sequence number)."""
    pkts = [Ether() / IP() / TCP(sport=1, dport=2, seq=0x0A0B0C0D) / Raw(b"hi"),
            Ether() / IP() / TCP(seq=0xC0A80001)]
    res = pipeline([mark(), {"class": "Strip", "length": 34},
                    {"class": "GetIPAddress", "offset": 24},
                    {"class": "StoreIPAddress", "offset": 8}], pkts)
    tcps = [bytes(p[TCP]) for p in pkts]
    assert res["out0"] == [t[:8] + t[4:8] + t[12:] for t in tcps]
    # offset 16 would be 4 bytes before the data: short
    res = pipeline([mark(), {"class": "Strip", "length": 34},
                    {"class": "GetIPAddress", "offset": 16}], pkts)
    assert res["out0"] == [] and res.all_stats["e2"]["short"] == 2


def test_get_ip_address_short_packets():
    frame = bytes(_udp_frame())
    cuts = [frame[:n] for n in range(len(frame) + 1)]
    res = run_element("GetIPAddress", {"offset": 30}, cuts)
    assert res[0] == cuts[34:]
    assert res.stats["short"] == res.stats["dropped"] == 34
    check_invariant(res)
    res = pipeline([mark(), {"class": "GetIPAddress", "offset": len(frame) - 14 - 4}], cuts)
    assert res["out0"] == [frame]
    assert res.all_stats["e1"]["short"] == len(frame) - 34


def test_store_ip_address_forms():
    frames = valid_frames()
    # fixed address
    res = run_element("StoreIPAddress", {"offset": 26, "address": "9.8.7.6"}, frames)
    assert res[0] == [b[:26] + aton("9.8.7.6") + b[30:] for b in frames]
    check_invariant(res)
    # annotation unset (0.0.0.0): unchanged
    res = run_element("StoreIPAddress", {"offset": 0}, frames)
    assert res[0] == frames
    zero_dst = Ether() / IP(dst="0.0.0.0") / UDP()
    res = pipeline([{"class": "GetIPAddress", "offset": 30},
                    {"class": "StoreIPAddress", "offset": 0}], [zero_dst])
    assert res["out0"] == [bytes(zero_dst)]


@pytest.mark.parametrize("outputs", [1, 2])
def test_store_ip_address_short(outputs):
    pkts = [b"", b"abc", b"abcdef", b"abcde", b"abcdefgh"]
    res = run_element("StoreIPAddress", {"offset": 2, "address": "1.2.3.4"}, pkts,
                      outputs=outputs)
    assert res[0] == [b"ab\1\2\3\4", b"ab\1\2\3\4gh"]
    assert res.stats["short"] == 3
    if outputs == 2:
        assert res[1] == [b"", b"abc", b"abcde"] and res.stats["dropped"] == 0
    else:
        assert res.stats["dropped"] == 3
    check_invariant(res)


# --- configuration ----------------------------------------------------------------

@pytest.mark.parametrize("cls,cfg,needle", [
    ("IPEncap", {"proto": 4, "src": "10.0.0.300", "dst": "1.1.1.1"},
     "parameter 'src': '10.0.0.300' is not an IPv4 address"),
    ("IPEncap", {"src": "1.1.1.1", "dst": "1.1.1.1"}, "missing parameter 'proto'"),
    ("IPEncap", {"proto": 256, "src": "1.1.1.1", "dst": "1.1.1.1"}, "parameter 'proto'"),
    ("IPEncap", {"proto": 4, "src": "1.1.1.1", "dst": "1.1.1.1", "ttl": -1}, "parameter 'ttl'"),
    ("UDPIPEncap", {"src": "1.1.1.1", "sport": 70000, "dst": "1.1.1.1", "dport": 1},
     "parameter 'sport'"),
    ("UDPIPEncap", {"src": "1.1.1.1", "sport": 1, "dst": "x", "dport": 1}, "parameter 'dst'"),
    ("UDPIPEncap", {"src": "1.1.1.1", "sport": 1, "dst": "1.1.1.1", "dport": 1,
                    "checksum": "maybe"}, "parameter 'checksum'"),
    ("CheckIPHeader", {"offset": -1}, "parameter 'offset'"),
    ("CheckIPHeader", {"badsrc": "1.1.1.1"}, "unknown parameter 'badsrc'"),
    ("MarkIPHeader", {"offset": "fourteen"}, "parameter 'offset'"),
    ("GetIPAddress", {}, "missing parameter 'offset'"),
    ("StoreIPAddress", {"offset": 1, "address": "1.2.3"}, "parameter 'address'"),
    ("DecIPTTL", {"multicast": True}, "unknown parameter 'multicast'"),
])
def test_bad_config_names_the_element(cls, cfg, needle):
    with pytest.raises(ConfigError) as exc:
        run_element(cls, cfg, [])
    assert "element 'element'" in str(exc.value)
    assert needle in str(exc.value)


def test_bad_config_in_yaml_is_located():
    yaml = """name: bad
elements:
  lan: {class: FromDevice, device: lan}
  encap: {class: IPEncap, proto: 4, src: 10.0.0.300, dst: 2.0.0.2}
  wan: {class: ToDevice, device: wan}
connections:
  - lan -> encap -> wan
"""
    with pytest.raises(ConfigError) as exc:
        run_graph(yaml, {})
    msg = str(exc.value)
    assert "element 'encap'" in msg and "'10.0.0.300' is not an IPv4 address" in msg
    assert ":4:" in msg


def test_checkipheader_sets_dst_ip_annotation_like_click():
    """A valid packet's destination lands in the dst_ip annotation (seen
    through StoreIPAddress, which writes the annotation into the payload)."""
    pkt = Ether() / IP(src="10.0.0.1", dst="172.16.5.9") / UDP(sport=1, dport=2) / Raw(b"ZZZZ")
    res = pipeline([{"class": "CheckIPHeader", "offset": 14},
                    {"class": "StoreIPAddress", "offset": 42}], [pkt])
    raw = bytes(pkt)
    assert res["out0"] == [raw[:42] + aton("172.16.5.9")]
