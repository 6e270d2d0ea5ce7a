"""Forwarding rate through a graph VM, per QEMU network backend (issue 6).

For each backend (QEMU's TAP and socket netdevs) and each of two guests:

  firewall   graphs/firewall.yaml: every frame is classified, checked,
             routed, filtered, TTL-decremented, ARP-resolved and queued
  bounce     FromDevice(lan) -> ToDevice(wan): no element work, so its rate
             is what QEMU, the backend and the guest's virtio driver allow
             (the ceiling the firewall's rate is to be read against)
  bounce-queue  FromDevice(lan) -> Queue -> ToDevice(wan): the same with the
             firewall's transmit path (a Queue holds frames while the
             transmit ring is full, where bounce drops them)

a sender process sends the same minimum-size frame (60 bytes: TCP SYN
10.0.0.2 -> 192.0.2.2:80, which the firewall passes) into the lan NIC for
--warmup + --seconds seconds while this process counts the frames that come
out of the wan NIC (and answers the firewall's ARP query for 192.0.2.2).
Frames per second = frames out during the last --seconds / --seconds. Two
phases per boot:

  window     at most --window frames in flight (sent, not yet out): the
             sender idles when the VM is behind, so it does not take a core
             from QEMU; close to the loss-free rate
  blast      as fast as the sender can: the rate under overload (most
             frames are then lost in the kernel or QEMU before the guest)

Each (backend, guest) is booted --repeat times; median and best are kept.
By default QEMU (every thread) runs on one CPU and the sender and receiver
on another (taskset): unpinned, the four compete for the cores and rates
vary two-fold from boot to boot. Other load on the machine still counts
(the load average is recorded): under TCG these are rates of this machine.

Backends: socket = QEMU's socket netdev over loopback UDP (one datagram per
frame); tap = a TAP per NIC in a network namespace this program makes,
the host end an AF_PACKET socket bound to it (needs root).

Writes bench/results/vmrate.json.

    python bench/vmrate.py [--seconds 3] [--warmup 1] [--repeat 3] [--window 256]
                           [--backends tap,socket] [--accel tcg] [--pin]
"""

import argparse
import json
import multiprocessing
import os
import pathlib
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether

from middlebox.errors import ConfigError, RunError
from middlebox.unikernel import build, netns, qemu

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 60.0
LAN_MAC, WAN_MAC = "02:00:00:00:00:01", "02:00:00:00:01:01"   # graphs/firewall.yaml
HOST_WAN_MAC = "02:00:00:00:02:02"
FRAME = bytes(Ether(src="02:00:00:00:02:01", dst=LAN_MAC) / IP(src="10.0.0.2", dst="192.0.2.2")
              / TCP(sport=40000, dport=80, flags="S"))
assert len(FRAME) <= 60
FRAME = FRAME.ljust(60, b"\0")
MATCH = (slice(30, 34), FRAME[30:34], slice(36, 38), FRAME[36:38])   # dst IP, dst port
ETH_P_ALL = 0x0003

BOUNCE = """\
name: bounce
description: every frame from lan goes out of wan, nothing else (QEMU's ceiling)
elements:
  lan: {class: FromDevice, device: lan}
  wan: {class: ToDevice, device: wan}
  wan_in: {class: FromDevice, device: wan}
  drop: {class: Discard}
connections: [lan -> wan, wan_in -> drop]
"""
BOUNCE_QUEUE = BOUNCE.replace("name: bounce", "name: bounce-queue").replace(
    "  drop: {class: Discard}", "  drop: {class: Discard}\n  q: {class: Queue, capacity: 1024}"
).replace("lan -> wan,", "lan -> q -> wan,")
GUESTS = ("bounce", "bounce-queue", "firewall")


def arp_reply(request):
    """Our answer to the guest's 'who has 192.0.2.2' on wan."""
    req = Ether(request)
    return bytes(Ether(src=HOST_WAN_MAC, dst=req.src) /
                 ARP(op=2, hwsrc=HOST_WAN_MAC, psrc=req[ARP].pdst,
                     hwdst=req[ARP].hwsrc, pdst=req[ARP].psrc))


def is_arp_request(frame):
    return len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01"


def matches(frame):
    return len(frame) >= 38 and frame[MATCH[0]] == MATCH[1] and frame[MATCH[2]] == MATCH[3]


# --- the two backends: how frames get in and out -----------------------------------

class SocketWire:
    """NICs on QEMU's socket netdev: each NIC a UDP port pair on loopback."""

    name = "socket"

    def __init__(self):
        self.socks, self.qports = {}, {}

    def nics(self):
        out = []
        for dev, mac in (("lan", LAN_MAC), ("wan", WAN_MAC)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            q.bind(("127.0.0.1", 0))
            self.qports[dev] = q.getsockname()[1]
            q.close()
            s.connect(("127.0.0.1", self.qports[dev]))
            self.socks[dev] = s
            out.append((dev, f"socket:udp=127.0.0.1:{s.getsockname()[1]},"
                             f"localaddr=127.0.0.1:{self.qports[dev]},mac={mac}"))
        return out, ()

    def sender(self):
        """A callable for the sender process: send(frame)."""
        return self.socks["lan"].send

    def receiver(self):
        return self.socks["wan"]

    def reply(self, frame):
        self.socks["wan"].send(frame)

    def close(self):
        for s in self.socks.values():
            s.close()


class TapWire:
    """NICs on TAPs in a namespace of their own; the host's end of each is an
    AF_PACKET socket bound to the TAP."""

    name = "tap"

    def __init__(self):
        self.ns = netns.Namespace("vmrate", prefix=f"mbbench{secrets.token_hex(3)}")
        self.socks = {}
        self.fds = []

    def nics(self):
        self.ns.__enter__()
        out = []
        for dev, mac in (("lan", LAN_MAC), ("wan", WAN_MAC)):
            ifname = f"vr{dev}{secrets.token_hex(2)}"
            fd = self.ns.tap(ifname)
            self.fds.append(fd)
            s = self.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.socks[dev] = s
            out.append((dev, f"tap:fd={fd},mac={mac}"))
        return out, tuple(self.fds)

    def sender(self):
        return self.socks["lan"].send

    def receiver(self):
        return self.socks["wan"]

    def reply(self, frame):
        self.socks["wan"].send(frame)

    def close(self):
        for s in self.socks.values():
            s.close()
        self.ns.close()


def sender(send, frame, seconds, window, received, sent_out):
    """The sender process. window 0: send as fast as possible (blast). Else
    keep at most `window` frames in flight (sent, not yet seen on wan; the
    receiver publishes its count in `received`), so the sender idles rather
    than burning a core; frames lost in flight are written off after 20 ms
    without progress."""
    n = written_off = 0
    end = time.perf_counter() + seconds
    last, last_t = -1, 0.0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if window:
            got = received.value
            room = window - (n - got - written_off)
            if room <= 0:
                if got != last:
                    last, last_t = got, now
                elif now - last_t > 0.02:
                    written_off = n - got          # lost for good: start afresh
                    last_t = now
                time.sleep(0.0001)
                continue
            burst = min(room, 32)
        else:
            burst = 64
        for _ in range(burst):
            try:
                send(frame)
                n += 1
            except OSError:         # ENOBUFS and friends: the frame is lost, go on
                pass
    sent_out.value = n


def warm_up(wire, timeout=TIMEOUT):
    """Send single frames until one comes out of wan (answering ARP)."""
    rx = wire.receiver()
    send = wire.sender()
    rx.settimeout(0.2)
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        send(FRAME)
        try:
            while True:
                f = rx.recv(4096)
                if is_arp_request(f):
                    wire.reply(arp_reply(f))
                elif matches(f):
                    return
        except socket.timeout:
            pass
    raise TimeoutError("no frame came through the VM")


def phase(wire, seconds, warmup, window):
    """Send for warmup + seconds, count frames out of wan during the last
    `seconds`; returns (frames out, window length s, frames sent)."""
    ctx = multiprocessing.get_context("fork")
    received, sent = ctx.RawValue("q", 0), ctx.RawValue("q", 0)
    p = ctx.Process(target=sender,
                    args=(wire.sender(), FRAME, warmup + seconds, window, received, sent))
    rx = wire.receiver()
    rx.settimeout(0.01)
    buf = bytearray(4096)
    got, at_start = 0, None
    t0 = time.perf_counter()
    p.start()
    t_start, t_end = t0 + warmup, t0 + warmup + seconds
    try:
        while True:
            now = time.perf_counter()
            if at_start is None and now >= t_start:
                at_start = (got, now)
            if now >= t_end:
                at_end = (got, now)
                break
            try:
                n = rx.recv_into(buf)
            except socket.timeout:
                continue
            if matches(buf[:n]):
                got += 1
                received.value = got
            elif is_arp_request(bytes(buf[:n])):
                wire.reply(arp_reply(bytes(buf[:n])))
    finally:
        p.join(warmup + seconds + 30)
        if p.is_alive():
            p.kill()
            p.join()
    # drain what is still in flight before the next phase
    try:
        while True:
            rx.recv_into(buf)
    except socket.timeout:
        pass
    return at_end[0] - at_start[0], at_end[1] - at_start[1], sent.value


def measure(wire, image, accel, seconds, warmup, window):
    """Boot, warm up, then a windowed phase and a blast phase. Returns a dict."""
    nics, fds = wire.nics()
    cmd = qemu.command(image, nics, accel=accel)
    if PIN:
        # QEMU (all its threads) on one CPU, the sender and receiver on another
        cmd = ["taskset", "-c", str(PIN[0])] + cmd
    res = {}
    with qemu.Guest(cmd, pass_fds=fds) as g:
        res["graph"], _, _ = g.wait_ready(TIMEOUT)
        warm_up(wire)
        for mode, w in (("window", window), ("blast", 0)):
            _, before = qemu.parse_stats(g.command("stats"))
            out, span, sent = phase(wire, seconds, warmup, w)
            lines = g.command("stats")
            _, devs = qemu.parse_stats(lines)
            res[mode] = {
                "frames_per_s": round(out / span),
                "offered_per_s": round(sent / (warmup + seconds)),
                "frames_out_in_window": out, "window_s": round(span, 3), "sent": sent,
                "guest_rx": devs["lan"][0] - before["lan"][0],
                "guest_rx_dropped": devs["lan"][1] - before["lan"][1],
                "guest_tx": devs["wan"][2] - before["wan"][2],
            }
            if w:
                res[mode]["in_flight"] = w
        res["guest_virtio_total"] = [ln.strip() for ln in lines if ln.startswith("  virtio:")]
    return res


PIN = None         # (QEMU's CPU, the sender's and receiver's CPU) with --pin


def run_one(backend, image, accel, seconds, warmup, window):
    wire = TapWire() if backend == "tap" else SocketWire()
    try:
        return measure(wire, image, accel, seconds, warmup, window)
    finally:
        wire.close()


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    ver = subprocess.run([qemu.qemu_path(), "--version"], capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "qemu": ver.stdout.splitlines()[0] if ver.stdout else "?",
            "loadavg_before": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="blasting seconds not counted")
    ap.add_argument("--window", type=int, default=256,
                    help="frames in flight in the windowed phase (default 256)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="boots per backend and guest; the median and best are reported")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="QEMU on one CPU, sender and receiver on another (taskset; "
                         "the default when there are two CPUs: much steadier rates)")
    ap.add_argument("--backends", default="tap,socket")
    ap.add_argument("--graph", default=str(ROOT / "graphs" / "firewall.yaml"))
    ap.add_argument("--accel", default="tcg", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--json", default=str(HERE / "results" / "vmrate.json"))
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("tap", "socket"):
            print(f"vmrate: unknown backend '{b}' (tap, socket)", file=sys.stderr)
            return 2
    global PIN
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2 and shutil.which("taskset"):
            PIN = (cpus[0], cpus[1])
            os.sched_setaffinity(0, {PIN[1]})   # the sender, forked, inherits it
        else:
            print("vmrate: not pinning (needs two CPUs and taskset)", file=sys.stderr)
    try:
        return run(args, backends)
    except (netns.NamespaceError, RunError, ConfigError, TimeoutError) as e:
        print(f"vmrate: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def run(args, backends):
    accel = qemu.choose_accel(args.accel)
    res = {"bench": "vmrate", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine(), "accel": accel, "frame_bytes": len(FRAME),
           "seconds": args.seconds, "warmup": args.warmup, "window": args.window,
           "repeat": args.repeat, "pinned_cpus": PIN, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        images = {"firewall": build.build(args.graph)}
        for name, text in (("bounce", BOUNCE), ("bounce-queue", BOUNCE_QUEUE)):
            g = pathlib.Path(tmp) / f"{name}.yaml"
            g.write_text(text)
            images[name] = build.build(g)
        res["images"] = {k: {"graph": v.plan.graph.name, "bytes": v.size,
                             "guest_mib": v.memory["min_mib"]} for k, v in images.items()}
        for backend in backends:
            res["runs"][backend] = {}
            for which in GUESTS:
                runs = [run_one(backend, images[which].path, accel, args.seconds, args.warmup,
                                args.window) for _ in range(max(1, args.repeat))]
                r = {"graph": runs[0]["graph"], "runs": runs}
                for mode in ("window", "blast"):
                    rates = [x[mode]["frames_per_s"] for x in runs]
                    offered = [x[mode]["offered_per_s"] for x in runs]
                    r[mode] = {"median_frames_per_s": round(statistics.median(rates)),
                               "best_frames_per_s": max(rates), "all": rates,
                               "median_offered_per_s": round(statistics.median(offered))}
                    print(f"{backend:6} {which:12} {mode:6} median {r[mode]['median_frames_per_s']:>9,}"
                          f"  best {max(rates):>9,} frames/s out  (all {rates}; offered "
                          f"~{r[mode]['median_offered_per_s']:,}/s)", flush=True)
                res["runs"][backend][which] = r
            # the ceiling: the better of the two guests without element work
            rb = res["runs"][backend]
            rb["ceiling_median_frames_per_s"] = {
                mode: max(rb[b][mode]["median_frames_per_s"] for b in ("bounce", "bounce-queue"))
                for mode in ("window", "blast")}
            rb["firewall_of_ceiling_median"] = {
                mode: round(rb["firewall"][mode]["median_frames_per_s"]
                            / max(1, rb["ceiling_median_frames_per_s"][mode]), 3)
                for mode in ("window", "blast")}
            print(f"{backend:6} firewall / ceiling (medians): "
                  f"window {rb['firewall_of_ceiling_median']['window']:.2f}, "
                  f"blast {rb['firewall_of_ceiling_median']['blast']:.2f}", flush=True)
    res["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
