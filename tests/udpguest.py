"""A guest whose NICs are QEMU UDP sockets on loopback, and the frames the
classifier graph (graphs/classifier.yaml) forwards: shared by the microvm
and q35 guest tests. Every QEMU is killed by its own PID on close."""

import socket

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from middlebox.unikernel import qemu

REWRITE_SRC = "02:00:00:00:00:01"      # EtherRewrite in graphs/classifier.yaml
REWRITE_DST = "02:00:00:00:00:fe"


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class UdpVM:
    """A booted image whose NICs are QEMU UDP sockets on loopback: send(dev,
    frame) puts a frame on a NIC's wire, recv(dev) takes one the VM sent.
    `machine`/`firmware` choose the QEMU machine; `edit` changes each word
    of the command line before launch; `pre` goes before the NICs, `extra`
    at the end; `macs` gives NICs their addresses; `recv_timeout` is how
    long recv() waits by default."""

    def __init__(self, image, devices, append="", plan=None, machine="microvm", firmware=None,
                 edit=None, pre=(), extra=(), macs=None, recv_timeout=10.0):
        self.socks, self.qports, nics = {}, {}, []
        self.recv_timeout = recv_timeout
        for dev in devices:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.socks[dev] = s
            self.qports[dev] = free_udp_port()
            mac = f",mac={macs[dev]}" if macs and dev in macs else ""
            nics.append((dev, f"socket:udp=127.0.0.1:{s.getsockname()[1]},"
                              f"localaddr=127.0.0.1:{self.qports[dev]}{mac}"))
        self.cmd = qemu.command(image, nics, accel="tcg", append=append, machine=machine,
                                firmware=firmware)
        if edit:
            self.cmd = [edit(c) for c in self.cmd]
        if pre:
            first_nic = self.cmd.index("-netdev")
            self.cmd[first_nic:first_nic] = list(pre)
        self.cmd += list(extra)
        self.guest = qemu.Guest(self.cmd, plan=plan)

    def send(self, dev, frame):
        self.socks[dev].sendto(bytes(frame), ("127.0.0.1", self.qports[dev]))

    def recv(self, dev, count, timeout=None):
        s = self.socks[dev]
        s.settimeout(self.recv_timeout if timeout is None else timeout)
        out = []
        try:
            while len(out) < count:
                out.append(s.recv(65536))
        except socket.timeout:
            pass
        return out

    def quiet(self, dev, wait=0.3):
        """Frames that arrive on dev within `wait` seconds (expect none)."""
        return self.recv(dev, 1 << 30, timeout=wait)

    def close(self):
        self.guest.kill()
        for s in self.socks.values():
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def rewritten(frame):
    """What EtherRewrite(src=REWRITE_SRC, dst=REWRITE_DST) makes of a frame."""
    return bytes(Ether(dst=REWRITE_DST, src=REWRITE_SRC))[:12] + bytes(frame)[12:]


def classifier_frames():
    """(frame, forwarded?) for graphs/classifier.yaml: IPv4 and IPv6 go to
    wan rewritten; ARP and everything else is counted and dropped."""
    mac = dict(src="52:54:00:aa:bb:01", dst="52:54:00:aa:bb:02")
    return [
        (Ether(**mac) / IP(src="10.0.0.1", dst="10.0.1.1") / UDP(sport=1000, dport=53) / b"q1", True),
        (Ether(**mac) / ARP(op=1, psrc="10.0.0.1", pdst="10.0.0.2"), False),
        (Ether(**mac) / IPv6(src="fd00::1", dst="fd00::2") / UDP(dport=5353) / b"six", True),
        (Ether(**mac) / IP(dst="10.0.1.2") / TCP(dport=80, flags="S"), True),
        (Ether(**mac) / ARP(op=2, psrc="10.0.0.2", pdst="10.0.0.1"), False),
        (Ether(**mac, type=0x88cc) / (b"\x02\x07\x04" + bytes(40)), False),
        (Ether(**mac) / Dot1Q(vlan=7) / IP() / ICMP(), False),
        (Ether(**mac) / IP(dst="10.0.1.3") / ICMP() / (b"x" * 1472), True),   # 1514 bytes
        (Ether(**mac) / IPv6(dst="fd00::9") / ICMPv6EchoRequest(), True),
        (Ether(**mac) / IP(dst="10.0.1.4") / UDP() / b"last", True),
    ]
