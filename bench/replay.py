"""pcap replay, end to end: `middlebox run graphs/firewall.yaml` over a
1M-packet pcap (read, process, write), against dpkt and scapy parsing the
same file in the same run.

    python bench/replay.py [--packets 1000000] [--repeat 3] [--scapy-packets 20000]

The trace (64-byte frames, lan side: mostly allowed outbound flows, about
one in eight denied; wan side: one ARP reply from the upstream gateway
first, so the next hop is resolved) is made once with scapy templates
tiled by numpy and cached under /tmp/middlebox-bench/ (80 MB: never
committed). Measured:

- the `middlebox run` process, wall clock (start-up included);
- the same run in-process, by phase, as the command does it: open the
  captures (mapped; classic pcap records are read in place by the engine),
  plan+engine, run with outputs written as packets leave (so the process
  start-up shows separately);
- the Python API on the same files: pcap.read, Engine.run (outputs in
  memory), pcap.write_records;
- dpkt reading the whole file and decoding Ethernet, IP and TCP/UDP/ICMP
  of every packet (one Python object per layer per packet);
- scapy's rdpcap on the first --scapy-packets packets, extrapolated to the
  whole file (scapy is too slow to read 1M packets in a benchmark run).

Writes bench/results/replay.json; prints Mpps and the ratios.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
GRAPH = ROOT / "graphs" / "firewall.yaml"
CACHE = pathlib.Path(os.environ.get("MIDDLEBOX_BENCH_CACHE", "/tmp/middlebox-bench"))
TARGET_MPPS = 5.0       # issue #5: >= 5 Mpps for the firewall graph on a 1M-packet pcap

# graphs/firewall.yaml's addresses
FW_LAN_MAC = "02:00:00:00:00:01"
FW_WAN_MAC = "02:00:00:00:01:01"
FW_WAN_IP = "192.0.2.1"
GW_IP, GW_MAC = "192.0.2.254", "02:00:00:00:02:fe"
FRAME = 64
TRACE_VERSION = 1       # bump when the trace changes, to regenerate the cache


def _templates():
    """Distinct 64-byte lan frames and whether the firewall allows each.

    Outbound the firewall allows TCP to ssh, smtp, domain, http, https, UDP
    to domain and ntp, and ICMP echo; telnet, SMB, NetBIOS and SNMP are
    denied (graphs/firewall.yaml's out_filter)."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    allowed = [("tcp", 80), ("tcp", 443), ("tcp", 22), ("tcp", 25), ("tcp", 53),
               ("udp", 53), ("udp", 123), ("icmp", 8)]
    denied = [("tcp", 23), ("tcp", 445), ("udp", 137), ("udp", 161)]
    out = []
    for k in range(1024):
        host = 2 + k % 200                        # 10.0.0.2 .. 10.0.0.201
        dst = f"198.51.100.{1 + (k * 7) % 250}" if k % 2 else f"203.0.113.{1 + (k * 3) % 250}"
        deny = k % 8 == 7                         # 1 in 8 flows is denied
        proto, port = denied[k % 4] if deny else allowed[k % 8]
        eth = Ether(src=f"02:00:00:00:10:{host:02x}", dst=FW_LAN_MAC)
        ip = IP(src=f"10.0.0.{host}", dst=dst, ttl=64, id=k)
        if proto == "tcp":
            l4 = TCP(sport=20000 + k, dport=port, flags="S", seq=k)
        elif proto == "udp":
            l4 = UDP(sport=20000 + k, dport=port)
        else:
            l4 = ICMP(type=8, id=k, seq=1)
        p = eth / ip / l4
        pad = FRAME - len(p)
        p = eth / ip / l4 / Raw(bytes(pad))
        data = bytes(p)
        assert len(data) == FRAME
        out.append((data, not deny))
    return out


def _write_pcap(path, frames, stamps_ns):
    """Classic pcap (nanosecond magic) of equal-length frames (uint8[n, L])."""
    n, length = frames.shape
    rec = np.empty((n, 16 + length), dtype=np.uint8)
    hdr = rec[:, :16].view("<u4")
    hdr[:, 0] = stamps_ns // 1_000_000_000
    hdr[:, 1] = stamps_ns % 1_000_000_000
    hdr[:, 2] = length
    hdr[:, 3] = length
    rec[:, 16:] = frames
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        f.write(memoryview(rec).cast("B"))


def make_trace(n, folder=CACHE):
    """(lan.pcap, wan.pcap, allowed count) for n lan packets; cached."""
    folder.mkdir(parents=True, exist_ok=True)
    lan = folder / f"fw-lan-{n}-v{TRACE_VERSION}.pcap"
    wan = folder / f"fw-wan-v{TRACE_VERSION}.pcap"
    meta = folder / f"fw-lan-{n}-v{TRACE_VERSION}.json"
    if lan.exists() and wan.exists() and meta.exists():
        return lan, wan, json.loads(meta.read_text())["allowed"]
    from scapy.layers.l2 import ARP, Ether

    base = 1_700_000_000 * 1_000_000_000
    tmpl = _templates()
    table = np.frombuffer(b"".join(d for d, _ in tmpl), dtype=np.uint8).reshape(len(tmpl), FRAME)
    ok = np.array([a for _, a in tmpl])
    # flows interleave: a fixed pseudo-random walk over the templates
    idx = (np.arange(n, dtype=np.int64) * 389 + (np.arange(n) >> 10)) % len(tmpl)
    stamps = base + 1_000_000_000 + np.arange(n, dtype=np.uint64) * np.uint64(1000)  # 1 Mpps
    tmp = lan.with_suffix(".tmp")
    _write_pcap(tmp, table[idx], stamps.astype(np.uint64))
    os.replace(tmp, lan)
    reply = bytes(Ether(src=GW_MAC, dst=FW_WAN_MAC) /
                  ARP(op=2, hwsrc=GW_MAC, psrc=GW_IP, hwdst=FW_WAN_MAC, pdst=FW_WAN_IP))
    reply = reply.ljust(60, b"\0")
    _write_pcap(wan, np.frombuffer(reply, np.uint8).reshape(1, -1),
                np.array([base], dtype=np.uint64))
    allowed = int(ok[idx].sum())
    meta.write_text(json.dumps({"packets": n, "allowed": allowed}))
    return lan, wan, allowed


def slice_pcap(src, dst, count):
    """The first `count` records of a pcap of fixed-length records."""
    with open(src, "rb") as f:
        head = f.read(24 + 16)
        caplen = struct.unpack_from("<I", head, 32)[0]
        f.seek(24)
        body = f.read(count * (16 + caplen))
    with open(dst, "wb") as f:
        f.write(head[:24] + body)


# --------------------------------------------------------------------------

def run_process(lan, wan, outdir):
    """`middlebox run` as a user types it; returns (seconds, stats json)."""
    exe = shutil.which("middlebox", path=os.path.dirname(sys.executable)) or "middlebox"
    cmd = [exe, "run", str(GRAPH), "--in", f"lan={lan}", "--in", f"wan={wan}",
           "--out", f"wan={outdir / 'wan-out.pcap'}", "--out", f"lan={outdir / 'lan-out.pcap'}",
           "--stats", "json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"middlebox run failed: {r.stderr.strip()}")
    return secs, json.loads(r.stdout), cmd


def run_in_process(lan, wan, outdir):
    """The same run inside this process, timed by phase, as `middlebox run`
    does it: open the captures (classic pcap: mapped, records read in place
    by the engine), compile, run with each output written as packets leave."""
    from middlebox import loader, pcap, plan
    from middlebox.runtime import Engine

    t = [time.perf_counter()]
    caps = [("lan", pcap.open_capture(lan)), ("wan", pcap.open_capture(wan))]
    t.append(time.perf_counter())
    eng = Engine(plan.build(loader.load(str(GRAPH))))
    t.append(time.perf_counter())
    written = eng.run_to_files(caps, {dev: outdir / f"{dev}-inproc.pcap" for dev in ("wan", "lan")},
                               nanos=True)
    t.append(time.perf_counter())
    phases = dict(zip(("read", "compile", "run_and_write"), (b - a for a, b in zip(t, t[1:]))))
    _check_forwarded(pcap.read(outdir / "wan-inproc.pcap"))
    return t[-1] - t[0], phases, eng.stats(), written


def run_library(lan, wan, outdir):
    """The Python API path, by phase: pcap.read (index arrays), Engine.run
    (outputs collected in memory), pcap.write_records."""
    from middlebox import loader, pcap, plan
    from middlebox.runtime import Engine

    t = [time.perf_counter()]
    caps = [("lan", pcap.read(lan)), ("wan", pcap.read(wan))]
    t.append(time.perf_counter())
    eng = Engine(plan.build(loader.load(str(GRAPH))))
    t.append(time.perf_counter())
    out = eng.run(caps, collect=["wan", "lan"])
    t.append(time.perf_counter())
    for dev in ("wan", "lan"):
        c = out[dev]
        pcap.write_records(outdir / f"{dev}-lib.pcap", c.linktype, c.data, c.offsets,
                           c.lengths, c.timestamps, nanos=True)
    t.append(time.perf_counter())
    _check_forwarded(out["wan"])
    return t[-1] - t[0], dict(zip(("read", "compile", "engine_run", "write"),
                                  (b - a for a, b in zip(t, t[1:]))))


def _check_forwarded(cap):
    """A few forwarded frames look as the firewall documents: sent to the
    gateway's MAC from the wan MAC, TTL decremented, IP checksum valid."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    for i in (0, len(cap) // 2, len(cap) - 1):
        p = Ether(cap.packet(i))
        ip = p[IP]
        fresh = IP(bytes(ip))
        del fresh.chksum
        if (p.dst != GW_MAC or p.src != FW_WAN_MAC or ip.ttl != 63
                or IP(bytes(fresh)).chksum != ip.chksum):
            raise SystemExit(f"error: forwarded packet {i} is wrong: {p.summary()}")


def time_dpkt(path):
    """dpkt: read every record and decode Ethernet/IP/L4 (its usual loop)."""
    try:
        import dpkt
    except ImportError:
        return None
    n = ok = 0
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP,
                                                                   dpkt.icmp.ICMP)):
                ok += 1
            n += 1
    secs = time.perf_counter() - t0
    return {"version": dpkt.__version__, "packets": n, "decoded": ok, "seconds": round(secs, 3),
            "mpps": round(n / secs / 1e6, 4)}


def time_scapy(path, count):
    import scapy
    import scapy.layers.inet  # noqa: F401 - so rdpcap dissects Ethernet/IP/TCP/UDP/ICMP
    import scapy.layers.l2  # noqa: F401
    from scapy.utils import rdpcap
    with tempfile.TemporaryDirectory() as d:
        part = os.path.join(d, "slice.pcap")
        slice_pcap(path, part, count)
        t0 = time.perf_counter()
        pkts = rdpcap(part)
        secs = time.perf_counter() - t0
    return {"version": scapy.VERSION, "packets": len(pkts), "seconds": round(secs, 3),
            "mpps": round(len(pkts) / secs / 1e6, 5), "extrapolated": True}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="runs of middlebox (median, best)")
    ap.add_argument("--scapy-packets", type=int, default=20_000)
    ap.add_argument("--no-baselines", action="store_true", help="skip dpkt and scapy")
    ap.add_argument("--json", default=str(HERE / "results" / "replay.json"))
    a = ap.parse_args(argv)
    if a.packets < 1:
        raise SystemExit("error: --packets must be at least 1")

    # Byte-compile the package first, as a pip install does: with
    # PYTHONDONTWRITEBYTECODE set (this machine's default) an editable
    # install would otherwise recompile every module from source at each
    # start, which is not what a user's `middlebox run` pays.
    import compileall
    for sub in ("middlebox", "elements", "runtime"):
        compileall.compile_dir(str(ROOT / sub), quiet=1, maxlevels=0)

    t0 = time.perf_counter()
    lan, wan, allowed = make_trace(a.packets)
    gen = time.perf_counter() - t0
    n = a.packets
    print(f"trace: {lan} ({n} packets of {FRAME} bytes, {allowed} allowed; "
          f"{'made' if gen > 1 else 'cached'} in {gen:.1f} s)", flush=True)

    with tempfile.TemporaryDirectory(prefix="mb-replay-") as d:
        outdir = pathlib.Path(d)
        procs, inprocs, phases, libs, libphases = [], [], [], [], []
        for _ in range(a.repeat):
            for old in outdir.iterdir():     # write new files, as a first run does
                old.unlink()
            secs, stats, cmd = run_process(lan, wan, outdir)
            procs.append(secs)
            for old in outdir.iterdir():
                old.unlink()
            s, ph, _stats, counts = run_in_process(lan, wan, outdir)
            inprocs.append(s)
            phases.append(ph)
            for old in outdir.iterdir():
                old.unlink()
            s, ph = run_library(lan, wan, outdir)
            libs.append(s)
            libphases.append(ph)
        sent = stats["devices"]["wan"]["tx"]
        if sent != allowed or counts["wan"] != allowed:
            raise SystemExit(f"error: firewall sent {sent} packets on wan, expected {allowed}")
    proc = statistics.median(procs)
    inproc = statistics.median(inprocs)
    ph = {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]}
    lib = statistics.median(libs)
    lph = {k: round(statistics.median(p[k] for p in libphases), 4) for k in libphases[0]}
    row = {
        "graph": "firewall", "file": "graphs/firewall.yaml", "packets": n,
        "packet_size": FRAME, "allowed": allowed, "sent_wan": sent,
        "command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""),
        "process_seconds": round(proc, 4), "process_mpps": round(n / proc / 1e6, 3),
        "process_ns_per_packet": round(proc * 1e9 / n, 1),
        "inprocess_seconds": round(inproc, 4), "inprocess_mpps": round(n / inproc / 1e6, 3),
        "run_and_write_mpps": round(n / ph["run_and_write"] / 1e6, 3),
        "run_and_write_ns_per_packet": round(ph["run_and_write"] * 1e9 / n, 1),
        "library_seconds": round(lib, 4), "library_mpps": round(n / lib / 1e6, 3),
        "library_phases_seconds": lph,
        "engine_mpps": round(n / lph["engine_run"] / 1e6, 3),
        "engine_ns_per_packet": round(lph["engine_run"] * 1e9 / n, 1),
        "process_best_mpps": round(n / min(procs) / 1e6, 3),
        "inprocess_best_mpps": round(n / min(inprocs) / 1e6, 3),
        "startup_seconds": round(proc - inproc, 4),
        "phases_seconds": ph, "repeat": a.repeat,
        "target_mpps": TARGET_MPPS,
    }
    row["vs_target"] = round(row["process_mpps"] / TARGET_MPPS, 2)
    result = {"bench": "replay", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "trace": str(lan), "middlebox": row}
    print(f"middlebox run (process, end to end): {row['process_seconds']:.3f} s, "
          f"{row['process_mpps']:.2f} Mpps, {row['process_ns_per_packet']:.0f} ns/packet "
          f"(target {TARGET_MPPS} Mpps: {row['vs_target']}x); median of {a.repeat}, "
          f"best {row['process_best_mpps']:.2f} Mpps")
    print(f"  in-process {row['inprocess_mpps']:.2f} Mpps; phases: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in ph.items())
          + f"; start-up {row['startup_seconds'] * 1e3:.0f} ms")
    print(f"  Python API (pcap.read, Engine.run, pcap.write_records) {row['library_mpps']:.2f} Mpps; "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in lph.items())
          + f"; Engine.run alone {row['engine_mpps']:.2f} Mpps "
          f"({row['engine_ns_per_packet']} ns/packet)")
    if not a.no_baselines:
        dp = time_dpkt(lan)
        sc = time_scapy(lan, min(a.scapy_packets, n))
        result["dpkt"] = dp
        result["scapy"] = sc
        if dp:
            result["vs_dpkt"] = round(row["process_mpps"] / dp["mpps"], 1)
            result["vs_dpkt_inprocess"] = round(row["inprocess_mpps"] / dp["mpps"], 1)
            print(f"dpkt {dp['version']} (Ethernet+IP+L4 decode, same file): {dp['seconds']:.2f} s, "
                  f"{dp['mpps'] * 1e3:.0f} kpps; middlebox run / dpkt = {result['vs_dpkt']}x "
                  f"(in-process {result['vs_dpkt_inprocess']}x)")
        else:
            print("dpkt is not installed (make setup installs it): no dpkt ratio")
        result["vs_scapy"] = round(row["process_mpps"] / sc["mpps"], 0)
        result["vs_scapy_inprocess"] = round(row["inprocess_mpps"] / sc["mpps"], 0)
        print(f"scapy {sc['version']} rdpcap on the first {sc['packets']} packets: "
              f"{sc['seconds']:.2f} s, {sc['mpps'] * 1e3:.1f} kpps (extrapolated to {n}: "
              f"{n / (sc['mpps'] * 1e6):.0f} s); middlebox run / scapy = {result['vs_scapy']:.0f}x "
              f"(in-process {result['vs_scapy_inprocess']:.0f}x)")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
