"""The shipped graphs as VMs between real Linux network stacks.

Each test builds a graph from graphs/ into an image, boots it under TCG
with its NICs on TAPs, and puts hosts in network namespaces on the other
side of those TAPs: real ARP, TCP and UDP from the kernel's own stacks go
through the VM. What must happen follows from each graph's description
(addresses, routes, rules); the tests never reimplement an element.
Namespaces, TAPs, servers and QEMU go away when each test ends, on failure
too (tests/vmnet.py).
"""

import pathlib
import socket

import pytest

from middlebox.unikernel import build, qemu
from vmnet import TIMEOUT, Lab, TcpServer, check_invariant, counters, http_answer, http_get

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRAPHS = ROOT / "graphs"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mbcache")


def image(cache, name):
    return build.build(GRAPHS / f"{name}.yaml", cache=cache)


@pytest.fixture
def lab():
    with Lab("vg") as lab_:
        yield lab_


# --- the firewall: lan 10.0.0.1/24, wan 192.0.2.1/24, routed, stateless rules ---------

def test_firewall_vm_passes_http_and_denies_telnet(cache, lab):
    fw = image(cache, "firewall")
    assert qemu.image_devices(fw.path) == ("firewall", ["lan", "wan"])
    lan, lan_fd = lab.host("lan", "10.0.0.2/24", gateway="10.0.0.1")
    wan, wan_fd = lab.host("wan", "192.0.2.2/24", routes=[("10.0.0.0/24", "192.0.2.1")])
    g = lab.boot(fw.path, [("lan", lan_fd, "02:00:00:00:00:01"),
                           ("wan", wan_fd, "02:00:00:00:01:01")])
    name, us, _ = g.wait_ready(TIMEOUT)
    assert name == "firewall" and us > 0
    assert any(ln == f"middlebox: firewall ready in {us} us" for _, ln in g.lines)

    web = lab.serve(TcpServer(wan, "192.0.2.2", 80, http_answer("the wan web server")))
    telnet = lab.serve(TcpServer(wan, "192.0.2.2", 23, b"login: "))

    # HTTP out (allowed), and its replies back in (TCP with ACK from port 80)
    answer = http_get(lan, "192.0.2.2", 80)
    assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"the wan web server")
    assert len(web.peers) == 1 and web.peers[0][0] == "10.0.0.2"     # routed, not NATed
    assert web.requests[0].startswith(b"GET / HTTP/1.0\r\n")

    before, _ = counters(g)
    # telnet out (denied): the SYNs never reach the server, nothing comes back
    s = lan.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        with pytest.raises(socket.timeout):
            s.connect(("192.0.2.2", 23))
    finally:
        s.close()
    assert telnet.peers == []
    els, devs = counters(g)
    assert els["out_filter"]["class"] == "IPFilter"
    assert int(els["out_filter"]["other"]["denied"]) > int(before["out_filter"]["other"]["denied"])
    assert els["out_filter"]["dropped"] == int(els["out_filter"]["other"]["denied"])
    # the HTTP exchange was counted both ways, and nothing inbound was denied
    assert int(els["out_allowed"]["other"]["count"]) >= 3        # SYN, request, ACKs, FIN
    assert int(els["in_allowed"]["other"]["count"]) >= 3         # SYN-ACK, answer, FIN
    assert int(els["in_filter"]["other"]["denied"]) == 0
    assert els["lan_arpr"]["other"]["replies"] != "0"            # the lan host ARPed 10.0.0.1
    assert devs["lan"][1] == 0 and devs["wan"][1] == 0
    check_invariant(els)


# --- the NAT: lan 10.0.0.1/24, wan 203.0.113.7/24 default via 203.0.113.1 ---------------

def test_nat_vm_translates_udp_both_ways(cache, lab):
    nat = image(cache, "nat")
    assert qemu.image_devices(nat.path) == ("nat", ["lan", "wan"])
    lan, lan_fd = lab.host("lan", "10.0.0.2/24", gateway="10.0.0.1")
    lan.ip("addr", "add", "10.0.0.3/24", "dev", lan.ifname)          # a second LAN host
    # the upstream gateway of the graph's default route
    wan, wan_fd = lab.host("wan", "203.0.113.1/24")
    g = lab.boot(nat.path, [("lan", lan_fd, "02:00:00:00:00:01"),
                            ("wan", wan_fd, "02:00:00:00:01:01")])
    g.wait_ready(TIMEOUT)

    server = wan.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients, others = [], []
    try:
        server.bind(("203.0.113.1", 7))
        server.settimeout(TIMEOUT)
        for addr in ("10.0.0.2", "10.0.0.3"):         # same inside port from both
            c = lan.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(c)
            c.bind((addr, 40000))
            c.settimeout(TIMEOUT)
        seen = []
        for i, c in enumerate(clients):
            c.sendto(b"hello %d" % i, ("203.0.113.1", 7))
            data, peer = server.recvfrom(2048)
            assert data == b"hello %d" % i
            seen.append(peer)
        # both leave from the public address; they cannot share its port
        assert [a for a, _ in seen] == ["203.0.113.7", "203.0.113.7"]
        assert seen[0][1] == 40000                     # preserve_ports: the first keeps it
        assert seen[1][1] != 40000 and 1024 <= seen[1][1] <= 65535
        # the echo goes back to the public endpoint and reaches each inside host
        for i, c in enumerate(clients):
            server.sendto(b"echo %d" % i, seen[i])
        for i, c in enumerate(clients):
            assert c.recvfrom(2048) == (b"echo %d" % i, ("203.0.113.1", 7))
        # a mapping keeps its port: a second datagram leaves the same way
        clients[1].sendto(b"again", ("203.0.113.1", 7))
        assert server.recvfrom(2048) == (b"again", seen[1])
        # nothing unsolicited gets in: not from another port of the same
        # remote host to a live mapping (address-and-port-dependent
        # filtering), not to an unmapped public port
        stranger = wan.socket(socket.AF_INET, socket.SOCK_DGRAM)
        others.append(stranger)
        stranger.bind(("203.0.113.1", 8))
        stranger.sendto(b"stranger", seen[0])
        stranger.sendto(b"stranger", ("203.0.113.7", 40001))
        clients[0].settimeout(1.0)
        with pytest.raises(socket.timeout):
            clients[0].recvfrom(2048)
        # and the mapping still works for its own remote
        server.sendto(b"still", seen[0])
        clients[0].settimeout(TIMEOUT)
        assert clients[0].recvfrom(2048) == (b"still", ("203.0.113.1", 7))
        els, devs = counters(g)
    finally:
        server.close()
        for c in clients + others:
            c.close()
    other = els["nat"]["other"]
    assert int(other["new_flows"]) == 2
    assert els["nat"]["class"] == "NAT" and int(other["no_mapping"]) == 2
    assert int(other["translated"]) >= 6               # 3 out, 3 back in
    assert devs["lan"][1] == 0 and devs["wan"][1] == 0
    check_invariant(els)


# --- the load balancer: VIP 10.0.0.100:80 on client, backends 10.0.1.1-3 on servers ----

BACKENDS = {"backend1": "10.0.1.1", "backend2": "10.0.1.2", "backend3": "10.0.1.3"}


def test_loadbalancer_vm_spreads_connections_over_backends(cache, lab):
    lb = image(cache, "loadbalancer")
    assert qemu.image_devices(lb.path) == ("loadbalancer", ["client", "servers"])
    client, client_fd = lab.host("client", "10.0.0.2/24")
    spaces, servers_fd = lab.switch("servers", [(name, f"{addr}/24", "10.0.1.254")
                                                for name, addr in BACKENDS.items()])
    g = lab.boot(lb.path, [("client", client_fd, "02:00:00:00:00:64"),
                           ("servers", servers_fd, "02:00:00:00:01:fe")])
    g.wait_ready(TIMEOUT)
    web = {name: lab.serve(TcpServer(spaces[name], addr, 80, http_answer(name)))
           for name, addr in BACKENDS.items()}

    n = 30
    answers = []
    for i in range(n):
        # fixed client ports: the same connections (and spread) every run
        answer = http_get(client, "10.0.0.100", 80, timeout=15.0,
                          source=("10.0.0.2", 20000 + i))
        assert answer.startswith(b"HTTP/1.0 200 OK")
        answers.append(answer.rsplit(b"\r\n\r\n", 1)[1].decode())
    for i, who in enumerate(answers):
        assert who in BACKENDS
        # exactly one backend saw this connection, the one that answered,
        # and it saw the client's own address (the balancer only moves dst)
        saw = [name for name, srv in web.items() if ("10.0.0.2", 20000 + i) in srv.peers]
        assert saw == [who]
    assert sum(len(srv.peers) for srv in web.values()) == n
    assert {name: answers.count(name) > 0 for name in BACKENDS} == \
        {name: True for name in BACKENDS}
    els, devs = counters(g)
    assert els["lb"]["class"] == "LoadBalancer" and int(els["lb"]["other"]["new_flows"]) == n
    assert devs["client"][1] == 0 and devs["servers"][1] == 0
    check_invariant(els)
