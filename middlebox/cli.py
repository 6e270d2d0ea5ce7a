"""The `middlebox` command.

    middlebox check GRAPH.yaml
    middlebox show  GRAPH.yaml [-o graph.png|.svg|.dot] [--programs]
    middlebox run   GRAPH.yaml --in DEV=in.pcap ... --out DEV=out.pcap ... [--stats text|json|none]
                    [--control SOCKET [--linger]]
    middlebox run   GRAPH.yaml --dev DEV=IFNAME|tap:NAME ... [--workers N] [--duration S]
                    [--control SOCKET] [--busy-poll] [--ring v3|v2]
    middlebox ctl   SOCKET read|write|list|quit [ELEMENT.HANDLER] [VALUE]
    middlebox bench GRAPH.yaml [--packets N] [--size B] [--batch N] [--flows K]
                    [--json [FILE]] [--plot FILE.png] [--progress]
    middlebox elements [NAME]
    middlebox build GRAPH.yaml [-o fw.elf]
    middlebox boot  fw.elf --nic DEV=tap:IFNAME ... [--accel auto|kvm|tcg] [--mem auto|64M] [--dry-run]
                    [--machine microvm|q35 [--firmware seabios|qboot]]

Exit codes: 0 success, 2 usage or configuration error, 1 failure while
running. Errors are one line; MIDDLEBOX_DEBUG=1 adds the traceback of an
internal error.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys

from middlebox.errors import ConfigError, RunError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def _binding(text, flag):
    dev, sep, path = text.partition("=")
    if not sep or not dev or not path:
        raise ConfigError(f"{flag} expects DEV=FILE, got '{text}'")
    return dev, path


def _load(path):
    from middlebox import loader
    if not os.path.exists(path):
        raise ConfigError("no such file", path)
    return loader.load(path)


def _warn(graph):
    for w in graph.warnings:
        print(f"warning: {w}", file=sys.stderr)


# --- check ------------------------------------------------------------------

def cmd_check(args):
    g = _load(args.graph)
    _warn(g)
    print(f"{args.graph}: ok: graph '{g.name}', {len(g.elements)} elements, "
          f"{len(g.connections)} connections, devices: {', '.join(g.devices()) or 'none'}")
    return 0


# --- show -------------------------------------------------------------------

def _config_text(e):
    parts = []
    for key, p in e.params.items():
        v = getattr(e, key)
        if v is None or (v == p.default and not p.required):
            continue
        if isinstance(v, bytes) and len(v) == 6 and p.kind.name == "Ethernet address":
            v = ":".join(f"{b:02x}" for b in v)
        elif isinstance(v, bytes):
            v = v.hex()
        parts.append(f"{key}={v}")
    return ", ".join(parts)


def summary(g, programs=False):
    lines = [f"graph {g.name}" + (f": {g.description}" if g.description else "")]
    g.check()
    width = max([len(n) for n in g.elements] + [4])
    lines.append("elements:")
    for n in g.order():
        e = g.elements[n]
        cfg = _config_text(e)
        lines.append(f"  {n:<{width}}  {type(e).__name__:<16} in {g.nin[n]} out {g.nout[n]}"
                     + (f"  {cfg}" if cfg else ""))
        if programs and hasattr(e, "program_text"):
            lines += ["      " + ln for ln in e.program_text().splitlines()]
    lines.append("connections:")
    for c in g.connections:
        lines.append(f"  {c.src}[{c.sport}] -> [{c.dport}]{c.dst}")
    lines.append(f"devices: {', '.join(g.devices()) or 'none'}")
    return "\n".join(lines)


def _dot_quote(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot_text(g):
    out = [f"digraph {_dot_quote(g.name)} {{", "  rankdir=LR;",
           '  node [shape=record, fontname="Helvetica", fontsize=10];']
    for n, e in g.elements.items():
        label = f"{n}\\n{type(e).__name__}"
        out.append(f'  "{n}" [label="{label}"];')
    for c in g.connections:
        out.append(f'  "{c.src}" -> "{c.dst}" [taillabel="{c.sport}", headlabel="{c.dport}", '
                   'fontsize=8];')
    out.append("}")
    return "\n".join(out) + "\n"


def cmd_show(args):
    g = _load(args.graph)
    ext = os.path.splitext(args.output)[1].lower() if args.output else None
    if ext not in (None, ".dot", ".png", ".svg", ".pdf"):
        raise ConfigError(f"show -o: unknown format '{ext}' (use .dot, .png, .svg or .pdf)")
    _warn(g)
    if not args.output:
        print(summary(g, args.programs))
        return 0
    text = dot_text(g)
    if ext == ".dot":
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as e:
            raise RunError(f"cannot write {args.output}: {e.strerror}") from None
    elif ext in (".png", ".svg", ".pdf"):
        dot = shutil.which("dot")
        if not dot:
            raise RunError("Graphviz 'dot' is not installed (apt-get install graphviz)")
        r = subprocess.run([dot, f"-T{ext[1:]}", "-o", args.output], input=text.encode(),
                           capture_output=True)
        if r.returncode:
            msg = r.stderr.decode(errors="replace").strip().splitlines()
            raise RunError(f"dot failed: {msg[-1] if msg else r.returncode}")
    else:
        raise ConfigError(f"show -o: unknown format '{ext}' (use .dot, .png, .svg or .pdf)")
    print(f"wrote {args.output}")
    return 0


# --- run --------------------------------------------------------------------

def _stats_text(stats, devices):
    rows = [("element", "class", "in", "out", "dropped", "other")]
    for n, s in stats.items():
        extra = " ".join(f"{k}={v}" for k, v in s.items()
                         if k not in ("class", "in", "out", "dropped", "ports", "created"))
        if s["created"]:
            extra = f"created={s['created']} " + extra
        if len(s["ports"]) > 1:
            extra = "ports=" + "/".join(map(str, s["ports"])) + (" " + extra if extra else "")
        rows.append((n, s["class"], str(s["in"]), str(s["out"]), str(s["dropped"]), extra))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    out = ["  ".join(f"{r[i]:<{w[i]}}" if i < 2 else f"{r[i]:>{w[i]}}" for i in range(5))
           + ("  " + r[5] if r[5] else "") for r in rows]
    for d, s in devices.items():
        line = (f"device {d}: rx {s['rx']} (dropped {s['rx_dropped'] + s['oversize']}), "
                f"tx {s['tx']}")
        if "interface" in s:        # live: the interface and what the kernel dropped
            line = (f"device {d} ({s['interface']}): rx {s['rx']} (dropped "
                    f"{s['rx_dropped'] + s['oversize']}, kernel ring drops "
                    f"{s['kernel_drops']}), tx {s['tx']} (errors {s['tx_errors']}, "
                    f"dropped {s['tx_dropped']})")
        out.append(line)
    return "\n".join(out)


def cmd_run(args):
    if args.devs:
        return _run_live(args)
    # Setting up makes many objects and no garbage worth collecting: the
    # collector stays off until the engine runs (Python elements may then
    # make cycles); it would otherwise take a few % of a pcap run.
    gc.disable()
    try:
        return _run_pcaps(args)
    finally:
        gc.enable()


def _run_pcaps(args):
    from middlebox import pcap, plan
    from middlebox.runtime import Engine

    for flag, value in (("--workers", args.workers != 1), ("--duration", args.duration),
                        ("--busy-poll", args.busy_poll), ("--ring", args.ring != "v3")):
        if value:
            raise ConfigError(f"{flag} is for live runs: bind devices with --dev DEV=IFNAME")
    g = _load(args.graph)
    ins = dict(_binding(b, "--in") for b in args.inputs)
    outs = dict(_binding(b, "--out") for b in args.outputs)
    for flag, bindings in (("--in", args.inputs), ("--out", args.outputs)):
        devs = [_binding(b, flag)[0] for b in bindings]
        for dev in devs:
            if devs.count(dev) > 1:
                raise ConfigError(f"{flag} {dev}: device bound twice")
    receivers, senders = g.receivers(), g.senders()
    for dev in ins:
        if dev not in receivers:
            raise ConfigError(f"--in {dev}: the graph has no FromDevice for device '{dev}' "
                              f"(receiving devices: {', '.join(receivers) or 'none'})")
    for dev in outs:
        if dev not in senders:
            raise ConfigError(f"--out {dev}: the graph has no ToDevice for device '{dev}' "
                              f"(sending devices: {', '.join(senders) or 'none'})")
    for dev, name in receivers.items():
        if dev.startswith("pcap:"):
            ins[dev] = dev[5:]
        elif dev not in ins:
            raise ConfigError(f"device '{dev}' is not bound: add --in {dev}=FILE.pcap",
                              g.file, g.elements[name].line, name)
    for dev, names in senders.items():
        if dev.startswith("pcap:"):
            outs[dev] = dev[5:]
        elif dev not in outs:
            raise ConfigError(f"device '{dev}' is not bound: add --out {dev}=FILE.pcap",
                              g.file, g.elements[names[0]].line, names[0])
    for n, e in g.elements.items():
        if e.source and getattr(e, "limit", 0) < 0:
            raise ConfigError("a source without 'limit' never ends; set limit, "
                              "or measure it with 'middlebox bench'", g.file, e.line, n)
    _warn(g)  # after the usage errors, so that an error is the only line
    for dev, path in outs.items():
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise RunError(f"cannot write {path}: no such directory")
        if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise RunError(f"cannot write {path}: permission denied")
    # An input is mapped, not copied, unless it is also an output (which
    # is rewritten while it is read).
    captures = [(dev, pcap.open_capture(path, map=not _same_file(path, outs.values())))
                for dev, path in ins.items()]
    p = plan.build(g)
    eng = Engine(p)
    server = None
    if args.control:
        from middlebox import control
        server = control.Server(eng, args.control)
    nanos = any(c.nanos for _, c in captures)
    gc.enable()
    try:
        # packets go from the inputs' memory through the engine into each
        # output file, written as they leave (no Python object per packet)
        eng.run_to_files(captures, outs, nanos=nanos)
        if server and args.linger:
            print(f"run done; handlers stay on {args.control} until "
                  f"'middlebox ctl {args.control} quit'", file=sys.stderr)
            server.quit.wait()
    finally:
        if server:
            server.close()
    stats, devs = eng.stats(), eng.device_stats()
    if args.stats == "json":
        print(json.dumps({"graph": g.name, "elements": stats, "devices": devs}, indent=2))
    elif args.stats == "text":
        print(_stats_text(stats, devs))
    return 0


def _same_file(path, others):
    """Whether path names the same existing file as one of others."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    for other in others:
        try:
            o = os.stat(other)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False


def _run_live(args):
    """`run --dev`: devices on Linux interfaces or TAPs (middlebox/runtime/live.py)."""
    from middlebox import plan
    from middlebox.runtime import live

    if args.inputs or args.outputs:
        raise ConfigError("--dev cannot be mixed with --in/--out: a run is live or over pcaps")
    if args.linger:
        raise ConfigError("--linger is for pcap runs (a live run serves --control until it stops)")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be more than 0 seconds")
    bindings = {}
    for b in args.devs:
        dev, spec = _binding(b, "--dev")
        if dev in bindings:
            raise ConfigError(f"--dev {dev}: device bound twice")
        bindings[dev] = spec
    g = _load(args.graph)
    live.check_bindings(g, bindings)
    _warn(g)
    res = live.run(plan.build(g), bindings, workers=args.workers, duration=args.duration or 0,
                   control=args.control, busy_poll=args.busy_poll, ring=args.ring)
    if args.stats == "json":
        print(json.dumps({"graph": g.name, "seconds": res["seconds"], "elements": res["elements"],
                          "devices": res["devices"], "workers": res["workers"]}, indent=2))
    elif args.stats == "text":
        print(_stats_text(res["elements"], res["devices"]))
        if len(res["workers"]) > 1:
            for w in res["workers"]:
                per = ", ".join(f"{d} rx {s['rx']} tx {s['tx']}" for d, s in w["devices"].items())
                print(f"worker {w['worker']} (cpu {w['cpu']}, pid {w['pid']}): {per}")
    return 0


# --- ctl --------------------------------------------------------------------

def cmd_ctl(args):
    from middlebox import control
    if args.op in ("read", "write") and not args.handler:
        raise ConfigError(f"ctl {args.op} needs ELEMENT.HANDLER")
    value = control.request(args.socket, args.op, args.handler,
                            args.value if args.op == "write" else None)
    if value:
        print(value)
    return 0


# --- bench ------------------------------------------------------------------

def cmd_bench(args):
    from middlebox import bench

    g = _load(args.graph)
    if not any(e.source for e in g.elements.values()):
        raise ConfigError("bench needs a source such as InfiniteSource in the graph", g.file)
    if args.packets < 1:
        raise ConfigError("--packets must be at least 1")
    if args.plot:
        if os.path.splitext(args.plot)[1].lower() != ".png":
            raise ConfigError(f"--plot writes a PNG: give a FILE.png, not '{args.plot}'")
        if not bench.traffic_sources(g):
            raise ConfigError("--plot sweeps the batch and packet size of InfiniteSources "
                              "without 'limit', and the graph has none", g.file)
        if args.sweep_packets < 1:
            raise ConfigError("--sweep-packets must be at least 1")
        _writable(args.plot)
    if args.json not in (None, "-"):
        _writable(args.json)
    bench.set_traffic(g, size=args.size, batch=args.batch, flows=args.flows)
    _warn(g)
    show = args.progress or (args.progress is None and sys.stderr.isatty())
    bar = _Progress(g.name) if show else None
    res = bench.measure(g, args.packets, progress=bar.update if bar else None)
    if bar:
        bar.done()
    res["machine"] = bench.machine()
    traffic = (f" (batch {res['batch']}, {res['packet_size']}-byte packets, {res['flows']} flows)"
               if res["packet_size"] else "")
    lines = [f"{g.name}: {res['packets']} packets in {res['seconds']:.3f} s: "
             f"{res['mpps']:.2f} Mpps, {res['ns_per_packet']:.1f} ns/packet{traffic}"]
    if res["cycles_per_packet"] is not None:
        lines.append(f"  {res['cycles_per_packet']} cycles/packet, "
                     f"{res['instructions_per_packet']} instructions/packet (perf stat)")
    else:
        lines.append(f"  cycles/instructions per packet: n/a: {res['perf']}")
    if args.plot:
        sweep_packets = min(args.packets, args.sweep_packets)
        sbar = _Progress(f"{g.name} sweep") if show else None
        res["sweep"] = bench.sweep(args.graph, sweep_packets, batch=args.batch, size=args.size,
                                   flows=args.flows, progress=sbar.update if sbar else None)
        res["sweep"]["packets_per_point"] = sweep_packets
        if sbar:
            sbar.done()
        bench.plot(res, args.plot)
        b = ", ".join(f"{p['batch']}: {p['mpps']:.1f}" for p in res["sweep"]["batch"])
        z = ", ".join(f"{p['packet_size']}: {p['mpps']:.1f}" for p in res["sweep"]["packet_size"])
        lines.append(f"  Mpps by batch ({bench.MAX_BATCH} at most: fixed at compile time) {b}")
        lines.append(f"  Mpps by packet size (bytes) {z}")
        lines.append(f"wrote {args.plot}")
    if args.json == "-":
        print(json.dumps(res, indent=2))
        for line in lines:
            print(line, file=sys.stderr)
        return 0
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        except OSError as e:
            raise RunError(f"cannot write {args.json}: {(e.strerror or str(e)).lower()}") from None
        lines.append(f"wrote {args.json}")
    print("\n".join(lines))
    return 0


def _writable(path):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise RunError(f"cannot write {path}: no such directory")
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise RunError(f"cannot write {path}: permission denied")


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label, width=30):
        self.label, self.width, self.last, self.state = label, width, 0.0, None

    def update(self, done, total, mpps, force=False):
        import time
        now = time.monotonic()
        self.state = (done, total, mpps)
        if not force and done < total and now - self.last < 0.1:
            return
        self.last = now
        done = min(done, total)
        k = int(self.width * done / total) if total else self.width
        sys.stderr.write(f"\r{self.label} [{'#' * k}{'.' * (self.width - k)}] "
                         f"{100 * done // max(total, 1):3d}%  {mpps:6.2f} Mpps")
        sys.stderr.flush()

    def done(self):
        if self.state:
            self.update(*self.state, force=True)
        sys.stderr.write("\n")
        sys.stderr.flush()


# --- build and boot (a graph as a VM) ---------------------------------------

def cmd_build(args):
    from middlebox.unikernel import build

    g = _load(args.graph)
    out = args.output or os.path.splitext(os.path.basename(args.graph))[0] + ".elf"
    b = build.build(g, out)
    _warn(g)
    print(f"{out}: graph '{g.name}', {b.size / 1024:.0f} KiB, boots in "
          f"{b.memory['min_mib']} MiB, kernels: {', '.join(b.kernels)}"
          + (" (cached)" if b.cached else ""))
    return 0


def cmd_boot(args):
    import shlex

    from middlebox.unikernel import qemu

    if not os.path.exists(args.image):
        raise ConfigError("no such file", args.image)
    _, devices = qemu.image_devices(args.image)
    nics = qemu.bind_nics(devices, args.nics)
    accel = qemu.choose_accel(args.accel)
    append = " ".join(filter(None, ["mb.trace" if args.trace else "", args.append or ""]))
    cmd = qemu.command(args.image, nics, accel, args.mem, append=append, machine=args.machine,
                       firmware=args.firmware)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    cmd[0] = qemu.qemu_path()
    ok, why = qemu.kvm_usable()
    if accel == "kvm" and not ok and why.startswith("/dev/kvm"):
        raise RunError(f"--accel kvm: {why}")
    print(f"booting {args.image}: {accel}" + ("" if ok or accel == "kvm" else f" ({why})")
          + f", {qemu.parse_mem(args.mem, args.image)} MiB; console: stats, info, quit",
          file=sys.stderr)
    # The serial console is this terminal: type stats, info, quit.
    rc = subprocess.call(cmd)
    if rc == 1:
        return 0            # the guest powered off (quit)
    return 1 if rc else 0


# --- elements ---------------------------------------------------------------

def cmd_elements(args):
    import middlebox.elements as lib
    cat = lib.catalogue()
    if not args.name:
        w = max(len(n) for n in cat)
        for n, cls in cat.items():
            print(f"{n:<{w}}  {cls.port_text():<28}  {cls.describe()[0]}")
        return 0
    cls = cat.get(args.name)
    if cls is None:
        import difflib
        close = difflib.get_close_matches(args.name, cat, n=1)
        raise ConfigError(f"no element class '{args.name}'"
                          + (f"; did you mean '{close[0]}'?" if close else ""))
    summary_line, doc = cls.describe()
    print(f"{args.name} ({cls.port_text()})\n")
    print(doc)
    if cls.params:
        print("\nparameters:")
        for key, p in cls.params.items():
            dflt = "required" if p.required else f"default {p.default!r}"
            print(f"  {key:<12} {p.kind.name} ({dflt})  {p.doc}")
    if cls.xstats:
        print(f"\ncounters: in, out, dropped, {', '.join(cls.xstats)}")
    return 0


def parser():
    ap = _Parser(prog="middlebox", description="Network middleboxes from packet-processing "
                 "elements, written as YAML graphs.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("check", help="check a graph file")
    p.add_argument("graph")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("show", help="describe a graph, or draw it (-o .dot/.png/.svg)")
    p.add_argument("graph")
    p.add_argument("-o", "--output")
    p.add_argument("--programs", action="store_true", help="print compiled classifier programs")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("run", help="run a graph over pcap files")
    p.add_argument("graph")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="DEV=FILE")
    p.add_argument("--out", dest="outputs", action="append", default=[], metavar="DEV=FILE")
    p.add_argument("--stats", choices=("text", "json", "none"), default="text")
    p.add_argument("--control", metavar="SOCKET",
                   help="serve live read/write handlers on this Unix socket")
    p.add_argument("--linger", action="store_true",
                   help="with --control: after the input, keep serving until 'ctl ... quit'")
    p.add_argument("--dev", dest="devs", action="append", default=[], metavar="DEV=IFNAME",
                   help="live: bind a device to a Linux interface (AF_PACKET) or tap:NAME")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="live: N engines on N cores, traffic spread by flow (PACKET_FANOUT)")
    p.add_argument("--duration", type=float, metavar="S",
                   help="live: stop after S seconds (default: at SIGINT/SIGTERM)")
    p.add_argument("--busy-poll", action="store_true",
                   help="live: spin on the rings instead of sleeping in poll() when idle")
    p.add_argument("--ring", choices=("v3", "v2"), default="v3",
                   help="live: receive ring, TPACKET_V3 blocks (throughput, default) or "
                        "TPACKET_V2 frames (latency)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("ctl", help="read or write handlers of a running engine")
    p.add_argument("socket")
    p.add_argument("op", choices=("read", "write", "list", "quit"))
    p.add_argument("handler", nargs="?", help="ELEMENT.HANDLER")
    p.add_argument("value", nargs="?", default="")
    p.set_defaults(fn=cmd_ctl)
    p = sub.add_parser("bench", help="packet rate of a graph fed by its sources")
    p.add_argument("graph")
    p.add_argument("--packets", type=int, default=10_000_000, metavar="N",
                   help="packets to measure, after a warm-up (default 10000000)")
    p.add_argument("--size", type=int, metavar="BYTES",
                   help="frame size of the InfiniteSources without a limit")
    p.add_argument("--batch", type=int, metavar="N",
                   help="packets per poll, 1 to 32 (InfiniteSource burst)")
    p.add_argument("--flows", type=int, metavar="K", help="distinct flows the sources cycle through")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="the result as JSON: on stdout, or into FILE")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also sweep batch sizes and packet sizes and draw Mpps against them")
    p.add_argument("--sweep-packets", type=int, default=1_000_000, metavar="N",
                   help="packets per run at each sweep point, best of 3 (at most --packets)")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress bar on stderr even when it is not a terminal")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar, even on a terminal")
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("build", help="build a graph into a bootable VM image (PVH ELF)")
    p.add_argument("graph")
    p.add_argument("-o", "--output", help="image file (default: GRAPH.elf here)")
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("boot", help="boot a VM image under QEMU; console: stats, info, quit")
    p.add_argument("image")
    p.add_argument("--nic", dest="nics", action="append", default=[], metavar="DEV=SPEC",
                   help="tap:IFNAME, socket:OPTS, dgram:OPTS, stream:OPTS, vhost-user:PATH, "
                        "user; optional ,mac=ADDR")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                   help="auto: KVM only with vmx/svm and /dev/kvm, else TCG")
    p.add_argument("--mem", default="auto",
                   help="guest RAM, e.g. 64M; auto: what the image says it needs (at least 16M)")
    p.add_argument("--dry-run", action="store_true", help="print the QEMU command line")
    p.add_argument("--trace", action="store_true", help="print where the boot time goes")
    p.add_argument("--append", help="more kernel command line (e.g. mb.tsc_khz=2200000)")
    p.add_argument("--machine", default="microvm", choices=("microvm", "q35"),
                   help="microvm (virtio-mmio NICs, default) or q35 (a PC: virtio-pci NICs)")
    p.add_argument("--firmware", choices=("seabios", "qboot"),
                   help="q35 only: SeaBIOS (default) or qboot (faster; the guest places the "
                        "PCI BARs itself)")
    p.set_defaults(fn=cmd_boot)
    p = sub.add_parser("elements", help="the element catalogue")
    p.add_argument("name", nargs="?")
    p.set_defaults(fn=cmd_elements)
    return ap


def _one_line(text):
    """An error message as exactly one line."""
    text = str(text)
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        return args.fn(args)
    except ConfigError as e:
        print(_one_line(f"error: {e}" if not e.file else e), file=sys.stderr)
        return 2
    except RunError as e:
        print(_one_line(f"error: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: one line unless asked
        if os.environ.get("MIDDLEBOX_DEBUG"):
            raise
        print(_one_line(f"internal error: {type(e).__name__}: {e} "
                        "(MIDDLEBOX_DEBUG=1 for a traceback)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
