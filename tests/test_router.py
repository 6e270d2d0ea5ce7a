"""graphs/router.yaml end to end: ARP, ping, forwarding with TTL and MAC
rewriting, ICMP errors, fragmentation, next-hop resolution with held
packets. Every expected frame is built with scapy here."""

import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from middlebox.testing import run_graph

ROUTER = str(pathlib.Path(__file__).resolve().parent.parent / "graphs" / "router.yaml")
R_LAN, R_WAN = "02:00:00:00:00:01", "02:00:00:00:01:01"
H, H2, GW = "02:00:00:00:00:0a", "02:00:00:00:00:14", "02:00:00:00:01:fe"


def at(t, p):
    p.time = 1_700_000_000 + t
    return p


def forwarded(ip, src, dst):
    """What the router sends for IP datagram `ip`: TTL - 1, new checksum."""
    out = IP(bytes(ip))
    out.ttl -= 1
    del out.chksum
    return bytes(Ether(src=src, dst=dst) / IP(bytes(out)))


@pytest.fixture(scope="module")
def run():
    udp = IP(src="10.0.0.10", dst="8.8.8.8", ttl=64) / UDP(sport=5000, dport=53) / b"query"
    expiring = IP(src="10.0.0.10", dst="8.8.8.8", ttl=1) / UDP(sport=5001, dport=53)
    df_big = IP(src="10.0.0.10", dst="8.8.8.8", flags="DF") / UDP(sport=5002, dport=9) / bytes(1452)
    big = IP(src="10.0.0.10", dst="8.8.8.8", id=777) / UDP(sport=5003, dport=9) / (bytes(range(256)) * 12)
    inbound = IP(src="1.2.3.4", dst="10.0.0.20", ttl=50) / UDP(sport=53, dport=6000) / b"answer"
    lan = [
        at(1, Ether(src=H, dst=R_LAN) / ARP(op=2, hwsrc=H, psrc="10.0.0.10", hwdst=R_LAN,
                                            pdst="10.0.0.1")),
        at(2, Ether(src=H, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=H, psrc="10.0.0.10",
                                                          pdst="10.0.0.1")),
        at(3, Ether(src=H, dst=R_LAN) / IP(src="10.0.0.10", dst="10.0.0.1")
           / ICMP(type=8, id=7, seq=1) / b"ping"),
        at(4, Ether(src=H, dst=R_LAN) / udp),
        at(5, Ether(src=H, dst=R_LAN) / expiring),
        at(6, Ether(src=H, dst=R_LAN) / df_big),
        at(7, Ether(src=H, dst=R_LAN) / big),
        at(9, Ether(src=H2, dst=R_LAN) / ARP(op=2, hwsrc=H2, psrc="10.0.0.20", hwdst=R_LAN,
                                             pdst="10.0.0.1")),
        at(10, Ether(src=H, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.10", dst="10.0.0.255")
           / UDP(dport=137)),  # link broadcast: dropped by DropBroadcasts
    ]
    wan = [
        at(0.5, Ether(src=GW, dst=R_WAN) / ARP(op=2, hwsrc=GW, psrc="192.168.1.254",
                                               hwdst=R_WAN, pdst="192.168.1.1")),
        at(8, Ether(src=GW, dst=R_WAN) / inbound),
    ]
    res = run_graph(ROUTER, {"lan": lan, "wan": wan})
    return res, dict(udp=udp, expiring=expiring, df_big=df_big, big=big, inbound=inbound)


def test_arp_request_is_answered(run):
    res, _ = run
    reply = res.scapy("lan")[0]
    assert reply[Ether].dst == H and reply[Ether].src == R_LAN
    assert reply[ARP].op == 2 and reply[ARP].psrc == "10.0.0.1" and reply[ARP].hwsrc == R_LAN
    assert reply[ARP].pdst == "10.0.0.10" and reply[ARP].hwdst == H


def test_ping_to_the_router_is_answered(run):
    res, _ = run
    rep = res.scapy("lan")[1]
    assert rep[Ether].dst == H and rep[Ether].src == R_LAN
    assert (rep[IP].src, rep[IP].dst, rep[ICMP].type) == ("10.0.0.1", "10.0.0.10", 0)
    assert (rep[ICMP].id, rep[ICMP].seq, bytes(rep[ICMP].payload)) == (7, 1, b"ping")
    clean = IP(bytes(rep[IP]))
    del clean.chksum
    del clean[ICMP].chksum
    assert IP(bytes(clean)).chksum == rep[IP].chksum
    assert IP(bytes(clean))[ICMP].chksum == rep[ICMP].chksum


def test_forwarding_decrements_ttl_and_uses_the_gateways_mac(run):
    res, sent = run
    assert res["wan"][0] == forwarded(sent["udp"], R_WAN, GW)


def test_ttl_expiry_sends_time_exceeded(run):
    res, sent = run
    err = res.scapy("lan")[2]
    assert err[Ether].dst == H
    assert err[IP].dst == "10.0.0.10" and err[ICMP].type == 11 and err[ICMP].code == 0
    quoted = bytes(sent["expiring"])[:28]
    assert bytes(err[ICMP].payload)[:28] == quoted


def test_df_packet_over_mtu_gets_fragmentation_needed(run):
    res, sent = run
    err = res.scapy("lan")[3]
    assert err[IP].dst == "10.0.0.10"
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, 1400)


def test_large_packet_is_fragmented_to_the_wan_mtu(run):
    res, sent = run
    frags = [IP(bytes(f)[14:]) for f in res["wan"][1:] if IP(bytes(f)[14:]).id == 777]
    assert len(frags) == 3
    assert all(len(f) <= 1400 for f in frags)
    assert [f.frag * 8 for f in frags] == [0, 1376, 2752]
    payload = b"".join(bytes(f.payload)[: f.len - 20] for f in frags)
    want = IP(bytes(sent["big"]))
    assert payload == bytes(want.payload)
    assert all(f.ttl == 63 for f in frags)
    for f in frags:
        c = f.copy()
        del c.chksum
        assert IP(bytes(c)).chksum == f.chksum


def test_unknown_next_hop_is_queried_then_packet_released(run):
    res, sent = run
    lan = res.scapy("lan")
    query = lan[4]
    assert query[Ether].dst == "ff:ff:ff:ff:ff:ff" and query[ARP].op == 1
    assert query[ARP].pdst == "10.0.0.20" and query[ARP].psrc == "10.0.0.1"
    assert res["lan"][5] == forwarded(sent["inbound"], R_LAN, H2)
    assert len(lan) == 6      # the link broadcast was dropped


def test_counters_balance_and_nothing_is_held(run):
    res, _ = run
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    assert res.all_stats["lan_bcast"]["dropped"] == 1
    assert res.all_stats["lan_arpq"].get("held", 0) == 0
