"""Measuring a graph fed by its own sources (`middlebox bench`, bench/suite.py).

    from middlebox import bench, loader
    g = loader.load("bench/graphs/classifier.yaml")
    bench.set_traffic(g, size=128, batch=8)     # the InfiniteSources' traffic
    r = bench.measure(g, packets=5_000_000)     # {"mpps": ..., "ns_per_packet": ...}

The batch is how many packets a source makes per engine poll
(InfiniteSource `burst`), which is how many packets travel together through
every element. It can be 1 to MAX_BATCH: the engine's batch arrays are
sized by MB_BATCH (32, runtime/mb.h) when it is compiled, so larger batches
need a rebuild. Cycles and instructions per packet come from `perf stat`
attached to this process while it runs, where the machine lets perf count
them (virtual machines often do not).
"""

import os
import platform
import shutil
import signal
import subprocess
import sys
import time

from middlebox.errors import ConfigError, RunError

MAX_BATCH = 32                 # MB_BATCH in runtime/mb.h
BATCHES = (1, 2, 4, 8, 16, 32)
SIZES = (64, 128, 256, 512, 1024, 1500)
MIN_SIZE, MAX_SIZE = 14, 9000  # InfiniteSource `length`


def traffic_sources(graph):
    """The InfiniteSources that make the measured traffic: those without a
    limit (limited ones prime tables, e.g. one ARP reply)."""
    return [e for e in graph.elements.values()
            if e.source and hasattr(e, "template") and getattr(e, "limit", 0) < 0]


def traffic(graph):
    """(packet size, batch, flows): the first traffic source's size and
    flows; the batch is the packets all traffic sources make per poll."""
    srcs = traffic_sources(graph)
    if not srcs:
        return None, None, None
    e = srcs[0]
    return len(e.template), sum(s.burst for s in srcs), e.flows


def set_traffic(graph, size=None, batch=None, flows=None):
    """Change the traffic sources of a loaded graph in place: frame size in
    bytes (an IPv4 template keeps valid lengths and checksums), packets per
    poll (shared by several sources in the proportions they had), flows.
    Raises ConfigError with one line."""
    srcs = traffic_sources(graph)
    if (size or batch or flows) and not srcs:
        raise ConfigError("--size, --batch and --flows need an InfiniteSource without "
                          "'limit' in the graph", graph.file)
    if batch is not None and not 1 <= batch <= MAX_BATCH:
        raise ConfigError(f"--batch must be 1 to {MAX_BATCH} (the engine's batch, MB_BATCH, "
                          "is fixed when it is compiled)")
    if size is not None and not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be {MIN_SIZE} to {MAX_SIZE} bytes")
    if flows is not None and not 1 <= flows <= 1 << 24:
        raise ConfigError(f"--flows must be 1 to {1 << 24}")
    total = sum(e.burst for e in srcs)
    for e in srcs:
        if batch is not None:
            # several sources share the batch in the proportions they had
            e.burst = max(1, round(batch * e.burst / total))
        if flows is not None:
            e.flows = flows
        if size is not None and size != len(e.template):
            e.template = resize(e.template, size, e.name)


def resize(frame, size, name="source"):
    """`frame` grown (zero payload) or cut to `size` bytes. For an
    Ethernet/IPv4 frame the IP total length, UDP length and the IP, UDP and
    TCP checksums are made to match; its headers are never cut."""
    frame = bytes(frame)
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[14] >> 4 == 4:
        from scapy.layers.inet import IP, TCP, UDP
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw
        p = Ether(frame)
        ip = p[IP]
        hdr = 14 + ip.ihl * 4
        l4 = {6: TCP, 17: UDP}.get(ip.proto)
        if l4 is not None and p.haslayer(l4):
            hdr += len(p[l4]) - len(p[l4].payload)
        elif ip.proto == 1:
            hdr += 8
        if size < hdr:
            raise ConfigError(f"element '{name}': packet size {size} is smaller than its "
                              f"headers ({hdr} bytes)")
        head = bytes(p)[:hdr]
        q = Ether(head)
        del q[IP].len
        del q[IP].chksum
        if l4 is UDP and q.haslayer(UDP):
            del q[UDP].len
            if q[UDP].chksum:
                del q[UDP].chksum
        elif l4 is TCP and q.haslayer(TCP):
            del q[TCP].chksum
        inner = q.lastlayer()
        inner.add_payload(Raw(bytes(size - hdr)))
        out = bytes(q)
        if len(out) == size:
            return out
    return frame[:size].ljust(size, b"\0")


def measure(graph, packets, warmup=None, progress=None, engine_args=None):
    """Run `packets` packets from the graph's sources on a fresh engine
    (after a warm-up) and return the result as a dict. progress(done,
    total, mpps) is called between chunks when given."""
    from middlebox import plan
    from middlebox.runtime import Engine

    if packets < 1:
        raise ConfigError("--packets must be at least 1")
    eng = Engine(plan.build(graph), **(engine_args or {}))
    warm = min(packets, 100_000) if warmup is None else warmup
    if not traffic_sources(graph):
        warm = 0            # limited sources only: a warm-up would use them up
    if warm:
        eng.run_sources(warm)  # warm caches, fill tables
    chunks = 50 if progress else 1
    step = max(packets // chunks, 1)
    made, secs = 0, 0.0
    counter = PerfCounter.start()
    try:
        while made < packets:
            m, s = eng.run_sources(min(step, packets - made))
            made += m
            secs += s
            if progress:
                progress(made, packets, made / secs / 1e6 if secs else 0.0)
            if m == 0:
                break       # the sources stopped (a limit)
    finally:
        counts = counter.stop() if counter else None
    size, batch, flows = traffic(graph)
    res = {"graph": graph.name, "file": graph.file, "packets": made, "seconds": round(secs, 6),
           "mpps": round(made / secs / 1e6, 3) if secs else 0.0,
           "ns_per_packet": round(secs * 1e9 / made, 2) if made else 0.0,
           "cycles_per_packet": None, "instructions_per_packet": None,
           "perf": perf_status(),
           "batch": batch, "max_batch": MAX_BATCH, "packet_size": size, "flows": flows,
           "warmup_packets": warm, "engine": "host", "accelerator": "n/a"}
    if counts and made:
        if "cycles" in counts:
            res["cycles_per_packet"] = round(counts["cycles"] / made, 1)
        if "instructions" in counts:
            res["instructions_per_packet"] = round(counts["instructions"] / made, 1)
    res["elements"] = eng.stats()          # counted since the engine started (warm-up too)
    res["devices"] = eng.device_stats()
    return res


def sweep(graph_file, packets, batch=None, size=None, flows=None, progress=None):
    """Mpps against batch (at `size`) and against packet size (at `batch`),
    best of 3 runs of `packets` each per point:
    {"batch": [{"batch", "mpps", "ns_per_packet"}], "packet_size": [...]}."""
    from middlebox import loader

    out = {"batch": [], "packet_size": []}
    points = [("batch", b) for b in BATCHES] + [("packet_size", s) for s in SIZES]
    for k, (axis, value) in enumerate(points):
        g = loader.load(graph_file)
        if axis == "batch":
            set_traffic(g, size=size, batch=value, flows=flows)
        else:
            set_traffic(g, size=value, batch=batch, flows=flows)
        # best of 3 short runs: other load on the machine only ever slows a run
        r = max((measure(g, packets, warmup=min(packets, 50_000)) for _ in range(3)),
                key=lambda r: r["mpps"])
        out[axis].append({axis: value, "mpps": r["mpps"], "ns_per_packet": r["ns_per_packet"],
                          "batch": r["batch"], "packet_size": r["packet_size"]})
        if progress:
            progress(k + 1, len(points), r["mpps"])
    return out


def plot(result, path):
    """PNG: Mpps against batch size and against packet size."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RunError("--plot needs matplotlib (make setup installs it)") from None
    sw = result["sweep"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p["batch"] for p in sw["batch"]]
    a.plot(xs, [p["mpps"] for p in sw["batch"]], "o-", color="#2a7")
    a.set_xscale("log", base=2)
    a.set_xticks(xs, [str(x) for x in xs])
    a.set_xlabel(f"batch (packets per poll; at most {MAX_BATCH}, fixed at compile time)")
    a.set_ylabel("Mpps")
    a.set_title(f"{sw['batch'][0]['packet_size']}-byte packets")
    a.set_ylim(bottom=0)
    a.grid(alpha=0.3)
    xs = [p["packet_size"] for p in sw["packet_size"]]
    b.plot(xs, [p["mpps"] for p in sw["packet_size"]], "o-", color="#27a")
    b.set_xlabel("packet size (bytes)")
    b.set_title(f"batch {sw['packet_size'][0]['batch']}")
    b.set_ylim(bottom=0)
    b.grid(alpha=0.3)
    fig.suptitle(f"{result['graph']}: one core, host engine ({machine()['cpu']})", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100, format="png")
    except OSError as e:
        raise RunError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None
    finally:
        plt.close(fig)


# --- perf -------------------------------------------------------------------

PERF_STATUS = []   # cached perf_status() text


def perf_status():
    """"ok", or why `perf stat` cannot count cycles and instructions here."""
    if PERF_STATUS:
        return PERF_STATUS[0]
    perf = shutil.which("perf")
    if not perf:
        why = "perf is not installed"
    else:
        try:
            r = subprocess.run([perf, "stat", "-x,", "-e", "cycles,instructions", "true"],
                               capture_output=True, text=True, timeout=20)
            vals = parse_perf(r.stderr)
            if r.returncode:
                line = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
                why = f"perf stat failed: {line}"
            elif "cycles" in vals and "instructions" in vals:
                why = "ok"
            else:
                why = ("perf stat cannot count cycles or instructions on this machine "
                       "(no hardware counters, as in most VMs)")
        except (OSError, subprocess.SubprocessError) as e:
            why = f"perf stat failed: {e}"
    PERF_STATUS.append(why)
    return why


def parse_perf(text):
    """{event: count} from `perf stat -x,` output (unsupported events left out)."""
    vals = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].strip().isdigit():
            vals[parts[2].split(":")[0]] = int(parts[0])
    return vals


class PerfCounter:
    """`perf stat` attached to this process between start() and stop()."""

    def __init__(self, proc):
        self.proc = proc

    @classmethod
    def start(cls):
        if perf_status() != "ok":
            return None
        proc = subprocess.Popen([shutil.which("perf"), "stat", "-x,", "-e", "cycles,instructions",
                                 "-p", str(os.getpid())], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.2)     # let it attach
        return cls(proc)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        return parse_perf(err)


# --- the machine ------------------------------------------------------------

def machine():
    """CPU model, cores, kernel, Python: where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": sys.version.split()[0]}
