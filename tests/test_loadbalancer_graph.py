"""graphs/loadbalancer.yaml end to end: ARP on both sides (answering for the
VIP and the server-side address, resolving backends, clients and the
router), connections spread over the backends with affinity, replies
translated back to the VIP, pings to the VIP answered, other traffic
dropped. Every expected frame is built with scapy here.

The run is done twice with the same client traffic: the first shows which
backend each connection got (the choice is Maglev's, deterministic), the
second adds the backends' replies to those connections."""

import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from middlebox.testing import run_graph

GRAPH = str(pathlib.Path(__file__).resolve().parent.parent / "graphs" / "loadbalancer.yaml")
VIP, LB_C = "10.0.0.100", "02:00:00:00:00:64"           # client side
LB_IP_S, LB_S = "10.0.1.254", "02:00:00:00:01:fe"       # server side
GW, GW_MAC = "10.0.0.1", "02:00:00:00:00:01"
NEAR, NEAR_MAC = "10.0.0.50", "02:00:00:00:00:32"        # a client on the VIP's network
BACKENDS = {"10.0.1.1": "02:00:00:00:01:01", "10.0.1.2": "02:00:00:00:01:02",
            "10.0.1.3": "02:00:00:00:01:03"}
BCAST = "ff:ff:ff:ff:ff:ff"
T0 = 1_700_000_000


def at(t, p):
    p.time = T0 + t
    return p


def client_of(i):
    return (NEAR, 40000) if i == 0 else (f"198.51.100.{i}", 40000 + i)


def syn(i):
    src, sport = client_of(i)
    mac = NEAR_MAC if i == 0 else GW_MAC
    return Ether(src=mac, dst=LB_C) / IP(src=src, dst=VIP, ttl=60) \
        / TCP(sport=sport, dport=80, flags="S", seq=1000 + i)


def ack(i):
    src, sport = client_of(i)
    mac = NEAR_MAC if i == 0 else GW_MAC
    return Ether(src=mac, dst=LB_C) / IP(src=src, dst=VIP, ttl=60) \
        / TCP(sport=sport, dport=80, flags="A", seq=1001 + i, ack=5001) / b"GET / HTTP/1.0\r\n\r\n"


def synack(i, backend):
    dst, dport = client_of(i)
    return Ether(src=BACKENDS[backend], dst=LB_S) / IP(src=backend, dst=dst, ttl=64) \
        / TCP(sport=80, dport=dport, flags="SA", seq=5000, ack=1001 + i)


def arp_reply(mac, ip, to_mac, to_ip):
    return Ether(src=mac, dst=to_mac) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=to_mac, pdst=to_ip)


def retargeted(frame, src_mac, dst_mac, **fields):
    """The IP packet of `frame` with fields changed and checksums recomputed,
    in a new Ethernet header."""
    ip = IP(bytes(Ether(bytes(frame))[IP]))
    for k, v in fields.items():
        if k in ("sport", "dport"):
            setattr(ip[TCP], k, v)
        else:
            setattr(ip, k, v)
    del ip.chksum
    del ip[TCP].chksum
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(bytes(ip)))


NFLOWS = 61
EARLY = range(0, 6)      # before 10.0.1.3's address is known: held, then released


def client_traffic():
    out = [
        at(0.1, Ether(src=GW_MAC, dst=BCAST) / ARP(op=1, hwsrc=GW_MAC, psrc=GW, pdst=VIP)),
        at(0.2, arp_reply(GW_MAC, GW, LB_C, VIP)),
    ]
    out += [at(1 + 0.01 * i, syn(i)) for i in EARLY]
    out += [at(2 + 0.01 * i, syn(i)) for i in range(6, NFLOWS)]
    out += [
        at(3.0, Ether(src=GW_MAC, dst=LB_C) / IP(src="198.51.100.200", dst=VIP)
           / ICMP(type=8, id=3, seq=9) / b"ping"),
        at(3.1, Ether(src=GW_MAC, dst=LB_C) / IP(src="198.51.100.201", dst=VIP)
           / TCP(sport=999, dport=443, flags="S")),
    ]
    return out


def server_arp():
    req = Ether(src=BACKENDS["10.0.1.1"], dst=BCAST) / ARP(
        op=1, hwsrc=BACKENDS["10.0.1.1"], psrc="10.0.1.1", pdst=LB_IP_S)
    return [at(0.3, req),
            at(0.4, arp_reply(BACKENDS["10.0.1.1"], "10.0.1.1", LB_S, LB_IP_S)),
            at(0.5, arp_reply(BACKENDS["10.0.1.2"], "10.0.1.2", LB_S, LB_IP_S)),
            at(1.8, arp_reply(BACKENDS["10.0.1.3"], "10.0.1.3", LB_S, LB_IP_S))]


def ip_frames(frames):
    return [f for f in frames if Ether(f).type == 0x0800]


@pytest.fixture(scope="module")
def runs():
    client = client_traffic()
    first = run_graph(GRAPH, {"client": client, "servers": server_arp()})
    chosen = {}
    for f in ip_frames(first["servers"]):
        p = Ether(f)
        chosen[(p[IP].src, p[TCP].sport)] = p[IP].dst
    backend = [chosen[client_of(i)] for i in range(NFLOWS)]
    replies = [at(4 + 0.01 * i, synack(i, backend[i])) for i in range(NFLOWS)]
    acks = [at(6 + 0.01 * i, ack(i)) for i in range(NFLOWS)]
    near_arp = at(4.455, arp_reply(NEAR_MAC, NEAR, LB_C, VIP))
    second = run_graph(GRAPH, {"client": sorted(client + acks + [near_arp], key=lambda p: p.time),
                               "servers": server_arp() + replies})
    return first, second, backend, replies


def test_arp_is_answered_for_the_vip_and_the_server_side_address(runs):
    _, res, _, _ = runs
    c = res.scapy("client")[0]
    assert (c[Ether].dst, c[Ether].src) == (GW_MAC, LB_C)
    assert (c[ARP].op, c[ARP].psrc, c[ARP].hwsrc, c[ARP].pdst) == (2, VIP, LB_C, GW)
    s = res.scapy("servers")[0]
    assert (s[Ether].dst, s[Ether].src) == (BACKENDS["10.0.1.1"], LB_S)
    assert (s[ARP].op, s[ARP].psrc, s[ARP].hwsrc, s[ARP].pdst) == (2, LB_IP_S, LB_S, "10.0.1.1")


def test_connections_reach_their_backend_with_its_address(runs):
    first, res, backend, _ = runs
    assert set(backend) == set(BACKENDS)
    fwd = ip_frames(res["servers"])
    syns = [f for f in fwd if Ether(f)[TCP].flags == "S"]
    assert len(syns) == NFLOWS
    by_client = {(Ether(f)[IP].src, Ether(f)[TCP].sport): f for f in syns}
    for i in range(NFLOWS):
        b = backend[i]
        assert by_client[client_of(i)] == retargeted(syn(i), LB_S, BACKENDS[b], dst=b)
    assert ip_frames(first["servers"]) == syns      # the same choices in both runs


def test_later_packets_stay_with_their_backend(runs):
    _, res, backend, _ = runs
    acks = [f for f in ip_frames(res["servers"]) if Ether(f)[TCP].flags == "A"]
    assert acks == [retargeted(ack(i), LB_S, BACKENDS[backend[i]], dst=backend[i])
                    for i in range(NFLOWS)]


def test_unknown_backend_is_resolved_by_arp_and_held_packets_follow(runs):
    _, res, backend, _ = runs
    frames = res.scapy("servers")
    queries = [k for k, p in enumerate(frames) if ARP in p and p[ARP].op == 1]
    assert len(queries) == 1
    q = frames[queries[0]]
    assert (q[Ether].dst, q[Ether].src) == (BCAST, LB_S)
    assert (q[ARP].psrc, q[ARP].hwsrc, q[ARP].pdst) == (LB_IP_S, LB_S, "10.0.1.3")
    early3 = [i for i in EARLY if backend[i] == "10.0.1.3"]
    assert early3, "some early connection should go to 10.0.1.3"
    to3 = [k for k, p in enumerate(frames) if IP in p and p[IP].dst == "10.0.1.3"]
    assert queries[0] < to3[0]
    assert res.all_stats["servers_arpq"]["held_drops"] == 0


def test_replies_leave_from_the_vip(runs):
    _, res, backend, replies = runs
    back = [p for p in res.scapy("client") if TCP in p]
    # The near client's reply (t=4) waited for its ARP reply (t=4.455), so it
    # leaves between the replies of t=4.45 and t=4.46.
    order = list(range(1, 46)) + [0] + list(range(46, NFLOWS))
    assert [p[IP].dst for p in back] == [client_of(i)[0] for i in order]
    for i, p in zip(order, back):
        dst_mac = NEAR_MAC if i == 0 else GW_MAC      # off-link clients via the router
        assert bytes(p) == retargeted(replies[i], LB_C, dst_mac, src=VIP)
    frames = res.scapy("client")
    ask = [p for p in frames if ARP in p and p[ARP].op == 1]
    assert len(ask) == 1 and ask[0][ARP].pdst == NEAR and ask[0][ARP].psrc == VIP


def test_ping_to_the_vip_is_answered_and_other_ports_dropped(runs):
    _, res, _, _ = runs
    pings = [p for p in res.scapy("client") if ICMP in p]
    assert len(pings) == 1
    r = pings[0]
    assert (r[Ether].src, r[Ether].dst) == (LB_C, GW_MAC)
    assert (r[IP].src, r[IP].dst, r[ICMP].type, r[ICMP].id, r[ICMP].seq) == \
        (VIP, "198.51.100.200", 0, 3, 9)
    clean = IP(bytes(r[IP]))
    del clean.chksum
    del clean[ICMP].chksum
    assert IP(bytes(clean)).chksum == r[IP].chksum
    assert bytes(IP(bytes(clean))[ICMP]) == bytes(r[ICMP])
    assert not [p for p in res.scapy("servers") if TCP in p and p[TCP].dport == 443]
    s = res.all_stats
    assert s["lb"]["not_vip"] == 2 and s["ping"]["not_echo"] == 1


def test_counters(runs):
    _, res, _, _ = runs
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), name
    lb = res.all_stats["lb"]
    assert lb["new_flows"] == NFLOWS and lb["table_full"] == 0
    assert lb["no_conn_replies"] == 0 and lb["not_backend"] == 0 and lb["bad"] == 0
    assert lb["ports"] == [2 * NFLOWS, NFLOWS, 2, 0]
