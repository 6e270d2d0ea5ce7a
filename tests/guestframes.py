"""Frames for the classifier graph (graphs/classifier.yaml) as a VM forwards
them, shared by the microvm and q35 guest tests."""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether


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
