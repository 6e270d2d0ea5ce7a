"""Helpers for tests that put a booted graph VM between real Linux network
stacks: network namespaces, the TAPs that join them to the VM's NICs, small
servers that run in a namespace, and QEMU under TCG.

    with Lab() as lab:
        lan, lan_fd = lab.host("lan", "10.0.0.2/24", gateway="10.0.0.1")
        wan, wan_fd = lab.host("wan", "192.0.2.2/24", routes=[("10.0.0.0/24", "192.0.2.1")])
        g = lab.boot(image, [("lan", lan_fd), ("wan", wan_fd)])
        g.wait_ready(TIMEOUT)
        ...

Everything a Lab makes (namespaces with their TAPs, bridges and veths,
server threads, QEMU) is removed when the `with` block ends, on failure
too. Names carry a random suffix per Lab, so runs and tests never collide.
QEMU is killed by its own PID.
"""

import contextlib
import secrets
import select
import socket
import threading

from middlebox.unikernel import netns, qemu

TIMEOUT = 60.0          # generous: TCG on a loaded 2-core machine


class Lab:
    """Namespaces, TAPs and VMs for one test; all removed on exit."""

    def __init__(self, tag="vm"):
        self.suffix = secrets.token_hex(3)
        self.prefix = f"mb{tag}{self.suffix}"
        self.stack = contextlib.ExitStack()
        self.ntaps = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()
        return False

    def close(self):
        self.stack.close()

    # -- namespaces ---------------------------------------------------------

    def namespace(self, name):
        """A new network namespace (lo up), deleted when the Lab closes."""
        ns = netns.Namespace(name, prefix=self.prefix)
        self.stack.callback(ns.close)
        ns.__enter__()
        return ns

    def tap_name(self):
        self.ntaps += 1
        return f"t{self.suffix}{self.ntaps}"          # at most 15 characters

    def host(self, name, address, gateway=None, routes=()):
        """A namespace whose only interface is a TAP with `address`; routes
        are (prefix, via) pairs, gateway the default route. Returns (the
        namespace, the TAP's fd for QEMU)."""
        ns = self.namespace(name)
        ns.ifname = self.tap_name()
        fd = ns.tap(ns.ifname, address)
        for prefix, via in routes:
            ns.ip("route", "add", prefix, "via", via)
        if gateway:
            ns.ip("route", "add", "default", "via", gateway)
        return ns, fd

    def switch(self, name, hosts):
        """A LAN segment: namespace `name` holds a bridge joining a TAP (the
        VM's side, returned as an fd) and one veth per host. hosts is a list
        of (host name, address, gateway); each host gets its own namespace
        with eth0 on the bridge. Returns ({host name: namespace}, fd)."""
        sw = self.namespace(name)
        br = f"br{self.suffix}"
        sw.ip("link", "add", br, "type", "bridge")
        tap = self.tap_name()
        fd = sw.tap(tap)
        sw.ip("link", "set", tap, "master", br)
        sw.ip("link", "set", br, "up")
        spaces = {}
        for i, (hname, address, gateway) in enumerate(hosts):
            ns = self.namespace(hname)
            port = f"v{self.suffix}{i}"
            sw.ip("link", "add", port, "type", "veth", "peer", "name", "eth0",
                  "netns", ns.name)
            sw.ip("link", "set", port, "master", br)
            sw.ip("link", "set", port, "up")
            ns.ip("addr", "add", address, "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
            if gateway:
                ns.ip("route", "add", "default", "via", gateway)
            spaces[hname] = ns
        return spaces, fd

    # -- the VM ---------------------------------------------------------------

    def boot(self, image, nics, plan=None):
        """Boot image under TCG with NIC k on TAP fd nics[k] = (device, fd) or
        (device, fd, mac); returns the qemu.Guest (killed when the Lab closes)."""
        specs, fds = [], []
        for nic in nics:
            dev, fd = nic[0], nic[1]
            mac = f",mac={nic[2]}" if len(nic) > 2 and nic[2] else ""
            specs.append((dev, f"tap:fd={fd}{mac}"))
            fds.append(fd)
        cmd = qemu.command(image, specs, accel="tcg")
        g = qemu.Guest(cmd, pass_fds=fds, plan=plan)
        self.stack.callback(g.kill)
        return g

    def serve(self, server):
        """Start a server thread; it is stopped when the Lab closes."""
        self.stack.callback(server.stop)
        server.start()
        return server


class TcpServer:
    """A thread in namespace `ns` that accepts TCP connections on (address,
    port); for each one it reads a request (up to the first blank line, or
    whatever comes within a second) and answers `reply`, then closes.
    `peers` lists the (address, port) of every connection accepted."""

    def __init__(self, ns, address, port, reply):
        self.sock = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        self.reply = reply
        self.peers = []
        self.requests = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                conn, peer = self.sock.accept()
            except OSError:
                break
            with conn:
                self.peers.append(peer)
                conn.settimeout(TIMEOUT)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()


def http_get(ns, address, port, timeout=TIMEOUT, source=None):
    """One HTTP/1.0 GET from namespace ns, from `source` (address, port) if
    given; returns the whole answer (bytes)."""
    s = ns.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source:
            s.bind(source)
        s.connect((address, port))
        s.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def http_answer(name):
    body = name.encode()
    return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def counters(guest):
    """The VM's counters: ({element: row}, {device: (rx, dropped, tx)})."""
    return qemu.parse_stats(guest.command("stats"))


def check_invariant(els):
    """in + created == out + dropped (+ held, for elements that hold packets)."""
    for name, s in els.items():
        created = int(s["other"].get("created", 0))
        held = int(s["other"].get("held", 0))
        assert s["in"] + created == s["out"] + s["dropped"] + held, (name, s)
