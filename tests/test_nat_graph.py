"""graphs/nat.yaml end to end over tests/fixtures/nat_{lan,wan}.pcap (made
by tests/fixtures/make_nat_fixtures.py): ARP on both sides, pings to the
box, translation out and back, an ICMP error through the NAT, unsolicited
traffic, TTL handling. Every expected frame is built with scapy here."""

import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from middlebox.testing import run_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAT = str(ROOT / "graphs" / "nat.yaml")
LAN = str(ROOT / "tests" / "fixtures" / "nat_lan.pcap")
WAN = str(ROOT / "tests" / "fixtures" / "nat_wan.pcap")
R_LAN, R_WAN = "02:00:00:00:00:01", "02:00:00:00:01:01"
H, GW = "02:00:00:00:00:0a", "02:00:00:00:01:fe"
PUB = "203.0.113.7"


def fresh(p):
    """p with every checksum and length recomputed by scapy."""
    p = p.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p:
            if layer is IP:
                del p[IP].chksum
                del p[IP].len
            elif layer is UDP and p[UDP].chksum == 0:
                pass
            else:
                del p[layer].chksum
    return p


def snat(ip, port=None, ttl_dec=1):
    """Inside IP datagram ip as it leaves on wan: public source (and port),
    TTL - 1."""
    q = IP(bytes(ip))
    q.src = PUB
    q.ttl -= ttl_dec
    if port is not None:
        if TCP in q:
            q[TCP].sport = port
        elif UDP in q:
            q[UDP].sport = port
        else:
            q[ICMP].id = port
    return bytes(Ether(src=R_WAN, dst=GW) / fresh(q))


def dnat(ip, addr, port):
    """Outside datagram ip as it leaves on lan toward addr:port, TTL - 1."""
    q = IP(bytes(ip))
    q.dst = addr
    q.ttl -= 1
    if TCP in q:
        q[TCP].dport = port
    elif UDP in q:
        q[UDP].dport = port
    return bytes(Ether(src=R_LAN, dst=H) / fresh(q))


@pytest.fixture(scope="module")
def run():
    res = run_graph(NAT, {"lan": LAN, "wan": WAN})
    lan = [p for p in rdpcap(LAN)]
    wan = [p for p in rdpcap(WAN)]
    return res, lan, wan


def test_counters_balance(run):
    res, _, _ = run
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    nat = res.all_stats["nat"]
    assert nat["translated"] == 8 and nat["new_flows"] == 4 and nat["no_mapping"] == 2
    assert len(res["lan"]) == 7 and len(res["wan"]) == 7


def test_arp_is_answered_on_both_sides(run):
    res, _, _ = run
    lan_reply, wan_reply = res.scapy("lan")[0], res.scapy("wan")[0]
    assert (lan_reply[Ether].dst, lan_reply[ARP].op, lan_reply[ARP].psrc,
            lan_reply[ARP].hwsrc, lan_reply[ARP].pdst) == (H, 2, "10.0.0.1", R_LAN, "10.0.0.10")
    assert (wan_reply[Ether].dst, wan_reply[ARP].op, wan_reply[ARP].psrc,
            wan_reply[ARP].hwsrc, wan_reply[ARP].pdst) == (GW, 2, PUB, R_WAN, "203.0.113.1")


def test_next_hops_are_resolved_by_arp(run):
    res, _, _ = run
    q_lan, q_wan = res.scapy("lan")[1], res.scapy("wan")[1]
    assert q_lan[Ether].dst == "ff:ff:ff:ff:ff:ff" and q_lan[ARP].op == 1
    assert (q_lan[ARP].psrc, q_lan[ARP].pdst, q_lan[ARP].hwsrc) == ("10.0.0.1", "10.0.0.10",
                                                                    R_LAN)
    assert q_wan[Ether].dst == "ff:ff:ff:ff:ff:ff" and q_wan[ARP].op == 1
    assert (q_wan[ARP].psrc, q_wan[ARP].pdst, q_wan[ARP].hwsrc) == (PUB, "203.0.113.1", R_WAN)


def test_ping_to_the_box_is_answered_once_the_host_is_resolved(run):
    res, lan, _ = run
    req = lan[1][IP]
    want = IP(src="10.0.0.1", dst="10.0.0.10", ttl=255, id=req.id) / ICMP(type=0, id=3, seq=1) \
        / b"gw?"
    assert res["lan"][2] == bytes(Ether(src=R_LAN, dst=H) / fresh(want))


def test_outbound_flows_are_translated_and_routed_to_the_gateway(run):
    res, lan, _ = run
    wan = res["wan"]
    assert wan[2] == snat(lan[3][IP], 5000)            # DNS: port kept
    assert wan[3] == snat(lan[4][IP], 40000)           # TCP SYN: port kept
    ping_out = IP(wan[5][14:])
    assert ping_out[ICMP].id >= 1024                   # identifier 7 is below the range
    assert wan[5] == snat(lan[5][IP], ping_out[ICMP].id)
    h2 = IP(wan[6][14:])
    assert h2[UDP].sport != 5000 and 1024 <= h2[UDP].sport <= 65535
    assert wan[6] == snat(lan[8][IP], h2[UDP].sport)


def test_replies_come_back_to_the_inside_host(run):
    res, _, wan = run
    lan = res["lan"]
    assert lan[3] == dnat(wan[2][IP], "10.0.0.10", 5000)
    assert lan[4] == dnat(wan[3][IP], "10.0.0.10", 40000)


def test_icmp_error_about_a_translated_packet_reaches_the_host(run):
    res, lan_in, wan = run
    err = wan[4][IP]
    quote = IP(bytes(lan_in[3][IP]))
    quote.ttl -= 1                                     # quoted as it left the NAT box
    want = IP(src=err.src, dst="10.0.0.10", ttl=err.ttl - 1, id=err.id) / ICMP(type=3, code=3) \
        / Raw(bytes(fresh(quote)))
    assert res["lan"][5] == bytes(Ether(src=R_LAN, dst=H) / fresh(want))


def test_ping_to_the_public_address_is_answered(run):
    res, _, wan = run
    req = wan[6][IP]
    want = IP(src=PUB, dst="198.51.100.9", ttl=255, id=req.id) / ICMP(type=0, id=9, seq=2) \
        / b"hello"
    assert res["wan"][4] == bytes(Ether(src=R_WAN, dst=GW) / fresh(want))


def test_ttl_expiry_inside_gets_time_exceeded(run):
    res, lan_in, _ = run
    err = res.scapy("lan")[6]
    assert err[Ether].dst == H and err[IP].src == "10.0.0.1" and err[IP].dst == "10.0.0.10"
    assert (err[ICMP].type, err[ICMP].code) == (11, 0)
    assert bytes(err[ICMP].payload)[:28] == bytes(lan_in[6][IP])[:28]


def test_unsolicited_and_expiring_inbound_and_lan_local_are_dropped(run):
    res, _, _ = run
    # nothing else left: 7 frames each side, checked above; the three drops
    assert res.all_stats["drop"]["in"] == 3
    assert res.all_stats["in_ttl"]["expired"] == 1
    assert res.all_stats["wan_ping"]["not_echo"] == 1
    assert res.all_stats["lan_rt"]["ports"][2] == 1


def test_echo_reply_follows_the_mapping_back(run):
    """A second run with an echo reply to the identifier the first run chose."""
    res, lan, wan = run
    ident = IP(res["wan"][5][14:])[ICMP].id
    rep = Ether(src=GW, dst=R_WAN) / IP(src="8.8.8.8", dst=PUB, ttl=50) \
        / ICMP(type=0, id=ident, seq=1) / b"ping"
    rep.time = 1_700_000_000 + 12
    res2 = run_graph(NAT, {"lan": lan, "wan": wan[:7] + [rep] + wan[7:]})
    back = [f for f in res2.scapy("lan") if ICMP in f and f[ICMP].type == 0 and f[IP].src == "8.8.8.8"]
    want = IP(src="8.8.8.8", dst="10.0.0.10", ttl=49, id=rep[IP].id) / ICMP(type=0, id=7, seq=1) \
        / b"ping"
    assert [bytes(f) for f in back] == [bytes(Ether(src=R_LAN, dst=H) / fresh(want))]


def test_every_ip_frame_has_valid_checksums(run):
    res, _, _ = run
    for dev in ("lan", "wan"):
        for frame in res.scapy(dev):
            if IP in frame:
                assert bytes(frame) == bytes(Ether(bytes(frame)[:14]) / fresh(frame[IP]))
