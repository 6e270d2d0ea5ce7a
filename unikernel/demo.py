"""The firewall graph as a VM, with real hosts on each side (`make demo`).

    python -m middlebox.unikernel.demo [--graph graphs/firewall.yaml] [--out out]

Builds graphs/firewall.yaml into a guest image (OUT/firewall.elf), makes
two network namespaces, "lan" (host 10.0.0.2, default route via the
firewall's 10.0.0.1) and "wan" (host 192.0.2.2, route to 10.0.0.0/24 via
192.0.2.1), each with a TAP that becomes one of the VM's NICs, and boots the
VM under TCG. Then a web client in lan fetches a page from a server in wan (port
80: allowed) and tries telnet (port 23: denied, the connection times out),
prints the VM's counters, powers the VM off and removes the namespaces.
Needs root (network namespaces, TAPs) and qemu-system-x86_64.
"""

import argparse
import os
import pathlib
import re
import select
import socket
import sys
import threading
import time

from middlebox.errors import ConfigError, RunError
from middlebox.unikernel import build, netns, qemu

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAN_MAC, WAN_MAC = "02:00:00:00:00:01", "02:00:00:00:01:01"     # graphs/firewall.yaml
TIMEOUT = 60.0
# rows of the counter table worth showing: what came in, what the rules
# passed and denied, what went out
SHOW = ("lan_in", "wan_in", "out_filter", "in_filter", "out_allowed", "in_allowed",
        "lan_out", "wan_out")


def step(text):
    print(f"-- {text}", flush=True)


def serve(sock, stop, reply, seen):
    """Accept connections on sock until stop is set; answer each one."""
    while not stop.is_set():
        if not select.select([sock], [], [], 0.1)[0]:
            continue
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        with conn:
            seen.append(peer)
            conn.settimeout(10)
            try:
                conn.recv(4096)
                conn.sendall(reply)
            except OSError:
                pass


def connect(ns, address, port, timeout):
    """Open a TCP connection from namespace ns, send a request, return
    (what came back or None, what happened)."""
    s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    try:
        s.settimeout(timeout)
        s.connect((address, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data, f"answered in {(time.perf_counter() - t0) * 1000:.1f} ms"
    except socket.timeout:
        return None, f"no answer in {timeout:.0f} s (timed out: the SYNs were dropped)"
    except ConnectionRefusedError:
        return None, "refused"
    finally:
        s.close()


def demo(graph, outdir, deny_wait):
    outdir.mkdir(parents=True, exist_ok=True)
    step(f"build {graph}")
    out = outdir / f"{graph.stem}.elf"
    b = build.build(graph, out)
    print(f"{out}: graph '{b.plan.graph.name}', {b.size / 1024:.0f} KiB, "
          f"boots in {b.memory['min_mib']} MiB, kernels: {', '.join(b.kernels)}")
    name, devices = qemu.image_devices(out)
    if devices != ["lan", "wan"]:
        raise ConfigError(f"the demo wants a graph with devices lan and wan, not {devices}")

    spaces, socks, threads = [], [], []
    stop = threading.Event()
    guest = None
    try:
        step("two network namespaces, one TAP each (the VM's NICs)")
        tag = f"mbdemo{os.getpid() % 100000}"
        lan = netns.Namespace("lan", prefix="mbdemo")
        spaces.append(lan)
        lan.__enter__()
        wan = netns.Namespace("wan", prefix="mbdemo")
        spaces.append(wan)
        wan.__enter__()
        lan_fd = lan.tap(f"{tag}l", "10.0.0.2/24")
        lan.ip("route", "add", "default", "via", "10.0.0.1")
        wan_fd = wan.tap(f"{tag}w", "192.0.2.2/24")
        wan.ip("route", "add", "10.0.0.0/24", "via", "192.0.2.1")
        print(f"{lan.name}: 10.0.0.2/24 on {tag}l, default via 10.0.0.1 (the VM's lan)")
        print(f"{wan.name}: 192.0.2.2/24 on {tag}w, 10.0.0.0/24 via 192.0.2.1 (the VM's wan)")

        step("boot the VM under TCG")
        cmd = qemu.command(out, [("lan", f"tap:fd={lan_fd},mac={LAN_MAC}"),
                                 ("wan", f"tap:fd={wan_fd},mac={WAN_MAC}")], accel="tcg")
        print(qemu.dry_run_text(cmd))
        guest = qemu.Guest(cmd, pass_fds=(lan_fd, wan_fd))
        name, us, host_s = guest.wait_ready(TIMEOUT)
        print(f"console: {guest.lines[-1][1]}   (host: {host_s * 1000:.0f} ms from launch)")

        servers = {}
        for port, reply in ((80, b"HTTP/1.0 200 OK\r\n\r\nhello from the wan web server\n"),
                            (23, b"login: ")):
            s = wan.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("192.0.2.2", port))
            s.listen(8)
            servers[port] = []
            t = threading.Thread(target=serve, args=(s, stop, reply, servers[port]), daemon=True)
            t.start()
            threads.append(t)

        step("lan 10.0.0.2 -> wan 192.0.2.2 port 80 (HTTP: the rules allow it)")
        data, what = connect(lan, "192.0.2.2", 80, TIMEOUT)
        print(f"http: {what}" + (f": {data.splitlines()[-1].decode()!r}" if data else ""))
        print(f"the wan server saw {len(servers[80])} connection(s) from "
              f"{', '.join(f'{a}:{p}' for a, p in servers[80]) or 'nobody'}")

        step("lan 10.0.0.2 -> wan 192.0.2.2 port 23 (telnet: the rules deny it)")
        data2, what2 = connect(lan, "192.0.2.2", 23, deny_wait)
        print(f"telnet: {what2}")
        print(f"the wan telnet server saw {len(servers[23])} connection(s)")

        step("the VM's counters (console command: stats)")
        lines = guest.command("stats")
        for ln in lines[1:]:
            first = ln.split(" ", 1)[0]
            if first in ("element",) + SHOW or ln.startswith("device "):
                print(ln)
        els, _ = qemu.parse_stats(lines)
        denied = int(els["out_filter"]["other"].get("denied", 0))

        step("power off")
        rc = guest.quit(TIMEOUT)
        print(guest.quit_lines[-1] if guest.quit_lines else f"QEMU exited {rc}")
        ok = data is not None and data2 is None and denied > 0 and not servers[23]
        print(f"result: HTTP {'passed' if data else 'FAILED'}, telnet "
              f"{'denied' if data2 is None else 'PASSED (wrong)'} "
              f"(out_filter.denied = {denied})")
        return 0 if ok else 1
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for s in socks:
            s.close()
        if guest is not None:
            guest.kill()
        for ns in spaces:
            ns.close()
        if spaces:
            step("namespaces removed")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m middlebox.unikernel.demo",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--graph", default=str(ROOT / "graphs" / "firewall.yaml"))
    ap.add_argument("--out", default="out", help="folder for the image (default: out)")
    ap.add_argument("--deny-wait", type=float, default=3.0,
                    help="seconds to wait for the denied connection (default: 3)")
    args = ap.parse_args(argv)
    try:
        return demo(pathlib.Path(args.graph), pathlib.Path(args.out), args.deny_wait)
    except ConfigError as e:
        print(f"middlebox demo: {e}", file=sys.stderr)
        return 2
    except netns.NamespaceError as e:
        msg = re.sub(r"\s+", " ", str(e))
        print(f"middlebox demo: cannot make the namespaces (run as root): {msg}",
              file=sys.stderr)
        return 1
    except (RunError, TimeoutError, OSError) as e:
        msg = re.sub(r"\s*\n\s*", " ", str(e))
        print(f"middlebox demo: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
