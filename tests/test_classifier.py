"""Classifier: Click-style byte patterns, compiled to a decision program.

Expected ports come from the documented semantics, computed here with scapy
(what the frame is) or, in the property tests, by reading each pattern's
text byte by byte over the packet (`oracle` below) -- never from the
compiled program.
"""

import contextlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.l2 import ARP, Ether

from middlebox import pcap
from middlebox.errors import ConfigError, RunError
from middlebox.testing import run_element, run_graph
from middlebox.elements.classifier import Classifier, compile_patterns, parse_pattern

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MIXED = os.path.join(FIXTURES, "classifier_mixed.pcap")
RUNTS = os.path.join(FIXTURES, "classifier_runts.pcap")
CLASSIC = ["12/0806 20/0001", "12/0806 20/0002", "12/0800", "-"]
A = "02:00:00:00:00:0a"


def frames(path):
    """The raw frames of a fixture (scapy's reader would rebuild an empty
    frame as a default Ether header)."""
    cap = pcap.read(path)
    return [bytes(cap.packet(i)) for i in range(len(cap))]


def run(patterns, packets):
    return run_element("Classifier", {"patterns": patterns}, packets)


def check_ports(res, packets, expected, nports):
    """Each packet left the port `expected` gives (None: dropped), in order."""
    for port in range(nports):
        want = [p for p, e in zip(packets, expected) if e == port]
        assert res[port] == want, f"port {port}"
    s = res.stats
    assert s["in"] == len(packets)
    assert s["dropped"] == sum(e is None for e in expected)
    assert s["ports"] == [sum(e == k for e in expected) for k in range(nports)]
    assert s["in"] + s["created"] == s["out"] + s["dropped"]
    assert s["created"] == 0


# --- the classic ARP / IP split, over real frames -------------------------

def classic_port(raw):
    """Click's classic split, decided by scapy on a complete frame."""
    p = Ether(raw)
    if p.type == 0x0806 and p[ARP].op == 1:
        return 0
    if p.type == 0x0806 and p[ARP].op == 2:
        return 1
    if p.type == 0x0800:
        return 2
    return 3


def test_classic_split_over_mixed_frames():
    packets = frames(MIXED)
    expected = [classic_port(p) for p in packets]
    # the fixture exercises every port, VLAN-tagged ARP/IP falls through
    assert sorted(set(expected)) == [0, 1, 2, 3]
    tagged = [p for p in packets if Ether(p).type == 0x8100]
    assert tagged and all(classic_port(p) == 3 for p in tagged)
    res = run(CLASSIC, MIXED)
    check_ports(res, packets, expected, 4)


def test_classic_split_over_runts():
    packets = frames(RUNTS)
    lengths = [len(p) for p in packets]
    assert lengths == [0, 1, 13, 14, 21, 22, 22, 13, 14, 15, 33, 34, 6, 5]
    # A clause reaching past the end does not match: 12/0806 needs 14 bytes,
    # 20/0001 needs 22. The 22-byte ARP prefixes end with their opcode.
    expected = [
        3,      # empty
        3,      # 1 byte
        3,      # EtherType cut in half
        3,      # EtherType 0806 but no opcode
        3,      # opcode cut in half
        0,      # ARP request opcode complete
        1,      # ARP reply opcode complete
        3,      # IPv4 frame cut inside the EtherType
        2, 2, 2, 2,   # EtherType 0800 present: 12/0800 matches
        3, 3,   # broadcast bytes only
    ]
    assert Ether(packets[5][:14]).type == 0x0806 and packets[5][21] == 1
    assert Ether(packets[6][:14]).type == 0x0806 and packets[6][21] == 2
    res = run(CLASSIC, RUNTS)
    check_ports(res, packets, expected, 4)


def test_unmatched_packets_are_dropped_and_counted():
    packets = frames(MIXED) + frames(RUNTS)
    expected = []
    for p in packets:
        if len(p) >= 14 and Ether(p[:14]).type == 0x0806:
            expected.append(0)
        elif len(p) >= 14 and Ether(p[:14]).type == 0x86DD:
            expected.append(1)
        else:
            expected.append(None)
    assert expected.count(None) > 5
    res = run(["12/0806", "12/86dd"], packets)
    check_ports(res, packets, expected, 2)


def test_default_first_takes_everything():
    packets = frames(MIXED) + frames(RUNTS)
    res = run(["-", "12/0800", "-"], packets)
    check_ports(res, packets, [0] * len(packets), 3)


# --- masks, wildcards, negation, several clauses, wide clauses ------------

def ether_type(raw):
    return Ether(raw[:14]).type if len(raw) >= 14 else None


def test_mask_on_ip_version_nibble():
    packets = frames(MIXED) + frames(RUNTS)

    def want(raw):
        if ether_type(raw) != 0x0800:
            return 2
        if len(raw) >= 15 and IP(raw[14:] + bytes(20)).version == 4:
            return 0
        return 1

    expected = [want(p) for p in packets]
    assert {0, 1, 2} <= set(expected)          # the fixture has an IPv4 type, version 6 frame
    res = run(["12/0800%ffff 14/40%f0", "12/0800", "-"], packets)
    check_ports(res, packets, expected, 3)


def test_mask_covering_two_ether_types():
    packets = frames(MIXED)
    expected = [0 if ether_type(p) in (0x0800, 0x0806) else 1 for p in packets]
    res = run(["12/0800%fff0", "-"], packets)
    check_ports(res, packets, expected, 2)


def test_wildcard_nibbles():
    packets = frames(MIXED) + frames(RUNTS)
    expected = []
    for p in packets:
        t = ether_type(p)
        if t is not None and t >> 8 == 0x08:
            expected.append(0)
        elif t is not None and t & 0x00FF == 0xDD:
            expected.append(1)
        else:
            expected.append(2)
    assert set(expected) == {0, 1, 2}
    res = run(["12/08??", "12/??dd", "-"], packets)
    check_ports(res, packets, expected, 3)


def test_negation_matches_short_packets():
    packets = frames(MIXED) + frames(RUNTS)
    # !12/0800 holds for every frame that is not IPv4, including frames too
    # short to hold an EtherType at all.
    expected = [1 if ether_type(p) == 0x0800 else 0 for p in packets]
    assert expected[len(frames(MIXED))] == 0       # the empty frame
    res = run(["!12/0800", "-"], packets)
    check_ports(res, packets, expected, 2)


def test_several_clauses_ip_protocols():
    packets = frames(MIXED) + frames(RUNTS)

    def want(raw):
        if ether_type(raw) != 0x0800 or len(raw) < 24:
            return 3 if ether_type(raw) != 0x0800 else 4
        proto = IP(raw[14:] + bytes(20)).proto
        return {17: 0, 6: 1, 1: 2}.get(proto, 4)

    expected = [want(p) for p in packets]
    assert set(expected) == {0, 1, 2, 3, 4}
    res = run(["12/0800 23/11", "12/0800 23/06", "12/0800 23/01", "!12/0800", "-"], packets)
    check_ports(res, packets, expected, 5)


def test_clauses_spanning_words():
    packets = frames(MIXED) + frames(RUNTS)

    def want(raw):
        if len(raw) >= 6 and Ether(raw[:6] + bytes(8)).dst == "ff:ff:ff:ff:ff:ff":
            return 0
        if ether_type(raw) == 0x0800 and len(raw) >= 34 and IP(raw[14:]).dst == "10.0.0.1":
            return 1
        if len(raw) >= 14 and Ether(raw[:14]).src == A and ether_type(raw) == 0x0800:
            return 2
        return 3

    expected = [want(p) for p in packets]
    assert set(expected) == {0, 1, 2, 3}
    # 30/0a000001 spans the words at 28 and 32; 6/...0800 spans three words.
    res = run(["0/ffffffffffff", "12/0800 30/0a000001", "6/02000000000a0800", "-"], packets)
    check_ports(res, packets, expected, 4)


def test_negated_clause_spanning_words():
    packets = frames(MIXED) + frames(RUNTS)

    def want(raw):
        broadcast = len(raw) >= 6 and Ether(raw[:6] + bytes(8)).dst == "ff:ff:ff:ff:ff:ff"
        ipv4_to_1 = (ether_type(raw) == 0x0800 and len(raw) >= 34
                     and IP(raw[14:]).dst == "10.0.0.1")
        if not broadcast and not ipv4_to_1:
            return 0
        return 1

    expected = [want(p) for p in packets]
    assert set(expected) == {0, 1}
    res = run(["!0/ffffffffffff !30/0a000001%ffffffff", "-"], packets)
    # 30/... without the 12/0800 guard: make sure no non-IPv4 frame of the
    # fixtures carries 0a000001 at 30, so the scapy view above is the truth.
    assert not any(p[30:34] == bytes.fromhex("0a000001") for p in packets if ether_type(p) != 0x0800)
    check_ports(res, packets, expected, 2)


def test_contradictory_and_shadowed_patterns():
    packets = frames(MIXED) + frames(RUNTS)
    # pattern 1 can never match; pattern 3 (first EtherType byte 08) gets
    # what pattern 2 (0800) leaves: ARP frames, and runts that end inside the
    # EtherType after its 08 byte; pattern 5 never matches
    expected = [1 if ether_type(p) == 0x0800 else 2 if len(p) >= 13 and p[12] == 0x08 else 3
                for p in packets]
    assert sum(e == 2 and len(p) == 13 for p, e in zip(packets, expected)) == 2
    res = run(["12/0800 12/0806", "12/0800", "12/08", "-", "12/0800"], packets)
    check_ports(res, packets, expected, 5)


def test_fully_wild_clause_still_needs_the_bytes():
    packets = [bytes(n) for n in range(0, 25)]
    expected = [0 if n >= 22 else 1 if n >= 21 else None for n in range(0, 25)]
    res = run(["20/????", "20/?0"], packets)
    check_ports(res, packets, expected, 2)


def test_many_patterns_use_the_chain_program():
    # 301 patterns: too many for the shared compiler, so this runs the chain.
    patterns = [f"12/{t:04x}" for t in range(0x0800, 0x0800 + 300)] + ["-"]
    el = Classifier.from_config("cls", {"patterns": patterns})
    assert not el.shared
    packets = frames(MIXED) + frames(RUNTS)

    def want(raw):
        t = ether_type(raw)
        return t - 0x0800 if t is not None and 0 <= t - 0x0800 < 300 else 300

    expected = [want(p) for p in packets]
    res = run(patterns, packets)
    check_ports(res, packets, expected, 301)


def test_classifier_in_a_graph():
    text = """
name: split
elements:
  lan: {class: FromDevice, device: lan}
  cls: {class: Classifier, patterns: ["12/0806", "12/0800", "-"]}
  arp: {class: ToDevice, device: arp}
  ip: {class: ToDevice, device: ip}
  other: {class: ToDevice, device: other}
connections:
  - lan -> cls
  - cls[0] -> arp
  - cls[1] -> ip
  - cls[2] -> other
"""
    packets = frames(MIXED)
    res = run_graph(text, {"lan": packets})
    assert res["arp"] == [p for p in packets if ether_type(p) == 0x0806]
    assert res["ip"] == [p for p in packets if ether_type(p) == 0x0800]
    assert res["other"] == [p for p in packets if ether_type(p) not in (0x0800, 0x0806)]


# --- configuration errors ---------------------------------------------------

@pytest.mark.parametrize("patterns, message", [
    (["-", "12/08x0"], "pattern 2: bad hex value '08x0'"),
    (["12/0800%ff"], "pattern 1: mask length differs from value"),
    (["-", "-", "70000/00"], "pattern 3: offset 70000 too large"),
    (["65536/00"], "pattern 1: offset 65536 too large"),
    (["12/080"], "pattern 1: hex value '080' has an odd number of digits"),
    (["12/0800", "12"], "pattern 2: bad clause '12'"),
    (["x/08"], "pattern 1: bad offset 'x'"),
    (["-1/08"], "pattern 1: bad offset '-1'"),
    (["12/"], "pattern 1: missing value in clause '12/'"),
    (["12/0800%"], "pattern 1: missing mask in clause '12/0800%'"),
    (["12/0800%zzzz"], "pattern 1: bad hex mask 'zzzz'"),
    (["12/0800%ff?f"], "pattern 1: bad hex mask 'ff?f'"),
    (["12/0800", "  "], "pattern 2: empty pattern"),
    (["- 12/0800"], "pattern 1: '-' must stand alone"),
    (["! 12/0800"], "pattern 1: bad clause '!'"),
    ([], "parameter 'patterns'"),
])
def test_bad_patterns(patterns, message):
    with pytest.raises(ConfigError) as info:
        Classifier.from_config("cls", {"patterns": patterns})
    assert f"element 'cls': {message}" in str(info.value)


def test_bad_pattern_names_file_and_line():
    text = """name: bad
elements:
  lan: {class: FromDevice, device: lan}
  cls:
    class: Classifier
    patterns: ["12/0800", "12/08x0"]
  out: {class: ToDevice, device: out}
connections:
  - lan -> cls -> out
"""
    with pytest.raises(ConfigError) as info:
        run_graph(text, {"lan": []})
    assert str(info.value) == "<graph>:6: element 'cls': pattern 2: bad hex value '08x0'"


def test_run_element_reports_bad_config():
    with pytest.raises(ConfigError) as info:
        run(["12/0800", "7/zz"], [])
    assert "element 'element': pattern 2: bad hex value 'zz'" in str(info.value)


# --- the compiled program -----------------------------------------------------

def test_program_shares_tests_and_points_forward():
    el = Classifier.from_config("cls", {"patterns": CLASSIC})
    assert el.shared and el.noutputs() == 4
    # four distinct tests (0806 @12, 0001 @20, 0002 @20, 0800 @12), each once
    assert len(el.nodes) == 4
    assert len({t for t, _, _ in el.nodes}) == 4
    for i, (_, yes, no) in enumerate(el.nodes):
        for t in (yes, no):
            assert t > i or t < 0
    blob = el.lower(None)
    assert len(blob) == 16 + 24 * 4
    text = el.program_text()
    assert "4 node(s)" in text and "out 3" in text
    assert "[12..15] & ffff0000 == 08060000" in text


def test_program_merges_clauses_in_one_word():
    el = Classifier.from_config("cls", {"patterns": ["12/08 13/00 14/45", "-"]})
    assert len(el.nodes) == 1
    (test, yes, no), = el.nodes
    assert (test.off, test.need, test.mask, test.value) == (12, 15, 0xFFFFFF00, 0x08004500)
    assert (yes, no) == (-1, -2)


def test_program_for_match_all_has_no_tests():
    el = Classifier.from_config("cls", {"patterns": ["-", "12/0800"]})
    assert el.nodes == [] and el.entry == -1
    assert "start: out 0" in el.program_text()


def test_program_falls_back_to_a_chain_past_its_budget():
    parsed = [parse_pattern(p) for p in CLASSIC]
    entry, nodes, shared = compile_patterns(parsed, limit=1)
    assert not shared and len(nodes) == 5 and entry == 0


def test_chain_program_for_the_classic_split():
    el = Classifier.from_config("cls", {"patterns": CLASSIC})
    with chain_compiler():
        chain = Classifier.from_config("cls", {"patterns": CLASSIC})
    assert not chain.shared and len(chain.nodes) == 5 > len(el.nodes)


# --- the kernel checks its program ------------------------------------------

class Corrupt(Classifier):
    """A Classifier whose lowered program is damaged by `damage`."""
    damage = None

    def lower(self, ctx):
        return type(self).damage(bytearray(super().lower(ctx)))


def _set(off, value):
    def f(b):
        b[off:off + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return bytes(b)
    return f


@pytest.mark.parametrize("damage", [
    _set(16 + 16, 0),               # node 0 'yes' points back to itself
    _set(16 + 24 + 20, 0),          # node 1 'no' points backwards
    _set(16 + 20, 99),              # target past the last node
    _set(16 + 16, -5),              # output 4 of 4 patterns
    _set(12, 7),                    # entry past the nodes
    _set(8, 9),                     # node count disagrees with the length
    _set(0, 2),                     # unknown version
    _set(16, 13),                   # unaligned offset
    _set(16 + 12, 0xFFFFFFFF),      # value bits outside the mask
    lambda b: bytes(b[:-1]),        # truncated
    lambda b: b"",                  # empty
])
def test_kernel_rejects_a_bad_program(damage):
    Corrupt.damage = staticmethod(damage)
    el = Corrupt.from_config("cls", {"patterns": CLASSIC})
    with pytest.raises(RunError) as info:
        run_element(el, None, frames(MIXED))
    assert "classifier: " in str(info.value)


# --- property test against a direct reading of the pattern text ------------

def oracle(patterns, pkt):
    """The output port of pkt (None: dropped), straight from the text."""
    for port, pattern in enumerate(patterns):
        if pattern.split() == ["-"]:
            return port
        matched = True
        for clause in pattern.split():
            negated = clause.startswith("!")
            offset, rest = clause.lstrip("!").split("/")
            value, _, mask = rest.partition("%")
            offset = int(offset)
            nbytes = len(value) // 2
            holds = offset + nbytes <= len(pkt)
            for i in range(nbytes if holds else 0):
                v = value[2 * i:2 * i + 2]
                m = int(mask[2 * i:2 * i + 2], 16) if mask else 0xFF
                if v[0] == "?":
                    m &= 0x0F
                if v[1] == "?":
                    m &= 0xF0
                if pkt[offset + i] & m != int(v.replace("?", "0"), 16) & m:
                    holds = False
            if holds == negated:
                matched = False
                break
        if matched:
            return port
    return None


BYTE = st.one_of(st.sampled_from([0x00, 0x0F, 0xF0, 0xFF, 0x08, 0x45]), st.integers(0, 255))
# Offsets often fall in a few shared words, so clauses of different
# patterns meet in the same tests; clause ends near word edges.
OFFSET = st.one_of(st.integers(0, 64), st.sampled_from([12, 13, 14, 15, 16, 19, 20]))


@st.composite
def clauses(draw):
    offset = draw(OFFSET)
    n = draw(st.one_of(st.integers(1, 2), st.integers(1, 6)))
    value = bytes(draw(st.lists(BYTE, min_size=n, max_size=n)))
    digits = list(value.hex())
    for i in range(len(digits)):
        if draw(st.integers(0, 9)) == 0:
            digits[i] = "?"
    text = f"{offset}/{''.join(digits)}"
    if draw(st.booleans()):
        mask = bytes(draw(st.lists(BYTE, min_size=n, max_size=n)))
        text += "%" + mask.hex()
    if draw(st.integers(0, 3)) == 0:
        text = "!" + text
    return text


@st.composite
def patterns(draw):
    out = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 9)) == 0:
            out.append("-")
        else:
            out.append(" ".join(draw(st.lists(clauses(), min_size=1, max_size=4))))
    return out


@st.composite
def packets_for(draw, pats):
    """Random packets, plus packets built to satisfy a pattern's positive
    clauses (so matches are common), often cut just around where one of its
    clauses ends. Only the oracle decides where they go."""
    filler = st.lists(st.sampled_from([0x00, 0xFF, 0x08, 0x45]) | st.integers(0, 255),
                      max_size=80)
    pkts = [bytes(draw(filler)) for _ in range(draw(st.integers(1, 12)))]
    for _ in range(draw(st.integers(0, 16))):
        pkt = bytearray(draw(filler))
        pattern = draw(st.sampled_from(pats))
        ends = []
        for clause in pattern.split():
            if clause == "-":
                continue
            offset, rest = clause.lstrip("!").split("/")
            value = bytes.fromhex(rest.partition("%")[0].replace("?", "0"))
            end = int(offset) + len(value)
            ends.append(end)
            if clause.startswith("!"):
                continue
            if end > len(pkt):
                pkt.extend(bytes(end - len(pkt)))
            pkt[int(offset):end] = value
        if ends and draw(st.booleans()):
            cut = draw(st.sampled_from(ends)) + draw(st.integers(-1, 1))
            del pkt[max(cut, 0):]
        pkts.append(bytes(pkt))
    return pkts


@contextlib.contextmanager
def chain_compiler():
    saved = Classifier.SHARED_MAX_STEPS
    Classifier.SHARED_MAX_STEPS = 0
    try:
        yield
    finally:
        Classifier.SHARED_MAX_STEPS = saved


def check_against_oracle(data, shared):
    pats = data.draw(patterns(), label="patterns")
    pkts = data.draw(packets_for(pats), label="packets")
    expected = [oracle(pats, p) for p in pkts]
    with contextlib.nullcontext() if shared else chain_compiler():
        el = Classifier.from_config("element", {"patterns": pats})
    if not shared:
        assert not el.shared
    res = run_element(el, None, pkts)
    check_ports(res, pkts, expected, len(pats))


def grid(fields, lengths):
    """Every combination of the given bytes at the given offsets (the rest
    zero), cut to every given length."""
    import itertools
    size = max(lengths)
    out = []
    for combo in itertools.product(*fields.values()):
        pkt = bytearray(size)
        for off, value in zip(fields, combo):
            pkt[off:off + len(value)] = value
        out.extend(bytes(pkt[:n]) for n in lengths)
    return out


# Pattern sets where a path's knowledge (bits, lengths) decides later tests:
# the shared program must not confuse paths that know different things.
KNOWLEDGE_CASES = [
    # different known EtherTypes reach pattern 3 through different paths
    (["12/0800 30/00", "12/0806 30/00", "13/00", "-"],
     {12: [b"\x08\x00", b"\x08\x06", b"\x00\x00"], 30: [b"\x00", b"\x01"]}),
    # bytes known from a shorter test do not prove a longer test's length
    (["12/08000000 40/00", "15/00??", "-"],
     {12: [b"\x08\x00\x00\x00", b"\x08\x00\x00\x01"], 40: [b"\x00", b"\x01"]}),
    # a failed test whose bits were known proves the packet short
    (["12/0800 30/01", "12/08 14/?? 20/05", "12/0800 16/??", "-"],
     {12: [b"\x08\x00", b"\x08\x06"], 20: [b"\x05", b"\x00"], 30: [b"\x01", b"\x00"]}),
    # a test shown false rules out a stronger one, on that path only
    (["0/ff 12/08", "0/?? 12/0800", "-"],
     {0: [b"\xff", b"\x00"], 12: [b"\x08\x00", b"\x09\x00"]}),
    # negated multi-word clauses after what earlier patterns showed
    (["!12/08000045 20/00", "12/0800 !14/45%f0", "!0/ffff 12/08", "12/????", "-"],
     {0: [b"\xff\xff", b"\xff\x00"], 12: [b"\x08\x00\x45", b"\x08\x00\x55", b"\x08\x06\x45"],
      20: [b"\x00", b"\x01"]}),
    # no default: what matches nothing is dropped
    (["12/0800%fff0 23/06", "12/0806 !21/01", "23/11 12/0800"],
     {12: [b"\x08\x00", b"\x08\x06", b"\x08\x0f"], 21: [b"\x01", b"\x02"],
      23: [b"\x06", b"\x11"]}),
]


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "chain"])
@pytest.mark.parametrize("pats, fields", KNOWLEDGE_CASES)
def test_knowledge_cases_match_the_oracle(pats, fields, shared):
    packets = grid(fields, list(range(0, 13, 6)) + list(range(13, 43)))
    expected = [oracle(pats, p) for p in packets]
    with contextlib.nullcontext() if shared else chain_compiler():
        el = Classifier.from_config("element", {"patterns": pats})
    assert el.shared == shared
    res = run_element(el, None, packets)
    check_ports(res, packets, expected, len(pats))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_patterns_match_the_oracle(data):
    check_against_oracle(data, shared=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_patterns_match_the_oracle_chain(data):
    check_against_oracle(data, shared=False)


# --- switch nodes: many patterns on one word ---------------------------------

ETHERTYPES = ["12/0806 20/0001", "12/0806", "12/86dd", "12/8100", "12/0800 23/06",
              "12/0800 23/11", "12/0800 !23/01", "12/88cc", "12/0800"]


def test_many_patterns_on_one_word_make_a_switch():
    el = Classifier.from_config("cls", {"patterns": ETHERTYPES})
    text = el.program_text()
    assert "switch [12..15] & ffff0000 if len >= 14:" in text
    assert "== 86dd0000 (34525) then out 2" in text
    assert "switch [20..23] & 000000ff if len >= 24:" in text
    # every ethertype and protocol, cut around both words
    packets = grid({12: [b"\x08\x06", b"\x86\xdd", b"\x81\x00", b"\x88\xcc", b"\x08\x00",
                         b"\x08\x01"], 20: [b"\x00\x01", b"\x00\x02"], 23: [b"\x06", b"\x11",
                                                                             b"\x01"]},
                   [0, 12, 13, 14, 15, 20, 21, 22, 23, 24, 60])
    expected = [oracle(ETHERTYPES, p) for p in packets]
    res = run_element(el, None, packets)
    check_ports(res, packets, expected, len(ETHERTYPES))


@st.composite
def same_word_patterns(draw):
    """Patterns that mostly compare one or two words with a few values."""
    out = []
    for _ in range(draw(st.integers(3, 10))):
        if draw(st.integers(0, 12)) == 0:
            out.append("-")
            continue
        clauses = []
        for _ in range(draw(st.integers(1, 3))):
            off = draw(st.sampled_from([12, 12, 12, 20, 23, 14]))
            n = 2 if off in (12, 20) else 1
            value = bytes(draw(st.lists(st.sampled_from([0x00, 0x01, 0x06, 0x08, 0x11, 0x86]),
                                        min_size=n, max_size=n)))
            text = f"{off}/{value.hex()}"
            if draw(st.integers(0, 5)) == 0:
                text = "!" + text
            clauses.append(text)
        out.append(" ".join(clauses))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_same_word_patterns_match_the_oracle(data):
    pats = data.draw(same_word_patterns(), label="patterns")
    pkts = data.draw(packets_for(pats), label="packets")
    el = Classifier.from_config("element", {"patterns": pats})
    res = run_element(el, None, pkts)
    check_ports(res, pkts, [oracle(pats, p) for p in pkts], len(pats))
