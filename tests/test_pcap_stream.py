"""The `middlebox run` path over capture files: classic pcap records read in
place by the engine (pcap.open_capture), the C indexer behind pcap.read,
outputs written by the engine as packets leave (Engine.run_to_files), the
merge of several inputs, and the start-up that path keeps light.

Expectations come from scapy (its writers make the inputs, its readers check
the outputs) or from files built by hand with struct, never from
middlebox.pcap.
"""

import os
import struct
import subprocess
import sys
from decimal import Decimal

import networkx as nx
import pytest
from scapy.all import (IP, UDP, Ether, PcapNgWriter, PcapWriter, Raw, RawPcapNgReader,
                       RawPcapReader, rdpcap)

from middlebox import loader, pcap, plan
from middlebox.errors import ConfigError, RunError
from middlebox.runtime import Engine
from clirun import mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def graph(tmp_path, inputs="a"):
    """FromDevice per input device -> out; device quiet never gets a packet
    (a Classifier whose first pattern takes everything feeds it port 1)."""
    lines = ["name: pass", "elements:"]
    lines += [f"  {d}: {{class: FromDevice, device: {d}}}" for d in inputs]
    lines += ["  cls: {class: Classifier, patterns: ['-', '-']}",
              "  out: {class: ToDevice, device: out}",
              "  quiet: {class: ToDevice, device: quiet}", "connections:"]
    lines += [f"  - {d} -> cls" for d in inputs]
    lines += ["  - cls -> out", "  - cls[1] -> quiet"]
    path = tmp_path / f"pass-{inputs}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def packets(tag, times, sizes=None):
    """scapy packets carrying tag+i, with times (seconds as Decimal)."""
    out = []
    for i, t in enumerate(times):
        pad = b"" if sizes is None else b"z" * sizes[i]
        p = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
             / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i, dport=53)
             / Raw(f"{tag}{i}".encode() + pad))
        p.time = Decimal(t)
        out.append(p)
    return out


def ns(t):
    d = Decimal(t) * 10 ** 9
    return int(d.to_integral_value())


def write_scapy(path, pkts, nano=False, endian="<", ng=False):
    if ng:
        with PcapNgWriter(str(path)) as w:
            for p in pkts:
                w.write(p)
    else:
        with PcapWriter(str(path), linktype=1, nano=nano, endianness=endian) as w:
            for p in pkts:
                w.write(p)
    return str(path)


def scapy_records(path):
    """[(ns, bytes)] of a capture as scapy's raw readers see it."""
    with open(path, "rb") as f:
        ng = f.read(4) == b"\x0a\x0d\x0d\x0a"
    out = []
    reader = RawPcapNgReader(str(path)) if ng else RawPcapReader(str(path))
    with reader:
        for data, meta in reader:
            if ng:
                t = ((meta.tshigh << 32) | meta.tslow) * 10 ** 9 // meta.tsresol
            elif reader.nano:
                t = meta.sec * 10 ** 9 + meta.usec
            else:
                t = meta.sec * 10 ** 9 + meta.usec * 1000
            out.append((t, bytes(data)))
    return out


# --- reading ---------------------------------------------------------------------

TIMES = ["1700000000.000001", "1700000000.5", "1700000001.250000", "1700000001.250000",
         "1700000003.999999"]
SIZES = [0, 1, 2, 3, 1400]


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_classic_read_in_place_matches_scapy(tmp_path, nano, endian):
    times = [t + ("123" if nano else "") if "." in t else t for t in TIMES]
    pkts = packets("p", times, SIZES)
    path = write_scapy(tmp_path / "in.pcap", pkts, nano=nano, endian=endian)
    want = scapy_records(path)
    assert [t for t, _ in want] == [ns(p.time) if nano else ns(p.time) // 1000 * 1000
                                    for p in pkts]
    # the C indexer behind pcap.read, mapped or copied
    for mapped in (False, True):
        cap = pcap.read(path, map=mapped)
        assert cap.nanos is nano and cap.linktype == 1
        assert list(cap) == want
    # the in-place reader, through the engine
    src = pcap.open_capture(path)
    assert isinstance(src, pcap.ClassicFile) and src.nanos is nano and src.linktype == 1
    eng = Engine(plan.build(loader.load(graph(tmp_path))))
    out = eng.run([("a", src)], collect=["out"])["out"]
    assert list(out) == want


def test_pcapng_opens_as_a_capture(tmp_path):
    pkts = packets("n", TIMES)
    path = write_scapy(tmp_path / "in.pcapng", pkts, ng=True)
    src = pcap.open_capture(path)
    assert isinstance(src, pcap.Capture)
    assert list(src) == scapy_records(path)


def test_empty_classic_file(tmp_path):
    path = write_scapy(tmp_path / "empty.pcap", [])
    assert len(pcap.read(path)) == 0 and len(pcap.read(path, map=True)) == 0
    eng = Engine(plan.build(loader.load(graph(tmp_path))))
    assert len(eng.run([("a", pcap.open_capture(path))])["out"]) == 0


def hand_classic(records, endian="<"):
    out = struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for sec, usec, data, caplen in records:
        out += struct.pack(endian + "IIII", sec, usec, caplen, len(data)) + data
    return out


def good_frames(n):
    return [bytes(p) for p in packets("g", ["1"] * n)]


@pytest.mark.parametrize("cut", ["header", "data", "caplen"])
def test_bad_record_messages(tmp_path, cut):
    frames = good_frames(3)
    body = hand_classic([(1, i, f, len(f)) for i, f in enumerate(frames)])
    bad_at = len(body)
    if cut == "header":
        body += b"\0" * 9
        msg = f"truncated packet record at byte {bad_at}"
    elif cut == "data":
        body += struct.pack("<IIII", 2, 0, 100, 100) + b"x" * 99
        msg = f"truncated packet record at byte {bad_at}"
    else:
        body += struct.pack("<IIII", 2, 0, 300000, 300000) + b"x" * 10
        msg = "packet 4 has captured length 300000, over the snap length"
    path = tmp_path / "bad.pcap"
    path.write_bytes(body)
    for mapped in (False, True):
        with pytest.raises(RunError, match=f"^{path}: {msg}$"):
            pcap.read(path, map=mapped)
    eng = Engine(plan.build(loader.load(graph(tmp_path))))
    with pytest.raises(RunError, match=f"^{path}: {msg}$"):
        eng.run([("a", pcap.open_capture(path))])
    # the command: one line, exit 1; what came before the bad record is written
    r = mb("run", graph(tmp_path), "--in", f"a={path}", "--out", "out=o.pcap",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.splitlines() == [f"error: {path}: {msg}"], r.stderr
    assert [bytes(p) for p in rdpcap(str(tmp_path / "o.pcap"))] == frames


def test_truncated_file_header(tmp_path):
    path = tmp_path / "short.pcap"
    path.write_bytes(struct.pack("<IHH", 0xA1B2C3D4, 2, 4))
    with pytest.raises(RunError, match="truncated pcap file header"):
        pcap.open_capture(path)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"hello, this is not a capture file")
    with pytest.raises(RunError, match="not a pcap or pcapng file"):
        pcap.open_capture(junk)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(RunError, match="not a pcap or pcapng file"):
        pcap.open_capture(empty)


# --- writing ---------------------------------------------------------------------

@pytest.mark.parametrize("out", ["o.pcap", "o.pcapng"])
@pytest.mark.parametrize("nano", [False, True])
def test_run_writes_what_scapy_reads(tmp_path, out, nano):
    times = [t + "789" if "." in t else t for t in TIMES]
    pkts = packets("w", times, SIZES)
    src = write_scapy(tmp_path / "in.pcap", pkts, nano=True)
    path = tmp_path / out
    eng = Engine(plan.build(loader.load(graph(tmp_path))))
    written = eng.run_to_files([("a", pcap.open_capture(src))],
                               {"out": path, "quiet": tmp_path / ("q." + out.split(".")[1])},
                               nanos=nano)
    assert written == {"out": len(pkts), "quiet": 0}
    got = scapy_records(path)
    if out.endswith(".pcapng") or nano:
        assert got == [(ns(p.time), bytes(p)) for p in pkts]
    else:
        assert got == [(ns(p.time) // 1000 * 1000, bytes(p)) for p in pkts]
    with open(path, "rb") as f:
        head = f.read(4)
    if out.endswith(".pcap"):
        assert head == struct.pack("<I", 0xA1B23C4D if nano else 0xA1B2C3D4)
    # the device nothing reached: a valid capture with no packets
    assert scapy_records(tmp_path / ("q." + out.split(".")[1])) == []


def test_run_to_files_matches_run(tmp_path):
    pkts = packets("m", TIMES, SIZES)
    src = write_scapy(tmp_path / "in.pcap", pkts, nano=True)
    p = plan.build(loader.load(graph(tmp_path)))
    mem = Engine(p).run([("a", pcap.read(src))], collect=["out"])["out"]
    Engine(p).run_to_files([("a", pcap.open_capture(src))], {"out": tmp_path / "o.pcap"})
    assert list(mem) == scapy_records(tmp_path / "o.pcap")


def test_write_failure_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    src = write_scapy(tmp_path / "in.pcap", packets("f", ["1"] * 3))
    r = mb("run", graph(tmp_path), "--in", f"a={src}", "--out", "out=/dev/full",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == ["error: cannot write /dev/full: no space left on device"]


def ng_file(stamps_us, frames):
    """pcapng by hand: one interface (microseconds), an EPB per frame."""
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 0))
    for t, f in zip(stamps_us, frames):
        out += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(f), len(f)) + f)
    return out


def test_timestamp_beyond_classic_pcap(tmp_path):
    frames = good_frames(2)
    late = (1 << 32) * 10 ** 6 + 5          # 2^32 s after the epoch, in us
    src = tmp_path / "late.pcapng"
    src.write_bytes(ng_file([1_000_000, late], frames))
    r = mb("run", graph(tmp_path), "--in", f"a={src}", "--out", "out=o.pcap",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: cannot write o.pcap: packet 2 has a timestamp beyond what classic pcap can hold"]
    r = mb("run", graph(tmp_path), "--in", f"a={src}", "--out", "out=o.pcapng",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert scapy_records(tmp_path / "o.pcapng") == [(10 ** 9, frames[0]), (late * 1000, frames[1])]


# --- merging ---------------------------------------------------------------------

def test_three_inputs_of_both_formats_merge_by_time(tmp_path):
    a = packets("a", ["10", "10.5", "12", "12", "15"])
    b = packets("b", ["9", "10.25", "12", "14", "20", "21"])
    c = packets("c", ["12", "8", "30"])               # out of order itself
    write_scapy(tmp_path / "a.pcap", a)
    write_scapy(tmp_path / "b.pcapng", b, ng=True)
    write_scapy(tmp_path / "c.pcap", c, nano=True)
    r = mb("run", graph(tmp_path, "abc"), "--in", "c=c.pcap", "--in", "a=a.pcap", "--in", "b=b.pcapng",
           "--out", "out=o.pcap", "--out", "quiet=q.pcap", "--stats", "none", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # heads merge: the earliest head goes next, ties to the input named first
    queues = [list(c), list(a), list(b)]
    want = []
    while any(queues):
        k = min((i for i in range(3) if queues[i]), key=lambda i: (queues[i][0].time, i))
        want.append(bytes(queues[k].pop(0)))
    got = [bytes(p) for p in rdpcap(str(tmp_path / "o.pcap"))]
    assert got == want
    # at 12 s all three heads tie: c (named first) goes, then its own 8 s packet
    assert [Ether(f)[Raw].load[:2] for f in got][:8] == [
        b"b0", b"a0", b"b1", b"a1", b"c0", b"c1", b"a2", b"a3"]


def test_input_that_is_also_an_output(tmp_path):
    pkts = packets("s", ["1", "2", "3"])
    path = write_scapy(tmp_path / "x.pcap", pkts)
    r = mb("run", graph(tmp_path), "--in", "a=x.pcap", "--out", "out=x.pcap",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [bytes(p) for p in rdpcap(path)] == [bytes(p) for p in pkts]


# --- start-up and compile-time helpers ---------------------------------------------

def test_run_over_classic_pcaps_imports_neither_numpy_nor_networkx(tmp_path):
    src = write_scapy(tmp_path / "in.pcap", packets("i", ["1", "2"]))
    code = ("import sys\nfrom middlebox import cli\n"
            f"rc = cli.main(['run', {graph(tmp_path)!r}, '--in', 'a={src}', '--out', 'out=o.pcap',"
            " '--out', 'quiet=q.pcap', '--stats', 'none'])\n"
            "print(rc, 'numpy' in sys.modules, 'networkx' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.split() == ["0", "False", "False"], r.stderr
    assert len(rdpcap(str(tmp_path / "o.pcap"))) == 2


def _graph_files():
    names = []
    for folder in ("graphs", os.path.join("bench", "graphs")):
        for n in sorted(os.listdir(os.path.join(ROOT, folder))):
            if n.endswith(".yaml"):
                names.append(os.path.join(ROOT, folder, n))
    return names


@pytest.mark.parametrize("path", _graph_files(), ids=os.path.basename)
def test_order_is_networkx_lexicographic_topological_order(path):
    g = loader.load(path)
    rank = {n: i for i, n in enumerate(g.elements)}
    want = list(nx.lexicographical_topological_sort(g.digraph(), key=rank.__getitem__))
    assert g.order() == want


def test_cycle_is_still_named(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("elements:\n  a: {class: FromDevice, device: a}\n"
                    "  t: {class: Tee, n: 2}\n  c: {class: Counter}\n"
                    "  o: {class: ToDevice, device: o}\n"
                    "connections:\n  - a -> t -> c -> t\n  - t[1] -> o\n")
    with pytest.raises(ConfigError, match="connections form a cycle: (t -> c -> t|c -> t -> c)"):
        loader.load(str(path)).check()


def fnv1a_reference(data):
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) % (1 << 32)
    return h


@pytest.mark.parametrize("data", [b"", b"a", b"foobar", bytes(range(256)) * 40])
def test_plan_checksum_is_fnv1a(data):
    assert plan.fnv1a(data) == fnv1a_reference(data)
    assert plan.fnv1a(bytearray(data)) == fnv1a_reference(data)
