"""Live runs: a graph's devices bound to Linux interfaces (AF_PACKET rings)
or TAP devices, driven by one engine, or by N engines in N forked worker
processes with the interfaces' traffic spread by flow (PACKET_FANOUT_HASH).

    from middlebox.runtime import live
    res = live.run(plan, {"lan": "veth0", "wan": "tap:mb0"}, workers=1, duration=10)
    res["elements"], res["devices"]

The packet path is C (runtime/live.c, driven from runtime/_engine.pyx);
this module opens ports, forks workers, relays handler requests to them
and adds up their counters. Design and caveats: docs/live.md.
"""

import json
import os
import queue
import signal
import socket
import sys
import threading
import time

from middlebox.errors import ConfigError, RunError
from middlebox.runtime import _engine
from middlebox.runtime._engine import EngineError, LivePort
from middlebox.runtime.host import Engine


# Kernels that rewrite addresses or ports: replies come back with another
# flow hash than the packets that made the state (see docs/live.md).
TRANSLATING_KERNELS = ("nat", "load_balancer")


def parse_spec(spec, dev="DEV"):
    """'tap:NAME' -> ("tap", NAME); 'IFNAME' -> ("packet", IFNAME)."""
    kind, sep, name = spec.partition(":")
    if sep and kind == "tap":
        return "tap", name
    if sep:
        raise ConfigError(f"--dev {dev}={spec}: unknown kind '{kind}' "
                          "(use IFNAME or tap:NAME)")
    return "packet", spec


def check_bindings(graph, bindings):
    """Every device of the graph bound once, to a distinct interface."""
    devices = graph.devices()
    for dev, spec in bindings.items():
        if dev not in devices:
            raise ConfigError(f"--dev {dev}: the graph has no device '{dev}' "
                              f"(devices: {', '.join(devices) or 'none'})")
        kind, name = parse_spec(spec, dev)
        if not name or len(name) > 15 or "/" in name or name != name.strip():
            raise ConfigError(f"--dev {dev}={spec}: '{name}' is not an interface name "
                              "(1 to 15 characters)")
    seen = {}
    for dev, spec in bindings.items():
        key = parse_spec(spec)[1]
        if key in seen:
            raise ConfigError(f"--dev {dev}={spec}: interface {key} is already bound to "
                              f"device '{seen[key]}'")
        seen[key] = dev
    for dev in devices:
        if dev not in bindings:
            name = (graph.receivers().get(dev) or graph.senders().get(dev, [None])[0])
            e = graph.elements.get(name)
            raise ConfigError(f"device '{dev}' is not bound: add --dev {dev}=IFNAME "
                              "(or tap:NAME)", graph.file, getattr(e, "line", None), name)


def open_ports(plan, bindings, ring="v3", ring_bytes=0, retire_ms=0, fanout=False,
               fanout_ids=None):
    """Open one LivePort per bound device, in plan device order. With
    fanout, `fanout_ids` {device: group id} is filled by the first call and
    used to join the same groups by the next ones."""
    graph = plan.graph
    rx, tx = graph.receivers(), graph.senders()
    ports = []
    try:
        for i, dev in enumerate(plan.devices):
            kind, name = parse_spec(bindings[dev])
            gid = (fanout_ids or {}).get(dev)     # None: make the group
            try:
                p = LivePort(kind, name, i, dev in rx, dev in tx, ring, ring_bytes, retire_ms,
                             fanout and kind == "packet", gid, dev)
            except EngineError as e:
                raise RunError(f"device '{dev}': {e}") from None
            if fanout_ids is not None and p.fanout_id is not None:
                fanout_ids.setdefault(dev, p.fanout_id)
            ports.append(p)
    except BaseException:
        for p in ports:
            p.close()
        raise
    return ports


def _say(text):
    print(text, file=sys.stderr, flush=True)


def _describe(plan, bindings, workers):
    binds = " ".join(f"{d}={bindings[d]}" for d in plan.devices)
    return (f"live: graph '{plan.graph.name}' on {binds}, {workers} worker"
            f"{'s' if workers > 1 else ''}; SIGINT/SIGTERM stops")


def run(plan, bindings, workers=1, duration=0, control=None, busy_poll=False, ring="v3",
        ring_bytes=0, retire_ms=0, poll_ms=0, quiet=False):
    """Run `plan` on live devices until SIGINT/SIGTERM or `duration` seconds.

    bindings: {device: "IFNAME" | "tap:NAME"} for every device of the graph.
    control: a Unix socket path serving handlers (aggregated over workers).
    Returns {"elements": {...}, "devices": {...}, "seconds": s, "workers": [...]}
    with counters added up over workers (each worker's own in "workers").
    """
    check_bindings(plan.graph, bindings)
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if workers > 1 and not quiet:
        for n, e in plan.graph.elements.items():
            if e.kernel in TRANSLATING_KERNELS:
                _say(f"warning: element '{n}' translates addresses: with {workers} workers "
                     "a reply can reach a worker without its flow state (docs/live.md)")
                break
    if workers == 1:
        return _run_one(plan, bindings, duration, control, busy_poll, ring, ring_bytes,
                        retire_ms, poll_ms, quiet)
    return _run_workers(plan, bindings, workers, duration, control, busy_poll, ring,
                        ring_bytes, retire_ms, poll_ms, quiet)


def _warn_down(ports):
    for p in ports:
        if p.kind == "packet" and not p.was_up:
            _say(f"warning: device '{p.device}': interface {p.ifname} is down")


def _run_one(plan, bindings, duration, control, busy_poll, ring, ring_bytes, retire_ms,
             poll_ms, quiet):
    eng = Engine(plan)
    ports = open_ports(plan, bindings, ring, ring_bytes, retire_ms)
    server = None
    try:
        if control:
            from middlebox import control as ctl
            server = ctl.Server(eng, control)
        if not quiet:
            _warn_down(ports)
            _say(_describe(plan, bindings, 1))
        secs = eng.run_live(ports, duration, busy_poll, poll_ms)
        res = {"elements": eng.stats(), "devices": eng.device_stats(), "seconds": secs,
               "workers": [{"worker": 0, "pid": os.getpid(), "cpu": None, "seconds": secs}]}
    finally:
        if server:
            server.close()
        for p in ports:
            p.close()
    return res


# --- workers ------------------------------------------------------------------

def add_up(rows):
    """Sum a list of {name: {counter: int | [ints] | text}}: numbers add up,
    lists add element-wise, text (class, interface) is kept from the first."""
    out = {}
    for rep in rows:
        for name, row in rep.items():
            acc = out.setdefault(name, {})
            for k, v in row.items():
                if k not in acc:
                    acc[k] = list(v) if isinstance(v, list) else v
                elif isinstance(v, list):
                    acc[k] = [a + b for a, b in zip(acc[k], v)]
                elif isinstance(v, (int, float)) and not isinstance(v, bool) and \
                        isinstance(acc[k], (int, float)):
                    acc[k] += v
    return out


class _Link:
    """The parent's end of one worker's channel (JSON lines both ways)."""

    def __init__(self, index, pid, cpu, sock):
        self.index, self.pid, self.cpu, self.sock = index, pid, cpu, sock
        self.replies = queue.Queue()
        self.lock = threading.Lock()
        self.final = None
        self.fatal = None
        self.status = None
        self.eof = threading.Event()

    def start(self):
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            with self.sock.makefile("r") as f:
                for line in f:
                    msg = json.loads(line)
                    if "final" in msg:
                        self.final = msg["final"]
                    elif "fatal" in msg:
                        self.fatal = msg["fatal"]
                    else:
                        self.replies.put(msg)
        except (OSError, ValueError):
            pass
        finally:
            self.eof.set()
            self.replies.put(None)

    def request(self, msg, timeout=15.0):
        """The worker's reply, or None once it has finished."""
        with self.lock:
            if self.eof.is_set():
                return None
            try:
                self.sock.sendall((json.dumps(msg) + "\n").encode())
            except OSError:
                return None
            try:
                reply = self.replies.get(timeout=timeout)
            except queue.Empty:
                raise RunError(f"worker {self.index} did not answer in time") from None
            return reply


class WorkerGroup:
    """What the control socket serves for a multi-worker run: reads add up
    counters over workers (other handlers: one value if every worker agrees,
    else one line per worker), writes go to every worker."""

    COUNTERS = ("in", "out", "dropped", "created", "ports", "held")

    def __init__(self, engine, links):
        self.engine = engine            # the plan's engine, never run: metadata
        self.links = links

    def handlers(self):
        return self.engine.handlers()

    def _ask(self, msg):
        vals = []
        for link in self.links:
            r = link.request(msg)
            if r is None:
                continue
            if not r.get("ok"):
                raise RunError(r.get("error", "failed"))
            vals.append(r.get("value"))
        if not vals:
            raise RunError("no worker is running")
        return vals

    def read(self, handler):
        name, e, h = self.engine._split(handler)
        vals = self._ask({"op": "read", "handler": handler})
        if h in self.COUNTERS or h in getattr(e, "xstats", ()):
            try:
                nums = [[int(t) for t in v.split()] for v in vals]
            except ValueError:
                nums = None
            if nums and len({len(n) for n in nums}) == 1:
                return " ".join(str(sum(col)) for col in zip(*nums))
        if len(set(vals)) == 1:
            return vals[0]
        return "\n".join(f"worker {i}: {v}" for i, v in enumerate(vals))

    def write(self, handler, value=""):
        self.engine._split(handler)
        self._ask({"op": "write", "handler": handler, "value": value})

    def reports(self):
        return [r for r in self._ask({"op": "stats"}) if r]

    def stats(self):
        return add_up([r["elements"] for r in self.reports()])

    def device_stats(self):
        return add_up([r["devices"] for r in self.reports()])


def _report(eng, index, cpu):
    return {"elements": eng.stats(), "devices": eng.device_stats(), "worker": index,
            "pid": os.getpid(), "cpu": cpu}


def _worker(index, cpu, eng, ports, sock, duration, busy_poll, poll_ms):
    """A worker process: pinned, runs its copy of the engine on its ports,
    answers the parent's requests, reports at the end. Returns exit code."""
    _engine.live_signals(True)          # a stop from now on is not lost
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass
    lock = threading.Lock()

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        with lock:
            sock.sendall(data)

    def serve():
        try:
            with sock.makefile("r") as f:
                for line in f:
                    try:
                        req = json.loads(line)
                        op = req.get("op")
                        if op == "stats":
                            value = _report(eng, index, cpu)
                        elif op == "read":
                            value = eng.read(req["handler"])
                        elif op == "write":
                            eng.write(req["handler"], req.get("value", ""))
                            value = ""
                        elif op == "stop":
                            _engine.live_stop()
                            value = ""
                        else:
                            raise RunError(f"unknown op {op!r}")
                        send({"ok": True, "value": value})
                    except RunError as e:
                        send({"ok": False, "error": str(e)})
                    except Exception as e:  # noqa: BLE001 - answer, keep serving
                        send({"ok": False, "error": f"{type(e).__name__}: {e}"})
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        secs = eng.run_live(ports, duration, busy_poll, poll_ms)
        rep = _report(eng, index, cpu)
        rep["seconds"] = secs
        send({"final": rep})
        return 0
    except RunError as e:
        send({"fatal": f"worker {index}: {e}"})
        return 1
    finally:
        for p in ports:
            p.close()
        _engine.live_signals(False)


def _run_workers(plan, bindings, workers, duration, control, busy_poll, ring, ring_bytes,
                 retire_ms, poll_ms, quiet):
    cpus = sorted(os.sched_getaffinity(0))
    if workers > len(cpus):
        raise ConfigError(f"--workers {workers}: this process may use only {len(cpus)} "
                          f"CPU{'s' if len(cpus) > 1 else ''}")
    taps = [d for d, s in bindings.items() if parse_spec(s)[0] == "tap"]
    if taps:
        raise ConfigError(f"--dev {taps[0]}={bindings[taps[0]]}: a TAP device serves one "
                          "worker (no flow fanout); use --workers 1")
    eng = Engine(plan)                  # built once: every worker runs a forked copy
    # Open every worker's sockets here, in worker order, so that member k of
    # each interface's fanout group is worker k on every interface: the
    # kernel's flow hash is symmetric, so both directions of a connection
    # that keeps its addresses and ports reach the same worker.
    by_worker, ids = [], {}
    try:
        for _ in range(workers):
            by_worker.append(open_ports(plan, bindings, ring, ring_bytes, retire_ms,
                                        fanout=True, fanout_ids=ids))
    except BaseException:
        for ports in by_worker:
            for p in ports:
                p.close()
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    links = []
    try:
        _fork_workers(links, workers, cpus, eng, by_worker, duration, busy_poll, poll_ms)
    except BaseException:               # e.g. ^C while forking: take the forked ones down
        for link in links:
            try:
                os.kill(link.pid, signal.SIGTERM)
                os.waitpid(link.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    finally:
        for ports in by_worker:         # the workers hold them now
            for p in ports:
                p.close()
    for link in links:
        link.start()
    _supervise(eng, links, control, plan, bindings, workers, quiet)
    finals = [link.final for link in links]
    return {
        "elements": add_up([f["elements"] for f in finals]),
        "devices": add_up([f["devices"] for f in finals]),
        "seconds": max(f["seconds"] for f in finals),
        "workers": [{"worker": f["worker"], "pid": f["pid"], "cpu": f["cpu"],
                     "seconds": f["seconds"],
                     "devices": {d: {k: s[k] for k in ("rx", "tx")}
                                 for d, s in f["devices"].items()}} for f in finals],
    }


def _fork_workers(links, workers, cpus, eng, by_worker, duration, busy_poll, poll_ms):
    for i in range(workers):
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:                    # the worker: never returns
            code = 1
            try:
                mine.close()
                for link in links:
                    link.sock.close()
                for j, ports in enumerate(by_worker):
                    if j != i:
                        for p in ports:
                            p.close()
                code = _worker(i, cpus[i], eng, by_worker[i], theirs, duration, busy_poll,
                               poll_ms)
            except BaseException as e:  # noqa: BLE001 - report, never unwind into the parent
                try:
                    theirs.sendall((json.dumps({"fatal": f"worker {i}: {e}"}) + "\n").encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        theirs.close()
        links.append(_Link(i, pid, cpus[i], mine))


def _supervise(eng, links, control, plan, bindings, workers, quiet):
    """Serve the control socket and wait for every worker; on a failure
    (or a signal) stop them all. Raises RunError with the first failure."""
    alive = {link.pid: link for link in links}

    def forward(signum, frame):
        for pid in list(alive):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    failure = None
    try:
        if control:
            from middlebox import control as ctl
            server = ctl.Server(WorkerGroup(eng, links), control)
        if not quiet:
            _say(_describe(plan, bindings, workers))
        while alive:
            for pid, link in list(alive.items()):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if not done:
                    continue
                del alive[pid]
                link.status = status
                link.eof.wait(5)
                if link.final is None and failure is None:
                    failure = link.fatal or (f"worker {link.index} (pid {pid}) ended without "
                                             f"a report ({_status_text(status)})")
                    forward(signal.SIGTERM, None)
            if alive:
                time.sleep(0.05)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if server:
            server.close()
        if alive:                       # unwinding on an error: leave nothing behind
            forward(signal.SIGTERM, None)
            for pid in list(alive):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        for link in links:
            link.sock.close()
    if failure:
        raise RunError(failure)


def _status_text(status):
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
