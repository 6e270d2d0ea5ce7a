"""Boot time of a graph built into a VM (issue 6).

For each of --boots launches of QEMU (microvm, the options `middlebox boot`
uses, NICs on loopback UDP sockets) it measures, on the host:

  launch -> ready line        the guest printed "middlebox: NAME ready in N us"
  launch -> first frame       a frame sent to the lan NIC (every 0.2 ms from
                              launch on) came out of the wan NIC, forwarded
                              (--probe arp:IP: an ARP query for IP sent to
                              the lan NIC was answered on it, for graphs
                              such as the firewall that forward nothing
                              from an unknown host)
and, inside the guest, the N of the ready line (guest entry to polling loop).
The same launches (same machine, same NICs, the same probe frames, timed by
the same single-threaded loop) of a trivial guest that prints one line and
powers off (bench/trivial_guest.S) show QEMU's own share. Also: image sizes, guest
memory in use, where the in-guest time goes (mb.trace), the accelerator,
the middlebox guest again on QEMU's default anonymous (huge-page) RAM
instead of the memfd RAM `middlebox boot` gives it (--ram-variant off to
skip), and, from one more launch with QEMU's translation log, how much
guest code TCG translated before ready and before the first frame (blocks
and instructions: what a TCG boot's time is made of, without the noise).
Writes bench/results/boot.json.

    python bench/boot.py [--boots 20] [--graph graphs/classifier.yaml] [--accel auto]
                         [--machine microvm|q35 [--firmware seabios|qboot]]
                         [--probe forward|arp:IP]
    python bench/boot.py --graph graphs/firewall.yaml --probe arp:10.0.0.1

--machine q35 boots a PC (firmware, then virtio-pci NICs) instead of microvm.
"""

import argparse
import json
import math
import os
import pathlib
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from middlebox.unikernel import build, qemu

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def summary(values, digits=2):
    v = sorted(values)
    p90 = v[max(0, math.ceil(0.9 * len(v)) - 1)]
    return {"median": round(statistics.median(v), digits), "p90": round(p90, digits),
            "min": round(v[0], digits), "max": round(v[-1], digits),
            "all": [round(x, digits) for x in values]}


def build_trivial(outdir):
    src = HERE / "trivial_guest.S"
    obj, image = outdir / "trivial.o", outdir / "trivial.elf"
    subprocess.run(["gcc", "-c", str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-T", str(ROOT / "unikernel" / "guest.ld"), "--defsym=MB_ARENA_SIZE=0",
                    "-nostdlib", "-static",
                    "-z", "max-page-size=4096", "-s", "-o", str(image),
                    str(obj)], check=True)
    return image


def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def free_port():
    s = udp_socket()
    port = s.getsockname()[1]
    s.close()
    return port


def probe_frame(probe):
    """(frame, answered on the lan NIC?) for --probe forward|arp:IP."""
    if probe.startswith("arp:"):
        return bytes(Ether(src="02:00:00:00:00:99", dst="ff:ff:ff:ff:ff:ff")
                     / ARP(op=1, hwsrc="02:00:00:00:00:99", psrc="0.0.0.0",
                           pdst=probe[4:])), True
    return bytes(Ether() / IP(dst="10.0.1.1") / UDP(dport=9) / b"first"), False


class Wires:
    """Two NICs, lan and wan, on loopback UDP sockets, and the QEMU command
    that boots image with them: send() puts the probe frame on the lan
    wire, `answer` is the socket its reply comes back on (lan for an ARP
    probe, wan for a forwarded frame). A context manager: closes them."""

    def __init__(self, image, probe, accel="tcg", mem="auto", extra=(), **command_kw):
        self.tx, self.rx = udp_socket(), udp_socket()
        self.q_lan = free_port()
        nics = [(dev, f"socket:udp=127.0.0.1:{s.getsockname()[1]},localaddr=127.0.0.1:{port}")
                for dev, s, port in (("lan", self.tx, self.q_lan), ("wan", self.rx, free_port()))]
        self.cmd = qemu.command(image, nics, accel=accel, mem=mem, **command_kw) + list(extra)
        self.cmd[0] = qemu.qemu_path()
        self.frame, same_nic = probe_frame(probe)
        self.answer = self.tx if same_nic else self.rx

    def send(self):
        self.tx.sendto(self.frame, ("127.0.0.1", self.q_lan))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.tx.close()
        self.rx.close()


def traced_boot(image, accel, mem, machine="microvm", firmware=None, timeout=60.0):
    """One launch with mb.trace: where the in-guest boot time goes, and the
    memory and clock lines of the `info` console command."""
    with Wires(image, "forward", accel, mem, append="mb.trace", machine=machine,
               firmware=firmware) as w, qemu.Guest(w.cmd) as g:
        g.wait_ready(timeout)
        trace = g.wait_for(r"boot trace \(us\): (.*)", timeout).group(1).split()
        info = g.command("info", timeout=timeout)
    mem_line = next(ln for ln in info if ln.startswith("memory:"))
    m = re.search(r"(\d+) KiB used of (\d+) KiB \(engine (\d+) KiB: (\d+) packets", mem_line)
    return {"trace": {trace[i]: int(trace[i + 1]) for i in range(0, len(trace) - 1, 2)},
            "memory_kib": {"used": int(m.group(1)), "ram": int(m.group(2)),
                           "engine": int(m.group(3)), "packets": int(m.group(4))},
            "clock": info[-1]}


def code_blocks(built, mem, probe, timeout=60.0):
    """Under TCG, the guest code translated before the ready line and then
    up to the first frame: one launch with QEMU's `-d in_asm` log, counting
    the translation blocks (and their instructions) whose address lies in
    the image, the firmware's left out, until the first block of the main
    loop (`run`), then until the first frame came out. Unlike times these
    do not depend on the machine: each block is translated once, and
    translation is where a TCG boot's time goes."""
    from middlebox.unikernel import elf

    sym = elf.read(built.full).symbols()
    lo, hi, run = 0x100000, sym["__image_end"], sym["run"]
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp) / "in_asm.log"
        with Wires(built.path, probe, "tcg", mem, extra=["-d", "in_asm", "-D", str(log)]) as w, \
                qemu.Guest(w.cmd) as g:
            g.wait_ready(timeout)
            deadline = time.perf_counter() + timeout
            while True:
                if time.perf_counter() > deadline:
                    raise TimeoutError("no frame forwarded")
                w.send()
                if select.select([w.answer], [], [], 0.05)[0]:
                    break
        text = log.read_text(errors="replace")
    counts = {"before_ready": [0, 0], "to_first_frame": [0, 0]}
    phase, inside = "before_ready", None
    for line in text.splitlines():
        m = re.match(r"0x([0-9a-f]+):", line)
        if line.startswith("IN:"):
            inside = None           # the next address line opens the block
        elif m and inside is None:
            addr = int(m.group(1), 16)
            inside = lo <= addr < hi
            if inside:
                if addr == run:
                    phase = "to_first_frame"
                counts[phase][0] += 1
                counts[phase][1] += 1
        elif m and inside:
            counts[phase][1] += 1
        elif not line.strip():
            inside = False
    return {k: {"blocks": v[0], "instructions": v[1]} for k, v in counts.items()}


def launch(image, accel, mem, machine="microvm", firmware=None, probe="forward",
           ram="memfd", pattern=rb"ready in (\d+) us", want_frame=True, timeout=60.0):
    """One timed launch, the same for the middlebox guest and the trivial
    one: the probe frame goes to the lan NIC every 0.2 ms from launch on
    while one thread waits on the console pipe and the answering socket
    together (no reader thread: its wake-ups would be timed too). Returns
    (ms to the console line matching pattern, its first group or None, ms
    to the first frame or None, ms to QEMU's exit or None)."""
    out, t_line, group, t_frame, t_exit = b"", None, None, None, None
    with Wires(image, probe, accel, mem, machine=machine, firmware=firmware, ram=ram) as w:
        t0 = time.perf_counter()
        p = subprocess.Popen(w.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        try:
            while t_line is None or (want_frame and t_frame is None):
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"{image}: no {'frame' if t_line else 'line'} "
                                       f"in {timeout} s; console {out[-200:]!r}")
                w.send()
                ready, _, _ = select.select([p.stdout, w.answer], [], [], 0.0002)
                now = time.perf_counter()
                if w.answer in ready:
                    w.answer.recv(65536)
                    t_frame = t_frame or now
                if p.stdout in ready:
                    chunk = os.read(p.stdout.fileno(), 4096)
                    if not chunk:
                        raise RuntimeError(f"{image}: QEMU exited; console {out[-200:]!r}")
                    out += chunk
                    m = re.search(pattern, out)
                    if m and t_line is None:
                        t_line, group = now, (m.group(1) if m.groups() else None)
            if not want_frame:
                p.wait(timeout=timeout)
                t_exit = time.perf_counter()
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
    ms = lambda t: None if t is None else (t - t0) * 1e3     # noqa: E731
    return ms(t_line), group, ms(t_frame), ms(t_exit)


def machine():
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ver = subprocess.run([qemu.qemu_path(), "--version"], capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "qemu": ver.stdout.splitlines()[0] if ver.stdout else "?"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=20)
    ap.add_argument("--graph", default=str(ROOT / "graphs" / "classifier.yaml"))
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--mem", default="auto", help="guest RAM (auto: what the image asks for)")
    ap.add_argument("--machine", default="microvm", choices=("microvm", "q35"))
    ap.add_argument("--firmware", choices=("seabios", "qboot"), help="q35 only")
    ap.add_argument("--probe", default="forward",
                    help="first frame: forward (UDP lan -> wan) or arp:IP (ARP query "
                         "for IP answered on lan)")
    ap.add_argument("--ram-variant", default="on", choices=("on", "off"),
                    help="also boot on anonymous (huge-page) guest RAM")
    ap.add_argument("--json", default=str(HERE / "results" / "boot.json"))
    args = ap.parse_args(argv)

    accel = qemu.choose_accel(args.accel)
    why = qemu.kvm_usable()[1]
    built = build.build(args.graph)
    with tempfile.TemporaryDirectory() as tmp:
        trivial = build_trivial(pathlib.Path(tmp))
        trivial_size = trivial.stat().st_size
        ready, guest_us, first, t_line, t_exit = [], [], [], [], []
        anon = {"ready": [], "us": [], "first": []}
        common = dict(machine=args.machine, firmware=args.firmware, probe=args.probe)
        for i in range(args.boots):
            if args.ram_variant == "on":
                r, us, f, _ = launch(built.path, accel, args.mem, ram="anonymous", **common)
                anon["ready"].append(r)
                anon["us"].append(int(us))
                anon["first"].append(f)
            r, us, f, _ = launch(built.path, accel, args.mem, **common)
            ready.append(r)
            guest_us.append(int(us))
            first.append(f)
            a, _, _, b = launch(trivial, accel, args.mem, pattern=rb"trivial: hello",
                                want_frame=False, **common)
            t_line.append(a)
            t_exit.append(b)
        traced = traced_boot(built.path, accel, args.mem, machine=args.machine,
                             firmware=args.firmware)
    blocks = code_blocks(built, args.mem, args.probe) if args.machine == "microvm" else None
    res = {
        "bench": "boot",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "accel": accel,
        "accel_why": f"kvm: {why}" if accel == "tcg" and args.accel == "auto" else args.accel,
        "boots": args.boots,
        "qemu_machine": qemu.MACHINES[args.machine],
        "firmware": args.firmware or ("seabios" if args.machine == "q35" else "qboot"),
        "guest_ram_mib": qemu.parse_mem(args.mem, built.path),
        "middlebox": {
            "graph": built.plan.graph.name,
            "image_bytes": built.size,
            "kernels": built.kernels,
            "launch_to_ready_ms": summary(ready),
            "launch_to_first_frame_ms": summary(first),
            "probe": args.probe,
            "in_guest_ready_us": summary(guest_us, 0),
            "in_guest_trace_us": traced.get("trace"),
            "memory_kib": traced.get("memory_kib"),
            "clock": traced.get("clock"),
            "tcg_code_blocks": blocks,
        },
        "trivial": {
            "image_bytes": trivial_size,
            "launch_to_line_ms": summary(t_line),
            "launch_to_exit_ms": summary(t_exit),
        },
    }
    if anon["ready"]:
        res["middlebox_anonymous_ram"] = {
            "launch_to_ready_ms": summary(anon["ready"]),
            "launch_to_first_frame_ms": summary(anon["first"]),
            "in_guest_ready_us": summary(anon["us"], 0),
        }
    res["guest_share_ms"] = {
        "ready": round(res["middlebox"]["launch_to_ready_ms"]["median"]
                       - res["trivial"]["launch_to_line_ms"]["median"], 2),
        "first_frame": round(res["middlebox"]["launch_to_first_frame_ms"]["median"]
                             - res["trivial"]["launch_to_line_ms"]["median"], 2),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    mb, tr = res["middlebox"], res["trivial"]
    print(f"machine {args.machine} ({res['firmware']}), "
          f"accelerator {accel} ({res['accel_why']}), {args.boots} boots, "
          f"guest RAM {res['guest_ram_mib']} MiB")
    print(f"{mb['graph']}: image {mb['image_bytes'] / 1024:.0f} KiB, memory in use "
          f"{mb['memory_kib']['used'] if mb['memory_kib'] else '?'} KiB")
    for key, label in (("launch_to_ready_ms", "launch -> ready line"),
                       ("launch_to_first_frame_ms", "launch -> first frame")):
        print(f"  {label:<24} median {mb[key]['median']:7.2f} ms  p90 {mb[key]['p90']:7.2f} ms")
    print(f"  {'in guest: ready':<24} median {mb['in_guest_ready_us']['median']:7.0f} us  "
          f"p90 {mb['in_guest_ready_us']['p90']:7.0f} us")
    print(f"  in-guest trace (us): {mb['in_guest_trace_us']}")
    if blocks:
        b, f = blocks["before_ready"], blocks["to_first_frame"]
        print(f"  code translated (TCG): {b['blocks']} blocks ({b['instructions']} instructions) "
              f"before ready, {f['blocks']} ({f['instructions']}) more to the first frame")
    if "middlebox_anonymous_ram" in res:
        an = res["middlebox_anonymous_ram"]
        print("  the same on anonymous (huge-page) guest RAM:")
        for key, label in (("launch_to_ready_ms", "launch -> ready line"),
                           ("launch_to_first_frame_ms", "launch -> first frame")):
            print(f"    {label:<22} median {an[key]['median']:7.2f} ms  p90 {an[key]['p90']:7.2f} ms")
        print(f"    {'in guest: ready':<22} median {an['in_guest_ready_us']['median']:7.0f} us  "
              f"p90 {an['in_guest_ready_us']['p90']:7.0f} us")
    print(f"trivial guest: image {tr['image_bytes']} bytes")
    print(f"  {'launch -> its line':<24} median {tr['launch_to_line_ms']['median']:7.2f} ms  "
          f"p90 {tr['launch_to_line_ms']['p90']:7.2f} ms")
    print(f"  {'launch -> QEMU exit':<24} median {tr['launch_to_exit_ms']['median']:7.2f} ms  "
          f"p90 {tr['launch_to_exit_ms']['p90']:7.2f} ms")
    print(f"middlebox guest's share: ready +{res['guest_share_ms']['ready']} ms, "
          f"first frame +{res['guest_share_ms']['first_frame']} ms over the trivial guest")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
