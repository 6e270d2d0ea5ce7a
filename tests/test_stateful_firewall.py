"""StatefulFirewall between two CheckIPHeader(14)s: input 0 from the inside,
input 1 from the outside, fed in timestamp order (the engine merges the two
devices' packets by time, as test_nat.py does).

The firewall never changes a packet, so what must come out is a subset of
what went in, in order: here the expected subsets are chosen packet by
packet from the element's documented semantics (which packets open a
connection, which belong to one, which the rules deny), with packets and
their replies built by scapy. Nothing here re-implements the connection
table: expectations are written out per scenario.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from middlebox import loader, plan
from middlebox.errors import ConfigError, RunError
from middlebox.runtime import Engine
from middlebox.testing import capture, run_element, run_graph

ETH_IN = dict(src="02:00:00:00:00:0a", dst="02:00:00:00:00:01")
ETH_OUT = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:0a")
T0 = 1_700_000_000
RULES = '["allow tcp dst port 80", "allow udp dst port 53", "allow icmp type echo", "deny all"]'
DROPS = ("denied", "no_conn", "table_full", "fragments", "malformed")


def graph(cfg=f"rules: {RULES}", mark=False):
    """inside -> CheckIPHeader(14) -> fw[0]; outside -> CheckIPHeader(14) ->
    fw[1]; fw[0] -> device o0, fw[1] -> device o1. mark: MarkIPHeader
    instead (no checks at all)."""
    hdr = "MarkIPHeader" if mark else "CheckIPHeader"
    return "\n".join([
        "name: sfw-test", "elements:",
        "  inside: {class: FromDevice, device: inside}",
        "  outside: {class: FromDevice, device: outside}",
        f"  c0: {{class: {hdr}, offset: 14}}",
        f"  c1: {{class: {hdr}, offset: 14}}",
        f"  fw: {{class: StatefulFirewall, {cfg}}}",
        "  o0: {class: ToDevice, device: o0}",
        "  o1: {class: ToDevice, device: o1}",
        "connections:",
        "  - inside -> c0 -> fw",
        "  - outside -> c1 -> [1]fw",
        "  - fw[0] -> o0",
        "  - fw[1] -> o1"]) + "\n"


def check_counters(res):
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)
    fw = res.all_stats["fw"]
    assert fw["dropped"] == sum(fw[k] for k in DROPS), fw
    assert fw["in"] == fw["ports"][0] + fw["ports"][1] + fw["dropped"], fw


def run(inside=(), outside=(), cfg=f"rules: {RULES}", mark=False):
    res = run_graph(graph(cfg, mark), {"inside": list(inside), "outside": list(outside)})
    res.fw = res.all_stats["fw"]
    check_counters(res)
    return res


def at(t, p):
    p.time = T0 + t
    return p


def tcp(src, sport, dst="198.51.100.1", dport=80, flags="S", t=0, seq=1000, ack=0, **ip):
    return at(t, Ether(**ETH_IN) / IP(src=src, dst=dst, **ip)
              / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def udp(src, sport, dst="198.51.100.1", dport=53, t=0, payload=b"query", **ip):
    return at(t, Ether(**ETH_IN) / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport)
              / payload)


def ping(src, ident, dst="198.51.100.1", seq=1, t=0, kind=8):
    return at(t, Ether(**ETH_IN) / IP(src=src, dst=dst) / ICMP(type=kind, id=ident, seq=seq)
              / b"ping")


def reply(pkt, t, flags="SA", payload=b"reply"):
    """The other end's answer to pkt (reversed addresses and ports; an echo
    reply to an echo request), from the other side's Ethernet."""
    ip = pkt[IP]
    if TCP in pkt:
        l4 = TCP(sport=pkt[TCP].dport, dport=pkt[TCP].sport, flags=flags, seq=99,
                 ack=pkt[TCP].seq + 1)
    elif UDP in pkt:
        l4 = UDP(sport=pkt[UDP].dport, dport=pkt[UDP].sport)
    else:
        l4 = ICMP(type=0 if pkt[ICMP].type == 8 else pkt[ICMP].type + 1, id=pkt[ICMP].id,
                  seq=pkt[ICMP].seq)
    eth = ETH_OUT if pkt[Ether].src == ETH_IN["src"] else ETH_IN
    return at(t, Ether(**eth) / IP(src=ip.dst, dst=ip.src) / l4 / payload)


def outside(p):
    """p as if it came from the outside (Ethernet addresses swapped)."""
    q = p.copy()
    q[Ether].src, q[Ether].dst = ETH_OUT["src"], ETH_OUT["dst"]
    return q


def error_about(pkt, src, t, to=None, icmp_type=3, code=3, quote=None):
    """An ICMP error from src about the IP datagram of pkt, sent to its
    source (or `to`), coming from the other side."""
    ip = bytes(pkt[IP])
    q = ip if quote is None else ip[:quote]
    eth = ETH_OUT if pkt[Ether].src == ETH_IN["src"] else ETH_IN
    return at(t, Ether(**eth) / IP(src=src, dst=to or pkt[IP].src)
              / ICMP(type=icmp_type, code=code) / Raw(q))


def raw(pkts):
    return [bytes(p) for p in pkts]


def hosts(n):
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


# --- thousands of flows ------------------------------------------------------------

@pytest.fixture(scope="module")
def many():
    """3000 allowed flows (1000 each of TCP SYN, UDP, ICMP echo) from 60
    hosts, 1000 denied ones (TCP to port 22), each allowed flow sent twice;
    a reply to every flow; 500 unsolicited packets from the outside."""
    hs = hosts(60)
    flows, denied = [], []
    for i in range(1000):
        h = hs[i % 60]
        sport = 1024 + i
        dst = f"198.51.100.{1 + i % 7}"
        t = i * 0.001
        flows.append(tcp(h, sport, dst=dst, t=t))
        flows.append(udp(h, sport, dst=dst, t=t))
        flows.append(ping(h, sport, dst=dst, t=t))
        denied.append(tcp(h, sport, dst=dst, dport=22, t=t))
    inside = flows + denied + [at(2 + i * 0.0001, f.copy()) for i, f in enumerate(flows)]
    replies = [reply(f, 5 + i * 0.0001) for i, f in enumerate(flows)]
    replies += [reply(d, 5.5 + i * 0.0001) for i, d in enumerate(denied)]
    strangers = [at(6 + i * 0.001, outside(udp(f"203.0.113.{i % 200 + 1}", 53, dst=hs[i % 60],
                                                dport=2000 + i))) for i in range(500)]
    inside.sort(key=lambda p: p.time)
    res = run(inside, replies + strangers)
    return flows, denied, inside, replies, strangers, res


def test_allowed_flows_pass_unchanged_denied_ones_do_not(many):
    flows, denied, inside, _, _, res = many
    want = [bytes(p) for p in inside if p[IP].proto != 6 or p[TCP].dport != 22]
    assert res["o0"] == want and len(want) == 6000
    assert res.fw["new_conns"] == 3000


def test_replies_to_allowed_flows_pass_others_are_dropped(many):
    flows, denied, _, replies, strangers, res = many
    assert res["o1"] == raw(replies[:3000])
    # replies to denied SYNs are SYN-ACKs of no connection; strangers are denied
    assert res.fw["no_conn"] == 1000
    assert res.fw["denied"] == 1000 + 500
    assert res.fw["table_full"] == res.fw["fragments"] == res.fw["malformed"] == 0


def test_more_flows_than_the_table_holds():
    """3000 UDP flows through a table of 1000: the first 1000 pass, the rest
    are counted; the admitted ones keep working while the table is full."""
    pkts = [udp(h, 4000 + i // 60, t=i * 0.0001) for i, h in enumerate(hosts(60) * 50)]
    again = [at(1 + p.time - T0, p.copy()) for p in pkts[:1000]]
    replies = [reply(p, 2 + i * 0.0001) for i, p in enumerate(pkts)]
    res = run(pkts + again, replies, cfg=f"rules: {RULES}, capacity: 1000")
    assert res["o0"] == raw(pkts[:1000] + again)
    assert res["o1"] == raw(replies[:1000])
    assert res.fw["table_full"] == 2000 and res.fw["new_conns"] == 1000
    assert res.fw["denied"] == 2000            # replies of refused flows: no connection


# --- table exhaustion and recovery ---------------------------------------------------

def test_full_table_drops_new_connections_and_recovers_after_expiry():
    cfg = f"rules: {RULES}, capacity: 8"
    first = [udp("10.0.0.5", 41000 + i, t=0) for i in range(10)]
    established = [udp("10.0.0.5", 41000, t=1), udp("10.0.0.5", 41009, t=1)]
    second = [udp("10.0.1.5", 42000 + i, t=400) for i in range(10)]
    res = run(first + established + second, cfg=cfg)
    assert res["o0"] == raw(first[:8] + established[:1] + second[:8])
    assert res.fw["table_full"] == 2 + 1 + 2
    assert res.fw["expired"] == 8 and res.fw["new_conns"] == 16
    # and the reclaimed entries work both ways
    back = [reply(p, 401) for p in second]
    res = run(first + established + second, back, cfg=cfg)
    assert res["o1"] == raw(back[:8]) and res.fw["denied"] == 2


def test_capacity_one():
    cfg = f"rules: {RULES}, capacity: 1, udp_timeout: 1"
    pkts = [udp("10.0.0.5", 5000, t=0), udp("10.0.0.6", 5000, t=0.5),
            udp("10.0.0.6", 5000, t=1.5), udp("10.0.0.5", 5000, t=1.6)]
    res = run(pkts, cfg=cfg)
    assert res["o0"] == raw([pkts[0], pkts[2]])
    assert res.fw["table_full"] == 2 and res.fw["expired"] == 1


# --- TCP ---------------------------------------------------------------------------

def test_tcp_connections_start_only_with_a_syn():
    bad = [tcp("10.0.0.5", 40000 + i, flags=f, t=i) for i, f in
           enumerate(["A", "SA", "F", "FA", "R", "RA", "SF", "SR", "PA", ""])]
    good = tcp("10.0.0.5", 40100, flags="S", t=20)
    syn_ece = tcp("10.0.0.5", 40101, flags="SEC", t=21)     # ECN flags are fine
    res = run(bad + [good, syn_ece])
    assert res["o0"] == raw([good, syn_ece])
    assert res.fw["no_conn"] == len(bad) and res.fw["denied"] == 0


def test_tcp_non_syn_of_no_connection_is_no_conn_even_where_rules_would_deny():
    res = run([tcp("10.0.0.5", 40000, dport=22, flags="A")], [])
    assert res.fw["no_conn"] == 1 and res.fw["denied"] == 0


def test_denied_syn_is_counted_and_its_answer_is_out_of_state():
    syn = tcp("10.0.0.5", 40000, dport=23)
    res = run([syn], [reply(syn, 1)])
    assert res["o0"] == res["o1"] == []
    assert res.fw["denied"] == 1 and res.fw["no_conn"] == 1


def test_a_full_tcp_connection_passes_both_ways():
    syn = tcp("10.0.0.5", 40000, t=0)
    synack = reply(syn, 1)
    ack = tcp("10.0.0.5", 40000, flags="A", seq=1001, ack=100, t=2)
    data_in = reply(syn, 3, flags="PA", payload=b"x" * 500)
    data_out = tcp("10.0.0.5", 40000, flags="PA", seq=1001, ack=600, t=4)
    fin_out = tcp("10.0.0.5", 40000, flags="FA", seq=1001, ack=600, t=5)
    fin_in = reply(syn, 6, flags="FA", payload=b"")
    last = tcp("10.0.0.5", 40000, flags="A", seq=1002, ack=601, t=7)
    res = run([syn, ack, data_out, fin_out, last], [synack, data_in, fin_in])
    assert res["o0"] == raw([syn, ack, data_out, fin_out, last])
    assert res["o1"] == raw([synack, data_in, fin_in])
    assert res.fw["new_conns"] == 1 and res.fw["dropped"] == 0


def test_rules_are_not_looked_at_again_for_packets_of_a_connection():
    """Only small DNS queries are allowed; a big one of a live flow passes."""
    cfg = 'rules: ["allow udp dst port 53 and ip len < 100", "deny all"]'
    small = udp("10.0.0.5", 5000, t=0)
    big = udp("10.0.0.5", 5000, t=1, payload=b"q" * 400)
    other_big = udp("10.0.0.5", 5001, t=2, payload=b"q" * 400)
    res = run([small, big, other_big], cfg=cfg)
    assert res["o0"] == raw([small, big]) and res.fw["denied"] == 1


def test_a_syn_on_a_closed_connection_opens_a_new_one():
    syn = tcp("10.0.0.5", 40000, t=0)
    rst = reply(syn, 1, flags="RA", payload=b"")
    syn2 = tcp("10.0.0.5", 40000, t=2, seq=5000)
    synack2 = reply(syn2, 3)
    res = run([syn, syn2], [rst, synack2])
    assert res["o0"] == raw([syn, syn2]) and res["o1"] == raw([rst, synack2])
    assert res.fw["new_conns"] == 2
    # from the other side, the same tuple is judged by the outside rules
    back_syn = at(2, outside(tcp("198.51.100.1", 80, dst="10.0.0.5", dport=40000)))
    res = run([syn], [rst, back_syn])
    assert res["o1"] == raw([rst]) and res.fw["denied"] == 1


def test_a_packet_with_a_connections_tuple_from_the_wrong_side_is_dropped():
    q = udp("10.0.0.5", 5000, t=0)
    spoof = at(1, outside(q.copy()))                # inside host's tuple, from the outside
    res = run([q], [spoof])
    assert res["o1"] == [] and res.fw["no_conn"] == 1


# --- timeouts (pcap timestamps) ---------------------------------------------------------

def test_udp_flow_expires_after_its_timeout():
    q = udp("10.0.0.5", 5000, t=0)
    r1 = reply(q, 299)                 # refreshes: lives until 599
    r2 = reply(q, 599.5)               # gone: judged by the outside rules
    res = run([q], [r1, r2])
    assert res["o1"] == raw([r1]) and res.fw["denied"] == 1 and res.fw["expired"] == 1


def test_configured_timeouts_with_units():
    cfg = f"rules: {RULES}, udp_timeout: 500ms, icmp_timeout: 5"
    q, p = udp("10.0.0.5", 5000, t=0), ping("10.0.0.5", 9, t=0)
    back = [reply(q, 0.4), reply(q, 0.95), reply(p, 4), reply(p, 9.5)]
    res = run([q, p], back, cfg=cfg)
    assert res["o1"] == raw([back[0], back[2]])
    assert res.fw["denied"] == 1 and res.fw["no_conn"] == 1    # UDP reply; echo reply


def test_default_icmp_timeout_is_60_seconds():
    p = ping("10.0.0.5", 9, t=0)
    back = [reply(p, 59), reply(p, 59 + 60.5)]
    res = run([p], back)
    assert res["o1"] == raw(back[:1]) and res.fw["no_conn"] == 1


def test_unanswered_syn_uses_the_transitory_timeout():
    syn = tcp("10.0.0.5", 40000, t=0)
    res = run([syn], [reply(syn, 239)])
    assert len(res["o1"]) == 1
    res = run([syn], [reply(syn, 241)])
    assert res["o1"] == [] and res.fw["no_conn"] == 1 and res.fw["expired"] == 1


def test_established_lives_long_half_closed_less_closed_briefly():
    syn = tcp("10.0.0.5", 40000, t=0)
    synack = reply(syn, 1)
    ack = tcp("10.0.0.5", 40000, flags="A", seq=1001, t=2)
    hour = reply(syn, 2 + 3600, flags="A")                # established: 7440 s
    fin_out = tcp("10.0.0.5", 40000, flags="FA", seq=1001, t=3700)
    half = reply(syn, 3700 + 200, flags="A")               # half closed: 240 s
    fin_in = reply(syn, 3900 + 239, flags="FA")
    late_ack = tcp("10.0.0.5", 40000, flags="A", seq=1002, t=4139 + 9)    # closed: 10 s
    too_late = reply(syn, 4148 + 10.5, flags="A")
    res = run([syn, ack, fin_out, late_ack], [synack, hour, half, fin_in, too_late])
    assert res["o0"] == raw([syn, ack, fin_out, late_ack])
    assert res["o1"] == raw([synack, hour, half, fin_in])
    assert res.fw["no_conn"] == 1 and res.fw["expired"] == 1


def test_syn_ack_alone_does_not_establish():
    """Until the opener's ACK, the transitory timeout applies."""
    syn = tcp("10.0.0.5", 40000, t=0)
    synack = reply(syn, 1)
    res = run([syn], [synack, reply(syn, 1 + 241, flags="A")])
    assert res["o1"] == raw([synack]) and res.fw["no_conn"] == 1


def test_tcp_timeouts_are_configurable():
    cfg = (f"rules: {RULES}, tcp_timeout: 30, tcp_transitory_timeout: 5s, "
           f"tcp_closing_timeout: 100ms")
    syn = tcp("10.0.0.5", 40000, t=0)
    ack = tcp("10.0.0.5", 40000, flags="A", seq=1001, t=2)
    rst = tcp("10.0.0.5", 40000, flags="R", seq=1001, t=31)
    res = run([syn, ack, rst], [reply(syn, 1), reply(syn, 31.05, flags="A"),
                                reply(syn, 31.2, flags="A")], cfg=cfg)
    assert len(res["o1"]) == 2 and res.fw["no_conn"] == 1
    res = run([syn], [reply(syn, 5.5)], cfg=cfg)
    assert res["o1"] == []


# --- connections opened from the outside --------------------------------------------------

def test_outside_rules_open_connections_inward():
    cfg = ('rules: ["deny all"], outside_rules: ["allow dst host 10.0.0.10 and tcp dst '
           'port 443", "allow udp dst port 123", "deny all"]')
    syn = at(0, outside(tcp("198.51.100.7", 50000, dst="10.0.0.10", dport=443)))
    ntp = at(0.1, outside(udp("198.51.100.7", 123, dst="10.0.0.11", dport=123)))
    other = at(0.2, outside(tcp("198.51.100.7", 50001, dst="10.0.0.11", dport=443)))
    synack, ntp_back = reply(syn, 1), reply(ntp, 1.1)
    ack = at(2, outside(tcp("198.51.100.7", 50000, dst="10.0.0.10", dport=443, flags="A",
                            seq=1001)))
    inside_syn = tcp("10.0.0.10", 40000, dport=80, t=3)       # inside rules: deny all
    res = run([synack, ntp_back, inside_syn], [syn, ntp, other, ack], cfg=cfg)
    assert res["o1"] == raw([syn, ntp, ack]) and res["o0"] == raw([synack, ntp_back])
    assert res.fw["denied"] == 2 and res.fw["new_conns"] == 2


def test_default_outside_rules_deny_everything():
    pkts = [at(i, outside(p)) for i, p in enumerate(
        [tcp("198.51.100.7", 50000, dst="10.0.0.10"), udp("198.51.100.7", 53, dst="10.0.0.10"),
         ping("198.51.100.7", 1, dst="10.0.0.10")])]
    res = run([], pkts)
    assert res["o1"] == [] and res.fw["denied"] == 3


# --- ICMP --------------------------------------------------------------------------------

def test_echo_replies_pass_only_for_a_request():
    p = ping("10.0.0.5", 77, t=0)
    good = reply(p, 1)
    wrong_id = at(1.1, outside(ping("198.51.100.1", 78, dst="10.0.0.5", kind=0)))
    wrong_host = at(1.2, outside(ping("198.51.100.2", 77, dst="10.0.0.5", kind=0)))
    res = run([p], [good, wrong_id, wrong_host])
    assert res["o1"] == raw([good]) and res.fw["no_conn"] == 2


def test_pings_both_ways_with_one_identifier_are_two_connections():
    cfg = f'rules: {RULES}, outside_rules: ["allow icmp type echo", "deny all"]'
    out_req = ping("10.0.0.5", 7, t=0)
    in_req = at(1, outside(ping("198.51.100.1", 7, dst="10.0.0.5")))
    in_rep, out_rep = reply(out_req, 2), reply(in_req, 3)
    res = run([out_req, out_rep], [in_req, in_rep], cfg=cfg)
    assert res["o0"] == raw([out_req, out_rep]) and res["o1"] == raw([in_req, in_rep])
    assert res.fw["new_conns"] == 2


def test_other_icmp_follows_the_rules_and_makes_no_connection():
    cfg = 'rules: ["allow icmp type timestamp", "deny all"]'
    ts = ping("10.0.0.5", 3, t=0, kind=13)
    ts_reply = reply(ts, 1)                                     # type 14
    res = run([ts], [ts_reply], cfg=cfg)
    assert res["o0"] == raw([ts]) and res["o1"] == []
    assert res.fw["new_conns"] == 0 and res.fw["denied"] == 1


@pytest.mark.parametrize("kind", ["udp", "tcp", "icmp", "gre"])
@pytest.mark.parametrize("quote", [None, 28])
def test_icmp_errors_about_a_connection_pass(kind, quote):
    cfg = 'rules: ["allow udp", "allow tcp", "allow icmp type echo", "allow ip proto 47"]'
    pkt = {"udp": udp("10.0.0.5", 5000), "tcp": tcp("10.0.0.5", 40000),
           "icmp": ping("10.0.0.5", 9),
           "gre": at(0, Ether(**ETH_IN) / IP(src="10.0.0.5", dst="198.51.100.1", proto=47)
                     / (b"\0" * 8))}[kind]
    errs = [error_about(pkt, "192.0.2.1", 1, icmp_type=11, code=0, quote=quote),
            error_about(pkt, "198.51.100.1", 2, quote=quote)]
    res = run([pkt], errs, cfg=cfg)
    assert res["o1"] == raw(errs) and res.fw["related"] == 2


def test_icmp_errors_not_about_a_connection_follow_the_rules():
    q = udp("10.0.0.5", 5000, t=0)
    other = udp("10.0.0.5", 5001, t=0)                          # never sent
    errs = [error_about(other, "192.0.2.1", 1),                 # unknown flow
            error_about(q, "192.0.2.1", 2, to="10.0.0.6"),      # not to the quoted source
            error_about(q, "192.0.2.1", 3, quote=20 + 4)]       # quote too short for ports
    res = run([q], errs)
    assert res["o1"] == [] and res.fw["denied"] == 3 and res.fw["related"] == 0
    allow = '"allow icmp type unreachable"'
    res = run([q], errs, cfg=f'rules: {RULES}, outside_rules: [{allow}]')
    assert res["o1"] == raw(errs) and res.fw["related"] == 0


def test_icmp_error_from_the_wrong_side_is_not_related():
    """The inside host reports an error about its own outbound packet: the
    quoted packet never came from the outside."""
    q = udp("10.0.0.5", 5000, t=0)
    err = at(1, Ether(**ETH_IN) / IP(src="10.0.0.1", dst="10.0.0.5") / ICMP(type=3, code=1)
             / Raw(bytes(q[IP])))
    res = run([q, err])
    assert res["o0"] == raw([q]) and res.fw["denied"] == 1


def test_icmp_error_from_inside_about_an_inbound_connection():
    cfg = f'rules: {RULES}, outside_rules: ["allow udp dst port 514", "deny all"]'
    log = at(0, outside(udp("198.51.100.1", 5514, dst="10.0.0.5", dport=514)))
    err = error_about(log, "10.0.0.5", 1)
    res = run([err], [log], cfg=cfg)
    assert res["o0"] == raw([err]) and res.fw["related"] == 1


def test_icmp_errors_do_not_refresh_a_connection():
    q = udp("10.0.0.5", 5000, t=0)
    err = error_about(q, "192.0.2.1", 200)
    late = reply(q, 301)
    res = run([q], [err, late])
    assert res["o1"] == raw([err]) and res.fw["denied"] == 1


# --- fragments ---------------------------------------------------------------------------

def frag(src, dst, offset, proto=17, payload=b"f" * 16, t=0, mf=False, side=0):
    p = at(t, Ether(**(ETH_IN if side == 0 else ETH_OUT))
           / IP(src=src, dst=dst, proto=proto, frag=offset, flags="MF" if mf else 0, id=42)
           / payload)
    return p


def test_first_fragment_is_tracked_later_ones_need_a_rule():
    first = at(0, Ether(**ETH_IN) / IP(src="10.0.0.5", dst="198.51.100.1", flags="MF", id=42)
               / UDP(sport=5000, dport=53, len=8 + 40) / (b"a" * 16))
    rest = frag("10.0.0.5", "198.51.100.1", 3, t=0.1)
    back_first = at(1, Ether(**ETH_OUT) / IP(src="198.51.100.1", dst="10.0.0.5", flags="MF")
                    / UDP(sport=53, dport=5000, len=8 + 40) / (b"b" * 16))
    back_rest = frag("198.51.100.1", "10.0.0.5", 3, t=1.1, side=1)
    res = run([first, rest], [back_first, back_rest])
    assert res["o0"] == raw([first]) and res["o1"] == raw([back_first])
    assert res.fw["fragments"] == 2 and res.fw["new_conns"] == 1
    cfg = ('rules: ["allow ip frag and src net 10.0.0.0/8", "allow udp dst port 53"], '
           'outside_rules: ["allow ip frag and dst net 10.0.0.0/8"]')
    res = run([first, rest], [back_first, back_rest], cfg=cfg)
    assert res["o0"] == raw([first, rest]) and res["o1"] == raw([back_first, back_rest])
    assert res.fw["fragments"] == 0 and res.fw["new_conns"] == 1


def test_later_fragments_make_no_connection_and_tcp_offset_one_is_dropped():
    cfg = 'rules: ["allow all"]'
    pieces = [frag("10.0.0.5", "198.51.100.1", 2, proto=6, t=0),
              frag("10.0.0.5", "198.51.100.1", 1, proto=6, t=1),         # RFC 1858
              frag("10.0.0.5", "198.51.100.1", 1, proto=17, t=2)]
    res = run(pieces, cfg=cfg)
    assert res["o0"] == raw([pieces[0], pieces[2]]) and res.fw["fragments"] == 1
    assert res.fw["new_conns"] == 0


# --- other protocols ---------------------------------------------------------------------

def test_other_protocols_are_tracked_by_addresses():
    cfg = 'rules: ["allow ip proto 47"]'
    gre = at(0, Ether(**ETH_IN) / IP(src="10.0.0.5", dst="198.51.100.1", proto=47) / (b"g" * 8))
    back = at(1, Ether(**ETH_OUT) / IP(src="198.51.100.1", dst="10.0.0.5", proto=47)
              / (b"h" * 8))
    esp = at(2, Ether(**ETH_OUT) / IP(src="198.51.100.1", dst="10.0.0.5", proto=50) / (b"e" * 8))
    other = at(3, Ether(**ETH_OUT) / IP(src="198.51.100.2", dst="10.0.0.5", proto=47) / b"x")
    res = run([gre], [back, esp, other], cfg=cfg)
    assert res["o0"] == raw([gre]) and res["o1"] == raw([back])
    assert res.fw["denied"] == 2


# --- bad packets ---------------------------------------------------------------------------

def test_truncated_transport_headers_are_malformed():
    e = Ether(**ETH_IN)
    bad = [e / IP(src="10.0.0.5", dst="198.51.100.1", proto=6) / (b"\x00" * 19),
           e / IP(src="10.0.0.5", dst="198.51.100.1", proto=17) / b"abcdefg",
           e / IP(src="10.0.0.5", dst="198.51.100.1", proto=1) / b"\x08\x00\x00",
           e / IP(src="10.0.0.5", dst="198.51.100.1", proto=6)]
    res = run([at(i, p) for i, p in enumerate(bad)], cfg='rules: ["allow all"]')
    assert res["o0"] == [] and res.fw["malformed"] == len(bad)


def test_packets_without_the_ip_annotation_are_malformed():
    q = udp("10.0.0.5", 5000)
    res = run_element("StatefulFirewall", {"rules": ["allow all"], "outside_rules": ["allow all"]},
                      {0: [q], 1: [reply(q, 1)]})
    assert res[0] == res[1] == []
    assert res.stats["malformed"] == 2 and res.stats["dropped"] == 2


def test_empty_and_tiny_frames_survive():
    frames = [b"", b"\x00", bytes(udp("10.0.0.5", 5000))[:20], bytes(tcp("10.0.0.5", 1))[:40]]
    res = run(frames, frames, cfg='rules: ["allow all"]')
    assert res.fw["in"] == 0          # CheckIPHeader dropped them all
    res = run(frames, frames, cfg='rules: ["allow all"]', mark=True)
    assert res.fw["malformed"] == res.fw["in"] == 2     # MarkIPHeader needs 14 + 20 bytes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=80)), max_size=40))
def test_any_bytes_survive(items):
    """Random tails behind real headers (MarkIPHeader checks nothing), both
    directions: no crash, and the counters balance."""
    base = [bytes(udp("10.0.0.5", 5000)), bytes(tcp("10.0.0.5", 40001)),
            bytes(ping("10.0.0.5", 5)),
            bytes(Ether() / IP(src="198.51.100.1", dst="10.0.0.5") / ICMP(type=3, code=3))]
    ins, outs = [], []
    for i, (side, tail) in enumerate(items):
        frame = base[i % len(base)][:34 + (len(tail) % 20)] + tail
        (outs if side else ins).append(frame)
    run(ins, outs, cfg='rules: ["allow all"], outside_rules: ["allow udp", "deny all"]',
        mark=True)


# --- handlers ------------------------------------------------------------------------------

def test_connections_count_and_flush_handlers():
    eng = Engine(plan.build(loader.load(graph(
        f'rules: {RULES}, outside_rules: ["allow tcp dst port 22", "deny all"]'))))
    syn = tcp("10.0.0.5", 40000, t=0)
    q = udp("10.0.0.6", 5000, t=0)
    p = ping("10.0.0.7", 9, t=0)
    ssh = at(0.5, outside(tcp("203.0.113.9", 61000, dst="10.0.0.8", dport=22)))
    eng.run({"inside": capture([syn, q, p]), "outside": capture([ssh, reply(q, 1)])})
    assert eng.read("fw.count") == "4" == eng.read("fw.flows")
    table = eng.read("fw.connections").splitlines()
    assert table[0].split() == ["proto", "inside", "outside", "opened_by", "state", "expires"]
    assert sorted(line.split() for line in table[1:]) == sorted([
        ["tcp", "10.0.0.5:40000", "198.51.100.1:80", "inside", "syn_sent", "239.000s"],
        ["udp", "10.0.0.6:5000", "198.51.100.1:53", "inside", "replied", "300.000s"],
        ["icmp", "10.0.0.7:9", "198.51.100.1", "inside", "unreplied", "59.000s"],
        ["tcp", "10.0.0.8:22", "203.0.113.9:61000", "outside", "syn_sent", "239.500s"],
    ])
    eng.write("fw.flush")
    assert eng.read("fw.count") == "0"
    assert eng.read("fw.connections").splitlines()[1:] == []
    out = eng.run({"inside": capture([]), "outside": capture([reply(syn, 2), reply(q, 2)])})
    assert len(out["o1"]) == 0
    stats = eng.stats()["fw"]
    assert stats["no_conn"] == 1 and stats["denied"] == 1
    with pytest.raises(RunError, match="flush"):
        eng.write("fw.flush", "everything")


def test_expired_connections_are_not_listed():
    eng = Engine(plan.build(loader.load(graph(f"rules: {RULES}, udp_timeout: 10"))))
    eng.run({"inside": capture([udp("10.0.0.5", 5000, t=0), udp("10.0.0.5", 5001, t=20)]),
             "outside": capture([])})
    rows = eng.read("fw.connections").splitlines()[1:]
    assert len(rows) == 1 and "10.0.0.5:5001" in rows[0]


def test_program_text_shows_both_rule_sets():
    g = loader.load(graph(f'rules: {RULES}, outside_rules: ["allow udp", "deny all"]'))
    text = g.elements["fw"].program_text()
    assert text.startswith("rules (inside): ") and "\noutside_rules: " in text
    assert "allow" in text and "deny" in text


# --- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, message", [
    ("capacity: 10", "missing parameter 'rules'"),
    ('rules: ["alow tcp"]', "rule 1: unknown action 'alow'"),
    ('rules: ["allow tcp", "1 udp"]', "rule 2: output actions like '1' do not apply here"),
    ('rules: ["allow tcp dts port 80"]', "rule 1:"),
    ('rules: ["allow all"], outside_rules: ["allow udp port"]', "outside rule 1:"),
    ('rules: [""]', "rule 1: empty rule"),
    ("rules: []", "rules"),
    ('rules: ["allow all"], capacity: 0', "parameter 'capacity': 0 is below the minimum 1"),
    ('rules: ["allow all"], capacity: 99999999', "is above the maximum 4194304"),
    ('rules: ["allow all"], udp_timeout: 0', "a timeout must be longer than 0"),
    ('rules: ["allow all"], tcp_closing_timeout: 3 fortnights', "is not a duration"),
    ('rules: ["allow all"], timeout: 5', "unknown parameter 'timeout'"),
])
def test_bad_configuration_is_refused(cfg, message):
    with pytest.raises(ConfigError) as err:
        loader.load(graph(cfg))
    assert "element 'fw'" in str(err.value)
    assert message in str(err.value)


def test_plan_bytes_hold_both_programs_and_timeouts():
    """The lowered layout the kernel documents: magic, capacity, five
    timeouts in ns, two program lengths, the programs."""
    g = loader.load(graph(f"rules: {RULES}, capacity: 100, tcp_closing_timeout: 2"))
    blob = g.elements["fw"].lower(None)
    magic, cap, *rest = struct.unpack_from("<II5QII", blob)
    assert magic == 0x31574653 and cap == 100
    assert rest[:5] == [300 * 10**9, 7440 * 10**9, 240 * 10**9, 2 * 10**9, 60 * 10**9]
    assert 56 + rest[5] + rest[6] == len(blob)
