"""Network namespaces with a TAP each, for wiring a VM between real Linux
network stacks (tests, demos). Needs root (CAP_NET_ADMIN) and iproute2.

    with Namespace("a") as a, Namespace("b") as b:
        fa = a.tap("tapa", "10.199.0.1/24")       # fd of a TAP inside a
        fb = b.tap("tapb", "10.199.0.2/24")
        cmd = qemu.command(image, [("a", f"tap:fd={fa}"), ("b", f"tap:fd={fb}")])
        with qemu.Guest(cmd, pass_fds=(fa, fb)) as g:
            g.wait_ready()
            server = b.socket(socket.AF_INET, socket.SOCK_DGRAM)   # lives in b
            ...

A TAP is made with `ip tuntap add` inside its namespace and opened from
this process by entering the namespace for the open only, so one QEMU can
hold TAPs of several namespaces. Sockets made with Namespace.socket()
stay in their namespace. Leaving the `with` block closes the TAP file
descriptors and deletes the namespace (and with it its interfaces).
"""

import ctypes
import fcntl
import os
import socket
import struct
import subprocess

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """The kernel (or missing privileges) refused a namespace or a TAP."""


def _ip(*args):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode:
        raise NamespaceError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


class Namespace:
    """A network namespace named `<prefix>-<pid>-<name>`, deleted on exit."""

    def __init__(self, name, prefix="mb"):
        self.name = f"{prefix}-{os.getpid()}-{name}"
        self.fds = []
        self.created = False

    def __enter__(self):
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except NamespaceError:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False

    def run(self, fn, *args):
        """Call fn(*args) with this thread inside the namespace."""
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(own)
            raise
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NamespaceError(err, f"setns {self.name}: {os.strerror(err)}")
            try:
                return fn(*args)
            finally:
                if _libc.setns(own, CLONE_NEWNET) != 0:     # must not stay inside
                    raise NamespaceError(ctypes.get_errno(), "setns back failed")
        finally:
            os.close(own)
            os.close(target)

    def tap(self, ifname, address=None, mtu=None):
        """Create TAP `ifname` here (ip tuntap), open it, give it an address,
        bring it up; return the open file descriptor (closed on exit)."""
        _ip("-n", self.name, "tuntap", "add", "dev", ifname, "mode", "tap")

        def open_tap():
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(),
                                                       IFF_TAP | IFF_NO_PI))
            except OSError:
                os.close(fd)
                raise
            return fd

        fd = self.run(open_tap)
        self.fds.append(fd)
        if address:
            _ip("-n", self.name, "addr", "add", address, "dev", ifname)
        if mtu:
            _ip("-n", self.name, "link", "set", ifname, "mtu", str(mtu))
        _ip("-n", self.name, "link", "set", ifname, "up")
        return fd

    def socket(self, *args, **kw):
        """A socket that lives in this namespace."""
        return self.run(socket.socket, *args, **kw)

    def ip(self, *args):
        """Run `ip -n NAME ARGS...` and return its output."""
        return _ip("-n", self.name, *args)
