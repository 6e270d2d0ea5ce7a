"""graphs/firewall.yaml end to end over tests/fixtures/firewall_{lan,wan}.pcap
(made by tests/fixtures/make_firewall_fixtures.py): ARP, pings to the
firewall, every allowed and denied service in both directions, TTL expiry,
malformed frames, IP options, fragments, next hops resolved by ARP, and
the counters. Each IPv4 packet of the fixtures has a unique IP identifier;
the tables below say what must become of each, and every expected frame is
built with scapy here. Also the same run through `middlebox run`, and
`middlebox check` on the firewall with a bad rule."""

import collections
import json
import pathlib
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import checksum, rdpcap

from middlebox.testing import run_graph

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIREWALL = ROOT / "graphs" / "firewall.yaml"
LAN = ROOT / "tests" / "fixtures" / "firewall_lan.pcap"
WAN = ROOT / "tests" / "fixtures" / "firewall_wan.pcap"

FW_LAN, FW_WAN = "02:00:00:00:00:01", "02:00:00:00:01:01"
GW = "02:00:00:00:01:fe"
MAC = {
    "10.0.0.5": "02:00:00:00:00:05",
    "10.0.0.10": "02:00:00:00:00:0a",
    "10.0.0.20": "02:00:00:00:00:14",
    "10.0.0.30": "02:00:00:00:00:1e",
    "192.0.2.254": GW,
    "192.0.2.50": "02:00:00:00:01:32",
}

# --- what must become of each IPv4 packet, by IP identifier ------------------------------
# from the LAN
OUT_PASS = {          # leaves on wan, TTL - 1
    1010: "tcp 22", 1011: "tcp 25", 1012: "tcp 53", 1013: "tcp 80", 1014: "tcp 443",
    1015: "udp 53", 1016: "udp 123", 1017: "icmp echo", 1018: "tcp 80 to an on-link host",
    1019: "web server SYN-ACK from 80", 1020: "web server reply from 443",
    1042: "tcp 80 with TTL 2", 1050: "tcp 80 behind IP options (NOP NOP EOL 0x17)",
    1060: "first fragment of tcp 80", 1077: "udp 53 in a padded frame",
}
OUT_DENIED = {        # counted in out_filter.denied
    1030: "telnet", 1031: "tcp 445", 1032: "udp 161", 1033: "udp 69", 1034: "tcp 3389",
    1035: "udp from port 53 (not to it)", 1036: "icmp timestamp", 1037: "gre",
    1038: "SYN-ACK from port 80 of a host that is not the web server",
    1039: "telnet with TTL 1 (no time exceeded for denied traffic)",
    1051: "telnet behind IP options that look like port 80",
    1061: "non-first fragment of the tcp 80 flow", 1062: "non-first fragment, udp 53 look",
    1076: "tcp with 2 bytes of header: no destination port",
    1081: "spoofed source 172.16.9.9",
}
OUT_EXPIRED = {1040: "tcp 80, TTL 1", 1041: "udp 53, TTL 1"}     # time exceeded from 10.0.0.1
LAN_PINGS = {1001: "10.0.0.1", 1002: "192.0.2.1", 1003: "10.0.0.1 with TTL 1"}
LAN_BAD = {1070: "short", 1071: "bad_len", 1072: "bad_csum", 1073: "bad_version",
           1074: "bad_hlen", 1075: "bad_src"}                 # counted by lan_check
LAN_NOT_OURS = {1079: "LAN to LAN", 1082: "192.0.2.255, the WAN's directed broadcast"}
LAN_TO_FW_NOT_PING = {1080: "tcp 22 to 192.0.2.1"}
LAN_LINK_BCAST = {1078: "to ff:ff:ff:ff:ff:ff"}
# from the WAN
IN_PASS = {           # leaves on lan, TTL - 1
    2010: "SYN to 10.0.0.10:80", 2011: "SYN to 10.0.0.10:443",
    2012: "SYN to 10.0.0.10:80 from the on-link host",
    2020: "SYN-ACK from 22", 2021: "ACK from 25", 2022: "ACK from 53", 2023: "ACK from 80",
    2024: "FIN-ACK from 443", 2040: "DNS answer", 2041: "NTP answer", 2050: "echo reply",
    2051: "port unreachable", 2052: "time exceeded",
    2070: "first fragment to 10.0.0.10:80", 2082: "SYN to 10.0.0.10:443 with IP options",
    2090: "DNS answer to 10.0.0.30 (resolved late)", 2091: "second one, held too",
}
IN_DENIED = {         # counted in in_filter.denied
    2013: "SYN to 10.0.0.5:22", 2014: "SYN to 10.0.0.20:80 (not the server)",
    2015: "SYN to 10.0.0.10:22", 2030: "SYN without ACK from port 80",
    2031: "RST without ACK from 443", 2032: "ACK from telnet", 2033: "ACK from 445",
    2042: "udp from 161", 2043: "udp to 53 of a LAN host", 2053: "echo request to a LAN host",
    2054: "redirect", 2062: "SYN to 10.0.0.5:22 with TTL 1 (no time exceeded)",
    2071: "non-first fragment to 10.0.0.10:80", 2094: "spoofed LAN source",
}
IN_EXPIRED = {2060: "SYN to 10.0.0.10:80, TTL 1", 2061: "DNS answer from the on-link host"}
WAN_PINGS = {2001: "from the outside", 2002: "from the on-link host"}
WAN_NOT_OURS = {      # wan_where output 2: dropped
    2003: "ping to the firewall's LAN address 10.0.0.1 (not answered from outside)",
    2092: "to a WAN neighbour", 2093: "to an address not behind the firewall",
    2095: "10.0.0.255, the LAN's directed broadcast", 2096: "udp to 10.0.0.1",
}
WAN_BAD = {2080: "bad_csum", 2081: "short"}

LAN_TABLES = [OUT_PASS, OUT_DENIED, OUT_EXPIRED, LAN_PINGS, LAN_BAD, LAN_NOT_OURS,
              LAN_TO_FW_NOT_PING, LAN_LINK_BCAST]
WAN_TABLES = [IN_PASS, IN_DENIED, IN_EXPIRED, WAN_PINGS, WAN_NOT_OURS, WAN_BAD]


def ipv4_id(raw):
    """The IP identifier of an Ethernet frame carrying IPv4 (None otherwise)."""
    if len(raw) >= 20 and raw[12:14] == b"\x08\x00":
        return int.from_bytes(raw[18:20], "big")
    return None


def datagram(raw):
    """The IPv4 datagram in an Ethernet frame, without link padding."""
    return raw[14:14 + int.from_bytes(raw[16:18], "big")]


def forwarded(raw, src_mac, dst_mac):
    """Frame raw as the firewall forwards it: TTL - 1, header checksum
    recomputed, the rest unchanged, in a new Ethernet header."""
    ip = IP(datagram(raw))
    ip.ttl -= 1
    del ip.chksum
    return bytes(Ether(src=src_mac, dst=dst_mac, type=0x0800)) + bytes(ip)


def time_exceeded(raw, fw_ip, src_mac, dst_mac, ident):
    """ICMP time exceeded (transit) from fw_ip about frame raw."""
    ip = datagram(raw)
    hl = (ip[0] & 15) * 4
    err = IP(src=fw_ip, dst=IP(ip).src, id=ident, ttl=255, tos=0) / ICMP(type=11, code=0) \
        / ip[:hl + 8]
    return bytes(Ether(src=src_mac, dst=dst_mac) / err)


def echo_reply(raw, src_mac, dst_mac):
    req = IP(datagram(raw))
    rep = IP(src=req.dst, dst=req.src, id=req.id, tos=req.tos, ttl=255) \
        / ICMP(type=0, id=req[ICMP].id, seq=req[ICMP].seq) / bytes(req[ICMP].payload)
    return bytes(Ether(src=src_mac, dst=dst_mac) / rep)


def wan_next_hop(dst):
    return MAC[dst] if dst.startswith("192.0.2.") else GW


def by_id(frames):
    out = {}
    for f in frames:
        i = ipv4_id(bytes(f))
        if i is not None:
            assert i not in out, f"identifier {i} used twice in the fixtures"
            out[i] = bytes(f)
    return out


@pytest.fixture(scope="module")
def fixtures():
    lan, wan = rdpcap(str(LAN)), rdpcap(str(WAN))
    return lan, wan, by_id(lan), by_id(wan)


@pytest.fixture(scope="module")
def run():
    return run_graph(str(FIREWALL), {"lan": str(LAN), "wan": str(WAN)})


def expected_outputs(fixtures):
    """Every frame that must leave, per device, built with scapy."""
    lan, wan, lan_ip, wan_ip = fixtures
    out_lan, out_wan = [], []
    # ARP who-has for each firewall address, answered on its own side
    out_lan.append(bytes(Ether(src=FW_LAN, dst=MAC["10.0.0.5"])
                         / ARP(op=2, hwsrc=FW_LAN, psrc="10.0.0.1", hwdst=MAC["10.0.0.5"],
                               pdst="10.0.0.5")))
    out_wan.append(bytes(Ether(src=FW_WAN, dst=GW)
                         / ARP(op=2, hwsrc=FW_WAN, psrc="192.0.2.1", hwdst=GW,
                               pdst="192.0.2.254")))
    for i in LAN_PINGS:
        out_lan.append(echo_reply(lan_ip[i], FW_LAN, MAC[IP(datagram(lan_ip[i])).src]))
    for i in WAN_PINGS:
        src = IP(datagram(wan_ip[i])).src
        out_wan.append(echo_reply(wan_ip[i], FW_WAN, wan_next_hop(src)))
    for i in OUT_PASS:
        out_wan.append(forwarded(lan_ip[i], FW_WAN, wan_next_hop(IP(datagram(lan_ip[i])).dst)))
    for i in IN_PASS:
        out_lan.append(forwarded(wan_ip[i], FW_LAN, MAC[IP(datagram(wan_ip[i])).dst]))
    # ICMPError numbers its errors 1, 2, ... in the order the packets arrive
    order = sorted(OUT_EXPIRED, key=lambda i: next(p.time for p in lan if ipv4_id(bytes(p)) == i))
    for n, i in enumerate(order, 1):
        host = IP(datagram(lan_ip[i])).src
        out_lan.append(time_exceeded(lan_ip[i], "10.0.0.1", FW_LAN, MAC[host], n))
    order = sorted(IN_EXPIRED, key=lambda i: next(p.time for p in wan if ipv4_id(bytes(p)) == i))
    for n, i in enumerate(order, 1):
        host = IP(datagram(wan_ip[i])).src
        out_wan.append(time_exceeded(wan_ip[i], "192.0.2.1", FW_WAN, wan_next_hop(host), n))
    # the firewall asks for 10.0.0.30 (checked field by field in its own test)
    return out_lan, out_wan


def test_every_fixture_packet_has_one_expected_fate(fixtures):
    lan, wan, lan_ip, wan_ip = fixtures
    for ids, tables in ((lan_ip, LAN_TABLES), (wan_ip, WAN_TABLES)):
        listed = [i for t in tables for i in t]
        assert len(listed) == len(set(listed))
        assert sorted(listed) == sorted(ids)


def test_outputs_are_exactly_the_expected_frames(run, fixtures):
    want_lan, want_wan = expected_outputs(fixtures)
    got_lan = [f for f in run["lan"] if not (f[12:14] == b"\x08\x06" and f[20:22] == b"\0\1")]
    queries = [f for f in run["lan"] if f[12:14] == b"\x08\x06" and f[20:22] == b"\0\1"]
    assert len(queries) == 1
    assert collections.Counter(got_lan) == collections.Counter(want_lan)
    assert collections.Counter(run["wan"]) == collections.Counter(want_wan)
    assert len(run["lan"]) == len(want_lan) + 1 and len(run["wan"]) == len(want_wan)


def test_arp_for_the_firewall_is_answered_and_nothing_else(run):
    replies = [f for f in run.scapy("lan") + run.scapy("wan") if ARP in f and f[ARP].op == 2]
    assert sorted((f[ARP].psrc, f[ARP].hwsrc, f[Ether].src, f[ARP].pdst, f[Ether].dst)
                  for f in replies) == [
        ("10.0.0.1", FW_LAN, FW_LAN, "10.0.0.5", MAC["10.0.0.5"]),
        ("192.0.2.1", FW_WAN, FW_WAN, "192.0.2.254", GW)]
    # who-has 10.0.0.99 and 192.0.2.1 on the LAN, 10.0.0.1 and 192.0.2.99 on the WAN
    assert run.all_stats["lan_arpr"]["unanswered"] == 2
    assert run.all_stats["wan_arpr"]["unanswered"] == 2


def test_pings_to_both_addresses_are_answered(run, fixtures):
    _, _, lan_ip, wan_ip = fixtures
    for i in LAN_PINGS:
        req = IP(datagram(lan_ip[i]))
        assert echo_reply(lan_ip[i], FW_LAN, MAC[req.src]) in run["lan"], LAN_PINGS[i]
    assert echo_reply(wan_ip[2001], FW_WAN, GW) in run["wan"]
    assert echo_reply(wan_ip[2002], FW_WAN, MAC["192.0.2.50"]) in run["wan"]


def test_ping_from_outside_to_the_lan_address_is_not_answered(run, fixtures):
    _, _, _, wan_ip = fixtures
    req = IP(datagram(wan_ip[2003]))
    for f in run.scapy("lan") + run.scapy("wan"):
        if ICMP in f:
            assert f[IP].src != "10.0.0.1" or f[IP].dst != req.src
            assert f[IP].id != 2003
    # it is not the firewall's on the WAN side: wan_where sends it to the drop
    assert run.all_stats["wan_ping"]["replies"] == len(WAN_PINGS)
    assert run.all_stats["wan_where"]["ports"][2] == len(WAN_NOT_OURS)


@pytest.mark.parametrize("ident", sorted(OUT_PASS))
def test_allowed_outbound_leaves_on_wan(run, fixtures, ident):
    _, _, lan_ip, _ = fixtures
    sent = lan_ip[ident]
    ip_in = datagram(sent)
    dst = IP(ip_in).dst
    hits = [f for f in run["wan"] if ipv4_id(f) == ident]
    assert len(hits) == 1, OUT_PASS[ident]
    f = hits[0]
    assert f == forwarded(sent, FW_WAN, wan_next_hop(dst))
    # independently: next hop, TTL, checksum, the rest of the datagram
    assert f[:6] == bytes.fromhex(wan_next_hop(dst).replace(":", ""))
    assert f[6:12] == bytes.fromhex(FW_WAN.replace(":", ""))
    ip_out = f[14:]
    hl = (ip_out[0] & 15) * 4
    assert len(ip_out) == len(ip_in) and ip_out[8] == ip_in[8] - 1
    assert checksum(ip_out[:hl]) == 0
    assert ip_out[:8] == ip_in[:8] and ip_out[9] == ip_in[9] and ip_out[12:] == ip_in[12:]


@pytest.mark.parametrize("ident", sorted(IN_PASS))
def test_allowed_inbound_leaves_on_lan(run, fixtures, ident):
    _, _, _, wan_ip = fixtures
    sent = wan_ip[ident]
    hits = [f for f in run["lan"] if ipv4_id(f) == ident]
    assert len(hits) == 1, IN_PASS[ident]
    assert hits[0] == forwarded(sent, FW_LAN, MAC[IP(datagram(sent)).dst])
    assert checksum(hits[0][14:14 + (hits[0][14] & 15) * 4]) == 0


def test_denied_traffic_never_leaves_and_is_counted(run):
    left = {ipv4_id(f) for f in run["lan"] + run["wan"]}
    for table in (OUT_DENIED, IN_DENIED, LAN_BAD, WAN_BAD, LAN_NOT_OURS, WAN_NOT_OURS,
                  LAN_TO_FW_NOT_PING, LAN_LINK_BCAST):
        for i, what in table.items():
            assert i not in left, what
    assert run.all_stats["out_filter"]["denied"] == len(OUT_DENIED)
    assert run.all_stats["in_filter"]["denied"] == len(IN_DENIED)
    assert run.all_stats["out_filter"]["no_match"] == 0
    assert run.all_stats["in_filter"]["no_match"] == 0
    assert run.all_stats["out_allowed"]["count"] == len(OUT_PASS) + len(OUT_EXPIRED)
    assert run.all_stats["in_allowed"]["count"] == len(IN_PASS) + len(IN_EXPIRED)


def test_web_server_replies_go_out_but_not_other_hosts_port_80(run):
    left = {ipv4_id(f) for f in run["wan"]}
    assert {1019, 1020} <= left and 1038 not in left


def test_fragments_only_the_first_passes(run, fixtures):
    _, _, lan_ip, wan_ip = fixtures
    first = IP(datagram(lan_ip[1060]))
    assert first.flags.MF and first.frag == 0
    assert all(IP(datagram(lan_ip[i])).frag > 0 for i in (1061, 1062))
    assert IP(datagram(wan_ip[2071])).frag > 0 and IP(datagram(wan_ip[2070])).frag == 0
    left = {ipv4_id(f) for f in run["lan"] + run["wan"]}
    assert 1060 in left and 2070 in left
    assert not {1061, 1062, 2071} & left
    out = IP(datagram([f for f in run["wan"] if ipv4_id(f) == 1060][0]))
    assert out.flags.MF and out.frag == 0 and bytes(out.payload) == bytes(first.payload)


def test_ip_options_do_not_fool_the_port_tests(run, fixtures):
    _, _, lan_ip, _ = fixtures
    assert IP(datagram(lan_ip[1050])).ihl == 6 and IP(datagram(lan_ip[1051])).ihl == 6
    left = {ipv4_id(f) for f in run["wan"]}
    assert 1050 in left and 1051 not in left


def test_ttl_1_gets_time_exceeded_back(run, fixtures):
    _, _, lan_ip, wan_ip = fixtures
    errs_lan = [f for f in run.scapy("lan") if ICMP in f and f[IP].src == "10.0.0.1"
                and f[ICMP].type == 11]
    errs_wan = [f for f in run.scapy("wan") if ICMP in f and f[IP].src == "192.0.2.1"
                and f[ICMP].type == 11]
    assert len(errs_lan) == len(OUT_EXPIRED) and len(errs_wan) == len(IN_EXPIRED)
    for errs, table, ips in ((errs_lan, OUT_EXPIRED, lan_ip), (errs_wan, IN_EXPIRED, wan_ip)):
        quoted = {bytes(e[ICMP].payload)[:28] for e in errs}
        assert quoted == {datagram(ips[i])[:28] for i in table}
        for e in errs:
            assert e[ICMP].code == 0 and e[IP].ttl == 255
    assert {(e[IP].dst, e[Ether].dst) for e in errs_wan} == {
        ("203.0.113.80", GW), ("192.0.2.50", MAC["192.0.2.50"])}
    assert run.all_stats["out_ttl"]["expired"] == len(OUT_EXPIRED)
    assert run.all_stats["in_ttl"]["expired"] == len(IN_EXPIRED)
    # 1042 had TTL 2: it leaves with TTL 1
    f = [f for f in run.scapy("wan") if f[Ether].type == 0x0800 and f[IP].id == 1042][0]
    assert f[IP].ttl == 1


def test_unknown_next_hop_is_resolved_by_arp(run):
    lan = run.scapy("lan")
    q = [n for n, f in enumerate(lan) if ARP in f and f[ARP].op == 1]
    assert len(q) == 1
    query = lan[q[0]]
    assert query[Ether].dst == "ff:ff:ff:ff:ff:ff" and query[Ether].src == FW_LAN
    assert (query[ARP].psrc, query[ARP].hwsrc, query[ARP].pdst) == ("10.0.0.1", FW_LAN,
                                                                     "10.0.0.30")
    held = [n for n, f in enumerate(lan) if f[Ether].type == 0x0800 and f[IP].id in (2090, 2091)]
    assert len(held) == 2 and q[0] < held[0] < held[1]
    assert all(lan[n][Ether].dst == MAC["10.0.0.30"] for n in held)
    s = run.all_stats["lan_arpq"]
    assert s["queries"] == 1 and s.get("held", 0) == 0 and s["held_drops"] == 0
    # the three announcements and the late reply of 10.0.0.30
    assert s["replies"] == 4
    assert run.all_stats["wan_arpq"]["queries"] == 0


def test_malformed_frames_are_counted_by_reason(run):
    for side, table in (("lan", LAN_BAD), ("wan", WAN_BAD)):
        s = run.all_stats[f"{side}_check"]
        assert s["bad"] == len(table)
        reasons = collections.Counter(table.values())
        for reason in ("short", "bad_version", "bad_hlen", "bad_len", "bad_csum", "bad_src"):
            assert s[reason] == reasons[reason], (side, reason)
    # the runt and the IPv6 frame are neither ARP nor IPv4
    assert run.all_stats["lan_cls"]["ports"][3] == 2
    assert run.all_stats["lan_bcast"]["drops"] == len(LAN_LINK_BCAST)


def test_padding_is_not_forwarded(run, fixtures):
    _, _, lan_ip, _ = fixtures
    sent = lan_ip[1077]
    assert len(sent) > 14 + len(datagram(sent))
    f = [f for f in run["wan"] if ipv4_id(f) == 1077][0]
    assert len(f) == 14 + len(datagram(sent))


def test_every_packet_is_accounted_for(run, fixtures):
    lan, wan, _, _ = fixtures
    stats = run.all_stats
    for name, s in stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    n_in = len(lan) + len(wan)
    assert stats["lan_in"]["in"] + stats["wan_in"]["in"] == n_in
    created = sum(s["created"] for s in stats.values())
    dropped = sum(s["dropped"] for s in stats.values())
    held = sum(s.get("held", 0) for s in stats.values())
    n_out = len(run["lan"]) + len(run["wan"])
    assert stats["lan_out"]["out"] + stats["wan_out"]["out"] == n_out
    assert n_in + created == n_out + dropped + held
    assert held == 0 and created == 1          # the ARP query for 10.0.0.30
    # each drop where the tables say
    arp = {"lan": (3, 4), "wan": (3, 2)}        # requests, replies (learned, consumed)
    assert stats["lan_arpr"]["dropped"] + stats["wan_arpr"]["dropped"] == 4
    assert stats["lan_arpq"]["dropped"] == arp["lan"][1]
    assert stats["wan_arpq"]["dropped"] == arp["wan"][1]
    assert stats["out_filter"]["dropped"] == len(OUT_DENIED)
    assert stats["in_filter"]["dropped"] == len(IN_DENIED)
    assert stats["lan_check"]["dropped"] == len(LAN_BAD)
    assert stats["wan_check"]["dropped"] == len(WAN_BAD)
    assert stats["lan_bcast"]["dropped"] == len(LAN_LINK_BCAST)
    assert stats["drop"]["in"] == (2 + len(LAN_NOT_OURS) + len(LAN_TO_FW_NOT_PING)
                                   + len(WAN_NOT_OURS))
    n_ip = sum(len(t) for t in LAN_TABLES + WAN_TABLES)
    assert n_in == n_ip + sum(a + b for a, b in arp.values()) + 2   # + runt and IPv6


# --- the same through the command line -------------------------------------------------------

def middlebox(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "middlebox", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_run_matches_run_graph(run, tmp_path):
    out_lan, out_wan = tmp_path / "lan.pcap", tmp_path / "wan.pcap"
    r = middlebox("run", str(FIREWALL), "--in", f"lan={LAN}", "--in", f"wan={WAN}",
                  "--out", f"lan={out_lan}", "--out", f"wan={out_wan}", "--stats", "json")
    assert r.returncode == 0, r.stderr
    assert [bytes(p) for p in rdpcap(str(out_lan))] == run["lan"]
    assert [bytes(p) for p in rdpcap(str(out_wan))] == run["wan"]
    stats = json.loads(r.stdout)
    assert stats["graph"] == "firewall"
    el = stats["elements"]
    assert el["out_filter"]["denied"] == len(OUT_DENIED)
    assert el["in_filter"]["denied"] == len(IN_DENIED)
    assert el["out_allowed"]["count"] == run.all_stats["out_allowed"]["count"]


# --- a bad rule in the firewall's YAML is reported at its line ------------------------------

@pytest.mark.parametrize("element, old, new, message", [
    ("out_filter", "allow tcp dst port smtp", "alow tcp",
     "unknown action 'alow' (expected allow, deny, drop or an output number); "
     "did you mean 'allow'?"),
    ("out_filter", "allow udp dst port ntp", "allow udp dst port 99999",
     "port 99999 is out of range (0 to 65535)"),
    ("in_filter", "allow udp src port domain", "deny src net 10.0.0.0/33",
     "bad prefix length 33 in '10.0.0.0/33' (0 to 32)"),
])
def test_check_reports_a_bad_rule_at_its_line(tmp_path, element, old, new, message):
    lines = FIREWALL.read_text().splitlines(keepends=True)
    start = next(n for n, l in enumerate(lines) if l.strip() == f"{element}:")
    rules = []
    for n in range(start + 1, len(lines)):
        s = lines[n].strip()
        if s.startswith("- "):
            rules.append((n, s[2:].split("#")[0].strip()))
        elif s and not s.startswith(("class:", "rules:")):
            break
    line, _ = next((n, r) for n, r in rules if r == old)
    rule_no = [r for _, r in rules].index(old) + 1
    lines[line] = lines[line].replace(old, new)
    path = tmp_path / "fw.yaml"
    path.write_text("".join(lines))
    r = middlebox("check", str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip() == f"{path}:{line + 1}: element '{element}': rule {rule_no}: {message}"


def test_check_accepts_the_firewall():
    r = middlebox("check", str(FIREWALL))
    assert r.returncode == 0, r.stderr
