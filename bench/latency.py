"""Added latency per packet through a graph on live veth interfaces.

    python bench/latency.py [--packets 20000] [--rate 2000] [--configs v3,v2,v2-busy]

Run as root (it makes network namespaces). Writes bench/results/latency.json.

Method
------
Namespaces this script makes, removed at the end (traffic never leaves them):

    A (10.0.0.10) --veth-- R: middlebox graphs/router.yaml --veth-- B (192.168.1.10)
    A2 (10.1.0.1) --veth-- B2 (10.1.0.2)                     (the direct path)

A sends UDP datagrams to B (64-byte payload carrying a sequence number) at
a steady `--rate`, after a warm-up: slow datagrams that resolve ARP, then
one second at the rate, not counted (on this VM every process on the path,
the capture processes included, lags by milliseconds for the first ~0.4 s
of a paced stream: the vCPUs waking from idle). Capture sockets
(AF_PACKET, SO_TIMESTAMPNS: kernel software timestamps on one clock for
every namespace) record each datagram where it passes:

  t_in   R, the middlebox's lan interface, incoming: stamped when the veth
         queues the frame for receive (netif_rx; netdev_tstamp_prequeue is
         on by default), before the softirq hands it to the taps
  t_out  R, the middlebox's wan interface, outgoing: stamped when the
         kernel takes the frame the middlebox sent (the tcpdump tap point)
  t_a    A, leaving A's interface;  t_b  B, queued on B's interface

and the same t_a / t_b on the direct pair A2 -> B2. Per packet:

  residence = t_out - t_in            receive softirq + ring + wake-up + engine
                                      pass + sendmmsg: the added latency
  e2e       = t_b - t_a               one way, through the middlebox
  direct    = t_b - t_a on A2 -> B2   one way over one veth: the baseline

We report p50 / p99 / p99.9 (and mean, max) of each, and "added" = the
percentile of e2e minus the same percentile of direct. Each configuration
of the live driver is measured on a fresh middlebox:

  v3        TPACKET_V3 receive ring (the default): the kernel hands a block
            of frames over when it fills or when its retire timer (1 ms)
            fires, so at low rates a frame waits up to ~1 ms
  v2        TPACKET_V2 ring: each frame is visible at once (poll wakes on it)
  v2-busy   v2 with --busy-poll: no sleep in poll(), one core spinning

Caveats: this machine has 2 cores shared by the middlebox, the sender and
the capture processes (Python), so tails include scheduling noise (any
other load on the machine shows up as multi-millisecond tails: the receive
softirq itself waits for a CPU); the capture sockets add a little work to
every frame on those interfaces. Each capture record also keeps the time
the capture process read it (--keep DIR saves them) to tell such stalls.
"""

import argparse
import json
import os
import pathlib
import platform
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PY = sys.executable
PORT = 7777
MAGIC = b"MBLAT"
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux x86-64/arm64 value


# --- helpers run inside namespaces (this same file, --capture / --send) ---------

def capture(ifaces, out_path):
    """Record (seq, kernel ts ns, read time ns) for our datagrams on each
    interface (outgoing frames for names ending in '+out', incoming
    otherwise) until SIGTERM; then write JSON {iface: [...]}."""
    socks = {}
    for spec in ifaces:
        name, _, way = spec.partition("+")
        # ETH_P_ALL: only "all protocols" taps see outgoing frames.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((name, 0))
        s.setblocking(False)
        socks[s] = (spec, way == "out")
    recs = {spec: [] for spec in ifaces}
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print("ready", flush=True)
    while not stop:
        try:
            ready, _, _ = select.select(list(socks), [], [], 0.2)
        except InterruptedError:
            continue
        for s in ready:
            spec, want_out = socks[s]
            while True:
                try:
                    data, anc, _, addr = s.recvmsg(256, socket.CMSG_SPACE(16))
                except BlockingIOError:
                    break
                if addr[1] != 0x0800 or (addr[2] == PACKET_OUTGOING) != want_out:
                    continue
                ihl = (data[0] & 15) * 4 if data else 0
                if len(data) < ihl + 8 + 13 or data[9] != 17:
                    continue
                if struct.unpack("!H", data[ihl + 2:ihl + 4])[0] != PORT:
                    continue
                body = data[ihl + 8:]
                if body[:5] != MAGIC:
                    continue
                seq = struct.unpack("!Q", body[5:13])[0]
                ts = None
                for lvl, typ, d in anc:
                    if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", d[:16])
                        ts = sec * 1_000_000_000 + nsec
                if ts is not None:
                    recs[spec].append((seq, ts, time.time_ns()))
    with open(out_path, "w") as f:
        json.dump(recs, f)


def send(dst, count, rate, warmup):
    """`warmup` slow datagrams (ARP gets resolved), one second at `rate`
    (not counted: seq >= 1<<40), then `count` at `rate` per second."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = bytes(64 - 13)
    for i in range(warmup):
        s.sendto(MAGIC + struct.pack("!Q", (1 << 41) + i) + pad, (dst, PORT))
        time.sleep(0.01)
    gap = 1.0 / rate
    nxt = time.monotonic()
    for seq in [(1 << 40) + i for i in range(int(rate))] + list(range(count)):
        now = time.monotonic()
        if nxt > now:
            time.sleep(nxt - now)
        s.sendto(MAGIC + struct.pack("!Q", seq) + pad, (dst, PORT))
        nxt += gap


# --- the orchestration (root namespace) ------------------------------------------

class Lab:
    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.names, self.procs = [], []

    def sh(self, *cmd):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def ns(self, key):
        return f"mblat-{self.tag}-{key}"

    def add_ns(self, key):
        self.sh("ip", "netns", "add", self.ns(key))
        self.names.append(self.ns(key))
        for conf in ("all", "default"):
            self.sh("ip", "netns", "exec", self.ns(key), PY, "-c",
                    f"open('/proc/sys/net/ipv6/conf/{conf}/disable_ipv6','w').write('1')")
        self.sh("ip", "-n", self.ns(key), "link", "set", "lo", "up")

    def veth(self, k1, n1, k2, n2):
        self.sh("ip", "link", "add", n1, "netns", self.ns(k1), "type", "veth", "peer",
                "name", n2, "netns", self.ns(k2))
        for k, n in ((k1, n1), (k2, n2)):
            self.sh("ip", "-n", self.ns(k), "link", "set", n, "up")

    def addr(self, k, n, a, gw=None):
        self.sh("ip", "-n", self.ns(k), "addr", "add", a, "dev", n)
        if gw:
            self.sh("ip", "-n", self.ns(k), "route", "add", "default", "via", gw)

    def spawn(self, key, *cmd, ready=None):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(key), *cmd],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        if ready:
            f = p.stdout if ready == "stdout" else p.stderr
            r, _, _ = select.select([f], [], [], 20)
            line = f.readline() if r else ""
            if not line.strip():
                p.kill()
                raise SystemExit(f"{cmd[-1]}: did not start: {p.communicate()[1]}")
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            return p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.communicate()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for n in reversed(self.names):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def summary(ns_values):
    us = [v / 1000 for v in ns_values]
    if not us:
        return {"n": 0}
    return {"n": len(us), "p50_us": round(pct(us, 50), 2), "p99_us": round(pct(us, 99), 2),
            "p999_us": round(pct(us, 99.9), 2), "mean_us": round(sum(us) / len(us), 2),
            "max_us": round(max(us), 2)}


def pairs(a, b):
    ta = {r[0]: r[1] for r in a if r[0] < 1 << 40}
    return [r[1] - ta[r[0]] for r in b if r[0] in ta]


def measure(lab, cfg, packets, rate, tmp):
    """One configuration: fresh middlebox, captures, traffic; the numbers."""
    ring = "v2" if cfg.startswith("v2") else "v3"
    args = ["--ring", ring] + (["--busy-poll"] if cfg.endswith("busy") else [])
    mb = lab.spawn("r", PY, "-m", "middlebox", "run", str(ROOT / "graphs" / "router.yaml"),
                   "--dev", f"lan={lab.ra}", "--dev", f"wan={lab.rb}", "--duration", "600",
                   "--stats", "json", *args, ready="stderr")
    files = {k: os.path.join(tmp, f"{cfg}-{k}.json") for k in "rab"}
    caps = [lab.spawn("r", PY, __file__, "--capture", files["r"], lab.ra, lab.rb + "+out",
                      ready="stdout"),
            lab.spawn("a", PY, __file__, "--capture", files["a"], lab.va + "+out",
                      ready="stdout"),
            lab.spawn("b", PY, __file__, "--capture", files["b"], lab.vb, ready="stdout")]
    sender = lab.spawn("a", PY, __file__, "--send", "192.168.1.10", str(packets), str(rate))
    sender.communicate(timeout=packets / rate * 3 + 60)
    time.sleep(0.5)
    for c in caps:
        lab.stop(c)
    out, _ = lab.stop(mb)
    stats = json.loads(out) if out.strip() else {}
    r, a, b = (json.load(open(files[k])) for k in "rab")
    res = {
        "config": cfg,
        "residence": summary(pairs(r[lab.ra], r[lab.rb + "+out"])),
        "e2e": summary(pairs(a[lab.va + "+out"], b[lab.vb])),
        "delivered": len([r for r in b[lab.vb] if r[0] < 1 << 40]),
        "kernel_drops": {d: s.get("kernel_drops") for d, s in stats.get("devices", {}).items()},
    }
    return res


def direct(lab, packets, rate, tmp):
    f = {k: os.path.join(tmp, f"direct-{k}.json") for k in "ab"}
    caps = [lab.spawn("a2", PY, __file__, "--capture", f["a"], lab.va2 + "+out",
                      ready="stdout"),
            lab.spawn("b2", PY, __file__, "--capture", f["b"], lab.vb2, ready="stdout")]
    sender = lab.spawn("a2", PY, __file__, "--send", "10.1.0.2", str(packets), str(rate))
    sender.communicate(timeout=packets / rate * 3 + 60)
    time.sleep(0.5)
    for c in caps:
        lab.stop(c)
    a, b = json.load(open(f["a"])), json.load(open(f["b"]))
    return summary(pairs(a[lab.va2 + "+out"], b[lab.vb2]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=2000, help="datagrams per second")
    ap.add_argument("--configs", default="v3,v2,v2-busy")
    ap.add_argument("--json", default=str(RESULTS / "latency.json"))
    ap.add_argument("--keep", metavar="DIR", help="keep the raw capture files in DIR")
    ap.add_argument("--capture", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--send", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.capture:
        return capture(a.capture[1:], a.capture[0])
    if a.send:
        return send(a.send[0], int(a.send[1]), float(a.send[2]), warmup=20)
    if os.geteuid() != 0:
        raise SystemExit("bench/latency.py makes network namespaces: run it as root")
    import tempfile
    load0 = os.getloadavg()             # other work on the machine shows in the tails
    lab = Lab()
    try:
        for k in ("a", "b", "r", "a2", "b2"):
            lab.add_ns(k)
        t = lab.tag
        lab.va, lab.ra, lab.vb, lab.rb = f"mlA{t}", f"mlRa{t}", f"mlB{t}", f"mlRb{t}"
        lab.va2, lab.vb2 = f"mlC{t}", f"mlD{t}"
        lab.veth("a", lab.va, "r", lab.ra)
        lab.veth("b", lab.vb, "r", lab.rb)
        lab.veth("a2", lab.va2, "b2", lab.vb2)
        lab.addr("a", lab.va, "10.0.0.10/24", "10.0.0.1")
        lab.addr("b", lab.vb, "192.168.1.10/24", "192.168.1.1")
        lab.addr("a2", lab.va2, "10.1.0.1/24")
        lab.addr("b2", lab.vb2, "10.1.0.2/24")
        with tempfile.TemporaryDirectory() as tmp:
            if a.keep:                  # raw captures: (seq, kernel ts, read time) per point
                os.makedirs(a.keep, exist_ok=True)
                tmp = a.keep
            base = direct(lab, a.packets, a.rate, tmp)
            print(f"direct veth: p50 {base['p50_us']} us, p99 {base['p99_us']} us, "
                  f"p99.9 {base['p999_us']} us", flush=True)
            rows = []
            for cfg in a.configs.split(","):
                row = measure(lab, cfg, a.packets, a.rate, tmp)
                row["added_e2e"] = {k: round(row["e2e"][k] - base[k], 2)
                                    for k in ("p50_us", "p99_us", "p999_us")
                                    if row["e2e"].get(k) is not None}
                rows.append(row)
                r = row["residence"]
                print(f"{cfg:8} residence p50 {r['p50_us']} us, p99 {r['p99_us']} us, "
                      f"p99.9 {r['p999_us']} us; end to end added p50 "
                      f"{row['added_e2e'].get('p50_us')} us ({row['delivered']}/{a.packets} "
                      "delivered)", flush=True)
    finally:
        lab.close()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())
    res = {
        "bench": "latency",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "bench/latency.py"] + sys.argv[1:]),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_before": load0, "loadavg_after": os.getloadavg()},
        "graph": "graphs/router.yaml",
        "packets": a.packets, "rate_pps": a.rate, "payload_bytes": 64,
        "method": ("per-packet kernel software timestamps (SO_TIMESTAMPNS on AF_PACKET "
                   "capture sockets, one clock): residence = departure on the middlebox's "
                   "wan veth - arrival on its lan veth; e2e = arrival in B - departure from "
                   "A; direct = the same over one veth pair; added = e2e percentile - "
                   "direct percentile. See the docstring of bench/latency.py."),
        "direct": base,
        "configs": rows,
    }
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
