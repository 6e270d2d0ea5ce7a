"""LoadBalancer: Maglev spread and disruption, per-connection affinity,
translation both ways with valid checksums, other traffic, round_robin and
hash, live backend changes, timeouts and table exhaustion. Every expected
packet is built with scapy here; the kernel's hash is never re-implemented
(flows are sent through it and the outcome measured)."""

import ipaddress
import json
import math
import socket
import sys
from collections import Counter

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from middlebox import loader, plan
from middlebox.elements.loadbalancer import maglev_table
from middlebox.errors import ConfigError, RunError
from middlebox.runtime import Engine
from middlebox.testing import capture, run_graph
from holding import HOLDING_PASS, run_held

VIP, PORT = "10.0.0.100", 80
CMAC, LMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:64", "02:00:00:00:01:0b"
B3 = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
SEC = 10**9


# --- harness ----------------------------------------------------------------------

def lb_yaml(cfg, other=True, mark=False):
    """Devices cin (clients) and sin (backends) through CheckIPHeader (or
    MarkIPHeader) into the LoadBalancer `lb`; output k to device ok."""
    conf = {"class": "LoadBalancer", "vip": VIP, "port": PORT, **cfg}
    conf = {k: v for k, v in conf.items() if v is not None}    # None: leave it out
    head = ("{class: MarkIPHeader, offset: 14}" if mark
            else "{class: CheckIPHeader, offset: 14}")
    outs = 4 if other else 2
    lines = ["name: lb-test", "elements:",
             "  cin: {class: FromDevice, device: cin}",
             "  sin: {class: FromDevice, device: sin}",
             f"  c0: {head}", f"  c1: {head}", f"  lb: {json.dumps(conf)}"]
    lines += [f"  o{k}: {{class: ToDevice, device: o{k}}}" for k in range(outs)]
    lines += ["connections:", "  - cin -> c0 -> lb", "  - sin -> c1 -> [1]lb"]
    lines += [f"  - lb[{k}] -> o{k}" for k in range(outs)]
    return "\n".join(lines) + "\n"


def run(cfg, client=(), servers=(), other=True, mark=False):
    inputs = {}
    if client:
        inputs["cin"] = client
    if servers:
        inputs["sin"] = servers
    res = run_graph(lb_yaml(cfg, other, mark), inputs)
    balanced(res.all_stats)
    res.stats = res.all_stats["lb"]
    return res


def engine(cfg, other=True):
    return Engine(plan.build(loader.load(lb_yaml(cfg, other))))


def feed(eng, client=(), servers=()):
    """Run packets through a live engine; {device: [bytes]}."""
    inputs = [(d, capture(p)) for d, p in (("cin", client), ("sin", servers)) if p]
    out = eng.run(inputs)
    balanced(eng.stats())
    return {d: [c.packet(i) for i in range(len(c))] for d, c in out.items()}


def balanced(stats):
    for name, s in stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), name


def client_addr(i):
    return str(ipaddress.IPv4Address("172.16.0.1") + i), 1024 + (i * 7919) % 60000


def flow(i, proto="tcp", flags="S", payload=b"", dport=PORT, dst=VIP, seq=1):
    src, sport = client_addr(i)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq)
    else:
        l4 = UDP(sport=sport, dport=dport)
    return Ether(src=CMAC, dst=LMAC) / IP(src=src, dst=dst) / l4 / payload


def reply(i, backend, bport=PORT, proto="tcp", flags="SA", payload=b""):
    dst, dport = client_addr(i)
    l4 = (TCP(sport=bport, dport=dport, flags=flags, seq=7, ack=2) if proto == "tcp"
          else UDP(sport=bport, dport=dport))
    return Ether(src=SMAC, dst=LMAC) / IP(src=backend, dst=dst) / l4 / payload


def at(t_ns, pkts):
    """(timestamp, bytes) pairs, all at time t_ns."""
    return [(t_ns, bytes(p)) for p in pkts]


def dst_of(frame):
    return socket.inet_ntoa(frame[30:34])


def recomputed(frame):
    """The frame with IP and TCP/UDP checksums computed by scapy (a UDP
    checksum of 0, meaning none, is kept)."""
    p = Ether(frame)
    del p[IP].chksum
    if TCP in p:
        del p[TCP].chksum
    elif UDP in p and p[UDP].chksum != 0:
        del p[UDP].chksum
    return bytes(p)


def assert_checksums(frames):
    assert frames
    for f in frames:
        assert recomputed(f) == f


def to_backend(frame, backend, bport=PORT):
    """What the balancer must send for client frame `frame` to `backend`."""
    p = Ether(bytes(frame))
    p[IP].dst = backend
    l4 = p[TCP] if TCP in p else p[UDP]
    l4.dport = bport
    return recomputed(bytes(p))


def to_client(frame):
    """What the balancer must send for a backend's reply `frame`."""
    p = Ether(bytes(frame))
    p[IP].src = VIP
    (p[TCP] if TCP in p else p[UDP]).sport = PORT
    return recomputed(bytes(p))


def within_binomial(counts, n, shares):
    """Each count within 4 standard deviations of an even random spread."""
    for k, share in shares.items():
        sd = math.sqrt(n * share * (1 - share))
        assert abs(counts.get(k, 0) - n * share) <= 4 * sd, (k, counts.get(k, 0), n * share)


@pytest.fixture(scope="module")
def many():
    """30000 distinct TCP SYN flows to the VIP, as bytes."""
    return [bytes(flow(i)) for i in range(30000)]


# --- the Maglev table (built in Python) -------------------------------------------

def backends(n, weights=None):
    return [(f"10.0.1.{i + 1}", PORT, (weights or [1] * n)[i]) for i in range(n)]


@pytest.mark.parametrize("n", range(3, 11))
def test_maglev_table_is_even(n):
    counts = np.bincount(maglev_table(backends(n)), minlength=n)
    assert counts.sum() == 65537
    assert counts.max() - counts.min() <= 1


def test_maglev_table_follows_weights():
    w = [1, 2, 3, 4]
    counts = np.bincount(maglev_table(backends(4, w)), minlength=4)
    for c, wi in zip(counts, w):
        assert abs(c / 65537 - wi / 10) < 0.001


@pytest.mark.parametrize("n", range(3, 11))
def test_maglev_removal_moves_little_else(n):
    full = backends(n)
    before = [full[i][0] for i in maglev_table(full)]
    for gone in range(n):
        rest = full[:gone] + full[gone + 1:]
        after = [rest[i][0] for i in maglev_table(rest)]
        others = [(a, b) for a, b in zip(before, after) if a != full[gone][0]]
        moved = sum(a != b for a, b in others)
        # The paper's "minimal disruption": a few entries, not none.
        assert moved <= 0.005 * 65537, (n, gone, moved)
        assert all(b != full[gone][0] for b in after)


def test_maglev_addition_moves_flows_to_the_new_backend_only():
    old = backends(5)
    new = backends(6)
    before = [old[i][0] for i in maglev_table(old)]
    after = [new[i][0] for i in maglev_table(new)]
    moves = [(a, b) for a, b in zip(before, after) if a != b]
    to_new = sum(b == "10.0.1.6" for _, b in moves)
    assert abs(to_new - 65537 / 6) < 100
    assert len(moves) - to_new <= 0.005 * 65537


def test_maglev_table_is_deterministic_and_order_independent_per_backend():
    # A backend's entries depend on its address, not on run or process.
    a = maglev_table(backends(4), 4099)
    b = maglev_table(backends(4), 4099)
    assert (a == b).all() and len(a) == 4099


# --- spread and disruption through the kernel ------------------------------------------

def backend_of_each(cfg, frames):
    res = run(cfg, client=frames)
    out = res["o0"]
    assert len(out) == len(frames)          # one packet per flow, in order
    assert res.stats["new_flows"] == len(frames)
    return [dst_of(f) for f in out]


@pytest.mark.parametrize("n", range(3, 11))
def test_kernel_spread_is_even(many, n):
    names = [f"10.0.1.{i + 1}" for i in range(n)]
    got = backend_of_each({"backends": names, "capacity": 65536}, many)
    within_binomial(Counter(got), len(many), {b: 1 / n for b in names})


def test_kernel_spread_follows_weights(many):
    cfg = {"backends": ["10.0.1.1", "10.0.1.2 weight 2", "10.0.1.3 weight 3",
                        "10.0.1.4 weight 4"], "capacity": 65536}
    got = Counter(backend_of_each(cfg, many))
    within_binomial(got, len(many), {f"10.0.1.{i}": i / 10 for i in range(1, 5)})


def test_kernel_removal_moves_only_the_removed_backends_flows(many):
    five = [f"10.0.1.{i}" for i in range(1, 6)]
    frames = many[:20000]
    before = backend_of_each({"backends": five, "capacity": 32768}, frames)
    after = backend_of_each({"backends": five[:2] + five[3:], "capacity": 32768}, frames)
    kept = [(a, b) for a, b in zip(before, after) if a != "10.0.1.3"]
    moved = sum(a != b for a, b in kept)
    assert moved <= 0.01 * len(kept)
    orphans = Counter(b for a, b in zip(before, after) if a == "10.0.1.3")
    assert "10.0.1.3" not in orphans
    n = sum(orphans.values())
    within_binomial(orphans, n, {b: 1 / 4 for b in five[:2] + five[3:]})


def test_kernel_hash_method_is_not_consistent(many):
    # The contrast that makes Maglev worth it: plain hashing moves most flows.
    five = [f"10.0.1.{i}" for i in range(1, 6)]
    frames = many[:6000]
    before = backend_of_each({"backends": five, "method": "hash"}, frames)
    after = backend_of_each({"backends": five[:2] + five[3:], "method": "hash"}, frames)
    kept = [(a, b) for a, b in zip(before, after) if a != "10.0.1.3"]
    assert sum(a != b for a, b in kept) > 0.3 * len(kept)
    within_binomial(Counter(before), len(frames), {b: 1 / 5 for b in five})


# --- affinity and translation ---------------------------------------------------------

@pytest.mark.parametrize("method", ["maglev", "round_robin", "hash"])
def test_every_packet_of_a_flow_goes_to_one_backend(method):
    nflows, per = 100, 12
    pkts = []
    for k in range(per):
        for i in range(nflows):
            p = flow(i, flags="S" if k == 0 else "A", seq=1 + k, payload=bytes([k]) * 5)
            pkts.append(((k * nflows + i) * 1000, bytes(p)))   # batches mix flows
    eng = engine({"backends": B3, "method": method})
    out = feed(eng, client=pkts)["o0"]
    assert len(out) == nflows * per
    chosen = {}
    for sent, got in zip(pkts, out):
        src = socket.inet_ntoa(got[26:30])
        chosen.setdefault(src, set()).add(dst_of(got))
        assert got == to_backend(sent[1], dst_of(got))
    assert len(chosen) == nflows and all(len(b) == 1 for b in chosen.values())
    assert {b for s in chosen.values() for b in s} == set(B3)
    s = eng.stats()["lb"]
    assert s["new_flows"] == nflows and s["table_full"] == 0
    assert eng.read("lb.connections") == str(nflows)


def test_translated_packets_match_scapy():
    cfg = {"backends": ["10.0.1.1", "10.0.1.2", "10.0.1.3:8080"], "protocol": "both"}
    sent = []
    for i in range(60):
        sent.append(flow(i, payload=b"GET / HTTP/1.0\r\n\r\n"))
        sent.append(flow(1000 + i, proto="udp", payload=b"datagram %d" % i))
        zero = flow(2000 + i, proto="udp", payload=b"no checksum")
        zero[UDP].chksum = 0
        sent.append(zero)
        opts = Ether(src=CMAC, dst=LMAC) / IP(src=client_addr(3000 + i)[0], dst=VIP,
                                                options=b"\x01\x01\x01\x00") \
            / TCP(sport=client_addr(3000 + i)[1], dport=PORT, flags="PA") / b"opts"
        sent.append(opts)
    res = run(cfg, client=sent)
    out = res["o0"]
    assert len(out) == len(sent)
    for p, got in zip(sent, out):
        b = dst_of(got)
        assert got == to_backend(p, b, 8080 if b == "10.0.1.3" else PORT)
        if UDP in p and p[UDP].chksum == 0:
            assert Ether(got)[UDP].chksum == 0
    assert_checksums(out)
    assert Counter(dst_of(f) for f in out).keys() == {"10.0.1.1", "10.0.1.2", "10.0.1.3"}


def test_udp_checksum_that_computes_to_zero_is_sent_as_ffff():
    # Pick the payload so that the translated datagram's checksum is 0:
    # with payload word w the sum grows by w, so w = checksum at w = 0.
    base = Ether(src=CMAC, dst=LMAC) / IP(src="172.16.9.9", dst="10.0.1.7") \
        / UDP(sport=5555, dport=PORT) / b"\x00\x00"
    c0 = Ether(bytes(base))[UDP].chksum
    sent = Ether(src=CMAC, dst=LMAC) / IP(src="172.16.9.9", dst=VIP) \
        / UDP(sport=5555, dport=PORT) / c0.to_bytes(2, "big")
    assert Ether(bytes(sent))[UDP].chksum not in (0, 0xFFFF)
    res = run({"backends": ["10.0.1.7"], "protocol": "udp"}, client=[sent])
    (got,) = res["o0"]
    assert Ether(got)[UDP].chksum == 0xFFFF
    assert got == to_backend(sent, "10.0.1.7")


def test_replies_are_translated_back_to_the_vip():
    cfg = {"backends": ["10.0.1.1", "10.0.1.2", "10.0.1.3:8080"], "protocol": "both"}
    eng = engine(cfg)
    syns = [flow(i) for i in range(90)] + [flow(500 + i, proto="udp") for i in range(30)]
    out = feed(eng, client=at(SEC, syns))["o0"]
    chosen = [dst_of(f) for f in out]
    replies = []
    for k, b in enumerate(chosen):
        i, proto = (k, "tcp") if k < 90 else (500 + k - 90, "udp")
        replies.append(reply(i, b, 8080 if b == "10.0.1.3" else PORT, proto=proto,
                             payload=b"HTTP/1.0 200 OK"))
    back = feed(eng, servers=at(2 * SEC, replies))["o1"]
    assert back == [to_client(r) for r in replies]
    assert_checksums(back)
    s = eng.stats()["lb"]
    assert s["no_conn_replies"] == 0 and s["not_backend"] == 0
    assert s["ports"][:2] == [120, 120]


def test_replies_without_a_connection_and_from_strangers():
    eng = engine({"backends": ["10.0.1.1", "10.0.1.2:8080"]})
    ok = reply(1, "10.0.1.2", 8080)                # a backend, no connection
    wrong_port = reply(2, "10.0.1.1", 8080)        # 10.0.1.1 serves port 80
    stranger = reply(3, "10.0.1.9")
    icmp = Ether(src=SMAC, dst=LMAC) / IP(src="10.0.1.1", dst="172.16.0.1") / ICMP()
    frag = reply(4, "10.0.1.1", payload=b"x" * 16)
    frag[IP].flags = "MF"
    out = feed(eng, servers=[ok, wrong_port, stranger, icmp, frag])
    assert out["o1"] == [to_client(ok)]
    assert out["o3"] == [bytes(wrong_port), bytes(stranger), bytes(icmp), bytes(frag)]
    s = eng.stats()["lb"]
    assert (s["no_conn_replies"], s["not_backend"], s["fragment"]) == (1, 3, 1)


# --- other traffic -------------------------------------------------------------------

def other_traffic():
    frag = flow(5, payload=b"y" * 24)
    frag[IP].flags = "MF"
    return {
        "other_ip": flow(1, dst="10.0.0.99"),
        "other_port": flow(2, dport=443),
        "icmp": Ether(src=CMAC, dst=LMAC) / IP(src="172.16.0.3", dst=VIP) / ICMP(),
        "udp_when_tcp": flow(4, proto="udp"),
        "fragment": frag,
    }


def test_other_traffic_goes_to_output_2_unchanged():
    pkts = other_traffic()
    res = run({"backends": B3}, client=list(pkts.values()) + [flow(9)])
    assert res["o2"] == [bytes(p) for p in pkts.values()]
    assert len(res["o0"]) == 1 and res["o1"] == [] and res["o3"] == []
    s = res.stats
    assert (s["not_vip"], s["fragment"], s["new_flows"]) == (4, 1, 1)


def test_other_traffic_is_dropped_and_counted_without_output_2():
    pkts = other_traffic()
    strangers = [reply(1, "10.0.1.9"), reply(2, "10.0.1.8")]
    res = run({"backends": B3}, client=[bytes(p) for p in pkts.values()],
              servers=[bytes(p) for p in strangers], other=False)
    assert "o2" not in res and res["o0"] == [] and res["o1"] == []
    s = res.stats
    assert s["dropped"] == 7 and s["ports"] == [0, 0]
    assert (s["not_vip"], s["fragment"], s["not_backend"]) == (4, 1, 2)


def test_malformed_packets_are_dropped_and_counted():
    good = flow(1)
    short_tcp = Ether(src=CMAC, dst=LMAC) / IP(src="172.16.0.2", dst=VIP, proto=6) \
        / Raw(b"\x04\x00\x00\x50" + b"\x00" * 12)             # 16 bytes of TCP
    short_udp = Ether(src=CMAC, dst=LMAC) / IP(src="172.16.0.2", dst=VIP, proto=17) \
        / Raw(b"\x04\x00\x00\x50")
    bad_ihl = bytearray(bytes(flow(3)))
    bad_ihl[14] = 0x44                                        # IHL 4
    bad_version = bytearray(bytes(flow(4)))
    bad_version[14] = 0x65
    too_long = bytearray(bytes(flow(5)))
    too_long[16:18] = (2000).to_bytes(2, "big")               # total length past the end
    trunc = bytes(flow(6))[:14 + 20 + 10]
    client = [bytes(good), bytes(short_tcp), bytes(short_udp), bytes(bad_ihl),
              bytes(bad_version), bytes(too_long), trunc, bytes(flow(7))[:20]]
    servers = [bytes(reply(1, "10.0.1.1"))[:40], bytes(bad_ihl)]
    res = run({"backends": B3, "protocol": "both"}, client=client, servers=servers, mark=True)
    s = res.stats
    assert len(res["o0"]) == 1
    assert s["bad"] == 8 and s["dropped"] == 8   # the 20-byte frame never got past MarkIPHeader
    assert res.all_stats["c0"]["dropped"] == 1


# --- methods --------------------------------------------------------------------

def test_round_robin_gives_backends_in_turn():
    eng = engine({"backends": B3, "method": "round_robin"})
    first = feed(eng, client=at(SEC, [flow(i) for i in range(30)]))["o0"]
    assert [dst_of(f) for f in first] == [B3[i % 3] for i in range(30)]
    again = feed(eng, client=at(2 * SEC, [flow(i, flags="A") for i in reversed(range(30))]))["o0"]
    assert [dst_of(f) for f in again] == [B3[i % 3] for i in reversed(range(30))]


def test_weighted_round_robin_counts_are_exact():
    res = run({"backends": {"10.0.1.1": 2, "10.0.1.2": 1, "10.0.1.3": 1},
               "method": "round_robin"}, client=[flow(i) for i in range(100)])
    got = Counter(dst_of(f) for f in res["o0"])
    assert got == {"10.0.1.1": 50, "10.0.1.2": 25, "10.0.1.3": 25}


def test_hash_method_is_deterministic(many):
    cfg = {"backends": B3, "method": "hash"}
    a = backend_of_each(cfg, many[:3000])
    b = backend_of_each(cfg, many[:3000])
    assert a == b
    within_binomial(Counter(a), 3000, {x: 1 / 3 for x in B3})


# --- live backend changes -----------------------------------------------------------

def test_write_backends_keeps_existing_connections(many):
    four = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"]
    new = ["10.0.1.1", "10.0.1.2", "10.0.1.4", "10.0.1.5"]
    eng = engine({"backends": four})
    old = [flow(i) for i in range(400)]
    first = [dst_of(f) for f in feed(eng, client=at(SEC, old))["o0"]]
    on3 = Counter(first)["10.0.1.3"]
    assert on3 > 50

    eng.write("lb.backends", ", ".join(new))
    assert eng.read("lb.backends") == ", ".join(f"{b}:80" for b in new)
    lines = eng.read("lb.backend_connections").splitlines()
    assert f"10.0.1.3:80 {on3} draining" in lines

    # Established connections stay where they were, the removed backend too.
    acks = [flow(i, flags="A", seq=2) for i in range(400)]
    second = feed(eng, client=at(2 * SEC, acks))["o0"]
    assert [dst_of(f) for f in second] == first
    back = feed(eng, servers=at(3 * SEC, [reply(i, b) for i, b in enumerate(first)]))["o1"]
    assert len(back) == 400 and eng.stats()["lb"]["no_conn_replies"] == 0

    # New connections follow the new set, exactly as a balancer configured with it.
    fresh = many[10000:13000]
    got = [dst_of(f) for f in feed(eng, client=[(4 * SEC, f) for f in fresh])["o0"]]
    assert "10.0.1.3" not in got and "10.0.1.5" in got
    assert got == backend_of_each({"backends": new}, fresh)
    assert eng.stats()["lb"]["new_flows"] == 3400


def test_write_backends_with_ports_and_weights_and_refusals():
    eng = engine({"backends": B3})
    eng.write("lb.backends", "10.0.1.1 weight 3\n10.0.1.7:8080, 10.0.1.8 weight 0")
    assert eng.read("lb.backends") == "10.0.1.1:80 weight 3, 10.0.1.7:8080, 10.0.1.8:80 weight 0"
    out = feed(eng, client=[flow(i) for i in range(400)])["o0"]
    got = Counter((dst_of(f), int.from_bytes(f[36:38], "big")) for f in out)
    assert set(got) == {("10.0.1.1", 80), ("10.0.1.7", 8080)}
    within_binomial(got, 400, {("10.0.1.1", 80): 0.75, ("10.0.1.7", 8080): 0.25})
    for bad, why in [("10.0.1.300", "not an IPv4 address"), ("", "at least one backend"),
                     ("10.0.1.1 weight 0", "weight 0"), ("10.0.1.1, 10.0.1.1:80", "twice"),
                     ("10.0.1.1 weight", "needs a number")]:
        with pytest.raises(RunError, match=why) as e:
            eng.write("lb.backends", bad)
        assert "'lb'" in str(e.value) and "backends" in str(e.value)
    assert eng.read("lb.backends") == "10.0.1.1:80 weight 3, 10.0.1.7:8080, 10.0.1.8:80 weight 0"


def test_draining_backend_is_forgotten_when_its_connections_end():
    eng = engine({"backends": ["10.0.1.1", "10.0.1.2"], "capacity": 16, "fin_timeout": 2,
                  "method": "round_robin"})
    out = feed(eng, client=at(SEC, [flow(i) for i in range(4)]))["o0"]
    assert [dst_of(f) for f in out] == ["10.0.1.1", "10.0.1.2"] * 2
    eng.write("lb.backends", "10.0.1.1")
    assert eng.read("lb.backend_connections") == "10.0.1.1:80 2\n10.0.1.2:80 2 draining"
    feed(eng, client=at(2 * SEC, [flow(1, flags="FA"), flow(3, flags="R")]))
    assert eng.read("lb.backend_connections") == "10.0.1.1:80 2\n10.0.1.2:80 2 draining"
    # Two batches: the sweep (two groups of 4 per batch) covers the 4 groups.
    feed(eng, client=at(10 * SEC, [flow(0, flags="A")]))
    feed(eng, client=at(10 * SEC, [flow(2, flags="A")]))
    assert eng.read("lb.backend_connections") == "10.0.1.1:80 2"
    assert eng.read("lb.connections") == "2" and eng.stats()["lb"]["expired"] == 2
    # 10.0.1.2 can come back, as a new backend.
    eng.write("lb.backends", "10.0.1.1, 10.0.1.2")
    assert eng.read("lb.backend_connections") == "10.0.1.1:80 2\n10.0.1.2:80 0"


def test_too_many_draining_backends_is_refused(many):
    sets = [[f"10.{k}.{i // 256}.{i % 256}" for i in range(512)] for k in (1, 2, 3)]
    eng = engine({"backends": sets[0], "capacity": 65536})
    feed(eng, client=[(SEC, f) for f in many[:10000]])
    eng.write("lb.backends", " ".join(sets[1]))
    feed(eng, client=[(2 * SEC, f) for f in many[10000:20000]])
    drain = eng.read("lb.backend_connections").splitlines()
    assert len(drain) == 1024 and sum(x.endswith("draining") for x in drain) == 512
    with pytest.raises(RunError, match="draining"):
        eng.write("lb.backends", " ".join(sets[2]))
    assert eng.read("lb.backends") == ", ".join(f"{b}:80" for b in sets[1])
    out = feed(eng, client=[(3 * SEC, f) for f in many[:100]])["o0"]
    assert all(dst_of(f).startswith("10.1.") for f in out)   # old connections still served


# --- timeouts and TCP state -------------------------------------------------------------

def test_tcp_connection_ends_after_fin_and_timeout():
    eng = engine({"backends": B3, "timeout": 100, "fin_timeout": 5, "protocol": "both",
                  "udp_timeout": 20, "capacity": 64})
    lb = lambda: eng.stats()["lb"]                               # noqa: E731
    feed(eng, client=at(0, [flow(1), flow(2, proto="udp"), flow(3)]))
    assert eng.read("lb.connections") == "3" and lb()["new_flows"] == 3
    table = eng.read("lb.connection_table").splitlines()
    assert len(table) == 3
    assert any(line.startswith(f"udp {client_addr(2)[0]}:{client_addr(2)[1]} -> ")
               and line.endswith(" open 20s") for line in table)
    feed(eng, client=at(1 * SEC, [flow(1, flags="FA")]))
    assert sum(" closing " in line for line in eng.read("lb.connection_table").splitlines()) == 1
    feed(eng, client=at(3 * SEC, [flow(1, flags="A"), flow(2, proto="udp")]))
    assert lb()["new_flows"] == 3                                  # still known
    feed(eng, client=at(9 * SEC, [flow(1)]))                        # 6 s after its last packet
    assert lb()["new_flows"] == 4 and lb()["expired"] == 1
    feed(eng, client=at(22 * SEC, [flow(2, proto="udp")]))          # 19 s idle: kept
    assert lb()["new_flows"] == 4
    feed(eng, client=at(43 * SEC, [flow(2, proto="udp")]))          # 21 s idle: new
    assert lb()["new_flows"] == 5
    feed(eng, client=at(99 * SEC, [flow(3, flags="A")]))            # 99 s idle: kept
    assert lb()["new_flows"] == 5
    feed(eng, client=at(200 * SEC, [flow(3, flags="A")]))           # 101 s idle: new
    assert lb()["new_flows"] == 6


def test_syn_after_rst_starts_a_new_connection():
    eng = engine({"backends": B3, "method": "round_robin"})
    first = feed(eng, client=at(SEC, [flow(1)]))["o0"]
    assert dst_of(first[0]) == "10.0.1.1"
    feed(eng, servers=at(2 * SEC, [reply(1, "10.0.1.1", flags="R")]))
    same = feed(eng, client=at(3 * SEC, [flow(1, flags="A")]))["o0"]  # not a SYN: same
    assert dst_of(same[0]) == "10.0.1.1" and eng.stats()["lb"]["new_flows"] == 1
    again = feed(eng, client=at(3 * SEC, [flow(1)]))["o0"]
    assert dst_of(again[0]) == "10.0.1.2" and eng.stats()["lb"]["new_flows"] == 2
    assert eng.read("lb.backend_connections") == "10.0.1.1:80 0\n10.0.1.2:80 1\n10.0.1.3:80 0"


# --- exhaustion -------------------------------------------------------------------------

def test_full_table_still_balances_and_recovers():
    eng = engine({"backends": B3, "capacity": 8, "protocol": "udp", "udp_timeout": 10})
    lb = lambda: eng.stats()["lb"]                               # noqa: E731
    first = feed(eng, client=at(SEC, [flow(i, proto="udp") for i in range(40)]))["o0"]
    assert len(first) == 40
    stored = int(eng.read("lb.connections"))
    assert 4 <= stored <= 8
    assert lb()["table_full"] == 40 - stored and lb()["new_flows"] == 40
    # Unrecorded flows keep their backend (Maglev) and their replies come back.
    second = feed(eng, client=at(2 * SEC, [flow(i, proto="udp") for i in range(40)]))["o0"]
    assert [dst_of(f) for f in second] == [dst_of(f) for f in first]
    assert lb()["table_full"] == 2 * (40 - stored)
    rep = [reply(i, dst_of(f), proto="udp") for i, f in enumerate(first)]
    back = feed(eng, servers=at(3 * SEC, rep))["o1"]
    assert back == [to_client(r) for r in rep]
    assert lb()["no_conn_replies"] == 40 - stored
    # After the timeout the entries are reclaimed and new flows recorded.
    full_before = lb()["table_full"]
    feed(eng, client=at(20 * SEC, [flow(100 + i, proto="udp") for i in range(6)]))
    assert lb()["expired"] == stored
    now = int(eng.read("lb.connections"))
    assert now >= 1 and now + (lb()["table_full"] - full_before) == 6
    assert eng.stats()["lb"]["dropped"] == 0


# --- configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("cfg, message", [
    ({"vip": "10.0.0.300"}, "parameter 'vip': '10.0.0.300' is not an IPv4 address"),
    ({"backends": []}, "at least one backend"),
    ({"backends": ["10.0.1.1", "10.0.1.1"]}, "backend 10.0.1.1:80 is listed twice"),
    ({"backends": ["10.0.1.1:80", "10.0.1.1"]}, "listed twice"),
    ({"backends": ["10.0.1.1 weight 2000"]}, "weight must be 0 to 1000"),
    ({"backends": ["10.0.1.1 weight 0"]}, "every backend has weight 0"),
    ({"backends": ["10.0.1.1:0"]}, "port must be 1 to 65535"),
    ({"backends": ["bogus"]}, "'bogus' is not an IPv4 address"),
    ({"backends": ["10.0.1.1 10.0.1.2"]}, "item 1: '10.0.1.1 10.0.1.2': expected"),
    ({"backends": [7]}, "item 1: 7: expected"),
    ({"table_size": 65536}, "parameter 'table_size': 65536 is not a prime"),
    ({"table_size": 7, "backends": ["10.0.1.1 weight 5", "10.0.1.2 weight 5"]},
     "weights add up to 10, more than table_size 7"),
    ({"method": "random"}, "parameter 'method'"),
    ({"protocol": "icmp"}, "parameter 'protocol'"),
    ({"capacity": 0}, "parameter 'capacity': 0 is below the minimum 4"),
    ({"port": None}, "missing parameter 'port'"),
])
def test_bad_configuration(cfg, message):
    with pytest.raises(ConfigError) as e:
        loader.load(lb_yaml({"backends": B3, **cfg}))
    assert "element 'lb'" in str(e.value) and message in str(e.value)


def test_backends_as_a_mapping_with_weights():
    eng = engine({"backends": {"10.0.1.1": 1, "10.0.1.2:8080": 3}})
    assert eng.read("lb.backends") == "10.0.1.1:80, 10.0.1.2:8080 weight 3"
    out = feed(eng, client=[flow(i) for i in range(2000)])["o0"]
    within_binomial(Counter(dst_of(f) for f in out), 2000, {"10.0.1.1": 0.25, "10.0.1.2": 0.75})
    assert_checksums(out)


# --- a write while the engine runs ------------------------------------------------------

TEMPLATE = ("02000000000102000000000a080045000028000100004006c45aac1000010a000064040000500000"
            "00010000000150102000d50d000000000000000000000000")   # TCP ACK 172.16.0.1:1024 -> VIP:80


def test_write_while_running_moves_no_connection_and_loses_no_packet(tmp_path):
    (tmp_path / "lbslow.py").write_text(HOLDING_PASS)
    (tmp_path / "g.yaml").write_text(f"""
elements:
  src:   {{class: InfiniteSource, limit: 200000, flows: 2000, data: "{TEMPLATE}"}}
  check: {{class: CheckIPHeader, offset: 14}}
  lb:    {{class: LoadBalancer, vip: {VIP}, port: 80, backends: [10.0.1.1, 10.0.1.2, 10.0.1.3]}}
  slow:  {{class: lbslow.SlowPass}}
  drop:  {{class: Discard}}
connections: [src -> check -> lb -> slow -> drop]
""")
    eng = Engine(plan.build(loader.load(str(tmp_path / "g.yaml"))))
    during = run_held(eng, sys.modules["lbslow"],
                      lambda: eng.write("lb.backends", "10.0.1.1, 10.0.1.2, 10.0.1.4"))
    s = eng.stats()["lb"]
    assert 50_000 <= during < 200_000                 # the write landed mid-run
    assert s["in"] == s["out"] == 200_000 and s["dropped"] == 0
    assert eng.stats()["drop"]["dropped"] == 200_000
    assert s["new_flows"] == 2000                     # no connection was re-balanced
    assert eng.read("lb.backends") == "10.0.1.1:80, 10.0.1.2:80, 10.0.1.4:80"
    conns = dict(line.split(" ", 1) for line in eng.read("lb.backend_connections").splitlines())
    assert conns["10.0.1.4:80"] == "0" and conns["10.0.1.3:80"].endswith(" draining")
    assert sum(int(v.split()[0]) for v in conns.values()) == 2000
