"""Tests for middlebox.pcap: reading and writing classic pcap and pcapng.

Expected bytes and timestamps come from scapy packets, scapy's readers and
writers, or files built by hand here with struct, never from middlebox.pcap.
"""

import importlib.util
import os
import struct
import tempfile
from decimal import Decimal
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scapy.all import (ICMP, IP, TCP, UDP, Ether, IPv6, PcapNgWriter, PcapWriter,
                       Raw, RawPcapReader, rdpcap, wrpcap)
from scapy.utils import EDecimal

from middlebox import pcap
from middlebox.errors import RunError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _load_fixture_script():
    path = os.path.join(FIXTURES, "make_pcap_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_pcap_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fixture_script = _load_fixture_script()


# ---------------------------------------------------------------- helpers

def ns_of(t):
    """scapy packet time (EDecimal, Decimal or int) -> integer nanoseconds."""
    d = Decimal(t) * 10 ** 9
    assert d == d.to_integral_value(), f"time {t} is not a whole ns"
    return int(d)


def sample_packets():
    """Scapy packets of assorted protocols and sizes, with set times."""
    a, b = "02:00:00:00:00:01", "02:00:00:00:00:02"
    pkts = [
        Ether(src=a, dst=b) / IP(src="192.0.2.1", dst="198.51.100.7") / UDP(sport=5000, dport=53) / Raw(b"abc"),
        Ether(src=b, dst=a) / IP(src="192.0.2.2", dst="203.0.113.9", ttl=1) / TCP(dport=443, flags="S"),
        Ether(src=a, dst=b) / IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP(dport=9) / Raw(b"x" * 1000),
        Ether(src=a, dst=b) / IP(src="192.0.2.1", dst="192.0.2.3") / ICMP() / Raw(bytes(range(256)) * 5),  # 1322 bytes
        Ether(src=a, dst=b, type=0x9000) / Raw(b"\x00"),       # 15 bytes, odd
    ]
    return pkts


def with_times(pkts, times):
    for p, t in zip(pkts, times):
        p.time = t
    return pkts


def contents(cap):
    return [(t, b) for t, b in cap]


def expected(pkts):
    return [(ns_of(p.time), bytes(p)) for p in pkts]


def classic(endian, magic, records, linktype=1, snaplen=65535):
    """A classic pcap built by hand: records are (sec, frac, data[, caplen])."""
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for rec in records:
        sec, frac, data = rec[:3]
        caplen = rec[3] if len(rec) > 3 else len(data)
        out += struct.pack(endian + "IIII", sec, frac, caplen, len(data)) + data
    return out


# pcapng, built by hand
def ng_block(e, btype, body):
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def ng_shb(e):
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_opt(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def ng_idb(e, linktype=1, snaplen=0, tsresol=None, tsoffset=None):
    opts = b""
    if tsresol is not None:
        opts += ng_opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += ng_opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(e, iface, units, data, options=b""):
    pad = b"\0" * (-len(data) % 4)
    return ng_block(e, 6, struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF,
                                      len(data), len(data)) + data + pad + options)


def ng_spb(e, data, origlen=None):
    return ng_block(e, 3, struct.pack(e + "I", len(data) if origlen is None else origlen) + data)


def ng_opb(e, iface, units, data):
    return ng_block(e, 2, struct.pack(e + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF,
                                      len(data), len(data)) + data)


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def run_error(fn, *args, **kw):
    with pytest.raises(RunError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------ committed fixtures

@pytest.mark.parametrize("name", sorted(fixture_script.FILES))
def test_fixture_files_match_scapy(name):
    path = os.path.join(FIXTURES, name)
    nanos = fixture_script.FILES[name] == "ns"
    cap = pcap.read(path)
    want = fixture_script.fixture_packets(nanos=nanos)
    assert len(cap) == len(want) == 7
    assert cap.linktype == 1
    assert cap.nanos is nanos
    assert contents(cap) == expected(want)
    # and scapy's own reading of the same file agrees
    assert contents(cap) == [(ns_of(p.time), p.original) for p in rdpcap(path)]


# ------------------------------------------------------ reading what scapy wrote

@pytest.mark.parametrize("endian", ["<", ">"])
def test_read_scapy_microsecond_pcap(tmp_path, endian):
    pkts = with_times(sample_packets(), [EDecimal("1700000000.000001") + i for i in range(5)])
    path = str(tmp_path / "us.pcap")
    with PcapWriter(path, linktype=1, endianness=endian) as w:
        w.write(pkts)
    cap = pcap.read(path)
    assert cap.linktype == 1 and cap.nanos is False
    assert contents(cap) == expected(pkts)
    assert cap.timestamps.dtype == np.uint64 and cap.lengths.dtype == np.uint32
    assert cap.offsets.dtype == np.uint64


def test_read_scapy_wrpcap(tmp_path):
    pkts = with_times(sample_packets(), [1_600_000_000 + i for i in range(5)])
    path = str(tmp_path / "w.pcap")
    wrpcap(path, pkts)
    assert contents(pcap.read(path)) == [(t * 10 ** 9, bytes(p))
                                          for t, p in zip(range(1_600_000_000, 1_600_000_005), pkts)]


@pytest.mark.parametrize("endian", ["<", ">"])
def test_read_scapy_nanosecond_pcap(tmp_path, endian):
    pkts = with_times(sample_packets(),
                      [EDecimal("1700000000.123456789") + EDecimal(i) / 1000 for i in range(5)])
    path = str(tmp_path / "ns.pcap")
    with PcapWriter(path, linktype=1, nano=True, endianness=endian) as w:
        w.write(pkts)
    cap = pcap.read(path)
    assert cap.nanos is True
    assert contents(cap) == expected(pkts)
    assert cap.timestamp(0) == 1_700_000_000_123_456_789
    assert cap.timestamp(4) == 1_700_000_000_127_456_789


def test_read_scapy_pcapng(tmp_path):
    pkts = with_times(sample_packets(), [1700000000.5 + i / 8 for i in range(5)])
    path = str(tmp_path / "s.pcapng")
    with PcapNgWriter(path) as w:
        w.write(pkts)
    cap = pcap.read(path)
    assert cap.linktype == 1 and cap.nanos is False
    assert contents(cap) == [(1_700_000_000_500_000_000 + i * 125_000_000, bytes(p))
                             for i, p in enumerate(pkts)]


# ------------------------------------------------------- classic pcap by hand

@pytest.mark.parametrize("endian", ["<", ">"])
def test_read_handmade_classic_both_byte_orders(tmp_path, endian):
    p = [bytes(q) for q in sample_packets()]
    us = classic(endian, 0xA1B2C3D4, [(10, 999_999, p[0]), (11, 0, p[1]), (12, 7, p[4])],
                 linktype=101)
    cap = pcap.read(write_file(tmp_path / "us.pcap", us))
    assert cap.linktype == 101 and not cap.nanos
    assert contents(cap) == [(10_999_999_000, p[0]), (11_000_000_000, p[1]), (12_000_007_000, p[4])]

    ns = classic(endian, 0xA1B23C4D, [(10, 999_999_999, p[2]), (4_000_000_000, 1, p[3])])
    cap = pcap.read(write_file(tmp_path / "ns.pcap", ns))
    assert cap.nanos and cap.linktype == 1
    assert contents(cap) == [(10_999_999_999, p[2]), (4_000_000_000_000_000_001, p[3])]


def test_classic_fcs_bits_in_linktype_are_ignored(tmp_path):
    raw = classic("<", 0xA1B2C3D4, [(1, 0, b"abc")], linktype=(1 << 28) | (1 << 26) | 1)
    assert pcap.read(write_file(tmp_path / "f.pcap", raw)).linktype == 1


def test_classic_uniform_lengths(tmp_path):
    pkts = [bytes([i]) * 64 for i in range(50)]
    raw = classic("<", 0xA1B2C3D4, [(i, i, d) for i, d in enumerate(pkts)])
    cap = pcap.read(write_file(tmp_path / "u.pcap", raw))
    assert contents(cap) == [(i * 10 ** 9 + i * 1000, d) for i, d in enumerate(pkts)]


def test_classic_lengths_that_fit_the_first_stride(tmp_path):
    # 10-byte then 36-byte packet: 26 + 52 bytes of records, a multiple of the
    # first record's size, yet the lengths differ.
    a, b, c = b"A" * 10, b"B" * 36, b"C" * 10
    raw = classic(">", 0xA1B2C3D4, [(1, 1, a), (2, 2, b), (3, 3, c)])
    cap = pcap.read(write_file(tmp_path / "s.pcap", raw))
    assert contents(cap) == [(1_000_001_000, a), (2_000_002_000, b), (3_000_003_000, c)]
    assert cap.lengths.tolist() == [10, 36, 10]


def test_classic_caplen_above_64k_is_accepted(tmp_path):
    big = os.urandom(70_000)
    raw = classic("<", 0xA1B2C3D4, [(1, 0, b"x"), (2, 0, big)])
    cap = pcap.read(write_file(tmp_path / "big.pcap", raw))
    assert cap.packet(1) == big


def test_header_only_classic_is_empty(tmp_path):
    cap = pcap.read(write_file(tmp_path / "e.pcap", classic("<", 0xA1B2C3D4, [], linktype=113)))
    assert len(cap) == 0 and list(cap) == [] and cap.linktype == 113


# ------------------------------------------------------------ pcapng by hand

def test_read_handmade_pcapng_two_sections(tmp_path):
    p = [bytes(q) for q in sample_packets()]
    B, L = ">", "<"
    raw = (
        ng_shb(B)
        + ng_idb(B, 1, tsresol=3)                                  # milliseconds
        + ng_block(B, 0x00000BAD, b"unknown block body")           # skipped
        + ng_block(B, 4, struct.pack(B + "HH", 0, 0))              # name resolution, skipped
        + ng_epb(B, 0, 1_700_000_000_123, p[0], options=ng_opt(B, 1, b"a comment") + b"\0" * 4)
        + ng_spb(B, p[4])                                          # no time
        + ng_opb(B, 0, 1_700_000_000_124, p[1])
        + ng_idb(B, 1, tsresol=0x80 | 20, tsoffset=1_700_000_000)  # 2^-20 s, offset
        + ng_epb(B, 1, (5 << 20) + (1 << 19), p[2])                # 5.5 s after offset
        + ng_shb(L)                                                # new section: interfaces restart
        + ng_idb(L, 1)                                             # default: microseconds
        + ng_block(L, 0x40000BAD, b"custom")
        + ng_epb(L, 0, 1_700_000_009_000_001, p[3])
    )
    cap = pcap.read(write_file(tmp_path / "h.pcapng", raw))
    assert cap.linktype == 1
    assert cap.nanos is True   # 2^-20 s is finer than a microsecond
    assert contents(cap) == [
        (1_700_000_000_123_000_000, p[0]),
        (0, p[4]),
        (1_700_000_000_124_000_000, p[1]),
        (1_700_000_005_500_000_000, p[2]),
        (1_700_000_009_000_001_000, p[3]),
    ]


def test_pcapng_resolutions(tmp_path):
    e = ">"
    raw = (ng_shb(e) + ng_idb(e, 1, tsresol=9) + ng_idb(e, 1, tsresol=12)
           + ng_idb(e, 1, tsresol=0) + ng_idb(e, 1, tsresol=0x80 | 1)
           + ng_idb(e, 1, tsresol=6, tsoffset=-10)
           + ng_epb(e, 0, 1_700_000_000_123_456_789, b"ns")
           + ng_epb(e, 1, 1_700_000_123_456_789_999, b"ps")     # picoseconds, floored
           + ng_epb(e, 2, 1_700_000_000, b"s")
           + ng_epb(e, 3, 3, b"half")                               # 3 half-seconds
           + ng_epb(e, 4, 15_000_000, b"neg"))                      # 15 s - 10 s
    cap = pcap.read(write_file(tmp_path / "r.pcapng", raw))
    assert contents(cap) == [
        (1_700_000_000_123_456_789, b"ns"),
        (1_700_000_123_456_789, b"ps"),
        (1_700_000_000_000_000_000, b"s"),
        (1_500_000_000, b"half"),
        (5_000_000_000, b"neg"),
    ]
    assert cap.nanos is True


def test_pcapng_microsecond_only_is_not_nanos(tmp_path):
    e = "<"
    raw = ng_shb(e) + ng_idb(e, 1) + ng_epb(e, 0, 7, b"abc")
    cap = pcap.read(write_file(tmp_path / "u.pcapng", raw))
    assert cap.nanos is False and contents(cap) == [(7000, b"abc")]


def test_pcapng_simple_packet_block_lengths(tmp_path):
    e = "<"
    data = bytes(range(61))
    # snapped to 18 of 61 bytes: the block holds 18 bytes and 2 of padding
    raw = (ng_shb(e) + ng_idb(e, 1, snaplen=18)
           + ng_spb(e, data[:18], origlen=61)
           + ng_spb(e, data[:3]))                    # 3 bytes, block padded to 4
    cap = pcap.read(write_file(tmp_path / "spb.pcapng", raw))
    assert contents(cap) == [(0, data[:18]), (0, data[:3])]
    raw = ng_shb(e) + ng_idb(e, 1) + ng_spb(e, data)  # 61 bytes, padded, no snap
    assert contents(pcap.read(write_file(tmp_path / "spb2.pcapng", raw))) == [(0, data)]


def test_pcapng_linktype_is_the_packets(tmp_path):
    e = "<"
    # an unused interface of another type does not matter
    raw = ng_shb(e) + ng_idb(e, 1) + ng_idb(e, 101) + ng_epb(e, 0, 1, b"a")
    assert pcap.read(write_file(tmp_path / "a.pcapng", raw)).linktype == 1
    raw = ng_shb(e) + ng_idb(e, 1) + ng_idb(e, 101) + ng_epb(e, 1, 1, b"a")
    assert pcap.read(write_file(tmp_path / "b.pcapng", raw)).linktype == 101
    # no packets: the first interface's link type; no interface at all: Ethernet
    assert pcap.read(write_file(tmp_path / "c.pcapng", ng_shb(e) + ng_idb(e, 113))).linktype == 113
    cap = pcap.read(write_file(tmp_path / "d.pcapng", ng_shb(e)))
    assert len(cap) == 0 and cap.linktype == 1


def test_pcapng_mixed_linktypes_fail(tmp_path):
    e = "<"
    raw = (ng_shb(e) + ng_idb(e, 1) + ng_idb(e, 101)
           + ng_epb(e, 0, 1, b"a") + ng_epb(e, 0, 2, b"b") + ng_epb(e, 1, 3, b"c"))
    path = write_file(tmp_path / "m.pcapng", raw)
    msg = run_error(pcap.read, path)
    assert msg.startswith(path + ": packet 3 has link type 101")
    # also across sections
    raw = ng_shb(e) + ng_idb(e, 1) + ng_epb(e, 0, 1, b"a") + ng_shb(">") + ng_idb(">", 113) + ng_epb(">", 0, 1, b"b")
    msg = run_error(pcap.read, write_file(tmp_path / "m2.pcapng", raw))
    assert "packet 2 has link type 113" in msg


def test_pcapng_uniform_blocks_then_other_blocks(tmp_path):
    e = "<"
    pkts = [bytes([i]) * 60 for i in range(20)]
    body = b"".join(ng_epb(e, 0, i, d) for i, d in enumerate(pkts))
    # uniform to the end
    cap = pcap.read(write_file(tmp_path / "u.pcapng", ng_shb(e) + ng_idb(e, 1, tsresol=9) + body))
    assert contents(cap) == [(i, d) for i, d in enumerate(pkts)]
    # same, then a shorter packet: the tail is not uniform
    raw = ng_shb(e) + ng_idb(e, 1, tsresol=9) + body + ng_epb(e, 0, 99, b"end")
    cap = pcap.read(write_file(tmp_path / "v.pcapng", raw))
    assert contents(cap) == [(i, d) for i, d in enumerate(pkts)] + [(99, b"end")]
    # equal-size blocks alternating between two interfaces of different resolution
    raw = (ng_shb(e) + ng_idb(e, 1, tsresol=9) + ng_idb(e, 1, tsresol=3)
           + b"".join(ng_epb(e, i % 2, i, d) for i, d in enumerate(pkts)))
    cap = pcap.read(write_file(tmp_path / "w.pcapng", raw))
    assert contents(cap) == [(i if i % 2 == 0 else i * 10 ** 6, d) for i, d in enumerate(pkts)]


# -------------------------------------------------------------- writing

@pytest.mark.parametrize("name,fmt,nanos", [
    ("o.pcap", None, False), ("o.pcap", None, True), ("o.pcapng", None, True),
    ("o.bin", "pcapng", False), ("o.pcapng", "pcap", True)])
def test_written_files_read_by_scapy(tmp_path, name, fmt, nanos):
    pkts = sample_packets()
    if nanos:
        times = [EDecimal("1700000000.000000007") + i for i in range(5)]
    else:
        times = [EDecimal("1700000000.000042") + i for i in range(5)]
    with_times(pkts, times)
    cap = pcap.Capture.from_packets(pkts)
    assert cap.nanos is nanos
    path = str(tmp_path / name)
    pcap.write(path, cap, format=fmt)
    with open(path, "rb") as f:
        head = f.read(4)
    is_ng = fmt == "pcapng" or (fmt is None and name.endswith(".pcapng"))
    if is_ng:
        assert head == b"\x0a\x0d\x0d\x0a"
    else:
        assert head == struct.pack("<I", 0xA1B23C4D if nanos else 0xA1B2C3D4)
    got = rdpcap(path)
    assert [(ns_of(p.time), p.original) for p in got] == expected(pkts)
    assert [bytes(p) for p in got] == [bytes(p) for p in pkts]


def test_write_linktype_read_by_scapy(tmp_path):
    ip = [bytes(IP(src="192.0.2.1", dst="192.0.2.%d" % i) / UDP()) for i in range(3)]
    for name in ("raw.pcap", "raw.pcapng"):
        path = str(tmp_path / name)
        pcap.write(path, ip, linktype=101)
        reader = RawPcapReader(path)
        records = list(reader)
        reader.close()
        assert [data for data, _ in records] == ip
        if name.endswith(".pcapng"):
            assert [meta.linktype for _, meta in records] == [101] * 3
            assert reader.interfaces[0][2]["tsresol"] == 10 ** 9
        else:
            assert reader.linktype == 101
        got = rdpcap(path)
        assert all(isinstance(p, IP) for p in got)
        assert [p.original for p in got] == ip
        assert [ns_of(p.time) for p in got] == [0, 1000, 2000]
        cap = pcap.read(path)
        assert cap.linktype == 101 and [b for _, b in cap] == ip


def test_microsecond_writing_truncates(tmp_path):
    cap = pcap.Capture.from_packets([(1_999_999_999, b"a"), (5, b"b")])
    assert cap.nanos
    path = str(tmp_path / "t.pcap")
    pcap.write_records(path, 1, cap.data, cap.offsets, cap.lengths, cap.timestamps, nanos=False)
    assert [ns_of(p.time) for p in rdpcap(path)] == [1_999_999_000, 0]
    back = pcap.read(path)
    assert not back.nanos and contents(back) == [(1_999_999_000, b"a"), (0, b"b")]


@pytest.mark.parametrize("name", ["e.pcap", "e.pcapng"])
def test_empty_capture(tmp_path, name):
    path = str(tmp_path / name)
    pcap.write(path, [], linktype=105)
    if name.endswith(".pcap"):
        assert os.path.getsize(path) == 24
    cap = pcap.read(path)
    assert len(cap) == 0 and list(cap) == [] and cap.linktype == 105
    assert len(rdpcap(path)) == 0
    pcap.write_records(path, 1, b"", np.zeros(0, np.uint64), np.zeros(0, np.uint32),
                       np.zeros(0, np.uint64))
    assert len(pcap.read(path)) == 0


@pytest.mark.parametrize("name", ["g.pcap", "g.pcapng"])
def test_write_records_gathers_from_anywhere(tmp_path, name):
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    offsets = [4000, 0, 10, 10, 4999, 123, 5000, 2500]
    lengths = [1000, 10, 0, 7, 1, 1500, 0, 33]
    ts = [9, 8, 7, 6, 5, 4, 3, 2]
    for buf in (data, bytearray(data), np.frombuffer(data, np.uint8)):
        pcap.write_records(str(tmp_path / name), 113, buf, np.array(offsets, np.uint64),
                           np.array(lengths, np.uint32), np.array(ts, np.uint64))
        cap = pcap.read(str(tmp_path / name))
        assert cap.linktype == 113
        assert contents(cap) == [(t, data[o:o + n]) for o, n, t in zip(offsets, lengths, ts)]
        got = rdpcap(str(tmp_path / name))
        assert [p.original for p in got] == [data[o:o + n] for o, n in zip(offsets, lengths)]


def test_rewrite_a_read_capture(tmp_path):
    src = os.path.join(FIXTURES, "mixed_ns.pcap")
    cap = pcap.read(src)
    for name in ("c.pcap", "c.pcapng"):
        pcap.write(str(tmp_path / name), cap)
        back = pcap.read(str(tmp_path / name))
        assert back.nanos and contents(back) == contents(cap)
    with open(src, "rb") as f, open(tmp_path / "c.pcap", "rb") as g:
        assert f.read()[24:] == g.read()[24:]   # same records (snap length may differ)


packets_st = st.lists(st.tuples(st.integers(0, (1 << 32) * 10 ** 9 - 1),
                                st.binary(min_size=0, max_size=300)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(packets_st, st.sampled_from(["pcap", "pcapng"]), st.booleans(),
       st.integers(1, 500), st.integers(1, 5))
def test_round_trip(pkts, fmt, nanos, chunk_bytes, chunk_packets):
    with tempfile.TemporaryDirectory() as d, \
            mock.patch.object(pcap, "_WRITE_CHUNK", chunk_bytes), \
            mock.patch.object(pcap, "_WRITE_CHUNK_PACKETS", chunk_packets):
        cap = pcap.Capture.from_packets(pkts, nanos=nanos)
        path = os.path.join(d, "x")
        pcap.write(path, cap, format=fmt)
        back = pcap.read(path)
        want = [(t if nanos or fmt == "pcapng" else t // 1000 * 1000, b) for t, b in pkts]
        assert contents(back) == want
        assert back.nanos == (nanos or fmt == "pcapng")
        assert [p.original for p in rdpcap(path)] == [b for _, b in pkts]


def test_huge_timestamp_only_fits_pcapng(tmp_path):
    cap = pcap.Capture.from_packets([((1 << 32) * 10 ** 9, b"late")])
    path = str(tmp_path / "late.pcap")
    msg = run_error(pcap.write, path, cap)
    assert msg.startswith(f"cannot write {path}: packet 1 has a timestamp")
    pcap.write(str(tmp_path / "late.pcapng"), cap)
    assert contents(pcap.read(str(tmp_path / "late.pcapng"))) == [((1 << 32) * 10 ** 9, b"late")]


# ------------------------------------------------------------ Capture API

def test_from_packets_kinds():
    scapy_pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2") / UDP()
    scapy_pkt.time = EDecimal("12.000000345")
    float_pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2", ttl=9)
    float_pkt.time = 1700000000.1
    cap = pcap.Capture.from_packets([b"first", (77, b"tuple"), scapy_pkt,
                                     bytearray(b"ba"), memoryview(b"mv"), float_pkt], linktype=12)
    assert cap.linktype == 12 and len(cap) == 6 and cap.nanos
    assert contents(cap) == [(0, b"first"), (77, b"tuple"), (12_000_000_345, bytes(scapy_pkt)),
                             (3000, b"ba"), (4000, b"mv"),
                             (1_700_000_000_100_000_000, bytes(float_pkt))]
    assert cap.packet(2) == bytes(scapy_pkt) and cap.packet(-1) == bytes(float_pkt)
    assert isinstance(cap.packet(0), bytes)
    assert cap.timestamp(1) == 77


def test_from_packets_timestamps_and_resolution():
    cap = pcap.Capture.from_packets([b"a", b"b", b"c"])
    assert cap.timestamps.tolist() == [0, 1000, 2000] and not cap.nanos
    assert pcap.Capture.from_packets([(1001, b"a")]).nanos
    assert not pcap.Capture.from_packets([(1001, b"a")], nanos=False).nanos
    empty = pcap.Capture.from_packets([])
    assert len(empty) == 0 and empty.data == b"" and not empty.nanos
    with pytest.raises(TypeError):
        pcap.Capture.from_packets([42])
    with pytest.raises(ValueError):
        pcap.Capture.from_packets([(-1, b"a")])


def test_capture_over_a_foreign_buffer():
    buf = bytearray(b"..hello..world")
    cap = pcap.Capture(1, buf, [2, 9], [5, 5], [1, 2])
    assert cap.packet(0) == b"hello" and list(cap) == [(1, b"hello"), (2, b"world")]
    with pytest.raises(ValueError):
        pcap.Capture(1, buf, [2, 9], [5], [1, 2])


def test_write_from_iterable_of_scapy_packets(tmp_path):
    pkts = with_times(sample_packets(), [EDecimal(100 + i) for i in range(5)])
    path = str(tmp_path / "it.pcap")
    pcap.write(path, iter(pkts))
    assert contents(pcap.read(path)) == expected(pkts)


# ------------------------------------------------------------------- errors

def test_error_missing_file(tmp_path):
    path = str(tmp_path / "nope.pcap")
    assert run_error(pcap.read, path) == f"{path}: no such file"


def test_error_directory(tmp_path):
    assert run_error(pcap.read, str(tmp_path)) == f"{tmp_path}: is a directory"


@pytest.mark.parametrize("raw", [b"", b"\xd4\xc3", b"GET / HTTP/1.1\r\n\r\n" * 3,
                                 bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2"))])
def test_error_not_a_capture(tmp_path, raw):
    path = write_file(tmp_path / "junk.pcap", raw)
    assert run_error(pcap.read, path) == f"{path}: not a pcap or pcapng file"


@pytest.mark.parametrize("endian,magic", [("<", 0xA1B2C3D4), (">", 0xA1B23C4D)])
def test_error_truncated_file_header(tmp_path, endian, magic):
    raw = classic(endian, magic, [(1, 1, b"abc")])
    path = write_file(tmp_path / "t.pcap", raw[:20])
    assert run_error(pcap.read, path) == f"{path}: truncated pcap file header"


@pytest.mark.parametrize("cut", [1, 8, 15, 16, 16 + 63])
def test_error_truncated_record(tmp_path, cut):
    p0, p1 = b"\x11" * 64, b"\x22" * 64
    raw = classic("<", 0xA1B2C3D4, [(1, 1, p0), (2, 2, p1)])
    start = 24 + 16 + 64          # second record's header
    path = write_file(tmp_path / "t.pcap", raw[:start + cut])
    assert run_error(pcap.read, path) == f"{path}: truncated packet record at byte {start}"


def test_error_caplen_over_snap_length(tmp_path):
    raw = classic("<", 0xA1B2C3D4, [(1, 1, b"ok"), (2, 2, b"x" * 10, 300_000)])
    path = write_file(tmp_path / "big.pcap", raw)
    assert run_error(pcap.read, path) == \
        f"{path}: packet 2 has captured length 300000, over the snap length"
    e = "<"
    raw = ng_shb(e) + ng_idb(e) + ng_block(e, 6, struct.pack(e + "IIIII", 0, 0, 0, 300_000, 300_000))
    path = write_file(tmp_path / "big.pcapng", raw)
    assert run_error(pcap.read, path) == \
        f"{path}: packet 1 has captured length 300000, over the snap length"


def test_error_pcapng_truncations(tmp_path):
    e = "<"
    head = ng_shb(e) + ng_idb(e)
    path = write_file(tmp_path / "a.pcapng", head[:20])
    assert run_error(pcap.read, path) == f"{path}: truncated pcapng block at byte 0"
    good = head + ng_epb(e, 0, 1, b"x" * 40)
    path = write_file(tmp_path / "b.pcapng", good[:-5])
    assert run_error(pcap.read, path) == f"{path}: truncated packet record at byte {len(head)}"
    path = write_file(tmp_path / "c.pcapng", good + b"\0\0\0")
    assert run_error(pcap.read, path) == f"{path}: truncated pcapng block at byte {len(good)}"


def test_error_pcapng_bad_blocks(tmp_path):
    e = "<"
    head = ng_shb(e) + ng_idb(e)
    bad_len = head + struct.pack("<III", 6, 13, 13)
    path = write_file(tmp_path / "a.pcapng", bad_len)
    assert run_error(pcap.read, path) == f"{path}: bad pcapng block length 13 at byte {len(head)}"
    epb = bytearray(ng_epb(e, 0, 1, b"abcd"))
    epb[-4:] = struct.pack("<I", len(epb) + 4)
    path = write_file(tmp_path / "b.pcapng", head + bytes(epb))
    assert run_error(pcap.read, path).startswith(f"{path}: corrupt pcapng block at byte {len(head)}")
    path = write_file(tmp_path / "c.pcapng", head + ng_epb(e, 3, 1, b"abcd"))
    assert run_error(pcap.read, path) == \
        f"{path}: packet 1 refers to interface 3, which is not described"
    path = write_file(tmp_path / "d.pcapng", ng_shb(e) + ng_spb(e, b"abcd"))
    assert run_error(pcap.read, path) == \
        f"{path}: packet 1 refers to interface 0, which is not described"
    lying = head + ng_block(e, 6, struct.pack("<IIIII", 0, 0, 0, 100, 100) + b"short")
    path = write_file(tmp_path / "e.pcapng", lying)
    assert run_error(pcap.read, path).startswith(
        f"{path}: packet 1 has captured length 100, longer than its block")
    shb = bytearray(ng_shb(e))
    shb[8:12] = b"\x00\x00\x00\x00"
    path = write_file(tmp_path / "f.pcapng", bytes(shb))
    assert run_error(pcap.read, path) == f"{path}: bad pcapng section header at byte 0"


def test_error_unwritable(tmp_path):
    cap = pcap.Capture.from_packets([b"abc"])
    missing = str(tmp_path / "no" / "such" / "dir" / "o.pcap")
    msg = run_error(pcap.write, missing, cap)
    assert msg == f"cannot write {missing}: no such file or directory"
    afile = write_file(tmp_path / "plain", b"")
    under_file = os.path.join(afile, "o.pcapng")
    msg = run_error(pcap.write, under_file, cap)
    assert msg == f"cannot write {under_file}: not a directory"
    msg = run_error(pcap.write_records, str(tmp_path), 1, b"", [], [], [])
    assert msg == f"cannot write {tmp_path}: is a directory"


def test_error_unknown_format(tmp_path):
    msg = run_error(pcap.write, str(tmp_path / "x.pcap"), [b"a"], format="erf")
    assert "unknown capture format 'erf'" in msg


def test_error_pcapng_timestamp_out_of_range(tmp_path):
    e = "<"
    for idb, units in ((ng_idb(e, 1, tsresol=0), 1 << 40),          # seconds: overflows ns
                       (ng_idb(e, 1, tsoffset=-100), 5_000_000)):    # 5 s - 100 s < 0
        path = write_file(tmp_path / "t.pcapng", ng_shb(e) + idb + ng_epb(e, 0, units, b"a"))
        assert run_error(pcap.read, path).startswith(f"{path}: a packet timestamp is out of range")


@pytest.mark.parametrize("name", ["mixed_us.pcap", "mixed.pcapng"])
def test_read_arrays_are_plain_writable_numpy(name):
    cap = pcap.read(os.path.join(FIXTURES, name))
    for arr, dtype in ((cap.offsets, np.uint64), (cap.lengths, np.uint32),
                       (cap.timestamps, np.uint64)):
        assert arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.writeable
    assert isinstance(cap.data, bytes)
    assert int((cap.offsets + cap.lengths).max()) <= len(cap.data)
