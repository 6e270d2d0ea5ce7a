"""The engine end to end: plans, batching, sources, Python elements, device
edges. Expected packets are built with scapy in each test."""

import pathlib
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from middlebox import PythonElement, loader, plan
from middlebox.elements.devices import FromDevice, ToDevice
from middlebox.errors import ConfigError, RunError
from middlebox.graph import Graph
from middlebox.runtime import Engine
from middlebox.testing import capture, run_element, run_graph

CLASSIFIER = str(pathlib.Path(__file__).resolve().parent.parent / "graphs" / "classifier.yaml")


def udp(i, size=0):
    return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            / IP(src=f"10.0.{i // 250}.{i % 250 + 1}", dst="192.0.2.1")
            / UDP(sport=1000 + i % 5000, dport=53) / bytes(size))


def balanced(stats):
    for name, s in stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"], (name, s)


# --- plans ----------------------------------------------------------------------

def test_plan_round_trip_names_order_and_ports():
    g = loader.load(CLASSIFIER)
    p = plan.build(g)
    d = plan.read(p.data)
    assert d["name"] == "classifier"
    assert [e["name"] for e in d["elements"]] == p.order
    assert p.order.index("lan") < p.order.index("cls") < p.order.index("rewrite") < p.order.index("wan")
    cls = d["elements"][p.order.index("cls")]
    assert cls["kernel"] == "classifier" and len(cls["outputs"]) == 5
    assert cls["outputs"][2] == (p.order.index("ipv4"), 0)
    assert [x["name"] for x in d["devices"]] == ["lan", "wan"]
    # Two elements feed `rewrite`: its queue holds both batches.
    assert d["elements"][p.order.index("rewrite")]["queue"] == 64


def test_engine_refuses_corrupt_and_foreign_plans():
    p = plan.build(loader.load(CLASSIFIER))
    bad = bytearray(p.data)
    bad[-3] ^= 0xFF
    with pytest.raises(RunError, match="checksum"):
        Engine(plan.Plan(bytes(bad), p.graph, p.order, p.devices))
    with pytest.raises(RunError, match="not a middlebox plan"):
        Engine(plan.Plan(b"\0" * 100, p.graph, p.order, p.devices))
    newer = bytearray(p.data)
    newer[4] = 2
    with pytest.raises(RunError, match="version"):
        Engine(plan.Plan(bytes(newer), p.graph, p.order, p.devices))


def test_fan_out_beyond_a_batch_is_sized_not_dropped():
    text = """
elements:
  lan: {class: FromDevice, device: lan}
  t1: {class: Tee, n: 4}
  t2: {class: Tee, n: 4}
  c: {class: Counter}
  out: {class: ToDevice, device: out}
connections:
  - lan -> t1
  - t1[0] -> t2
  - t1[1] -> c
  - t1[2] -> c
  - t1[3] -> c
  - t2[0] -> c
  - t2[1] -> c
  - t2[2] -> c
  - t2[3] -> c -> out
"""
    pkts = [udp(i) for i in range(200)]
    res = run_graph(text, {"lan": pkts})
    assert len(res["out"]) == 7 * 200
    assert res.all_stats["c"]["dropped"] == 0
    # Every original and copy arrives byte-identical.
    assert sorted(res["out"]) == sorted([bytes(p) for p in pkts] * 7)
    balanced(res.all_stats)


def test_pool_is_set_up_as_needed_and_its_shortage_is_counted():
    """The pool's packets are set up the first time they are needed, a chunk
    at a time; a pool too small for a fan-out fails allocations (counted),
    loses none of the packets it did make, and gets every one back."""
    text = """
elements:
  lan: {class: FromDevice, device: lan}
  t: {class: Tee, n: 4}
  c: {class: Counter}
  out: {class: ToDevice, device: out}
connections: [lan -> t, "t[0] -> c", "t[1] -> c", "t[2] -> c", "t[3] -> c -> out"]
"""
    p = plan.build(loader.load(text))
    roomy = Engine(p, packets=4096)
    assert roomy.c.pool["free"] == 4096
    pkts = [udp(i) for i in range(1000)]
    got = roomy.run([("lan", capture(pkts))])
    assert len(got["out"]) == 4000 and roomy.c.pool["alloc_failed"] == 0
    assert roomy.c.pool["free"] == 4096
    # 100 packets for 32 inputs a batch, each copied 3 times: not enough.
    tight = Engine(p, packets=100)
    got = tight.run([("lan", capture(pkts))])
    st = tight.stats()
    assert tight.c.pool["alloc_failed"] > 0
    assert 1000 < len(got["out"]) < 4000
    assert tight.c.pool["free"] == 100
    assert len(got["out"]) == st["c"]["in"] == st["c"]["out"]
    balanced(st)


def test_many_batches_keep_order_and_timestamps():
    pkts = [udp(i, size=i % 40) for i in range(5000)]
    for i, p in enumerate(pkts):
        p.time = 1_600_000_000 + i * 0.000_001_5
    res = run_element("Counter", {}, pkts)
    assert res[0] == [bytes(p) for p in pkts]
    want = [int(round(p.time * 1e9)) for p in pkts]
    assert all(abs(a - b) < 1000 for a, b in zip(res.timestamps(0), want))
    assert res.stats["count"] == 5000
    assert res.stats["byte_count"] == sum(len(p) for p in pkts)


def test_oversize_input_is_counted_not_lost_silently():
    res = run_element("Counter", {}, [bytes(64), bytes(20000), bytes(1514)])
    assert [len(p) for p in res[0]] == [64, 1514]
    assert res.device_stats["in0"]["oversize"] == 1


# --- InfiniteSource ---------------------------------------------------------------------

def test_source_flows_have_valid_checksums_and_distinct_tuples():
    text = """
elements:
  src: {class: InfiniteSource, limit: 100, flows: 10, length: 80}
  out: {class: ToDevice, device: out}
connections: [src -> out]
"""
    res = run_graph(text)
    pkts = res.scapy("out")
    assert len(pkts) == 100 and all(len(p) == 80 for p in pkts)
    tuples = [(p[IP].src, p[UDP].sport) for p in pkts]
    assert len(set(tuples)) == 10
    assert tuples[:10] == tuples[10:20]          # flow k repeats every 10 packets
    for p in pkts:
        ip_sum, udp_sum = p[IP].chksum, p[UDP].chksum
        q = Ether(bytes(p))
        del q[IP].chksum
        del q[UDP].chksum
        q = Ether(bytes(q))
        assert (ip_sum, udp_sum) == (q[IP].chksum, q[UDP].chksum)
    assert res.all_stats["src"]["created"] == 100


def test_source_with_tcp_template_keeps_tcp_checksum():
    tmpl = Ether() / IP(src="10.1.0.1", dst="10.2.0.1") / TCP(sport=2000, dport=80, flags="S")
    text = f"""
elements:
  src: {{class: InfiniteSource, limit: 40, flows: 40, data: "{bytes(tmpl).hex()}"}}
  out: {{class: ToDevice, device: out}}
connections: [src -> out]
"""
    for p in run_graph(text).scapy("out"):
        got = p[TCP].chksum
        q = p.copy()
        del q[TCP].chksum
        assert Ether(bytes(q))[TCP].chksum == got


def test_run_refuses_endless_source(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("elements:\n  src: {class: InfiniteSource}\n  d: {class: Discard}\n"
                 "connections: [src -> d]\n")
    r = subprocess.run([sys.executable, "-m", "middlebox", "run", str(g)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "element 'src'" in r.stderr and "limit" in r.stderr


# --- Python elements --------------------------------------------------------------------

class TTLSplit(PythonElement):
    """TTL <= 1 to output 1; TTL 7 dropped; TTL 9 copied to both outputs."""

    outputs = 2

    def process(self, batch):
        for p in batch:
            ttl = p.data[22]
            if ttl == 7:
                continue
            if ttl == 9:
                yield 1, p
            p.data[22] = ttl - 1 if ttl > 1 else ttl
            yield (1 if ttl <= 1 else 0), p


def test_python_element_emits_drops_copies_and_counts():
    ttls = [64, 1, 7, 9, 0, 30]
    pkts = [Ether() / IP(ttl=t) / UDP() for t in ttls]
    res = run_element(TTLSplit.from_config("element", {}), packets=pkts)
    out0 = [IP(bytes(p)[14:]).ttl for p in res[0]]
    out1 = [IP(bytes(p)[14:]).ttl for p in res[1]]
    assert out0 == [63, 8, 29]
    assert out1 == [1, 9, 0]
    s = res.stats
    assert (s["in"], s["out"], s["dropped"], s["created"]) == (6, 6, 1, 1)
    balanced(res.all_stats)


class Grow(PythonElement):
    """Appends 100 bytes to each packet."""

    def process(self, batch):
        for p in batch:
            p.data += bytes(100)
            yield 0, p


def test_python_element_may_resize_packets():
    pkts = [udp(i) for i in range(50)]
    res = run_element(Grow.from_config("element", {}), packets=pkts)
    assert res[0] == [bytes(p) + bytes(100) for p in pkts]


class Boom(PythonElement):
    def process(self, batch):
        raise ZeroDivisionError("no")


def test_python_element_exception_is_one_line_runtime_error():
    with pytest.raises(RunError, match="element 'element': ZeroDivisionError: no"):
        run_element(Boom.from_config("element", {}), packets=[udp(1)])


def test_python_element_by_import_path_from_the_graph_folder(tmp_path):
    (tmp_path / "mymod.py").write_text(
        "from middlebox import PythonElement\n"
        "class Swap(PythonElement):\n"
        "    def process(self, batch):\n"
        "        for p in batch:\n"
        "            p.data[0:6], p.data[6:12] = p.data[6:12], p.data[0:6]\n"
        "            yield 0, p\n")
    (tmp_path / "g.yaml").write_text(
        "elements:\n  lan: {class: FromDevice, device: lan}\n"
        "  swap: {class: mymod.Swap}\n  wan: {class: ToDevice, device: wan}\n"
        "connections: [lan -> swap -> wan]\n")
    wrpcap(str(tmp_path / "in.pcap"), [udp(i) for i in range(10)])
    r = subprocess.run([sys.executable, "-m", "middlebox", "run", str(tmp_path / "g.yaml"),
                        "--in", f"lan={tmp_path / 'in.pcap'}", "--out",
                        f"wan={tmp_path / 'out.pcap'}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert [(p.src, p.dst) for p in out] == [("02:00:00:00:00:02", "02:00:00:00:00:01")] * 10


def test_graph_api_reads_like_the_domain():
    g = Graph("api")
    g.add("lan", FromDevice(device="lan"))
    g.add("split", TTLSplit())
    g.add("a", ToDevice(device="a"))
    g.add("b", ToDevice(device="b"))
    g.connect("lan", "split")
    g.connect("split", "a", sport=0)
    g.connect("split", "b", sport=1)
    res = run_graph(g, {"lan": [Ether() / IP(ttl=5) / UDP(), Ether() / IP(ttl=1) / UDP()]})
    assert len(res["a"]) == 1 and len(res["b"]) == 1


def test_graph_api_errors_are_config_errors():
    g = Graph("api")
    g.add("lan", FromDevice(device="lan"))
    g.connect("lan", "nowhere")
    with pytest.raises(ConfigError, match="element 'nowhere': not declared"):
        g.check()


# --- pcap-named devices ------------------------------------------------------------------

def test_from_pcap_to_pcap_graph(tmp_path):
    wrpcap(str(tmp_path / "in.pcap"), [udp(i) for i in range(30)])
    (tmp_path / "g.yaml").write_text(
        "elements:\n"
        f"  rd: {{class: FromPcap, file: {tmp_path / 'in.pcap'}}}\n"
        "  strip: {class: Strip, length: 14}\n"
        f"  wr: {{class: ToPcap, file: {tmp_path / 'out.pcap'}}}\n"
        "connections: [rd -> strip -> wr]\n")
    r = subprocess.run([sys.executable, "-m", "middlebox", "run", str(tmp_path / "g.yaml"),
                        "--stats", "none"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "out.pcap", "rb") as f:
        raw = f.read()
    assert raw[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    from middlebox import pcap
    cap = pcap.read(tmp_path / "out.pcap")
    assert [cap.packet(i) for i in range(len(cap))] == [bytes(udp(i))[14:] for i in range(30)]
