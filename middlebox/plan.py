"""Compile a checked Graph into plan bytes, the form both engines load.

The format is written down in docs/plan-format.md; runtime/engine.c is its
reader and checks every offset. In short (all little-endian):

    header (64 bytes) | elements (32 bytes each, topological order)
    | ports (8 bytes each) | devices (16 bytes each) | strings | configs
"""

import struct

from middlebox.errors import ConfigError

MAGIC = b"MBPL"
VERSION = 1
HEADER = 64
BATCH = 32          # MB_BATCH in runtime/mb.h
MAX_QUEUE = 1 << 16
UNCONNECTED = 0xFFFFFFFF
FLAG_SOURCE = 1


def _fnv1a_py(data):
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def fnv1a(data):
    """The plan checksum (32-bit FNV-1a), computed by the engine's own C code
    when the host extension is built (a large plan takes ms, not 75 ms)."""
    try:
        from middlebox.runtime._engine import plan_checksum
    except ImportError:     # extension not built: the same sum in Python
        return _fnv1a_py(data)
    return plan_checksum(data)


class LowerContext:
    """What an element may ask for while lowering its configuration."""

    def __init__(self, graph, devices):
        self.graph = graph
        self._devices = {d: i for i, d in enumerate(devices)}

    def device_index(self, name):
        return self._devices[name]


class Plan:
    """Compiled graph: the bytes, plus what the host needs beside them."""

    def __init__(self, data, graph, order, devices):
        self.data = data
        self.graph = graph
        self.order = order          # element names, plan index order
        self.devices = devices      # device names, plan index order

    def index(self, name):
        return self.order.index(name)

    def __bytes__(self):
        return self.data

    def __len__(self):
        return len(self.data)


def compile(graph):  # noqa: A001 - the name users expect: plan.compile(graph)
    """Plan bytes for a graph (checked first)."""
    return build(graph).data


def build(graph):
    """A Plan object (bytes plus name tables) for a graph."""
    graph.check()
    order = graph.order()
    index = {n: i for i, n in enumerate(order)}
    devices = graph.devices()
    ctx = LowerContext(graph, devices)
    els = graph.elements

    out_edges = {}
    incoming = {n: [] for n in order}
    for c in graph.connections:
        out_edges[(c.src, c.sport)] = (c.dst, c.dport)
        incoming[c.dst].append(c.src)

    # Queue capacity: the most packets that can arrive in one pass. Sources
    # and receivers emit one batch per pass; every other element at most
    # its own queue's worth on each output (Tee copies once per output).
    cap, bound = {}, {}
    for n in order:
        e = els[n]
        if graph.nin[n] == 0:
            cap[n] = BATCH
        else:
            cap[n] = max(BATCH, sum(bound[s] for s in incoming[n]))
        bound[n] = els[n].emit_bound(cap[n])
        if max(cap[n], bound[n]) > MAX_QUEUE:
            raise ConfigError(f"up to {cap[n]} packets could queue here in one pass "
                              f"(limit {MAX_QUEUE}); the graph fans out too much",
                              graph.file, e.line, n)
    tx_cap = {d: 0 for d in devices}
    for d, senders in graph.senders().items():
        tx_cap[d] = sum(cap[s] for s in senders)
    receivers = graph.receivers()
    # Packets alive at once: what enters in one pass (a batch per receiver),
    # what elements make in it, what they hold across passes, and what waits
    # in transmit queues for a device with no room. A packet sits in one
    # queue at a time, so queue capacities are not added up.
    min_packets = (BATCH * (len(receivers) + 1) + sum(tx_cap.values())
                   + sum(els[n].created_bound(cap[n]) for n in order)
                   + sum(e.held_capacity() for e in els.values()))

    strings = bytearray()
    str_at = {}

    def s(text):
        if text not in str_at:
            str_at[text] = len(strings)
            strings.extend(text.encode() + b"\0")
        return str_at[text]

    configs = []
    name_off = s(graph.name)
    elem_recs, port_recs = [], []
    for n in order:
        e = els[n]
        try:
            cfg = e.lower(ctx)
        except ConfigError as err:
            raise err.locate(graph.file, e.line, n)
        if not isinstance(cfg, (bytes, bytearray)):
            raise TypeError(f"{type(e).__name__}.lower() returned {type(cfg).__name__}, not bytes")
        first = len(port_recs)
        for port in range(graph.nout[n]):
            dst = out_edges.get((n, port))
            if dst is None:
                port_recs.append(struct.pack("<IHH", UNCONNECTED, 0, 0))
            else:
                port_recs.append(struct.pack("<IHH", index[dst[0]], dst[1], 0))
        flags = FLAG_SOURCE if e.source else 0
        configs.append(bytes(cfg))
        elem_recs.append((s(n), s(e.kernel), len(cfg), first, graph.nout[n],
                          graph.nin[n], cap[n], flags))
    dev_recs = []
    for d in devices:
        frm = index[receivers[d]] if d in receivers else UNCONNECTED
        dev_recs.append(struct.pack("<IIII", s(d), frm, tx_cap[d], 0))

    elems_off = HEADER
    ports_off = elems_off + 32 * len(elem_recs)
    devs_off = ports_off + 8 * len(port_recs)
    str_off = devs_off + 16 * len(dev_recs)
    cfg_off = _align8(str_off + len(strings))
    body = bytearray()
    cfg_at = []
    for cfg in configs:
        cfg_at.append(cfg_off + len(body))
        body.extend(cfg)
        body.extend(b"\0" * (_align8(len(body)) - len(body)))
    total = cfg_off + len(body)

    out = bytearray(HEADER)
    for rec, at in zip(elem_recs, cfg_at):
        nm, kn, clen, first, nout, nin, qcap, flags = rec
        out += struct.pack("<IIIIIHHII", nm, kn, at, clen, first, nout, nin, qcap, flags)
    out += b"".join(port_recs) + b"".join(dev_recs) + strings
    out += b"\0" * (cfg_off - len(out))
    out += body
    assert len(out) == total
    struct.pack_into("<4sHHII", out, 0, MAGIC, VERSION, HEADER, total, 0)
    struct.pack_into("<IIIIIIIIII", out, 16, len(elem_recs), len(port_recs), len(dev_recs),
                     elems_off, ports_off, devs_off, str_off, len(strings), name_off, min_packets)
    struct.pack_into("<I", out, 12, fnv1a(out[16:]))
    return Plan(bytes(out), graph, order, devices)


def _align8(n):
    return (n + 7) & ~7


def read(data):
    """Decode plan bytes into a dict (for inspection and tests); raises
    ValueError on a malformed plan. The engine has its own checked reader."""
    if len(data) < HEADER or data[:4] != MAGIC:
        raise ValueError("not a middlebox plan")
    magic, version, hsize, total, csum = struct.unpack_from("<4sHHII", data, 0)
    if version != VERSION or total != len(data) or fnv1a(data[16:]) != csum:
        raise ValueError("bad plan version, length or checksum")
    (nel, nport, ndev, eoff, poff, doff, soff, slen, name_off,
     min_packets) = struct.unpack_from("<IIIIIIIIII", data, 16)
    strs = data[soff:soff + slen]

    def s(off):
        return strs[off:strs.index(b"\0", off)].decode()

    ports = [struct.unpack_from("<IHH", data, poff + 8 * i)[:2] for i in range(nport)]
    elements = []
    for i in range(nel):
        nm, kn, coff, clen, first, nout, nin, qcap, flags = struct.unpack_from(
            "<IIIIIHHII", data, eoff + 32 * i)
        elements.append({
            "name": s(nm), "kernel": s(kn), "config": bytes(data[coff:coff + clen]),
            "inputs": nin, "queue": qcap, "source": bool(flags & FLAG_SOURCE),
            "outputs": [None if dst == UNCONNECTED else (dst, port)
                        for dst, port in ports[first:first + nout]],
        })
    devices = []
    for i in range(ndev):
        nm, frm, txcap, _ = struct.unpack_from("<IIII", data, doff + 16 * i)
        devices.append({"name": s(nm), "from": None if frm == UNCONNECTED else frm,
                        "tx_queue": txcap})
    return {"version": version, "name": s(name_off), "min_packets": min_packets,
            "elements": elements, "devices": devices}
