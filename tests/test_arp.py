"""ARPResponder, ARPQuerier, HostEtherFilter, DropBroadcasts.

Expected frames are built here with scapy from each element's documented
behaviour (Click's): an is-at reply for each answered who-has, IP packets
behind an Ethernet header to the address a reply gave, who-has queries for
unknown next hops.
"""

import os
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader

from middlebox import loader
from middlebox.errors import ConfigError
from middlebox.testing import run_element, run_graph

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
REQUESTS = os.path.join(FIXTURES, "arp_requests.pcap")
HOSTS = os.path.join(FIXTURES, "arp_hosts.pcap")
IP_PCAP = os.path.join(FIXTURES, "arp_ip.pcap")
REPLIES = os.path.join(FIXTURES, "arp_replies.pcap")

HOST, HOST_IP = "02:00:00:00:00:01", "10.0.0.1"
PROXY = "02:00:00:00:00:02"
BCAST = "ff:ff:ff:ff:ff:ff"
SEC = 1_000_000_000


def fixture_bytes(path):
    return [data for data, _meta in RawPcapReader(path)]


def fixture_times(path):
    """Timestamps (ns) of a pcap's records."""
    out = []
    for _data, meta in RawPcapReader(path):
        out.append(meta.sec * SEC + meta.usec * 1000)
    return out


def check_invariant(res):
    assert res.all_stats
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


def is_at(request, eth):
    """The reply ARPResponder owes a who-has request (a scapy frame)."""
    q = request[ARP]
    return bytes(Ether(dst=q.hwsrc, src=eth, type=0x0806)
                 / ARP(op=2, hwsrc=eth, psrc=q.pdst, hwdst=q.hwsrc, pdst=q.psrc))


def who_has(pdst, eth=HOST, ip=HOST_IP):
    """The query ARPQuerier sends for pdst."""
    return bytes(Ether(dst=BCAST, src=eth, type=0x0806)
                 / ARP(op=1, hwsrc=eth, psrc=ip, hwdst="00:00:00:00:00:00", pdst=pdst))


def encap(ip_bytes, dst, src=HOST):
    return bytes(Ether(dst=dst, src=src, type=0x0800) / Raw(ip_bytes))


# --- ARPResponder -------------------------------------------------------------------

RESPONDER = {"entries": [f"{HOST_IP} {HOST}", f"10.0.0.0/24 {PROXY}"]}
ANSWERED = {0: HOST, 1: PROXY, 9: HOST, 11: PROXY}   # fixture index -> ETH in the reply


def test_responder_answers_own_and_proxied_addresses():
    frames = fixture_bytes(REQUESTS)
    res = run_element("ARPResponder", RESPONDER, REQUESTS, outputs=2)
    assert res[0] == [is_at(Ether(frames[i]), eth) for i, eth in ANSWERED.items()]
    assert res[1] == [f for i, f in enumerate(frames) if i not in ANSWERED]
    for got in res.scapy(0):
        assert got[ARP].op == 2 and got.type == 0x0806 and len(got) == 42
    s = res.stats
    assert s["replies"] == 4 and s["unanswered"] == 8 and s["dropped"] == 0
    assert s["ports"] == [4, 8]
    check_invariant(res)


def test_responder_drops_what_it_does_not_answer_without_output_1():
    res = run_element("ARPResponder", RESPONDER, REQUESTS)
    assert len(res[0]) == 4
    assert res.stats["dropped"] == 8 and res.stats["unanswered"] == 8
    check_invariant(res)


def test_responder_longest_prefix_wins_whatever_the_order():
    req = [Ether(src="02:00:00:00:00:0a", dst=BCAST)
           / ARP(op=1, hwsrc="02:00:00:00:00:0a", psrc="10.0.0.10", pdst=a)
           for a in ("10.0.0.1", "10.0.0.2", "10.1.2.3", "11.0.0.1")]
    cfg = {"entries": ["10.0.0.0/8 02:00:00:00:00:08",
                       "10.0.0.0/255.255.255.0 02:00:00:00:00:18",
                       "10.0.0.1 02:00:00:00:00:20"]}
    res = run_element("ARPResponder", cfg, req)
    assert res[0] == [is_at(req[0], "02:00:00:00:00:20"), is_at(req[1], "02:00:00:00:00:18"),
                      is_at(req[2], "02:00:00:00:00:08")]
    assert res.stats["unanswered"] == 1


def test_responder_several_prefixes_share_one_address():
    req = [Ether(src="02:00:00:00:00:0a", dst=BCAST)
           / ARP(op=1, hwsrc="02:00:00:00:00:0a", psrc="10.0.0.10", pdst=a)
           for a in ("18.26.4.24", "18.26.7.9", "18.26.8.1")]
    cfg = {"entries": ["18.26.4.24 18.26.7.0/24 00:00:c0:ae:67:ef"]}
    res = run_element("ARPResponder", cfg, req)
    assert res[0] == [is_at(req[0], "00:00:c0:ae:67:ef"), is_at(req[1], "00:00:c0:ae:67:ef")]


def test_responder_every_truncation():
    full = bytes(Ether(src="02:00:00:00:00:0a", dst=BCAST)
                 / ARP(op=1, hwsrc="02:00:00:00:00:0a", psrc="10.0.0.10", pdst=HOST_IP))
    cuts = [full[:n] for n in range(len(full) + 1)]
    res = run_element("ARPResponder", RESPONDER, cuts, outputs=2)
    assert res[0] == [is_at(Ether(full), HOST)]
    assert res[1] == cuts[:-1]
    check_invariant(res)


@pytest.mark.parametrize("entry, msg", [
    ("10.0.0.1", "entry 1: '10.0.0.1': expected 'IP/MASK"),
    ("10.0.0.1 02:00:00:00:00", "entry 1: '02:00:00:00:00': bad Ethernet address"),
    ("10.0.0.300 02:00:00:00:00:01", "entry 1: '10.0.0.300': bad address"),
    ("10.0.0.0/40 02:00:00:00:00:01", "entry 1: '10.0.0.0/40': bad prefix length"),
    ("10.0.0.0/255.0.255.0 02:00:00:00:00:01", "netmask is not contiguous"),
])
def test_responder_config_errors(entry, msg):
    with pytest.raises(ConfigError) as err:
        run_element("ARPResponder", {"entries": [entry]}, [])
    assert "element 'element'" in str(err.value) and msg in str(err.value)


# --- ARPQuerier ------------------------------------------------------------------------

QUERIER = {"ip": HOST_IP, "eth": HOST}
QUERIER_GRAPH = """
name: arpq
elements:
  lan:   {class: FromDevice, device: lan}
  arp:   {class: FromDevice, device: arp}
  strip: {class: Strip, length: 14}
  q:     {class: ARPQuerier, ip: 10.0.0.1, eth: "02:00:00:00:00:01"%s}
  wan:   {class: ToDevice, device: wan}
  query: {class: ToDevice, device: query}
connections:
  - lan -> strip -> q -> wan
  - arp -> [1]q
  - q[1] -> query
"""


def ip_part(frame):
    return frame[14:]


def test_querier_fixture_scenario():
    # IP to .20 .21 .22 .20 .23 .21 .20 .24 at t = 0..7 s; replies for .20
    # at 0.5 s, .21 at 2.5 s, .23 at 5.5 s, and three frames to ignore.
    ips = fixture_bytes(IP_PCAP)
    res = run_graph(QUERIER_GRAPH % "", {"lan": IP_PCAP, "arp": REPLIES})
    mac = {"10.0.0.20": "02:00:00:00:00:20", "10.0.0.21": "02:00:00:00:00:21",
           "10.0.0.23": "02:00:00:00:00:23"}

    def out(i):
        return encap(ip_part(ips[i]), mac[Ether(ips[i])[IP].dst])
    # Released at 0.5 (0), 2.5 (1), forwarded at 3 and 5, released at 5.5 (4), at 6.
    assert res["wan"] == [out(0), out(1), out(3), out(5), out(4), out(6)]
    assert res["query"] == [who_has(a) for a in
                            ("10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24")]
    s = res.all_stats["q"]
    assert s["in"] == 14 and s["created"] == 5 and s["held"] == 2
    assert s["queries"] == 5 and s["replies"] == 3 and s["bad_arp"] == 3
    assert s["dropped"] == 6 and s["held_drops"] == 0 and s["ports"] == [6, 5]
    check_invariant(res)


def test_querier_one_output_carries_queries_too():
    ip = bytes(IP(src="10.0.0.10", dst="10.0.0.30") / UDP(dport=7))
    res = run_element("ARPQuerier", QUERIER, {0: [(0, ip)]})
    assert res[0] == [who_has("10.0.0.30")]
    assert res.stats["held"] == 1


def test_querier_uses_the_annotation_before_the_ip_destination():
    # GetIPAddress copies the IP source into the annotation: the next hop.
    graph = """
name: anno
elements:
  lan:   {class: FromDevice, device: lan}
  strip: {class: Strip, length: 14}
  get:   {class: GetIPAddress, offset: 12}
  q:     {class: ARPQuerier, ip: 10.0.0.1, eth: "02:00:00:00:00:01"}
  arp:   {class: FromDevice, device: arp}
  wan:   {class: ToDevice, device: wan}
  query: {class: ToDevice, device: query}
connections:
  - lan -> strip -> get -> q -> wan
  - arp -> [1]q
  - q[1] -> query
"""
    frame = bytes(Ether() / IP(src="10.0.0.66", dst="10.9.9.9") / UDP(dport=7))
    reply = bytes(Ether(src="02:00:00:00:00:66", dst=HOST)
                  / ARP(op=2, hwsrc="02:00:00:00:00:66", psrc="10.0.0.66", pdst=HOST_IP))
    res = run_graph(graph, {"lan": [(0, frame)], "arp": [(SEC, reply)]})
    assert res["query"] == [who_has("10.0.0.66")]
    assert res["wan"] == [encap(ip_part(frame), "02:00:00:00:00:66")]


def test_querier_sends_at_most_one_query_a_second_per_address():
    times = [0, 0.3, 0.9, 1.0, 1.5, 2.2, 2.3, 3.1]
    pk = [(int(t * SEC), bytes(IP(src="10.0.0.10", dst="10.0.0.40", id=i) / UDP(dport=7)))
          for i, t in enumerate(times)]
    other = [(int(0.5 * SEC), bytes(IP(src="10.0.0.10", dst="10.0.0.41") / UDP(dport=7)))]
    res = run_element("ARPQuerier", dict(QUERIER, entry_packet_capacity=0),
                      {0: sorted(pk + other)}, outputs=2)
    # .40 asked at 0, 1.0, 2.2 (3.1 is < 1 s after 2.2); .41 at 0.5.
    assert res[1] == [who_has("10.0.0.40"), who_has("10.0.0.41"), who_has("10.0.0.40"),
                      who_has("10.0.0.40")]
    assert res.stats["held"] == 9 and res.stats["queries"] == 4


def test_querier_releases_held_packets_in_order_with_the_replied_address():
    pk = [(i * 1000, bytes(IP(src="10.0.0.10", dst="10.0.0.50", id=i) / UDP(dport=7)
                           / Raw(b"x" * i))) for i in range(5)]
    reply = bytes(Ether(src="02:00:00:00:00:50", dst=HOST)
                  / ARP(op=2, hwsrc="02:00:00:00:00:50", psrc="10.0.0.50", pdst=HOST_IP))
    res = run_element("ARPQuerier", QUERIER, {0: pk, 1: [(SEC, reply)]}, outputs=2)
    assert res[0] == [encap(p, "02:00:00:00:00:50") for _, p in pk]
    for frame in res.scapy(0):
        assert frame.dst == "02:00:00:00:00:50" and frame.src == HOST and frame.type == 0x0800
        assert frame[IP].dst == "10.0.0.50"
    assert res[1] == [who_has("10.0.0.50")]
    assert res.stats.get("held", 0) == 0 and res.stats["replies"] == 1
    check_invariant(res)


def test_querier_entries_expire_after_timeout():
    def ip(i):
        return bytes(IP(src="10.0.0.10", dst="10.0.0.60", id=i) / UDP(dport=7))
    reply = bytes(Ether(src="02:00:00:00:00:60", dst=HOST)
                  / ARP(op=2, hwsrc="02:00:00:00:00:60", psrc="10.0.0.60", pdst=HOST_IP))
    # Learned at 1 s; timeout 10 s: at 5 s and 10.9 s known, at 11 s expired.
    pk = [(5 * SEC, ip(1)), (int(10.9 * SEC), ip(2)), (11 * SEC, ip(3))]
    res = run_element("ARPQuerier", dict(QUERIER, timeout=10), {0: pk, 1: [(SEC, reply)]},
                      outputs=2)
    assert res[0] == [encap(ip(1), "02:00:00:00:00:60"), encap(ip(2), "02:00:00:00:00:60")]
    assert res[1] == [who_has("10.0.0.60")]
    assert res.stats["held"] == 1
    # timeout 0: never expires.
    res = run_element("ARPQuerier", dict(QUERIER, timeout=0),
                      {0: pk + [(10**6 * SEC, ip(4))], 1: [(SEC, reply)]}, outputs=2)
    assert len(res[0]) == 4 and res[1] == []


def test_querier_unanswered_entries_expire_and_drop_what_they_hold():
    def ip(dst, i=0):
        return bytes(IP(src="10.0.0.10", dst=dst, id=i) / UDP(dport=7))
    # .70 asked at 0 and never answers; 5 s later (timeout 3) the batch's
    # sweep drops its held packet. entry_capacity 4: one group, swept whole.
    pk = [(0, ip("10.0.0.70")), (5 * SEC, ip("10.0.0.71")), (6 * SEC, ip("10.0.0.72"))]
    res = run_element("ARPQuerier", dict(QUERIER, timeout=3, entry_capacity=4),
                      {0: pk}, outputs=2)
    assert res.stats["held_drops"] == 1 and res.stats["held"] == 2
    assert res.stats["dropped"] == 1
    check_invariant(res)


def test_querier_total_capacity_overflow_is_counted():
    pk = [(i * 1000, bytes(IP(src="10.0.0.10", dst=f"10.0.1.{i}") / UDP(dport=7)))
          for i in range(1, 8)]
    res = run_element("ARPQuerier", dict(QUERIER, capacity=3), {0: pk}, outputs=2)
    assert res.stats["held"] == 3 and res.stats["held_drops"] == 4
    assert res.stats["dropped"] == 4
    # Still one query per address.
    assert res[1] == [who_has(f"10.0.1.{i}") for i in range(1, 8)]
    check_invariant(res)


def test_querier_per_address_limit_drops_the_oldest():
    pk = [(i * 1000, bytes(IP(src="10.0.0.10", dst="10.0.0.80", id=i) / UDP(dport=7)))
          for i in range(6)]
    reply = bytes(Ether(src="02:00:00:00:00:80", dst=HOST)
                  / ARP(op=2, hwsrc="02:00:00:00:00:80", psrc="10.0.0.80", pdst=HOST_IP))
    res = run_element("ARPQuerier", dict(QUERIER, entry_packet_capacity=2),
                      {0: pk, 1: [(SEC, reply)]}, outputs=2)
    assert res[0] == [encap(p, "02:00:00:00:00:80") for _, p in pk[4:]]
    assert res.stats["held_drops"] == 4
    check_invariant(res)


def test_querier_full_table_evicts_the_oldest_entry():
    # entry_capacity 4 is one group of 4: a fifth address replaces the
    # entry refreshed longest ago (.1, queried at 0), dropping its packet.
    pk = [(i * SEC, bytes(IP(src="10.0.0.10", dst=f"10.0.2.{i + 1}") / UDP(dport=7)))
          for i in range(5)]
    res = run_element("ARPQuerier", dict(QUERIER, entry_capacity=4), {0: pk}, outputs=2)
    assert res.stats["evictions"] == 1 and res.stats["held_drops"] == 1
    assert res.stats["held"] == 4
    # A late reply for the evicted address has nothing to release; it is
    # learned all the same (as in Click), replacing the next oldest (.2).
    reply = bytes(Ether(src="02:00:00:00:00:77", dst=HOST)
                  / ARP(op=2, hwsrc="02:00:00:00:00:77", psrc="10.0.2.1", pdst=HOST_IP))
    late = (10 * SEC, bytes(IP(src="10.0.0.10", dst="10.0.2.1") / UDP(dport=7)))
    res = run_element("ARPQuerier", dict(QUERIER, entry_capacity=4),
                      {0: pk + [late], 1: [(10 * SEC - 1, reply)]}, outputs=2)
    assert res[0] == [encap(late[1], "02:00:00:00:00:77")]
    assert res.stats["held"] == 3 and res.stats["evictions"] == 2
    check_invariant(res)


def test_querier_broadcast_multicast_and_missing_addresses():
    def ip(dst):
        return bytes(IP(src="10.0.0.10", dst=dst) / UDP(dport=7))
    pk = [ip("255.255.255.255"), ip("10.0.0.255"), ip("224.0.0.251"), ip("239.129.2.3"),
          ip("0.0.0.0"), b"", bytes(IP(dst="10.0.0.9"))[:19]]
    res = run_element("ARPQuerier", dict(QUERIER, broadcast="10.0.0.255"), pk, outputs=2)
    assert res[0] == [encap(pk[0], BCAST), encap(pk[1], BCAST),
                      encap(pk[2], "01:00:5e:00:00:fb"), encap(pk[3], "01:00:5e:01:02:03")]
    assert res[1] == []
    assert res.stats["no_address"] == 3 and res.stats["dropped"] == 3
    # Without `broadcast`, 10.0.0.255 is an ordinary host.
    res = run_element("ARPQuerier", QUERIER, [ip("10.0.0.255")], outputs=2)
    assert res[1] == [who_has("10.0.0.255")]


def test_querier_ignores_bad_replies():
    good = Ether(src="02:00:00:00:00:90", dst=HOST) / ARP(
        op=2, hwsrc="02:00:00:00:00:90", psrc="10.0.0.90", pdst=HOST_IP)
    raw = bytes(good)
    bad = [raw[:n] for n in range(42)] + [
        bytes(Ether(src="02:00:00:00:00:90", dst=HOST) / ARP(
            op=1, hwsrc="02:00:00:00:00:90", psrc="10.0.0.90", pdst=HOST_IP)),
        bytes(Ether(dst=HOST) / ARP(op=2, hwsrc="01:00:5e:00:00:01", psrc="10.0.0.90")),
        bytes(Ether(dst=HOST) / ARP(op=2, hwsrc="02:00:00:00:00:90", psrc="0.0.0.0")),
        raw[:12] + b"\x08\x00" + raw[14:],
    ]
    pk = [(0, bytes(IP(src="10.0.0.10", dst="10.0.0.90") / UDP(dport=7)))]
    res = run_element("ARPQuerier", QUERIER, {0: pk, 1: [(SEC, b) for b in bad]}, outputs=2)
    assert res[0] == [] and res.stats["bad_arp"] == len(bad) and res.stats["held"] == 1
    res = run_element("ARPQuerier", QUERIER,
                      {0: pk, 1: [(SEC, b) for b in bad] + [(2 * SEC, raw + b"\0" * 18)]},
                      outputs=2)
    assert res[0] == [encap(pk[0][1], "02:00:00:00:00:90")]
    check_invariant(res)


def test_querier_survives_random_bytes_on_both_inputs():
    rnd = random.Random(5)
    junk = [rnd.randbytes(rnd.randint(0, 120)) for _ in range(300)]
    res = run_element("ARPQuerier", dict(QUERIER, capacity=16, entry_capacity=8),
                      {0: [(i * 10**7, b) for i, b in enumerate(junk)],
                       1: [(i * 10**7 + 1, b) for i, b in enumerate(junk)]}, outputs=2)
    assert res.stats["held"] <= 16
    check_invariant(res)


@pytest.mark.parametrize("cfg, msg", [
    ({"ip": "10.0.0.256", "eth": HOST}, "parameter 'ip': '10.0.0.256' is not an IPv4 address"),
    ({"ip": HOST_IP, "eth": "02:00:00:00:00"}, "parameter 'eth'"),
    ({"ip": HOST_IP, "eth": HOST, "capacity": 0}, "parameter 'capacity'"),
    ({"ip": HOST_IP, "eth": HOST, "timeout": -1}, "parameter 'timeout'"),
    ({"eth": HOST}, "missing parameter 'ip'"),
])
def test_querier_config_errors(cfg, msg):
    with pytest.raises(ConfigError) as err:
        run_element("ARPQuerier", cfg, [])
    assert "element 'element'" in str(err.value) and msg in str(err.value)


# --- HostEtherFilter and DropBroadcasts ---------------------------------------------------

def host_filter_expected(frames, drop_own, drop_other):
    """(passed, filtered, short) from the documented rule, read with scapy."""
    passed, filtered, short = [], [], 0
    for f in frames:
        if len(f) < 14:
            short += 1
            continue
        e = Ether(f)
        group = int(e.dst.split(":")[0], 16) & 1
        other = drop_other and not group and e.dst != HOST
        own = drop_own and e.src == HOST
        (filtered if other or own else passed).append(f)
    return passed, filtered, short


@pytest.mark.parametrize("drop_own", [False, True])
@pytest.mark.parametrize("drop_other", [False, True])
def test_host_ether_filter_matrix(drop_own, drop_other):
    frames = fixture_bytes(HOSTS)
    cfg = {"eth": HOST, "drop_own": drop_own, "drop_other": drop_other}
    res = run_element("HostEtherFilter", cfg, HOSTS, outputs=2)
    passed, filtered, short = host_filter_expected(frames, drop_own, drop_other)
    assert res[0] == passed and res[1] == filtered
    assert res.stats["short"] == short == 4
    check_invariant(res)
    res = run_element("HostEtherFilter", cfg, HOSTS)
    assert res[0] == passed and res.stats["dropped"] == len(filtered) + short


def test_host_ether_filter_defaults_and_spot_checks():
    frames = fixture_bytes(HOSTS)
    res = run_element("HostEtherFilter", {"eth": HOST}, HOSTS, outputs=2)
    dsts = [Ether(f).dst for f in res[0]]
    assert "02:00:00:00:00:99" not in dsts and "02:00:00:00:00:02" not in dsts
    assert {HOST, BCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01", "03:00:00:00:00:01"} <= set(dsts)
    # Other unicast destinations, our own frame to H1 included.
    assert [Ether(f).dst for f in res[1]] == ["02:00:00:00:00:99", "02:00:00:00:00:0a",
                                              "02:00:00:00:00:02"]
    assert len(res[0]) + len(res[1]) + res.stats["short"] == len(frames)


def test_host_ether_filter_offset():
    frames = [b"HDR!" + f for f in fixture_bytes(HOSTS)]
    res = run_element("HostEtherFilter", {"eth": HOST, "offset": 4}, frames, outputs=2)
    passed, filtered, _ = host_filter_expected(fixture_bytes(HOSTS), False, True)
    assert res[0] == [b"HDR!" + f for f in passed]
    assert res[1] == [b"HDR!" + f for f in filtered]


def group_dst(frame):
    """Whether a frame's Ethernet destination has the group bit (scapy)."""
    return int(Ether(frame.ljust(14, b"\0")).dst[:2], 16) & 1


def test_drop_broadcasts():
    frames = fixture_bytes(HOSTS)
    res = run_element("DropBroadcasts", {}, HOSTS)
    expect = [f for f in frames if len(f) >= 6 and not group_dst(f)]
    assert res[0] == expect
    groups = sum(1 for f in frames if len(f) >= 6 and group_dst(f))
    assert res.stats["drops"] == groups == 5
    assert res.stats["short"] == 2
    assert res.stats["dropped"] == 7
    check_invariant(res)


def test_drop_broadcasts_with_offset():
    frames = [b"\x00\x00" + f for f in fixture_bytes(HOSTS)]
    res = run_element("DropBroadcasts", {"offset": 2}, frames)
    assert res[0] == [b"\x00\x00" + f for f in fixture_bytes(HOSTS)
                      if len(f) >= 6 and not group_dst(f)]


def test_host_ether_filter_config_errors():
    with pytest.raises(ConfigError, match="element 'element': parameter 'eth'"):
        run_element("HostEtherFilter", {"eth": "nope"}, [])
    with pytest.raises(ConfigError, match="parameter 'drop_own'"):
        run_element("HostEtherFilter", {"eth": HOST, "drop_own": "maybe"}, [])


def test_catalogue_examples_load():
    for cls in ("ARPResponder", "ARPQuerier", "HostEtherFilter", "DropBroadcasts"):
        import middlebox.elements as lib
        doc = lib.catalogue()[cls].__doc__
        line = next(ln.strip() for ln in doc.splitlines() if "{class: " + cls in ln)
        name, _, spec = line.partition(": ")
        text = f"elements:\n  {name}: {spec}\n"
        g = loader.load(text)
        assert type(g.elements[name]).__name__ == cls
