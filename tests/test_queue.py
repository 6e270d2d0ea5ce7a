"""Queue: FIFO storage between push and the engine's polls.

Expected outputs are the input packets themselves, in order, cut at the
documented capacity.
"""

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from middlebox import loader, plan
from middlebox.errors import ConfigError
from middlebox.runtime import Engine
from middlebox.testing import capture, run_element, run_graph

A, B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def frames(n, start=0, size=0):
    return [bytes(Ether(src=A, dst=B) / IP(src="10.0.0.1", dst="10.0.0.2")
                  / UDP(sport=1000 + i, dport=9) / Raw(bytes([i & 255]) * (size or i % 50)))
            for i in range(start, start + n)]


def graph(capacity, extra=""):
    return f"""
name: q
elements:
  lan: {{class: FromDevice, device: lan}}
  q:   {{class: Queue, capacity: {capacity}}}
  wan: {{class: ToDevice, device: wan}}
{extra}
connections: [lan -> q -> wan]
"""


def check_invariant(res):
    for name, s in res.all_stats.items():
        assert s["in"] + s["created"] == s["out"] + s["dropped"] + s.get("held", 0), (name, s)


def test_one_small_batch_is_delivered():
    # The whole input is one batch, stored in the run's last pass: the engine
    # must keep polling the queue until it is empty.
    pkts = frames(5)
    res = run_graph(graph(100), {"lan": pkts})
    assert res["wan"] == pkts
    q = res.all_stats["q"]
    assert q["in"] == 5 and q["out"] == 5 and q["dropped"] == 0 and q.get("held", 0) == 0
    assert q["highwater"] == 5 and q["drops"] == 0
    check_invariant(res)


def test_many_batches_in_order():
    pkts = frames(1000)
    res = run_graph(graph(1000), {"lan": pkts})
    assert res["wan"] == pkts
    q = res.all_stats["q"]
    assert q["drops"] == 0 and q["out"] == 1000
    # Input batches of 32 arrive while the queue gives out 32 per poll.
    assert 32 <= q["highwater"] <= 64
    check_invariant(res)


def test_overflow_drops_arrivals_and_counts():
    pkts = frames(32)                       # one batch of 32 into room for 10
    res = run_element("Queue", {"capacity": 10}, pkts)
    assert res[0] == pkts[:10]
    assert res.stats["drops"] == 22 and res.stats["dropped"] == 22
    assert res.stats["highwater"] == 10
    check_invariant(res)


def test_two_inputs_merge_through_the_queue_in_arrival_order():
    text = """
name: q2
elements:
  a:   {class: FromDevice, device: a}
  b:   {class: FromDevice, device: b}
  q:   {class: Queue, capacity: 64}
  wan: {class: ToDevice, device: wan}
connections: [a -> q, b -> q, q -> wan]
"""
    pa = [(i * 2000, f) for i, f in enumerate(frames(40))]
    pb = [(i * 2000 + 1000, f) for i, f in enumerate(frames(40, start=100))]
    res = run_graph(text, {"a": pa, "b": pb})
    merged = [f for _, f in sorted(pa + pb)]
    assert res["wan"] == merged
    check_invariant(res)


def test_held_counts_stored_packets_until_polled():
    g = loader.load(graph(50))
    p = plan.build(g)
    eng = Engine(p)
    cap = capture(frames(20))
    dev = p.devices.index("lan")
    out, _ = eng.c.run_records(
        [cap.data], np.zeros(len(cap), np.uint16), np.full(len(cap), dev, np.uint32),
        cap.offsets.astype(np.uint64), cap.lengths.astype(np.uint32),
        cap.timestamps.astype(np.uint64), [p.devices.index("wan")], sources=False)
    s = eng.stats()["q"]
    assert s["held"] == 20 and s["out"] == 0 and s["in"] == 20
    wan = eng.run({})["wan"]                # no input: the queue drains
    assert [wan.packet(i) for i in range(len(wan))] == frames(20)
    s = eng.stats()["q"]
    assert s.get("held", 0) == 0 and s["out"] == 20


def test_runts_and_jumbo_pass_unchanged():
    pkts = [b"", b"\x00", b"\xff" * 13, b"\x01" * 9000] + frames(3)
    res = run_element("Queue", {"capacity": 8}, pkts)
    assert res[0] == pkts
    check_invariant(res)


@pytest.mark.parametrize("cap, msg", [(0, "below the minimum 1"), (1 << 15, "above the maximum"),
                                      ("lots", "expected an integer")])
def test_bad_capacity(cap, msg):
    with pytest.raises(ConfigError, match=f"element 'q'.*capacity.*{msg}"):
        loader.load(graph(f'"{cap}"' if isinstance(cap, str) else cap))
