"""graphs/stateful-firewall.yaml end to end over tests/fixtures/sfw_{lan,wan}.pcap
(made by tests/fixtures/make_sfw_fixtures.py): ARP on both sides, pings to
the box, connections opened from the LAN and their replies, connections to
the published web server, an ICMP error about a connection, everything the
rules deny, out-of-state packets, a fragment, a timed-out flow. Every
expected frame is built here with scapy from the graph's documented
behaviour (TTL - 1 when forwarded, next-hop MACs learned by ARP)."""

import os
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap, wrpcap

from middlebox import loader, plan
from middlebox.runtime import Engine
from middlebox.testing import capture, run_graph
from clirun import Controlled

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRAPH = str(ROOT / "graphs" / "stateful-firewall.yaml")
LAN = str(ROOT / "tests" / "fixtures" / "sfw_lan.pcap")
WAN = str(ROOT / "tests" / "fixtures" / "sfw_wan.pcap")
R_LAN, R_WAN = "02:00:00:00:00:01", "02:00:00:00:01:01"
H, GW = "02:00:00:00:00:0a", "02:00:00:00:01:fe"
H_IP, VISITOR = "10.0.0.10", "198.51.100.9"


def fresh(p):
    """p with every checksum and length recomputed by scapy."""
    p = p.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p:
            if layer is IP:
                del p[IP].chksum
                del p[IP].len
            else:
                del p[layer].chksum
    return p


def forwarded(ip, src_mac, dst_mac):
    """IP datagram ip as the box forwards it: TTL - 1, new MACs."""
    q = IP(bytes(ip))
    q.ttl -= 1
    return bytes(Ether(src=src_mac, dst=dst_mac) / fresh(q))


def out_wan(ip):
    return forwarded(ip, R_WAN, GW)


def to_lan(ip):
    return forwarded(ip, R_LAN, H)


@pytest.fixture(scope="module")
def run():
    res = run_graph(GRAPH, {"lan": LAN, "wan": WAN})
    return res, rdpcap(LAN), rdpcap(WAN)


def test_counters_balance_and_every_drop_is_named(run):
    res, _, _ = run
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    fw = res.all_stats["fw"]
    named = ("denied", "no_conn", "table_full", "fragments", "malformed")
    assert fw["dropped"] == sum(fw[k] for k in named)
    assert (fw["denied"], fw["no_conn"], fw["fragments"], fw["malformed"], fw["table_full"]) \
        == (6, 2, 1, 0, 0)
    assert fw["new_conns"] == 6 and fw["related"] == 1
    assert fw["ports"] == [8, 7]
    assert len(res["lan"]) == 11 and len(res["wan"]) == 9


def test_arp_is_answered_and_next_hops_resolved_on_both_sides(run):
    res, _, _ = run
    lan, wan = res.scapy("lan"), res.scapy("wan")
    assert (lan[0][Ether].dst, lan[0][ARP].op, lan[0][ARP].psrc, lan[0][ARP].hwsrc,
            lan[0][ARP].pdst) == (H, 2, "10.0.0.1", R_LAN, H_IP)
    assert (wan[0][Ether].dst, wan[0][ARP].op, wan[0][ARP].psrc, wan[0][ARP].hwsrc,
            wan[0][ARP].pdst) == (GW, 2, "192.0.2.1", R_WAN, "192.0.2.254")
    assert lan[1][Ether].dst == "ff:ff:ff:ff:ff:ff" and lan[1][ARP].op == 1
    assert (lan[1][ARP].psrc, lan[1][ARP].pdst) == ("10.0.0.1", H_IP)
    assert wan[1][Ether].dst == "ff:ff:ff:ff:ff:ff" and wan[1][ARP].op == 1
    assert (wan[1][ARP].psrc, wan[1][ARP].pdst) == ("192.0.2.1", "192.0.2.254")


def test_ping_to_the_box_is_answered(run):
    res, lan, _ = run
    req = lan[1][IP]
    want = IP(src="10.0.0.1", dst=H_IP, ttl=255, id=req.id) / ICMP(type=0, id=3, seq=1) \
        / b"box?"
    assert res["lan"][2] == bytes(Ether(src=R_LAN, dst=H) / fresh(want))


def test_connections_opened_from_the_lan_go_out(run):
    res, lan, _ = run
    # DNS query, SYN, the handshake's ACK, ping, and at the end the FIN
    assert res["wan"][2:6] == [out_wan(lan[i][IP]) for i in (3, 4, 5, 8)]
    assert res["wan"][8] == out_wan(lan[12][IP])


def test_replies_and_related_errors_come_back(run):
    res, _, wan = run
    # DNS answer, SYN-ACK, port unreachable about the DNS query, echo reply
    assert res["lan"][3:7] == [to_lan(wan[i][IP]) for i in (2, 3, 4, 6)]
    assert res["lan"][10] == to_lan(wan[14][IP])            # the web server's FIN


def test_the_published_web_server_is_reachable_and_answers(run):
    res, lan, wan = run
    assert res["lan"][7:9] == [to_lan(wan[7][IP]), to_lan(wan[8][IP])]   # ping, SYN
    assert res["wan"][6:8] == [out_wan(lan[9][IP]), out_wan(lan[10][IP])]  # echo reply, SYN-ACK


def test_ttl_expiry_inside_gets_time_exceeded(run):
    res, lan_in, _ = run
    err = res.scapy("lan")[9]
    assert err[Ether].dst == H and err[IP].src == "10.0.0.1" and err[IP].dst == H_IP
    assert (err[ICMP].type, err[ICMP].code) == (11, 0)
    assert bytes(err[ICMP].payload)[:28] == bytes(lan_in[11][IP])[:28]


def test_denied_and_out_of_state_packets_never_leave(run):
    res, lan, wan = run
    sent = {f[14:] for dev in ("lan", "wan") for f in res[dev]}
    blocked = [lan[6], lan[7]] + [wan[i] for i in (5, 9, 10, 11, 12, 13, 15)]
    for p in blocked:
        q = IP(bytes(p[IP]))
        q.ttl -= 1
        assert bytes(fresh(q)) not in sent and bytes(p[IP]) not in sent, p.summary()


def test_the_late_answer_after_the_udp_timeout_is_denied():
    """Without the packet that came 396 s after the DNS flow's last one,
    one fewer packet is denied and nothing expires."""
    wan = rdpcap(WAN)
    res = run_graph(GRAPH, {"lan": LAN, "wan": list(wan)[:-1]})
    assert res.all_stats["fw"]["denied"] == 5 and res.all_stats["fw"]["expired"] == 0
    # the same answer 290 s later than the flow's last packet still passes
    early = wan[-1].copy()
    early.time = wan[2].time + 290
    res = run_graph(GRAPH, {"lan": LAN, "wan": list(wan)[:-1] + [early]})
    assert res.all_stats["fw"]["denied"] == 5
    assert res["lan"][-1] == to_lan(early[IP])


def test_connections_handler_lists_the_live_connections():
    eng = Engine(plan.build(loader.load(GRAPH)))
    lan, wan = rdpcap(LAN), rdpcap(WAN)
    eng.run({"lan": capture(lan), "wan": capture(list(wan)[:-1])})    # now = t 23
    table = eng.read("fw.connections").splitlines()
    assert table[0].split() == ["proto", "inside", "outside", "opened_by", "state", "expires"]
    rows = sorted(line.split() for line in table[1:])
    assert rows == sorted([
        ["udp", f"{H_IP}:5000", "8.8.8.8:53", "inside", "replied", "281.500s"],
        ["tcp", f"{H_IP}:40000", "93.184.216.34:80", "inside", "closed", "10.000s"],
        ["icmp", f"{H_IP}:7", "8.8.8.8", "inside", "replied", "46.500s"],
        ["icmp", H_IP, f"{VISITOR}:9", "outside", "replied", "49.000s"],
        ["tcp", f"{H_IP}:80", f"{VISITOR}:50000", "outside", "syn_recv", "231.000s"],
        ["udp", f"{H_IP}:5001", "8.8.8.8:53", "inside", "unreplied", "297.000s"],
    ])
    assert eng.read("fw.count") == "6" == eng.read("fw.flows")


def test_live_connections_handler_through_the_control_socket(tmp_path):
    """`middlebox run --control` then `middlebox ctl ... read fw.connections`."""
    wrpcap(str(tmp_path / "wan.pcap"), list(rdpcap(WAN))[:-1])
    sock = str(tmp_path / "ctl.sock")
    with Controlled(sock, GRAPH, "--in", f"lan={LAN}", "--in", f"wan={tmp_path / 'wan.pcap'}",
                    "--out", f"lan={tmp_path / 'lan_out.pcap'}",
                    "--out", f"wan={tmp_path / 'wan_out.pcap'}") as run:
        ctl = run.ctl
        r = run.read_until("fw.count", "6")
        assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr
        table = ctl("read", "fw.connections").stdout.splitlines()
        assert table[0].split() == ["proto", "inside", "outside", "opened_by", "state", "expires"]
        assert sorted(row.split()[:5] for row in table[1:]) == sorted([
            ["udp", f"{H_IP}:5000", "8.8.8.8:53", "inside", "replied"],
            ["tcp", f"{H_IP}:40000", "93.184.216.34:80", "inside", "closed"],
            ["icmp", f"{H_IP}:7", "8.8.8.8", "inside", "replied"],
            ["icmp", H_IP, f"{VISITOR}:9", "outside", "replied"],
            ["tcp", f"{H_IP}:80", f"{VISITOR}:50000", "outside", "syn_recv"],
            ["udp", f"{H_IP}:5001", "8.8.8.8:53", "inside", "unreplied"],
        ])
        assert ctl("write", "fw.flush").returncode == 0
        assert ctl("read", "fw.flows").stdout.strip() == "0"
        assert ctl("quit").returncode == 0
        _, err = run.finish()
    assert run.returncode == 0, err
    assert not os.path.exists(sock)
