"""Live interfaces end to end: `middlebox run --dev` on veth pairs and TAP
devices between network namespaces this file makes, with real traffic.

Every test builds its own namespaces (mbtest-<tag>-a/-b/-r): hosts A
(10.0.0.10/24) and B (192.168.1.10/24) with default routes through the
addresses of graphs/router.yaml, and the middlebox in a third namespace R
holding the other ends of both veth pairs, so nothing touches this host's
own interfaces and traffic stays inside the namespaces. IPv6 is off in all
of them (no stray router solicitations in the counters), and TSO/GSO are
off on the hosts' veths, as on a wire (tests/nettool.py, which runs the
hosts' side). Teardown kills what it started by PID and deletes the
namespaces (and with them every veth and TAP), even on failure.
"""

import json
import pathlib
import secrets
import select
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROUTER = str(ROOT / "graphs" / "router.yaml")
TOOL = str(ROOT / "tests" / "nettool.py")
PY = sys.executable
R_LAN, R_WAN = "02:00:00:00:00:01", "02:00:00:00:01:01"


def _run(*cmd, timeout=30):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _kernel_refusal():
    """Why this machine cannot give us namespaces and veth pairs, or None."""
    if shutil.which("ip") is None:
        return "iproute2's 'ip' command is not installed"
    name = f"mbtest-probe-{secrets.token_hex(3)}"
    r = _run("ip", "netns", "add", name)
    if r.returncode:
        return f"the kernel refused a network namespace: {r.stderr.strip()}"
    try:
        r = _run("ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        if r.returncode:
            return f"the kernel refused a veth pair: {r.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", name)
    return None


REFUSED = _kernel_refusal()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=str(REFUSED))
MADE = []           # every namespace any test made (checked at the end)


class Net:
    """Namespaces, links and processes of one test; close() undoes all."""

    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.names = []
        self.procs = []

    # -- building ------------------------------------------------------------

    def ns(self, key):
        return f"mbtest-{self.tag}-{key}"

    def add_ns(self, key):
        name = self.ns(key)
        self.check("ip", "netns", "add", name)
        self.names.append(name)
        MADE.append(name)
        for conf in ("all", "default"):
            self.check("ip", "netns", "exec", name, PY, "-c",
                       f"open('/proc/sys/net/ipv6/conf/{conf}/disable_ipv6', 'w').write('1')")
        self.ip(key, "link", "set", "lo", "up")
        return name

    def veth(self, key, name, peer_key, peer, mac=None):
        """Veth `name` in namespace key, its peer `peer` in peer_key; both up."""
        cmd = ["ip", "link", "add", name]
        if mac:
            cmd += ["address", mac]
        self.check(*cmd, "netns", self.ns(key), "type", "veth", "peer", "name", peer,
                   "netns", self.ns(peer_key))
        self.ip(key, "link", "set", name, "up")
        self.ip(peer_key, "link", "set", peer, "up")

    def host(self, key, ifname, addr, gateway=None):
        self.ip(key, "addr", "add", addr, "dev", ifname)
        self.ip(key, "link", "set", ifname, "up")
        if gateway:
            self.ip(key, "route", "add", "default", "via", gateway)
        self.tool(key, "offload", ifname)

    def router_net(self, tap=False):
        """A -- R(router) -- B. Returns (lan ifname, wan ifname or TAP name)."""
        for k in "abr":
            self.add_ns(k)
        self.va, self.ra = f"mbA{self.tag}", f"mbRa{self.tag}"
        self.veth("a", self.va, "r", self.ra)
        self.host("a", self.va, "10.0.0.10/24", "10.0.0.1")
        if tap:
            self.tap = f"mbT{self.tag}"
            return self.ra, self.tap
        self.vb, self.rb = f"mbB{self.tag}", f"mbRb{self.tag}"
        self.veth("b", self.vb, "r", self.rb)
        self.host("b", self.vb, "192.168.1.10/24", "192.168.1.1")
        return self.ra, self.rb

    # -- running ---------------------------------------------------------------

    def check(self, *cmd, timeout=30):
        r = _run(*cmd, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr.strip()}"
        return r.stdout

    def ip(self, key, *args):
        return self.check("ip", "-n", self.ns(key), *args)

    def tool(self, key, *args, timeout=30):
        out = self.check("ip", "netns", "exec", self.ns(key), PY, TOOL, *args,
                         timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def spawn(self, key, *cmd):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(key), *cmd],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def spawn_tool(self, key, *args):
        """A tool that prints {"ready": true} once listening."""
        p = self.spawn(key, PY, TOOL, *args)
        line = _readline(p.stdout, 10)
        if not (line and json.loads(line).get("ready")):
            p.kill()
            _, err = p.communicate(timeout=10)
            raise AssertionError(f"{args[0]} did not start: {line!r} {err}")
        return p

    def finish(self, p, timeout=30):
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def middlebox(self, *args, key="r", graph=ROUTER):
        """`middlebox run GRAPH ARGS --stats json` in namespace key, once it
        says it is running (its ports are open from then on)."""
        p = self.spawn(key, PY, "-m", "middlebox", "run", graph, *args, "--stats", "json")
        line = _readline(p.stderr, 20)
        while line.startswith("warning:"):
            line = _readline(p.stderr, 20)
        if not line.startswith("live:"):
            p.kill()
            _, err = p.communicate(timeout=10)
            raise AssertionError(f"middlebox did not start: {line}{err}")
        return p

    def stop(self, p, sig=signal.SIGTERM):
        """Stop a middlebox like an operator would; (exit code, stats, stderr)."""
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
        return p.returncode, (json.loads(out) if out.strip() else None), err

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        for name in reversed(self.names):
            _run("ip", "netns", "del", name)


def _readline(f, timeout):
    ready, _, _ = select.select([f], [], [], timeout)
    return f.readline() if ready else ""


@pytest.fixture
def net():
    n = Net()
    try:
        yield n
    finally:
        n.close()


def balanced(elements):
    return {name: s for name, s in elements.items()
            if s["in"] + s["created"] != s["out"] + s["dropped"] + s.get("held", 0)}


def udp_through(net, dst, count, flows=1, port=9000):
    """Send `count` datagrams from A to dst; what B's socket received."""
    recv = net.spawn_tool("b", "udp-recv", str(port), str(count), "15")
    net.tool("a", "udp-send", dst, str(port), str(count), str(flows))
    return net.finish(recv)["received"]


# --- the router on two veth pairs ----------------------------------------------

def test_router_answers_arp_and_pings_and_forwards_with_ttl(net):
    lan, wan = net.router_net()
    mb = net.middlebox("--dev", f"lan={lan}", "--dev", f"wan={wan}", "--duration", "60")
    assert "promiscuity 1 " in net.ip("r", "-d", "link", "show", lan)  # while running

    own = net.tool("a", "ping", "10.0.0.1", "3")
    assert [r["src"] for r in own["replies"]] == ["10.0.0.1"] * 3
    assert R_LAN in net.ip("a", "neigh", "show", "10.0.0.1")    # its ARPResponder answered

    far = net.tool("a", "ping", "192.168.1.10", "3")
    assert [r["src"] for r in far["replies"]] == ["192.168.1.10"] * 3
    assert {r["ttl"] for r in far["replies"]} == {63}           # B's reply, one hop
    assert R_WAN in net.ip("b", "neigh", "show", "192.168.1.1")

    got = udp_through(net, "192.168.1.10", 20)
    # Each datagram once (the engine never sees what it sends), TTL less one.
    assert sorted(g["data"] for g in got) == sorted(f"datagram {i}" for i in range(20))
    assert {g["ttl"] for g in got} == {63}
    assert {g["src"] for g in got} == {"10.0.0.10"}

    rc, stats, err = net.stop(mb)
    assert rc == 0, err
    el, dev = stats["elements"], stats["devices"]
    assert el["wan_arpq"]["queries"] >= 1 and el["wan_arpq"]["replies"] >= 1  # B by ARP
    assert el["lan_arpr"]["replies"] >= 1
    assert el["ping"]["replies"] == 3
    assert el["wan_ttl"]["ports"][0] >= 23                     # 3 pings + 20 datagrams
    assert balanced(el) == {}
    assert dev["lan"]["interface"] == lan and dev["wan"]["interface"] == wan
    assert dev["lan"]["rx"] == el["lan_in"]["out"] + dev["lan"]["rx_dropped"]
    assert dev["wan"]["tx"] >= 23 and dev["wan"]["tx_errors"] == 0
    assert "promiscuity 0 " in net.ip("r", "-d", "link", "show", lan)  # and not after


def test_tcp_connection_through_the_router(net):
    lan, wan = net.router_net()
    mb = net.middlebox("--dev", f"lan={lan}", "--dev", f"wan={wan}", "--duration", "60")
    server = net.spawn_tool("b", "tcp-server", "5001", "20")
    client = net.tool("a", "tcp-client", "192.168.1.10", "5001", str(400_000))
    done = net.finish(server)
    assert done["bytes"] == 400_000 and done["peer"] == "10.0.0.10"
    assert client["answer"] == client["sent_sha256"] == done["sha256"]
    rc, stats, err = net.stop(mb, signal.SIGINT)
    assert rc == 0, err
    assert stats["elements"]["check"]["bad_csum"] == 0
    assert stats["devices"]["wan"]["tx"] >= 400_000 // 1460
    assert balanced(stats["elements"]) == {}


def test_tap_device_is_made_used_and_removed(net):
    lan, tap = net.router_net(tap=True)
    mb = net.middlebox("--dev", f"lan={lan}", "--dev", f"wan=tap:{tap}", "--duration", "60")
    assert tap in net.ip("r", "link", "show", tap)              # made by the middlebox
    # B's end of the wire is the TAP itself: move it into B and address it.
    net.ip("r", "link", "set", tap, "netns", net.ns("b"))
    net.host("b", tap, "192.168.1.10/24", "192.168.1.1")
    far = net.tool("a", "ping", "192.168.1.10", "3")
    assert [r["ttl"] for r in far["replies"]] == [63, 63, 63]
    got = udp_through(net, "192.168.1.10", 10)
    assert sorted(g["data"] for g in got) == sorted(f"datagram {i}" for i in range(10))
    assert {g["ttl"] for g in got} == {63}
    rc, stats, err = net.stop(mb)
    assert rc == 0, err
    assert stats["devices"]["wan"]["interface"] == f"tap:{tap}"
    dev = stats["devices"]["wan"]
    assert dev["tx"] >= 13 and dev["rx"] >= 4    # 3 pings + 10 datagrams out; 3 replies + ARP in
    r = _run("ip", "-n", net.ns("b"), "link", "show", tap)
    assert r.returncode != 0                                    # we made it: it is gone


def test_an_existing_tap_is_used_and_kept(net):
    net.add_ns("r")
    tap = f"mbP{net.tag}"
    net.ip("r", "tuntap", "add", "mode", "tap", "name", tap)
    net.ip("r", "link", "add", f"mbL{net.tag}", "type", "veth", "peer", "name", f"mbM{net.tag}")
    p = net.spawn("r", PY, "-m", "middlebox", "run", ROUTER, "--dev", f"lan=mbL{net.tag}",
                  "--dev", f"wan=tap:{tap}", "--duration", "0.5", "--stats", "json")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert json.loads(out)["devices"]["wan"]["interface"] == f"tap:{tap}"
    assert tap in net.ip("r", "link", "show", tap)              # not ours to remove


def test_two_workers_share_the_traffic_by_flow(net):
    lan, wan = net.router_net()
    mb = net.middlebox("--dev", f"lan={lan}", "--dev", f"wan={wan}", "--workers", "2",
                       "--duration", "60")
    far = net.tool("a", "ping", "192.168.1.10", "2")
    assert [r["ttl"] for r in far["replies"]] == [63, 63]
    got = udp_through(net, "192.168.1.10", 256, flows=64)
    # Every datagram arrives once: fanout gives each frame to one worker.
    assert sorted(g["data"] for g in got) == sorted(f"datagram {i}" for i in range(256))
    assert {g["ttl"] for g in got} == {63}
    server = net.spawn_tool("b", "tcp-server", "5001", "20")
    client = net.tool("a", "tcp-client", "192.168.1.10", "5001", str(200_000))
    assert client["answer"] == client["sent_sha256"] == net.finish(server)["sha256"]
    rc, stats, err = net.stop(mb, signal.SIGINT)
    assert rc == 0, err
    workers = stats["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert len({w["cpu"] for w in workers}) == 2                # pinned apart
    # Both carried some of the 64 UDP flows; the totals are their sums.
    assert all(w["devices"]["lan"]["rx"] > 0 for w in workers)
    for d in ("lan", "wan"):
        for k in ("rx", "tx"):
            assert stats["devices"][d][k] == sum(w["devices"][d][k] for w in workers)
    el = stats["elements"]
    assert el["lan_in"]["out"] == stats["devices"]["lan"]["rx"] - stats["devices"]["lan"]["rx_dropped"]
    assert el["wan_ttl"]["ports"][0] >= 258
    assert balanced(el) == {}


BRIDGE = """
name: bridge
elements:
  a_in: {class: FromDevice, device: a}
  b_in: {class: FromDevice, device: b}
  ab:   {class: Counter}
  ba:   {class: Counter}
  a_out: {class: ToDevice, device: a}
  b_out: {class: ToDevice, device: b}
connections:
  - a_in -> ab -> b_out
  - b_in -> ba -> a_out
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_control_socket_reads_add_up_and_writes_reach_every_worker(net, tmp_path, workers):
    """A two-port bridge with counters; static neighbours and no IPv6, so
    the only frames are the test's datagrams and the counts are exact."""
    for k in "abr":
        net.add_ns(k)
    mac_a, mac_b = "02:00:00:aa:00:0a", "02:00:00:bb:00:0b"
    net.veth("a", f"mbA{net.tag}", "r", f"mbRa{net.tag}", mac=mac_a)
    net.veth("b", f"mbB{net.tag}", "r", f"mbRb{net.tag}", mac=mac_b)
    net.host("a", f"mbA{net.tag}", "10.9.0.1/24")
    net.host("b", f"mbB{net.tag}", "10.9.0.2/24")
    net.ip("a", "neigh", "add", "10.9.0.2", "lladdr", mac_b, "dev", f"mbA{net.tag}",
           "nud", "permanent")
    net.ip("b", "neigh", "add", "10.9.0.1", "lladdr", mac_a, "dev", f"mbB{net.tag}",
           "nud", "permanent")
    graph = tmp_path / "bridge.yaml"
    graph.write_text(BRIDGE)
    sock = str(tmp_path / "ctl.sock")
    mb = net.middlebox("--dev", f"a=mbRa{net.tag}", "--dev", f"b=mbRb{net.tag}",
                       "--workers", str(workers), "--control", sock, "--duration", "60",
                       graph=str(graph))

    def ctl(*args):
        r = _run(PY, "-m", "middlebox", "ctl", sock, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    got = udp_through(net, "10.9.0.2", 40, flows=16)
    assert len(got) == 40
    assert ctl("read", "ab.count") == "40"
    assert ctl("read", "ab.in") == "40"
    assert ctl("read", "ba.count") == "0"
    ctl("write", "ab.reset")
    assert ctl("read", "ab.count") == "0"
    assert len(udp_through(net, "10.9.0.2", 10, flows=4, port=9001)) == 10
    assert ctl("read", "ab.count") == "10"
    rc, stats, err = net.stop(mb)
    assert rc == 0, err
    assert stats["elements"]["ab"]["count"] == 10 and stats["elements"]["ab"]["in"] == 50
    assert len(stats["workers"]) == workers


# --- errors ------------------------------------------------------------------------

def test_errors_are_one_line(net):
    net.add_ns("r")
    r = _run("ip", "netns", "exec", net.ns("r"), PY, "-m", "middlebox", "run", ROUTER,
             "--dev", "lan=mbnone0", "--dev", "wan=mbnone1", "--duration", "1")
    assert r.returncode == 1
    assert r.stderr == "error: device 'lan': mbnone0: no such interface\n"
    net.ip("r", "link", "add", f"mbL{net.tag}", "type", "veth", "peer", "name", f"mbM{net.tag}")
    r = _run("ip", "netns", "exec", net.ns("r"), PY, "-m", "middlebox", "run", ROUTER,
             "--dev", f"lan=mbL{net.tag}", "--dev", f"wan=mbL{net.tag}")
    assert r.returncode == 2
    assert r.stderr == (f"error: --dev wan=mbL{net.tag}: interface mbL{net.tag} is already "
                        "bound to device 'lan'\n")
    r = _run(PY, "-m", "middlebox", "run", ROUTER, "--dev", "lan=x", "--dev", "lan=y")
    assert (r.returncode, r.stderr) == (2, "error: --dev lan: device bound twice\n")
    r = _run(PY, "-m", "middlebox", "run", ROUTER, "--dev", "lan=x", "--dev", "wan=tap:y",
             "--workers", "2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "one worker" in r.stderr


def test_nothing_is_left_behind():
    """Runs last in this file: every namespace (with its veths and TAPs)
    made above is gone."""
    left = _run("ip", "netns", "list").stdout
    assert MADE and [n for n in MADE if n in left] == []
