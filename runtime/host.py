"""The host engine as Python sees it: a compiled plan, loaded into the C
engine, with Python elements attached and counters named.

    from middlebox import loader, plan
    from middlebox.runtime import Engine
    eng = Engine(plan.build(loader.load("graphs/classifier.yaml")))
    out = eng.run({"lan": capture})          # {device: Capture}
    eng.stats()["cls"]["ports"]
"""

import heapq

import numpy as np

from middlebox import pcap
from middlebox.errors import ConfigError, RunError
from middlebox.runtime._engine import Engine as _CEngine
from middlebox.runtime._engine import EngineError


class Engine:
    """A running instance of a Plan on this host."""

    def __init__(self, plan, packets=0, buffer_size=10240, headroom=128):
        self.plan = plan
        try:
            self.c = _CEngine(plan.data, packets, buffer_size, headroom)
        except EngineError as e:
            raise RunError(f"engine: {e}") from None
        els = plan.graph.elements
        for i, name in enumerate(plan.order):
            if els[name].kernel == "python":
                self.c.attach(i, els[name])
        self.oversize = {}

    @property
    def devices(self):
        return list(self.plan.devices)

    def run(self, inputs, collect=None):
        """Run packets through the graph.

        inputs: {device: Capture} (or a list of (device, Capture) pairs, whose
        order breaks timestamp ties). Packets enter in timestamp order across
        inputs, each input keeping its own order. Sources run until they stop.
        collect: devices whose output to return (default: every device).
        Returns {device: Capture}.
        """
        for name, e in self.plan.graph.elements.items():
            if e.source and getattr(e, "limit", 0) < 0:
                raise RunError(f"element '{name}': a source without 'limit' never ends")
        pairs = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
        index = {d: i for i, d in enumerate(self.plan.devices)}
        for dev, _ in pairs:
            if dev not in index:
                raise RunError(f"device '{dev}' is not in the graph "
                               f"(devices: {', '.join(self.plan.devices) or 'none'})")
        buffers = [cap.data for _, cap in pairs]
        order = _merge([cap.timestamps for _, cap in pairs])
        if len(pairs):
            which = np.concatenate([np.full(len(cap), i, dtype=np.uint16)
                                    for i, (_, cap) in enumerate(pairs)])
            offs = np.concatenate([cap.offsets.astype(np.uint64) for _, cap in pairs])
            lens = np.concatenate([cap.lengths.astype(np.uint32) for _, cap in pairs])
            ts = np.concatenate([cap.timestamps.astype(np.uint64) for _, cap in pairs])
            devs = np.array([index[d] for d, _ in pairs], dtype=np.uint32)[which]
            which, offs, lens, ts, devs = (a[order] for a in (which, offs, lens, ts, devs))
        else:
            which = np.zeros(0, np.uint16)
            offs, lens, ts = np.zeros(0, np.uint64), np.zeros(0, np.uint32), np.zeros(0, np.uint64)
            devs = np.zeros(0, np.uint32)
        want = self.plan.devices if collect is None else collect
        try:
            out, over = self.c.run_records(buffers, np.ascontiguousarray(which),
                                           np.ascontiguousarray(devs), np.ascontiguousarray(offs),
                                           np.ascontiguousarray(lens), np.ascontiguousarray(ts),
                                           [index[d] for d in want if d in index])
        except EngineError as e:
            raise RunError(str(e)) from None
        for d, n in over.items():
            name = self.plan.devices[d]
            self.oversize[name] = self.oversize.get(name, 0) + n
        linktype = pairs[0][1].linktype if pairs else 1
        return {self.plan.devices[d]: pcap.Capture(linktype, data, offsets, lengths, stamps,
                                                   nanos=True)
                for d, (data, offsets, lengths, stamps) in out.items()}

    def run_sources(self, max_packets=0):
        """Let sources run (bench): returns (packets made, seconds)."""
        try:
            return self.c.run_sources(max_packets)
        except EngineError as e:
            raise RunError(str(e)) from None

    def stats(self):
        """{element: {class, in, out, dropped, created, ports, <xstats>}}."""
        els = self.plan.graph.elements
        out = {}
        for s in self.c.stats():
            e = els[s["name"]]
            row = {"class": type(e).__name__, "in": s["in"], "out": s["out"],
                   "dropped": s["dropped"], "created": s["created"], "ports": s["ports"]}
            if s["held"]:
                row["held"] = s["held"]
            for i, xname in enumerate(getattr(e, "xstats", ())):
                row[xname] = s["xstat"][i]
            out[s["name"]] = row
        return out

    # -- handlers: Click-style live read/write ----------------------------------

    def handlers(self):
        """{"element.handler": "r" | "w" | "rw"} for every handler."""
        out = {}
        for name in self.plan.order:
            e = self.plan.graph.elements[name]
            reads = set(self._generic_reads(e)) | set(e.read_handlers)
            for h in sorted(reads | set(e.write_handlers)):
                out[f"{name}.{h}"] = ("r" if h in reads else "") + ("w" if h in e.write_handlers else "")
        return out

    @staticmethod
    def _generic_reads(e):
        return ["in", "out", "dropped", "created", "ports", "class", "config",
                *getattr(e, "xstats", ()), *e.params]

    def _split(self, handler):
        name, _, h = handler.rpartition(".")
        if not name or name not in self.plan.graph.elements:
            raise RunError(f"no element '{name or handler}' (handlers are ELEMENT.HANDLER)")
        return name, self.plan.graph.elements[name], h

    def read(self, handler):
        """The value of read handler "element.handler", as text."""
        name, e, h = self._split(handler)
        stats = self.stats()[name]
        if h in e.read_handlers:
            index = self.plan.index(name)

            class Ctx:
                def query(ctx, what=0):
                    return self.c.between_passes("query", index, int(what))
            Ctx.stats = stats
            try:
                return str(e.read_handlers[h](e, Ctx()))
            except EngineError as err:
                raise RunError(str(err)) from None
        if h in stats:
            v = stats[h]
            return " ".join(map(str, v)) if isinstance(v, list) else str(v)
        if h == "config":
            return " ".join(f"{k}={getattr(e, k)}" for k in e.params)
        if h in e.params:
            return str(getattr(e, h))
        raise RunError(f"element '{name}': no read handler '{h}' "
                       f"(has: {', '.join(sorted(set(self._generic_reads(e)) | set(e.read_handlers)))})")

    def write(self, handler, value=""):
        """Apply write handler "element.handler" with `value`: between two
        passes of a running engine (no packet is lost), or now when idle."""
        name, e, h = self._split(handler)
        if h not in e.write_handlers:
            have = ", ".join(sorted(e.write_handlers)) or "none"
            raise RunError(f"element '{name}': no write handler '{h}' (has: {have})")
        try:
            msg = e.write_handlers[h](e, value)
        except (ValueError, ConfigError) as err:
            raise RunError(f"element '{name}': {h}: {getattr(err, 'message', err)}") from None
        try:
            self.c.between_passes("control", self.plan.index(name), bytes(msg))
        except EngineError as err:
            raise RunError(str(err)) from None

    def device_stats(self):
        """{device: {rx, rx_dropped, tx, oversize}}; a device bound to a live
        interface (run_live) adds its port's counters: rx/tx count frames
        the kernel handed over / accepted, plus tx_errors, tx_dropped,
        kernel_drops (ring overruns), csum_fixed, interface."""
        out = {}
        for s in self.c.device_stats():
            name = s.pop("name")
            s["oversize"] = self.oversize.get(name, 0)
            out[name] = s
        for port in getattr(self, "live_ports", ()):
            name = self.plan.devices[port.dev]
            c = port.counters()
            row = out[name]
            row.update(interface=("tap:" if port.kind == "tap" else "") + port.ifname,
                       rx=c["rx"], tx=c["tx"], oversize=row["oversize"] + c["oversize"],
                       **{k: c[k] for k in ("rx_bytes", "tx_bytes", "tx_errors", "tx_dropped",
                                            "kernel_drops", "kernel_freezes", "csum_fixed")})
        return out

    # -- live interfaces (runtime/live.c; middlebox/runtime/live.py opens ports) --

    def run_live(self, ports, duration=0, busy_poll=False, poll_ms=0, signals=True):
        """Run on open LivePorts until SIGINT/SIGTERM, `duration` seconds
        (0: no limit) or live_stop(); returns the seconds it ran. Handlers
        (read/write) work meanwhile, between passes."""
        self.live_ports = list(ports)
        try:
            return self.c.run_live(self.live_ports, float(duration or 0), bool(busy_poll),
                                   int(poll_ms), bool(signals))
        except EngineError as e:
            raise RunError(str(e)) from None


def _keyed(stamps, which, start):
    """(timestamp, input, global index) for each record of one input."""
    return ((int(t), which, start + k) for k, t in enumerate(stamps))


def _merge(stamps):
    """Order that merges several inputs by timestamp, each input keeping
    its own order; ties go to the earlier input."""
    if not stamps:
        return np.zeros(0, dtype=np.int64)
    allts = np.concatenate([np.asarray(t, dtype=np.uint64) for t in stamps])
    if all(len(t) < 2 or bool(np.all(np.diff(t.astype(np.int64)) >= 0)) for t in stamps):
        return np.argsort(allts, kind="stable")
    # Some input is out of timestamp order: merge heads, never reorder within one.
    starts = np.cumsum([0] + [len(t) for t in stamps[:-1]])
    streams = [_keyed(ts, i, int(s)) for i, (ts, s) in enumerate(zip(stamps, starts))]
    return np.fromiter((k for _, _, k in heapq.merge(*streams)), dtype=np.int64,
                       count=len(allts))
