"""Live handlers: read and write an engine's elements, idle and while it
runs, from Python and through the control socket."""

import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from middlebox import loader, plan
from middlebox.errors import RunError
from middlebox.runtime import Engine
from clirun import Controlled
from holding import HOLDING_PASS, run_held

SLOW = """
elements:
  src: {class: InfiniteSource, limit: LIMIT, flows: 10}
  py: {class: slowpass.SlowPass}
  cnt: {class: Counter}
  drop: {class: Discard}
connections: [src -> py -> cnt -> drop]
"""


@pytest.fixture
def slow_graph(tmp_path):
    (tmp_path / "slowpass.py").write_text(HOLDING_PASS)
    path = tmp_path / "g.yaml"
    path.write_text(SLOW.replace("LIMIT", "400000"))
    return str(path)


def test_write_while_running_loses_no_packet(slow_graph):
    eng = Engine(plan.build(loader.load(slow_graph)))
    held_at = run_held(eng, sys.modules["slowpass"], lambda: eng.write("cnt.reset"))
    s = eng.stats()["cnt"]
    assert 50_000 <= held_at < 400_000
    assert s["in"] == s["out"] == 400_000     # no packet was lost
    # The reset landed mid-run: the packets counted before it are gone from
    # the final count (at least the HOLD_AT the element had passed), and
    # some were counted after it.
    assert 0 < s["count"] <= 400_000 - 50_000 + 32
    assert eng.stats()["drop"]["dropped"] == 400_000


def test_idle_reads_and_writes_and_errors(slow_graph):
    eng = Engine(plan.build(loader.load(slow_graph)))
    eng.run_sources()
    assert eng.read("cnt.count") == "400000"
    assert eng.read("src.flows") == "10"
    assert eng.read("cnt.ports") == "400000"
    assert eng.handlers()["cnt.reset"] == "w"
    eng.write("cnt.reset")
    assert eng.read("cnt.count") == "0"
    with pytest.raises(RunError, match="no write handler 'reset'"):
        eng.write("drop.reset")
    with pytest.raises(RunError, match="no read handler 'nope'"):
        eng.read("cnt.nope")
    with pytest.raises(RunError, match="no element 'ghost'"):
        eng.read("ghost.count")


def test_control_socket_with_run_linger(tmp_path):
    wrpcap(str(tmp_path / "in.pcap"), [Ether() / IP() / UDP(sport=i) for i in range(100)])
    (tmp_path / "g.yaml").write_text(
        "elements:\n  lan: {class: FromDevice, device: lan}\n  cnt: {class: Counter}\n"
        "  wan: {class: ToDevice, device: wan}\nconnections: [lan -> cnt -> wan]\n")
    sock = str(tmp_path / "ctl.sock")
    with Controlled(sock, tmp_path / "g.yaml", "--in", f"lan={tmp_path / 'in.pcap'}",
                    "--out", f"wan={tmp_path / 'out.pcap'}", "--stats", "json") as run:
        ctl = run.ctl
        r = run.read_until("cnt.count", "100")
        assert r.returncode == 0 and r.stdout.strip() == "100", r.stderr
        assert "cnt.reset w" in ctl("list").stdout
        assert ctl("write", "cnt.reset").returncode == 0
        assert ctl("read", "cnt.count").stdout.strip() == "0"
        bad = ctl("write", "cnt.nothing")
        assert bad.returncode == 1 and "no write handler" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        assert ctl("quit").returncode == 0
        out, err = run.finish()
    assert run.returncode == 0, err
    assert '"count": 0' in out
    assert not os.path.exists(sock)


def test_ctl_without_server_is_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "middlebox", "ctl", str(tmp_path / "none.sock"),
                        "read", "a.b"], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "control socket" in r.stderr
