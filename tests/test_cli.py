"""The `middlebox` command, run as a user runs it: in a subprocess.

Each failure must be exactly one line on stderr, with exit code 2 for a
mistake in what the user wrote (graph, command line) and 1 for a failure
while running (pcap files); never a traceback, never a usage dump.
Expected packets are computed here with scapy from the documented meaning
of graphs/classifier.yaml.
"""

import json
import os
import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap
from clirun import fails, mb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER = os.path.join(ROOT, "graphs", "classifier.yaml")
LAN = os.path.join(ROOT, "graphs", "traces", "lan.pcap")
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")


def write(path, text):
    path.write_text(text)
    return path


def frames(path):
    return [bytes(p) for p in rdpcap(str(path))]


# --- check --------------------------------------------------------------------

@pytest.mark.parametrize("entry", [False, True], ids=["python-m", "entry-point"])
def test_check_ok_and_error(tmp_path, entry):
    r = mb("check", CLASSIFIER, cwd=tmp_path, entry=entry)
    assert r.returncode == 0 and r.stderr == ""
    assert "ok: graph 'classifier', 10 elements, 12 connections, devices: lan, wan" in r.stdout
    bad = write(tmp_path / "bad.yaml", "elements:\n  lan: {class: FromDevice, device: lan}\n"
                "  cls: {class: Clasifier, patterns: ['-']}\n")
    line = fails(mb("check", bad, cwd=tmp_path, entry=entry), 2)
    assert line == f"{bad}:3: element 'cls': unknown class 'Clasifier'; did you mean 'Classifier'?"


def test_check_yaml_error_and_warnings(tmp_path):
    bad = write(tmp_path / "bad.yaml", "elements:\n  a: Discard\n\tb: Discard\n")
    assert fails(mb("check", bad, cwd=tmp_path), 2).startswith(f"{bad}:3: bad YAML: ")
    warn = write(tmp_path / "warn.yaml", "elements:\n  lan: {class: FromDevice, device: lan}\n"
                 "  c: Counter\n  d: Discard\nconnections:\n  - lan -> c\n")
    r = mb("check", warn, cwd=tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout
    assert r.stderr.splitlines() == [
        f"warning: {warn}:3: element 'c': output 0 is not connected; its packets are dropped "
        "and counted",
        f"warning: {warn}:4: element 'd': no input is connected; it never sees a packet"]


# --- show ---------------------------------------------------------------------

def test_show_text(tmp_path):
    r = mb("show", CLASSIFIER, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    out = r.stdout
    assert out.startswith("graph classifier: Sorts LAN frames")
    for name, cls in [("lan", "FromDevice"), ("cls", "Classifier"), ("rewrite", "EtherRewrite"),
                      ("wan", "ToDevice"), ("drop", "Discard")]:
        assert any(ln.split()[:2] == [name, cls] for ln in out.splitlines()), name
    assert "cls[2] -> [0]ipv4" in out and "ipv6[0] -> [0]rewrite" in out
    assert "devices: lan, wan" in out


def test_show_dot_png_svg(tmp_path):
    r = mb("show", CLASSIFIER, "-o", "g.dot", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith('digraph "classifier"')
    for name in ("lan", "cls", "arp_req", "rewrite", "wan", "drop"):
        assert f'"{name}"' in dot
    svg = subprocess.run([shutil.which("dot"), "-Tsvg", str(tmp_path / "g.dot")],
                         capture_output=True, text=True)
    assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr
    assert mb("show", CLASSIFIER, "-o", "g.png", cwd=tmp_path).returncode == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mb("show", CLASSIFIER, "-o", "g.svg", cwd=tmp_path).returncode == 0
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_show_dot_quotes_the_graph_name(tmp_path):
    g = write(tmp_path / "q.yaml", 'name: \'say "hi" \\ there\'\nelements:\n'
              "  lan: {class: FromDevice, device: lan}\n  d: Discard\nconnections: [lan -> d]\n")
    assert mb("show", g, "-o", "q.dot", cwd=tmp_path).returncode == 0
    svg = subprocess.run([shutil.which("dot"), "-Tsvg", str(tmp_path / "q.dot")],
                         capture_output=True, text=True)
    assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr


def test_show_errors(tmp_path):
    fails(mb("show", CLASSIFIER, "-o", "g.txt", cwd=tmp_path), 2, "unknown format '.txt'")
    fails(mb("show", CLASSIFIER, "-o", tmp_path / "no" / "g.png", cwd=tmp_path), 1, "g.png")


# --- elements -----------------------------------------------------------------

def test_elements_catalogue(tmp_path):
    import middlebox.elements as lib

    r = mb("elements", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    listed = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    assert listed == list(lib.catalogue())
    assert {"FromDevice", "ToDevice", "Classifier", "Discard", "Strip", "Tee"} <= set(listed)


def test_elements_one_class(tmp_path):
    r = mb("elements", "Classifier", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    out = r.stdout
    assert out.startswith("Classifier (inputs 1, outputs one per pattern)")
    assert "cls: {class: Classifier, patterns: [" in out  # the YAML example
    assert "parameters:" in out
    assert any(ln.split()[:1] == ["patterns"] and "required" in ln for ln in out.splitlines())
    r = mb("elements", "Strip", cwd=tmp_path)
    assert "strip: {class: Strip, length: 14}" in r.stdout and "counters:" in r.stdout


def test_elements_unknown(tmp_path):
    fails(mb("elements", "Clasifier", cwd=tmp_path), 2, "'Clasifier'", "did you mean 'Classifier'")
    fails(mb("elements", "Qqqqqqqq", cwd=tmp_path), 2, "no element class 'Qqqqqqqq'")


# --- run ------------------------------------------------------------------------

ROUTER_MAC, NEXT_HOP_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"


def expected_wan():
    """classifier.yaml: IPv4 and IPv6 frames leave on wan, in order, with
    source and destination rewritten; everything else is dropped."""
    out = []
    for p in rdpcap(LAN):
        if isinstance(p, Ether) and (IP in p or IPv6 in p):
            q = Ether(bytes(p))
            q.src, q.dst = ROUTER_MAC, NEXT_HOP_MAC
            out.append((bytes(q), p.time))
    return out


def test_run_classifier(tmp_path):
    r = mb("run", CLASSIFIER, "--in", f"lan={LAN}", "--out", "wan=out.pcap", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "wan" in r.stdout and "Classifier" in r.stdout  # the text counters
    want = expected_wan()
    got = rdpcap(str(tmp_path / "out.pcap"))
    assert len(want) == 50
    # every expected frame, with its timestamp, and each protocol in order
    assert sorted((bytes(p), p.time) for p in got) == sorted(want)
    for proto in (IP, IPv6):
        assert [bytes(p) for p in got if proto in p] == [w for w, _ in want if proto in Ether(w)]
    assert sum(IPv6 in p for p in got) == 5


def test_run_classifier_keeps_arrival_order(tmp_path):
    # IPv4 and IPv6 take different branches (cls[2] -> ipv4, cls[3] -> ipv6)
    # that meet again at `rewrite`; frames must still leave in arrival order.
    r = mb("run", CLASSIFIER, "--in", f"lan={LAN}", "--out", "wan=out.pcap", "--stats", "none",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = rdpcap(str(tmp_path / "out.pcap"))
    assert [(bytes(p), p.time) for p in got] == expected_wan()


def test_run_stats_json(tmp_path):
    r = mb("run", CLASSIFIER, "--in", f"lan={LAN}", "--out", "wan=out.pcap", "--stats", "json",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    els = doc["elements"]
    assert doc["graph"] == "classifier"
    assert set(els) == {"lan", "cls", "arp_req", "arp_rep", "ipv4", "ipv6", "other", "rewrite",
                        "wan", "drop"}
    for name, s in els.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"], name
        assert sum(s["ports"]) == s["out"] or not s["ports"], name
    lan = rdpcap(LAN)
    is_arp = [ARP in p and isinstance(p, Ether) for p in lan]
    counts = [sum(a and p[ARP].op == 1 for a, p in zip(is_arp, lan)),
              sum(a and p[ARP].op == 2 for a, p in zip(is_arp, lan)),
              sum(isinstance(p, Ether) and IP in p for p in lan),
              sum(isinstance(p, Ether) and IPv6 in p for p in lan)]
    counts.append(len(lan) - sum(counts))
    assert els["cls"]["ports"] == counts
    assert els["lan"]["out"] == els["cls"]["in"] == len(lan)
    assert els["wan"]["in"] == counts[2] + counts[3]
    assert els["drop"]["dropped"] == counts[0] + counts[1] + counts[4]
    for name, n in zip(("arp_req", "arp_rep", "ipv4", "ipv6", "other"), counts):
        assert els[name]["count"] == n
    assert doc["devices"]["lan"]["rx"] == len(lan)
    assert doc["devices"]["wan"]["tx"] == counts[2] + counts[3]


MERGE = """\
name: merge
elements:
  a: {class: FromDevice, device: a}
  b: {class: FromDevice, device: b}
  out: {class: ToDevice, device: out}
  quiet: {class: ToDevice, device: quiet}
  cls: {class: Classifier, patterns: ["-", "-"]}
connections:
  - a -> out
  - b -> cls -> out
  - cls[1] -> quiet
"""


def tagged(tag, times):
    pkts = []
    for i, t in enumerate(times):
        p = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(f"{tag}{i}".encode())
        p.time = t
        pkts.append(p)
    return pkts


def test_run_merges_inputs_by_timestamp(tmp_path):
    g = write(tmp_path / "merge.yaml", MERGE)
    a = tagged("a", [10.0, 10.5, 12.0, 12.0, 15.0])
    b = tagged("b", [9.0, 10.25, 12.0, 14.0, 20.0, 21.0])
    wrpcap(str(tmp_path / "a.pcap"), a)
    wrpcap(str(tmp_path / "b.pcap"), b)

    def expect(first, second):
        # by time; ties: command-line order, then each file's own order
        rows = [(float(p.time), k, i, bytes(p)) for k, pkts in enumerate((first, second))
                for i, p in enumerate(pkts)]
        return [r[3] for r in sorted(rows)]

    r = mb("run", g, "--in", "b=b.pcap", "--in", "a=a.pcap", "--out", "out=o1.pcap",
           "--out", "quiet=q.pcap", "--stats", "none", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    got = frames(tmp_path / "o1.pcap")
    assert got == expect(b, a)
    assert [Ether(f)[Raw].load.decode() for f in got] == [
        "b0", "a0", "b1", "a1", "b2", "a2", "a3", "b3", "a4", "b4", "b5"]
    r = mb("run", g, "--in", "a=a.pcap", "--in", "b=b.pcap", "--out", "out=o2.pcap",
           "--out", "quiet=q.pcap", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert frames(tmp_path / "o2.pcap") == expect(a, b)
    assert frames(tmp_path / "o1.pcap") != frames(tmp_path / "o2.pcap")  # the tie decided
    # the device nothing reached still gets a valid, empty pcap
    q = tmp_path / "q.pcap"
    assert q.read_bytes()[:4] in PCAP_MAGICS
    assert len(rdpcap(str(q))) == 0


def test_run_merges_inputs_that_are_out_of_order_themselves(tmp_path):
    # A capture's own order is kept even where its timestamps step back;
    # the merge then takes whichever input's head is earlier.
    g = write(tmp_path / "merge.yaml", MERGE)
    a = tagged("a", [10.0, 8.0, 11.0])
    b = tagged("b", [9.0, 10.5, 7.0, 12.0])
    wrpcap(str(tmp_path / "a.pcap"), a)
    wrpcap(str(tmp_path / "b.pcap"), b)
    r = mb("run", g, "--in", "a=a.pcap", "--in", "b=b.pcap", "--out", "out=o.pcap",
           "--out", "quiet=q.pcap", "--stats", "none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = [Ether(f)[Raw].load.decode() for f in frames(tmp_path / "o.pcap")]
    assert got == ["b0", "a0", "a1", "b1", "b2", "a2", "b3"]


def test_run_with_limited_source(tmp_path):
    g = write(tmp_path / "src.yaml", "elements:\n  src: {class: InfiniteSource, limit: 5}\n"
              "  wan: {class: ToDevice, device: wan}\nconnections:\n  - src -> wan\n")
    r = mb("run", g, "--out", "wan=o.pcap", "--stats", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = rdpcap(str(tmp_path / "o.pcap"))
    assert len(got) == 5
    for p in got:
        assert len(p) == 64
        assert (p[IP].src, p[IP].dst, p[UDP].sport, p[UDP].dport) == ("10.0.0.1", "10.0.1.1",
                                                                      1024, 53)
        fresh = p.copy()  # scapy recomputes both checksums: they must already be right
        del fresh[IP].chksum, fresh[UDP].chksum
        assert bytes(Ether(bytes(fresh))) == bytes(p)
    assert json.loads(r.stdout)["elements"]["src"]["out"] == 5


# --- run: errors ----------------------------------------------------------------

def run_cls(tmp_path, *args):
    return mb("run", CLASSIFIER, *args, cwd=tmp_path)


def test_run_missing_graph(tmp_path):
    fails(mb("run", "nope.yaml", "--in", f"lan={LAN}", "--out", "wan=o.pcap", cwd=tmp_path), 2,
          "nope.yaml", "no such file")


def test_run_missing_pcap(tmp_path):
    fails(run_cls(tmp_path, "--in", "lan=missing.pcap", "--out", "wan=o.pcap"), 1,
          "missing.pcap", "no such file")


def test_run_corrupt_pcap(tmp_path):
    (tmp_path / "junk.pcap").write_bytes(b"this is not a capture file at all\n")
    fails(run_cls(tmp_path, "--in", "lan=junk.pcap", "--out", "wan=o.pcap"), 1, "junk.pcap")
    (tmp_path / "cut.pcap").write_bytes(open(LAN, "rb").read()[:100])
    fails(run_cls(tmp_path, "--in", "lan=cut.pcap", "--out", "wan=o.pcap"), 1, "cut.pcap")


def test_run_unbound_devices(tmp_path):
    line = fails(run_cls(tmp_path, "--out", "wan=o.pcap"), 2, "device 'lan'", "--in lan=")
    assert line.startswith(f"{CLASSIFIER}:7: element 'lan': ")
    line = fails(run_cls(tmp_path, "--in", f"lan={LAN}"), 2, "device 'wan'", "--out wan=")
    assert line.startswith(f"{CLASSIFIER}:15: element 'wan': ")
    assert not (tmp_path / "o.pcap").exists()


WARNED = """\
elements:
  lan: {class: FromDevice, device: lan}
  cls: {class: Classifier, patterns: ["12/0800", "-"]}
  wan: {class: ToDevice, device: wan}
connections:
  - lan -> cls -> wan
"""


def test_warnings_do_not_join_an_error(tmp_path):
    g = write(tmp_path / "w.yaml", WARNED)  # cls[1] is not connected: a warning
    fails(mb("run", g, "--in", f"lan={LAN}", cwd=tmp_path), 2, "--out wan=")
    fails(mb("show", g, "-o", "x.gif", cwd=tmp_path), 2, "unknown format '.gif'")
    r = mb("run", g, "--in", f"lan={LAN}", "--out", "wan=o.pcap", "--stats", "none", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr == f"warning: {g}:3: element 'cls': output 1 is not connected; its packets " \
                       "are dropped and counted\n"
    assert frames(tmp_path / "o.pcap") == [bytes(p) for p in rdpcap(LAN)
                                           if isinstance(p, Ether) and p.type == 0x0800]


def test_run_binding_errors(tmp_path):
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--in", f"dmz={LAN}", "--out", "wan=o.pcap"), 2,
          "dmz")
    fails(run_cls(tmp_path, "--in", f"wan={LAN}", "--in", f"lan={LAN}", "--out", "wan=o.pcap"), 2,
          "wan", "no FromDevice")
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--out", "lan=o.pcap", "--out", "wan=o.pcap"),
          2, "lan", "no ToDevice")
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--in", f"lan={LAN}", "--out", "wan=o.pcap"), 2,
          "lan", "twice")
    fails(run_cls(tmp_path, "--in", LAN, "--out", "wan=o.pcap"), 2, "--in expects DEV=FILE")


def test_run_unwritable_output(tmp_path):
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--out", "wan=nodir/o.pcap"), 1, "nodir/o.pcap")
    (tmp_path / "adir").mkdir()
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--out", "wan=adir"), 1, "adir")
    (tmp_path / "afile").write_text("x")
    fails(run_cls(tmp_path, "--in", f"lan={LAN}", "--out", "wan=afile/o.pcap"), 1, "afile/o.pcap")


def test_run_source_without_limit(tmp_path):
    g = write(tmp_path / "inf.yaml", "elements:\n  src: {class: InfiniteSource}\n"
              "  drop: Discard\nconnections:\n  - src -> drop\n")
    line = fails(mb("run", g, cwd=tmp_path), 2, "limit")
    assert line.startswith(f"{g}:2: element 'src': ")


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["check"],
    ["run"],
    ["check", "a.yaml", "b.yaml"],
    ["run", CLASSIFIER, "--stats", "xml"],
    ["run", CLASSIFIER, "--frob"],
    ["bench", CLASSIFIER, "--packets", "many"],
], ids=["nothing", "unknown-command", "check-no-graph", "run-no-graph", "check-two-graphs",
        "bad-stats", "unknown-option", "bad-int"])
def test_bad_usage(tmp_path, args):
    fails(mb(*args, cwd=tmp_path), 2, "error")
