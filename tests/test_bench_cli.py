"""`middlebox bench`, run as a user runs it: in a subprocess.

What is checked is the shape of what it reports (text, --json, --plot),
that --size/--batch/--flows change the traffic as documented, and that
every mistake is one line on stderr. Never how fast anything is: speed is
measured by bench/, not asserted by tests.
"""

import json
import os

import pytest

from middlebox import bench
import clirun
from clirun import fails

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTER = os.path.join(ROOT, "bench", "graphs", "router.yaml")
CLASSIFIER = os.path.join(ROOT, "graphs", "classifier.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# InfiniteSource -> Counter -> Discard: the counter sees every packet made.
COUNTED = """\
name: counted
elements:
  src:   {class: InfiniteSource}
  count: {class: Counter}
  drop:  {class: Discard}
connections:
  - src -> count -> drop
"""


def run_bench(*args, cwd):
    return clirun.mb("bench", *args, cwd=cwd, timeout=300)


@pytest.fixture
def counted(tmp_path):
    path = tmp_path / "counted.yaml"
    path.write_text(COUNTED)
    return path


def test_text_reports_rate_and_ns_per_packet(tmp_path):
    r = run_bench(ROUTER, "--packets", 5000, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("router-bench: ")
    assert " Mpps, " in lines[0] and " ns/packet " in lines[0]
    assert "(batch 32, 64-byte packets, 1000 flows)" in lines[0]
    # cycles and instructions, or the reason they are missing
    assert "cycles" in lines[1]
    assert r.stderr == ""        # no progress bar when stderr is not a terminal


def test_json_on_stdout_has_the_documented_shape(tmp_path):
    r = run_bench(ROUTER, "--packets", 5000, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("graph", "file", "packets", "seconds", "mpps", "ns_per_packet",
                "cycles_per_packet", "instructions_per_packet", "perf", "batch", "max_batch",
                "packet_size", "flows", "accelerator", "elements", "devices", "machine"):
        assert key in res, key
    assert res["graph"] == "router-bench"
    assert res["packets"] >= 5000
    assert res["batch"] == 32 and res["max_batch"] == 32
    assert res["packet_size"] == 64 and res["flows"] == 1000
    assert res["accelerator"] == "n/a"
    assert res["mpps"] > 0 and res["seconds"] > 0
    assert res["ns_per_packet"] == pytest.approx(res["seconds"] * 1e9 / res["packets"], rel=0.01)
    if res["perf"] == "ok":
        assert res["cycles_per_packet"] > 0 and res["instructions_per_packet"] > 0
    else:
        assert res["cycles_per_packet"] is None and res["instructions_per_packet"] is None
    for key in ("cpu", "cores", "kernel", "python"):
        assert key in res["machine"]
    # per-element counters: every packet made went through the forwarding path
    els = res["elements"]
    assert els["src"]["class"] == "InfiniteSource"
    assert els["src"]["out"] >= res["packets"]
    assert els["check"]["in"] == els["src"]["out"] and els["check"]["dropped"] == 0
    assert els["arpq"]["out"] == els["src"]["out"]
    assert res["devices"]["wan"]["tx"] == els["src"]["out"]
    # the text line goes to stderr when the JSON takes stdout
    assert "ns/packet" in r.stderr


def test_json_file(tmp_path):
    out = tmp_path / "r.json"
    r = run_bench(ROUTER, "--packets", 3000, "--json", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote {out}"
    assert "ns/packet" in r.stdout
    res = json.loads(out.read_text())
    assert res["graph"] == "router-bench" and res["packets"] >= 3000


def test_size_batch_flows_change_the_traffic(tmp_path, counted):
    r = run_bench(counted, "--packets", 4000, "--size", 300, "--batch", 7, "--flows", 5, "--json",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["packet_size"] == 300 and res["batch"] == 7 and res["flows"] == 5
    c = res["elements"]["count"]
    assert c["count"] == res["elements"]["src"]["out"]
    assert c["byte_count"] == 300 * c["count"]


def test_size_keeps_ip_headers_valid(tmp_path):
    """Resized templates still pass CheckIPHeader and reach the device."""
    for size in (60, 300, 1500):
        r = run_bench(ROUTER, "--packets", 2000, "--size", size, "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        els = res["elements"]
        assert res["packet_size"] == size
        assert els["check"]["dropped"] == 0 and els["check"]["out"] == els["src"]["out"]
        assert res["devices"]["wan"]["tx"] == els["src"]["out"]


def test_resize_recomputes_lengths_and_checksums():
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    for l4 in (UDP(sport=1, dport=2), TCP(sport=1, dport=80, flags="A")):
        frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / l4 / b"xy")
        for size in (len(frame) - 2, 100, 1500):
            out = bench.resize(frame, size)
            assert len(out) == size
            p = Ether(out)
            assert p[IP].len == size - 14
            fresh = p.copy()
            del fresh[IP].chksum
            del fresh[type(l4)].chksum
            if isinstance(l4, UDP):
                del fresh[UDP].len
            assert bytes(Ether(bytes(fresh))) == out


def test_plot_writes_png_and_sweeps(tmp_path):
    png = tmp_path / "sweep.png"
    r = run_bench(ROUTER, "--packets", 3000, "--sweep-packets", 1000, "--plot", png, "--json",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == PNG_MAGIC
    sw = json.loads(r.stdout)["sweep"]
    assert [p["batch"] for p in sw["batch"]] == list(bench.BATCHES)
    assert [p["packet_size"] for p in sw["packet_size"]] == list(bench.SIZES)
    assert all(p["packet_size"] == 64 for p in sw["batch"])
    assert all(p["batch"] == 32 for p in sw["packet_size"])
    assert all(p["mpps"] > 0 for p in sw["batch"] + sw["packet_size"])
    assert f"wrote {png}" in r.stderr


def test_progress_bar_on_request(tmp_path):
    r = run_bench(ROUTER, "--packets", 20000, "--progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "[" in r.stderr and "Mpps" in r.stderr
    assert r.stderr.endswith("\n")


@pytest.mark.parametrize("args,code,phrase", [
    (["--batch", 0], 2, "--batch must be 1 to 32"),
    (["--batch", 64], 2, "fixed when it is compiled"),
    (["--size", 10], 2, "--size must be"),
    (["--size", 30], 2, "smaller than its headers"),
    (["--flows", 0], 2, "--flows must be"),
    (["--packets", 0], 2, "--packets must be at least 1"),
    (["--plot", "out.jpg"], 2, "FILE.png"),
    (["--plot", "no/such/dir/x.png"], 1, "no such directory"),
    (["--json", "no/such/dir/x.json"], 1, "no such directory"),
    (["--batch", "many"], 2, "invalid int value"),
], ids=["batch-0", "batch-64", "size-tiny", "size-below-headers", "flows-0", "packets-0",
        "plot-not-png", "plot-no-dir", "json-no-dir", "batch-not-int"])
def test_errors_are_one_line(tmp_path, args, code, phrase):
    fails(run_bench(ROUTER, *args, cwd=tmp_path), code, phrase)


def test_error_graph_without_source(tmp_path):
    fails(run_bench(CLASSIFIER, cwd=tmp_path), 2, "needs a source")


def test_error_missing_graph(tmp_path):
    fails(run_bench(tmp_path / "nope.yaml", cwd=tmp_path), 2, "no such file")


def test_error_size_without_unlimited_source(tmp_path):
    g = tmp_path / "limited.yaml"
    g.write_text("name: limited\nelements:\n  src: {class: InfiniteSource, limit: 10}\n"
                 "  drop: {class: Discard}\nconnections:\n  - src -> drop\n")
    fails(run_bench(g, "--size", 128, cwd=tmp_path), 2, "without 'limit'")
    fails(run_bench(g, "--plot", tmp_path / "x.png", cwd=tmp_path), 2, "without 'limit'")
    assert not (tmp_path / "x.png").exists()


def test_perf_output_parsing():
    unsupported = "<not supported>,,cycles,0,100.00,,\n<not supported>,,instructions,0,100.00,,\n"
    assert bench.parse_perf(unsupported) == {}
    counted = "123456,,cycles:u,1000,100.00,,\n234567,,instructions:u,1000,100.00,1.90,insn per cycle\n"
    assert bench.parse_perf(counted) == {"cycles": 123456, "instructions": 234567}
