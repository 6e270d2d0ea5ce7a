"""ICMPPingResponder, ICMPError, IPFragmenter.

Each element runs behind MarkIPHeader(offset 14), which sets the network
header annotation these elements need. Expected outputs are built here with
scapy from each element's documented behaviour: the echo reply is the
request with addresses swapped, TTL 255, no fragment bits, ICMP type 0 and
checksums recomputed by scapy; an ICMP error is scapy's IP/ICMP around the
offending header + 8 bytes; fragments are compared with scapy's fragment()
and reassembled back into the original.
"""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader, checksum

from middlebox.errors import ConfigError
from middlebox.testing import run_element, run_graph

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ECHO = os.path.join(FIXTURES, "icmp_echo.pcap")
NOT_ECHO = os.path.join(FIXTURES, "icmp_not_echo.pcap")
OFFENDING = os.path.join(FIXTURES, "icmp_offending.pcap")
QUIET = os.path.join(FIXTURES, "icmp_quiet.pcap")
LARGE = os.path.join(FIXTURES, "icmp_large.pcap")
RUNTS = os.path.join(FIXTURES, "icmp_runts.pcap")

# The IP options of the fixtures (tests/fixtures/make_icmp_fixtures.py).
RR = bytes([7, 11, 4]) + bytes(8)                   # not copied
LSRR = bytes([0x83, 7, 4, 10, 9, 9, 9])             # copied
SEC = bytes([0x82, 11]) + bytes(range(1, 10))       # copied
NOP = b"\x01"

MF, DF = 1, 2   # scapy's IP flag bits


def frames(path):
    """The frames of a pcap, exactly as stored."""
    return [data for data, _meta in RawPcapReader(path)]


def check_invariant(res):
    """in + created == out + dropped (+ held) for every element of the run."""
    assert res.all_stats, "the run reported no element counters"
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


def run(spec, packets, out1=True, mark=True, after=None):
    """lan -> MarkIPHeader(14) -> dut [-> after] -> wan; dut[1] -> err."""
    lines = ["name: icmp-test", "elements:",
             "  lan: {class: FromDevice, device: lan}",
             "  mark: {class: MarkIPHeader, offset: 14}",
             f"  dut: {spec}",
             "  wan: {class: ToDevice, device: wan}"]
    chain = ["lan"] + (["mark"] if mark else []) + ["dut"]
    if after:
        lines.append(f"  after: {after}")
        chain.append("after")
    chain.append("wan")
    conns = ["connections:", "  - " + " -> ".join(chain)]
    if out1:
        lines.append("  err: {class: ToDevice, device: err}")
        conns.append("  - dut[1] -> err")
    if not mark:
        lines.remove("  mark: {class: MarkIPHeader, offset: 14}")
    res = run_graph("\n".join(lines + conns) + "\n", {"lan": packets})
    res.dut = res.all_stats["dut"]
    check_invariant(res)
    return res


def ip_of(frame):
    """The IPv4 datagram in an Ethernet frame, without link padding."""
    ip = frame[14:]
    return ip[:int.from_bytes(ip[2:4], "big")]


def header_sum_ok(ipb):
    return checksum(ipb[:(ipb[0] & 15) * 4]) == 0


# --- ICMPPingResponder ---------------------------------------------------------

def echo_reply(frame):
    """What the responder must make of an echo request, rebuilt by scapy."""
    p = Ether(frame)
    src, dst = p[IP].src, p[IP].dst
    p[IP].src, p[IP].dst = dst, src
    p[IP].ttl = 255
    p[IP].flags = 0
    p[IP].frag = 0
    del p[IP].chksum
    p[ICMP].type = 0
    p[ICMP].code = 0
    del p[ICMP].chksum
    return bytes(p)


def test_ping_replies_match_scapy():
    reqs = frames(ECHO)
    res = run("{class: ICMPPingResponder}", reqs)
    assert res["wan"] == [echo_reply(f) for f in reqs]
    assert res["err"] == []
    for out, req in zip(res.scapy("wan"), reqs):
        r = Ether(req)
        assert out[ICMP].type == 0 and out[ICMP].id == r[ICMP].id and out[ICMP].seq == r[ICMP].seq
        assert out[IP].src == r[IP].dst and out[IP].dst == r[IP].src
        assert bytes(out[ICMP].payload) == bytes(r[ICMP].payload)
        ipb = ip_of(bytes(out))
        assert header_sum_ok(ipb)
        assert checksum(ipb[(ipb[0] & 15) * 4:]) == 0          # ICMP checksum
    assert res.dut["replies"] == len(reqs) and res.dut["dropped"] == 0


def test_ping_non_requests_go_to_output_1_unchanged():
    pkts = frames(NOT_ECHO)
    res = run("{class: ICMPPingResponder}", pkts)
    assert res["wan"] == []
    assert res["err"] == pkts
    assert res.dut["not_echo"] == len(pkts) and res.dut["ports"] == [0, len(pkts)]


def test_ping_non_requests_dropped_without_output_1():
    reqs, others = frames(ECHO), frames(NOT_ECHO)
    mixed = [x for pair in zip(reqs, others) for x in pair]
    res = run("{class: ICMPPingResponder}", mixed, out1=False)
    assert res["wan"] == [echo_reply(f) for f in reqs]
    assert res.dut["dropped"] == len(others) and res.dut["not_echo"] == len(others)


def test_ping_without_network_header_annotation_drops_everything():
    pkts = frames(ECHO)
    res = run_element("ICMPPingResponder", {}, pkts, outputs=2)
    assert res[0] == [] and res[1] == []
    assert res.stats["dropped"] == len(pkts) and res.stats["no_ip"] == len(pkts)


@settings(max_examples=60, deadline=None)
@given(ident=st.integers(0, 0xFFFF), seq=st.integers(0, 0xFFFF),
       data=st.binary(max_size=300), ttl=st.integers(1, 255), tos=st.integers(0, 255),
       df=st.booleans())
def test_ping_reply_checksums_for_any_request(ident, seq, data, ttl, tos, df):
    req = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.1.2.3", dst="10.3.2.1", ttl=ttl, tos=tos, flags=DF if df else 0)
                / ICMP(type=8, id=ident, seq=seq) / Raw(data))
    res = run("{class: ICMPPingResponder}", [req])
    assert res["wan"] == [echo_reply(req)]


def test_ping_runts_and_garbage_survive():
    pkts = frames(RUNTS)
    res = run("{class: ICMPPingResponder}", pkts)
    # Only full echo requests are answered: none of the runts is one.
    assert res["wan"] == []
    assert res.dut["in"] == res.dut["ports"][1] + res.dut["dropped"]


def test_ping_reply_then_mirror_is_a_valid_frame():
    req = frames(ECHO)[1]
    res = run("{class: ICMPPingResponder}", [req], after="{class: EtherMirror}")
    r, out = Ether(req), res.scapy("wan")[0]
    assert out.src == r.dst and out.dst == r.src
    assert bytes(out)[14:] == echo_reply(req)[14:]


# --- ICMPError -------------------------------------------------------------------

def quote(frame):
    """The offending datagram's IP header and first 8 payload bytes."""
    ipb = ip_of(frame)
    return ipb[:(ipb[0] & 15) * 4 + 8]


def icmp_error(frame, ident, src="10.0.0.1", **icmp):
    return bytes(IP(src=src, dst=Ether(frame)[IP].src, ttl=255, id=ident, tos=0, flags=0)
                 / ICMP(**icmp) / Raw(quote(frame)))


def test_error_quotes_offending_header_and_8_bytes():
    pkts = frames(OFFENDING)
    res = run("{class: ICMPError, src: 10.0.0.1, type: timeexceeded, code: 0}", pkts,
              out1=False)
    assert res["wan"] == [icmp_error(f, i + 1, type=11, code=0) for i, f in enumerate(pkts)]
    for out, f in zip(res["wan"], pkts):
        p = IP(out)                           # the output starts at the IP header
        assert p.src == "10.0.0.1" and p.dst == Ether(f)[IP].src and p.ttl == 255
        assert p.proto == 1 and p[ICMP].type == 11 and p[ICMP].code == 0
        assert bytes(p[ICMP])[8:] == quote(f)
        assert header_sum_ok(out) and checksum(out[20:]) == 0
        assert len(out) == p.len
    assert res.dut["errors"] == len(pkts) and res.dut["dropped"] == 0


def test_error_quote_is_shorter_when_the_payload_is():
    pkts = frames(OFFENDING)
    res = run("{class: ICMPError, src: 10.0.0.1, type: unreachable, code: port}", pkts,
              out1=False)
    three, none = IP(res["wan"][6]), IP(res["wan"][7])
    assert bytes(three[ICMP])[8:] == ip_of(pkts[6]) and len(ip_of(pkts[6])) == 23
    assert bytes(none[ICMP])[8:] == ip_of(pkts[7]) and len(ip_of(pkts[7])) == 20


@pytest.mark.parametrize("cfg, icmp", [
    ("type: unreachable, code: port", dict(type=3, code=3)),
    ("type: 3, code: 1", dict(type=3, code=1)),
    ("type: unreachable, code: needfrag, mtu: 1400", dict(type=3, code=4, nexthopmtu=1400)),
    ("type: timeexceeded, code: reassembly", dict(type=11, code=1)),
    ("type: parameterproblem, code: erroratptr, pointer: 9", dict(type=12, code=0, ptr=9)),
    ("type: parameterproblem, code: length", dict(type=12, code=2)),
    ("type: sourcequench", dict(type=4, code=0)),
    ("type: redirect, code: host", dict(type=5, code=1, gw="0.0.0.0")),
    ("type: 11, code: 200", dict(type=11, code=200)),
])
def test_error_types_and_codes(cfg, icmp):
    pkts = frames(OFFENDING)[:3]
    res = run(f"{{class: ICMPError, src: 192.0.2.1, {cfg}}}", pkts, out1=False)
    assert res["wan"] == [icmp_error(f, i + 1, src="192.0.2.1", **icmp)
                          for i, f in enumerate(pkts)]


def test_error_never_answers_errors_fragments_broadcasts_bad_sources():
    pkts = frames(QUIET)
    reasons = {Ether(f).src for f in pkts}
    assert len(reasons) == 11
    res = run("{class: ICMPError, src: 10.0.0.1, type: unreachable, code: host}", pkts,
              out1=False)
    assert res["wan"] == []
    assert res.dut["suppressed"] == len(pkts) and res.dut["dropped"] == len(pkts)


def test_error_answers_query_icmp_and_first_fragments_among_quiet_ones():
    good, quiet = frames(OFFENDING), frames(QUIET)
    mixed = [x for pair in zip(quiet, good) for x in pair] + quiet[len(good):]
    res = run("{class: ICMPError, src: 10.0.0.1, type: timeexceeded}", mixed, out1=False)
    assert res["wan"] == [icmp_error(f, i + 1, type=11, code=0) for i, f in enumerate(good)]
    assert res.dut["suppressed"] == len(quiet)


def test_error_bad_addrs_are_not_answered():
    bcast = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="10.0.0.7", dst="10.0.0.255") / UDP(sport=1, dport=2))
    from_bad = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                     / IP(src="10.1.255.255", dst="10.0.0.5") / UDP(sport=1, dport=2))
    ok = frames(OFFENDING)[0]
    res = run("{class: ICMPError, src: 10.0.0.1, type: unreachable, "
              "bad_addrs: [10.0.0.255, 10.1.255.255]}", [bcast, from_bad, ok], out1=False)
    assert res["wan"] == [icmp_error(ok, 1, type=3, code=0)]
    assert res.dut["suppressed"] == 2


def test_error_after_strip_and_encap():
    """The error starts at its IP header with headroom for a link header."""
    pkts = frames(OFFENDING)[:4]
    text = """
name: err-encap
elements:
  lan:   {class: FromDevice, device: lan}
  strip: {class: Strip, length: 14}
  mark:  {class: MarkIPHeader, offset: 0}
  err:   {class: ICMPError, src: 10.0.0.1, type: timeexceeded}
  encap: {class: EtherEncap, ethertype: 0x0800, src: "02:00:00:00:00:aa", dst: "02:00:00:00:00:bb"}
  wan:   {class: ToDevice, device: wan}
connections:
  - lan -> strip -> mark -> err -> encap -> wan
"""
    res = run_graph(text, {"lan": pkts})
    check_invariant(res)
    expect = [bytes(Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb", type=0x0800))
              + icmp_error(f, i + 1, type=11, code=0) for i, f in enumerate(pkts)]
    assert res["wan"] == expect
    assert res.all_stats["encap"]["no_room"] == 0


def test_error_without_network_header_annotation_drops_everything():
    pkts = frames(OFFENDING)
    res = run_element("ICMPError", {"src": "10.0.0.1", "type": "timeexceeded"}, pkts)
    assert res[0] == []
    assert res.stats["no_ip"] == len(pkts) and res.stats["dropped"] == len(pkts)


def test_error_runts_and_garbage_survive():
    pkts = frames(RUNTS)
    res = run("{class: ICMPError, src: 10.0.0.1, type: unreachable, code: host}", pkts,
              out1=False)
    for out in res["wan"]:
        p = IP(out)
        assert p[ICMP].type == 3 and header_sum_ok(out) and checksum(out[20:]) == 0
        assert len(out) <= 20 + 8 + 60 + 8
    s = res.dut
    assert s["errors"] + s["suppressed"] + s["no_ip"] == s["in"]


@pytest.mark.parametrize("cfg, message", [
    ("type: echo", "parameter 'type': unknown name 'echo'"),
    ("type: 8", "parameter 'type': 8 is not an ICMP error type"),
    ("type: 256", "parameter 'type': 256 is not between 0 and 255"),
    ("type: unreachable, code: transit", "parameter 'code': unknown name 'transit'"),
    ("type: unreachable, code: -1", "parameter 'code': -1 is not between 0 and 255"),
    ("type: unreachable, code: bogus", "parameter 'code': unknown name 'bogus'"),
    ("type: unreachable, code: needfrag", "parameter 'mtu' is required"),
    ("type: timeexceeded, mtu: 1500", "parameter 'mtu' only applies"),
    ("type: unreachable, code: needfrag, mtu: 20", "parameter 'mtu': 20 is below the minimum 68"),
    ("type: timeexceeded, pointer: 3", "parameter 'pointer' only applies"),
    ("type: [1]", "parameter 'type': expected a number or a name"),
    ("type: timeexceeded, bad_addrs: [10.0.0.300]", "'10.0.0.300' is not an IPv4 address"),
])
def test_error_bad_configuration(cfg, message):
    text = ("name: bad\nelements:\n  lan: {class: FromDevice, device: lan}\n"
            f"  icmperr: {{class: ICMPError, src: 10.0.0.1, {cfg}}}\n"
            "  wan: {class: ToDevice, device: wan}\n"
            "connections:\n  - lan -> icmperr -> wan\n")
    with pytest.raises(ConfigError) as e:
        run_graph(text, {"lan": []})
    assert "element 'icmperr'" in str(e.value) and message in str(e.value)


def test_error_bad_source_configuration():
    for src, message in (("0.0.0.0", "not a usable source"), ("10.0.0.300", "not an IPv4")):
        with pytest.raises(ConfigError) as e:
            run_element("ICMPError", {"src": src, "type": "timeexceeded"}, [])
        assert "element 'element'" in str(e.value) and message in str(e.value)


# --- IPFragmenter -------------------------------------------------------------------

def split_by_id(out):
    """Output frames grouped by IP id, in order (ids are unique per input)."""
    groups = {}
    for f in out:
        groups.setdefault(Ether(f)[IP].id, []).append(f)
    return groups


def check_fragments(orig, frags, mtu, later_options=None):
    """Every documented property of the fragments of one frame, and that
    they reassemble into it."""
    o = Ether(orig)
    oip = ip_of(orig)
    ohl = (oip[0] & 15) * 4
    off0 = o[IP].frag * 8
    pos = off0
    data = b""
    for k, f in enumerate(frags):
        assert f[:14] == orig[:14]                          # link header copied
        ipb = f[14:]
        p = IP(ipb)
        hl = p.ihl * 4
        last = k == len(frags) - 1
        assert p.len == len(ipb) <= mtu
        assert header_sum_ok(ipb)
        assert (p.src, p.dst, p.id, p.proto, p.ttl, p.tos) == \
            (o[IP].src, o[IP].dst, o[IP].id, o[IP].proto, o[IP].ttl, o[IP].tos)
        assert p.frag * 8 == pos
        assert not p.flags & DF
        if last:
            assert bool(p.flags & MF) == bool(o[IP].flags & MF)
        else:
            assert p.flags & MF and (p.len - hl) % 8 == 0
        if k == 0:
            assert ipb[:hl][20:] == oip[20:ohl]             # whole original options
        elif later_options is not None:
            assert ipb[20:hl] == later_options
        data += ipb[hl:p.len]
        pos += p.len - hl
    assert data == oip[ohl:]
    return len(frags)


MTUS = [68, 69, 100, 576, 577, 1000, 1006, 1280, 1499, 1500, 1501, 4000]


def later_options_of(frame):
    """The options the later fragments of each fixture frame must carry."""
    opts = bytes(Ether(frame)[IP])[20:(frame[14] & 15) * 4]
    return {
        RR + b"\x00": b"",
        LSRR + NOP + RR + NOP + SEC + NOP + NOP + b"\x00\x00\x00": LSRR + SEC + b"\x00\x00",
        SEC + NOP: SEC + b"\x00",
        b"": b"",
    }[opts]


@pytest.mark.parametrize("mtu", MTUS)
def test_fragmenter_fixture(mtu):
    pkts = frames(LARGE)
    res = run(f"{{class: IPFragmenter, mtu: {mtu}}}", pkts)
    groups = split_by_id(res["wan"])
    assert list(groups) == [Ether(f)[IP].id for f in pkts]     # in order, none lost
    made = 0
    for f in pkts:
        out = groups[Ether(f)[IP].id]
        if len(ip_of(f)) <= mtu:
            assert out == [f]
        else:
            made += check_fragments(f, out, mtu, later_options_of(f))
    assert res["err"] == []
    split = sum(1 for f in pkts if len(ip_of(f)) > mtu)
    s = res.dut
    assert s["fragments"] == made and s["created"] == made - split and s["dropped"] == 0


@pytest.mark.parametrize("mtu", MTUS)
def test_fragmenter_matches_scapy_fragment(mtu):
    """Without options (and without DF) scapy's fragment() with payloads of
    (mtu - 20) rounded down to 8 gives the very same frames."""
    pkts = [f for f in frames(LARGE) if Ether(f)[IP].ihl == 5]
    res = run(f"{{class: IPFragmenter, mtu: {mtu}}}", pkts)
    expect = []
    for f in pkts:
        if len(ip_of(f)) <= mtu:
            expect.append(f)
        else:
            expect += [bytes(x) for x in fragment(Ether(f), (mtu - 20) // 8 * 8)]
    assert res["wan"] == expect


def test_fragmenter_fragment_of_a_fragment_keeps_offset_and_mf():
    f = frames(LARGE)[8]
    assert Ether(f)[IP].frag == 100 and Ether(f)[IP].flags & MF
    res = run("{class: IPFragmenter, mtu: 1000}", [f])
    out = res["wan"]
    assert [IP(x[14:]).frag for x in out] == [100, 100 + 976 // 8, 100 + 2 * 976 // 8]
    assert all(IP(x[14:]).flags & MF for x in out)
    check_fragments(f, out, 1000)


def test_fragmenter_exactly_mtu_passes_and_one_more_splits():
    base = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
        src="10.0.0.1", dst="10.0.0.2", id=50) / UDP(sport=1, dport=2)
    at = bytes(base / Raw(b"x" * (1500 - 28)))
    over = bytes(base / Raw(b"x" * (1501 - 28)))
    padded = at + bytes(30)                                    # link padding is not counted
    res = run("{class: IPFragmenter, mtu: 1500}", [at, over, padded])
    assert res["wan"][0] == at and res["wan"][-1] == padded
    assert len(res["wan"]) == 4
    check_fragments(over, res["wan"][1:3], 1500)
    assert len(res["wan"][2]) == 14 + 20 + 1                    # 1481 payload bytes: 1480 + 1


def test_fragmenter_df_goes_to_output_1():
    big = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=i)
                 / UDP() / Raw(b"d" * 2000)) for i in range(3)]
    small = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=9)
                  / UDP() / Raw(b"s" * 100))
    res = run("{class: IPFragmenter, mtu: 1500}", big + [small])
    assert res["err"] == big and res["wan"] == [small]
    assert res.dut["df"] == 3
    res = run("{class: IPFragmenter, mtu: 1500}", big + [small], out1=False)
    assert res["wan"] == [small] and res.dut["dropped"] == 3


def test_fragmenter_ignores_df_when_told():
    big = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=3)
                / UDP() / Raw(bytes(range(256)) * 9))
    res = run("{class: IPFragmenter, mtu: 576, honor_df: false}", [big])
    assert res["err"] == [] and res.dut["df"] == 0
    check_fragments(big, res["wan"], 576, b"")


def test_fragmenter_needfrag_error_for_df_packets():
    """IPFragmenter[1] -> ICMPError(unreachable, needfrag): Path MTU discovery."""
    big = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.7", dst="10.9.9.9", flags="DF", id=4)
                / TCP(sport=5, dport=6, seq=77) / Raw(b"x" * 1600))
    text = """
name: pmtu
elements:
  lan:  {class: FromDevice, device: lan}
  mark: {class: MarkIPHeader, offset: 14}
  frag: {class: IPFragmenter, mtu: 1400}
  err:  {class: ICMPError, src: 10.0.0.1, type: unreachable, code: needfrag, mtu: 1400}
  wan:  {class: ToDevice, device: wan}
  back: {class: ToDevice, device: back}
connections:
  - lan -> mark -> frag -> wan
  - frag[1] -> err -> back
"""
    res = run_graph(text, {"lan": [big]})
    check_invariant(res)
    assert res["wan"] == []
    assert res["back"] == [icmp_error(big, 1, type=3, code=4, nexthopmtu=1400)]


def test_fragmenter_drops_packets_whose_fragments_do_not_fit():
    """MTU 68 turns a 4052-byte datagram into 84 fragments, more than the
    64 the graph reserves per packet: some packets are dropped whole, never
    part of their fragments."""
    pkts = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", id=i + 1) / UDP()
                  / Raw(bytes([i]) * (84 * 48 - 8))) for i in range(32)]
    res = run("{class: IPFragmenter, mtu: 68}", pkts)
    groups = split_by_id(res["wan"])
    for f in pkts:
        if Ether(f)[IP].id in groups:
            assert check_fragments(f, groups[Ether(f)[IP].id], 68) == 84
    s = res.dut
    assert s["no_room"] > 0
    assert s["no_room"] + len(groups) == len(pkts)
    assert s["created"] == 83 * len(groups)


def test_fragmenter_without_network_header_annotation_drops_everything():
    pkts = frames(LARGE)
    res = run_element("IPFragmenter", {"mtu": 576}, pkts)
    assert res[0] == []
    assert res.stats["bad"] == len(pkts) and res.stats["dropped"] == len(pkts)


def test_fragmenter_runts_and_garbage_survive():
    pkts = frames(RUNTS)
    res = run("{class: IPFragmenter, mtu: 576}", pkts)
    s = res.dut
    # The cut 2000-byte datagrams (total length past the frame) and the
    # ones with a bad IHL or version are bad; nothing is fragmented.
    assert s["bad"] >= 7
    assert s["created"] == 0 and all(f in pkts for f in res["wan"])


OPTION_SETS = [b"", RR + b"\x00", LSRR + NOP, SEC + NOP, LSRR + NOP + RR + NOP + SEC + NOP + NOP,
               NOP * 4, b"\x44\x0c\x05\x00" + bytes(8)]


@settings(max_examples=80, deadline=None)
@given(size=st.integers(0, 5000), mtu=st.integers(68, 2000), opts=st.sampled_from(OPTION_SETS),
       mf=st.booleans(), off=st.integers(0, 1000), link=st.sampled_from([0, 14, 18]))
def test_fragmenter_reassembles_anything(size, mtu, opts, mf, off, link):
    datagram = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=77, options=opts, flags=MF if mf else 0,
                        frag=off, proto=17) / Raw(bytes(i & 0xFF for i in range(size))))
    frame = bytes(range(0x30, 0x30 + link)) + datagram
    text = ("name: prop\nelements:\n  lan: {class: FromDevice, device: lan}\n"
            f"  mark: {{class: MarkIPHeader, offset: {link}}}\n"
            f"  dut: {{class: IPFragmenter, mtu: {mtu}}}\n"
            "  wan: {class: ToDevice, device: wan}\n"
            "connections:\n  - lan -> mark -> dut -> wan\n")
    res = run_graph(text, {"lan": [frame]})
    check_invariant(res)
    out = res["wan"]
    if len(datagram) <= mtu:
        assert out == [frame]
        return
    hl = (datagram[0] & 15) * 4
    pos, data = off * 8, b""
    for k, f in enumerate(out):
        assert f[:link] == frame[:link]
        p = IP(f[link:])
        assert p.len == len(f) - link <= mtu and checksum(f[link:link + p.ihl * 4]) == 0
        assert p.frag * 8 == pos
        if k < len(out) - 1:
            assert p.flags & MF and (p.len - p.ihl * 4) % 8 == 0
        else:
            assert bool(p.flags & MF) == mf
        if k > 0 and opts in (b"", RR + b"\x00", NOP * 4, b"\x44\x0c\x05\x00" + bytes(8)):
            assert p.ihl == 5                                   # nothing copied
        data += f[link + p.ihl * 4:]
        pos += p.len - p.ihl * 4
    assert out[0][link + 20:link + hl] == datagram[20:hl]          # first: all options
    assert data == datagram[hl:]


@pytest.mark.parametrize("cfg, message", [
    ("mtu: 67", "parameter 'mtu': 67 is below the minimum 68"),
    ("mtu: 65536", "parameter 'mtu': 65536 is above the maximum 65535"),
    ("mtu: 1500, honor_df: maybe", "parameter 'honor_df': expected true or false"),
    ("", "missing parameter 'mtu'"),
])
def test_fragmenter_bad_configuration(cfg, message):
    text = ("name: bad\nelements:\n  lan: {class: FromDevice, device: lan}\n"
            f"  fragger: {{class: IPFragmenter, {cfg}}}\n"
            "  wan: {class: ToDevice, device: wan}\n"
            "connections:\n  - lan -> fragger -> wan\n")
    with pytest.raises(ConfigError) as e:
        run_graph(text, {"lan": []})
    assert "element 'fragger'" in str(e.value) and message in str(e.value)
