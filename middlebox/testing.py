"""Unit-test elements and graphs with packets in, packets out.

    from scapy.all import Ether, IP, UDP
    from middlebox.testing import run_element, run_graph

    res = run_element("Strip", {"length": 14}, [Ether() / IP() / UDP()])
    assert res[0] == [bytes(IP() / UDP())]
    assert res.stats["dropped"] == 0

    res = run_graph("graphs/classifier.yaml", {"lan": "tests/fixtures/mixed.pcap"})
    wan = res.scapy("wan")

Packets may be scapy packets, bytes, (timestamp_ns, bytes) pairs, a
Capture, or a pcap/pcapng path. Results keep packets in order as bytes.
"""

import os

from middlebox import loader, pcap
from middlebox import plan as plans
from middlebox.element import Element
from middlebox.graph import Graph

DUT = "element"


class Result:
    """Packets that left each output (port number or device name) and the
    counters of the run."""

    def __init__(self, captures, all_stats, device_stats, dut=None):
        self.captures = captures
        self.all_stats = all_stats
        self.device_stats = device_stats
        self.stats = all_stats.get(dut) if dut else None

    def __getitem__(self, key):
        cap = self.captures.get(key)
        if cap is None:
            raise KeyError(f"no output {key!r} (outputs: {', '.join(map(str, self.captures))})")
        return [cap.packet(i) for i in range(len(cap))]

    def __contains__(self, key):
        return key in self.captures

    def keys(self):
        return list(self.captures)

    def timestamps(self, key):
        return [int(t) for t in self.captures[key].timestamps]

    def scapy(self, key):
        """Output packets parsed as scapy Ether frames."""
        from scapy.layers.l2 import Ether
        return [Ether(b) for b in self[key]]

    def __repr__(self):
        sizes = ", ".join(f"{k!r}: {len(v)}" for k, v in self.captures.items())
        return f"Result({{{sizes}}})"


def capture(packets):
    """Anything the testing API accepts as packets, as a pcap.Capture."""
    if isinstance(packets, pcap.Capture):
        return packets
    if isinstance(packets, (str, os.PathLike)):
        return pcap.read(packets)
    return pcap.Capture.from_packets(list(packets))


def run_plan(plan, inputs, dut=None):
    """Run a built Plan over {device: packets}; every device is collected."""
    from middlebox.runtime import Engine

    eng = Engine(plan)
    out = eng.run([(dev, capture(p)) for dev, p in inputs.items()])
    return eng, out


def run_graph(graph, inputs=None):
    """Run a graph (YAML path, YAML text or Graph) over {device: packets}.

    Result keys are device names; every device of the graph is present."""
    g = graph if isinstance(graph, Graph) else loader.load(graph)
    eng, out = run_plan(plans.build(g), inputs or {})
    return Result(out, eng.stats(), eng.device_stats())


def run_element(element, config=None, packets=(), outputs=None):
    """Run one element over packets and return what left each output port.

    element: class name ("Strip"), Element class, or Element instance.
    packets: packets for input 0, or {input port: packets}.
    outputs: number of output ports to collect (default: the element's own
    count with nothing connected; give it for elements like Tee whose count
    follows their connections).
    """
    import middlebox.elements as lib

    if isinstance(element, Element):
        el = element
    else:
        cls = lib.catalogue()[element] if isinstance(element, str) else element
        el = cls.from_config(DUT, dict(config or {}), file="<test>")
    g = Graph(name=f"test-{type(el).__name__}", file="<test>")
    g.add(DUT, el)
    from middlebox.elements.devices import FromDevice, ToDevice

    ins = packets if isinstance(packets, dict) else {0: packets}
    for port in range(el.ninputs()):
        g.add(f"in{port}", FromDevice(device=f"in{port}"))
        g.connect(f"in{port}", DUT, 0, port)
    nout = outputs if outputs is not None else el.noutputs(0)
    for port in range(nout):
        g.add(f"out{port}", ToDevice(device=f"out{port}"))
        g.connect(DUT, f"out{port}", port, 0)
    g.check()
    eng, out = run_plan(plans.build(g), {f"in{p}": pk for p, pk in ins.items()})
    caps = {port: out[f"out{port}"] for port in range(nout)}
    return Result(caps, eng.stats(), eng.device_stats(), dut=DUT)
