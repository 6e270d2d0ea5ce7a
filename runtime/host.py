"""The host engine as Python sees it: a compiled plan, loaded into the C
engine, with Python elements attached and counters named.

    from middlebox import loader, plan
    from middlebox.runtime import Engine
    eng = Engine(plan.build(loader.load("graphs/classifier.yaml")))
    out = eng.run({"lan": capture})          # {device: Capture}
    eng.stats()["cls"]["ports"]
"""

import os

from middlebox import pcap
from middlebox.errors import ConfigError, RunError
from middlebox.runtime._engine import Engine as _CEngine
from middlebox.runtime._engine import EngineError, ReadError, WriteError


class Engine:
    """A running instance of a Plan on this host."""

    def __init__(self, plan, packets=0, buffer_size=10240, headroom=128):
        self.plan = plan
        self._dev_index = {d: i for i, d in enumerate(plan.devices)}
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

        inputs: {device: Capture or pcap.ClassicFile} (or a list of (device,
        capture) pairs, whose order breaks timestamp ties). Packets enter in
        timestamp order across inputs, each input keeping its own order (the
        engine merges the inputs' heads as it goes; a ClassicFile's records
        are read in place). Sources run until they stop.
        collect: devices whose output to return (default: every device).
        Returns {device: Capture}.
        """
        pairs = self._inputs(inputs)
        index = self._dev_index
        want = self.plan.devices if collect is None else collect
        try:
            out, over, _ = self.c.run_inputs(self._sources(pairs),
                                             {index[d]: None for d in want if d in index})
        except ReadError as e:
            raise self._read_error(pairs, e) from None
        except EngineError as e:
            raise RunError(str(e)) from None
        self._count_oversize(over)
        linktype = pairs[0][1].linktype if pairs else 1
        return {self.plan.devices[d]: pcap.Capture(linktype, data, offsets, lengths, stamps,
                                                   nanos=True)
                for d, (data, offsets, lengths, stamps) in out.items()}

    def run_to_files(self, inputs, outputs, nanos=True, format=None):
        """As run(), but each device in `outputs` ({device: path}) has its
        packets written to its capture file as they leave, a large write at
        a time (classic pcap, ns or us by `nanos`, or pcapng by extension or
        `format`); devices not named are counted only. Every file is created
        (header first) before the run, so a device nothing reaches still gets
        a valid, empty capture. Returns {device: packets written}."""
        pairs = self._inputs(inputs)
        index = self._dev_index
        for dev in outputs:
            self._check_device(dev)
        linktype = pairs[0][1].linktype if pairs else 1
        snaplen = max(65535, self.c.max_packet)
        files, specs, names = [], {}, {}
        try:
            for dev, path in outputs.items():
                name = os.fspath(path)
                fmt = pcap.choose_format(name, format)
                try:
                    f = open(name, "wb")
                except OSError as e:
                    raise RunError(f"cannot write {name}: {pcap._reason(e)}") from None
                files.append(f)
                code = 2 if fmt == "pcapng" else (1 if nanos else 0)
                specs[index[dev]] = (f.fileno(), code,
                                     pcap.file_header(fmt, linktype, snaplen, nanos))
                names[index[dev]] = name
            try:
                _, over, written = self.c.run_inputs(self._sources(pairs), specs)
            except WriteError as e:
                name = names[e.dev]
                if e.errno == 0:
                    raise RunError(f"cannot write {name}: packet {e.packet} has a timestamp "
                                   f"beyond what classic pcap can hold") from None
                raise RunError(f"cannot write {name}: "
                               f"{pcap._reason(OSError(e.errno, os.strerror(e.errno)))}") from None
            except ReadError as e:
                raise self._read_error(pairs, e) from None
            except EngineError as e:
                raise RunError(str(e)) from None
        finally:
            for f in files:
                try:
                    f.close()
                except OSError:
                    pass
        self._count_oversize(over)
        return {self.plan.devices[d]: n for d, n in written.items()}

    def _inputs(self, inputs):
        """Check a run's inputs: [(device, Capture)] in tie-breaking order."""
        for name, e in self.plan.graph.elements.items():
            if e.source and getattr(e, "limit", 0) < 0:
                raise RunError(f"element '{name}': a source without 'limit' never ends")
        pairs = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
        for dev, _ in pairs:
            self._check_device(dev)
        return pairs

    def _check_device(self, dev):
        if dev not in self._dev_index:
            raise RunError(f"device '{dev}' is not in the graph "
                           f"(devices: {', '.join(self.plan.devices) or 'none'})")

    def _sources(self, pairs):
        """run_inputs' view of the captures (no object per packet): a
        ClassicFile's records are read in place, a Capture's arrays used."""
        index = self._dev_index
        out = []
        for dev, cap in pairs:
            if isinstance(cap, pcap.ClassicFile):
                out.append(("classic", cap.data, cap.swapped, cap.nanos, pcap.MAX_CAPLEN,
                            index[dev]))
            else:
                import numpy as np
                out.append(("arrays", cap.data, np.ascontiguousarray(cap.offsets, dtype=np.uint64),
                            np.ascontiguousarray(cap.lengths, dtype=np.uint32),
                            np.ascontiguousarray(cap.timestamps, dtype=np.uint64), index[dev]))
        return out

    @staticmethod
    def _read_error(pairs, e):
        cap = pairs[e.input][1]
        return pcap.record_error(getattr(cap, "name", "<capture>"), e.problem)

    def _count_oversize(self, over):
        for d, n in over.items():
            name = self.plan.devices[d]
            self.oversize[name] = self.oversize.get(name, 0) + n

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
