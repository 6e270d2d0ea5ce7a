"""Writes graphs/traces/lan.pcap, the demo trace: a small mix of LAN traffic.

Run: python graphs/traces/make_lan.py (needs scapy).
"""

import pathlib

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, LLC, Dot3, Ether
from scapy.utils import wrpcap

HOST = "02:00:00:00:00:0a"
ROUTER = "02:00:00:00:00:01"


def frames():
    t = 1_700_000_000.0
    out = []

    def add(p):
        nonlocal t
        t += 0.001
        p.time = t
        out.append(p)

    for i in range(4):
        add(Ether(src=HOST, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="10.0.0.10",
                                                           pdst=f"10.0.0.{i + 1}"))
        add(Ether(src=ROUTER, dst=HOST) / ARP(op=2, psrc=f"10.0.0.{i + 1}", pdst="10.0.0.10"))
    for i in range(20):
        add(Ether(src=HOST, dst=ROUTER) / IP(src="10.0.0.10", dst=f"192.0.2.{i + 1}")
            / TCP(sport=40000 + i, dport=80, flags="S"))
        add(Ether(src=HOST, dst=ROUTER) / IP(src="10.0.0.10", dst="198.51.100.53")
            / UDP(sport=50000 + i, dport=53) / (b"q" * (i % 7)))
    for i in range(5):
        add(Ether(src=HOST, dst=ROUTER) / IPv6(src="fd00::a", dst=f"2001:db8::{i + 1}")
            / UDP(sport=1000, dport=2000))
        add(Ether(src=HOST, dst=ROUTER) / IP(src="10.0.0.10", dst="203.0.113.9") / ICMP())
    for i in range(3):
        add(Dot3(src=HOST, dst="01:80:c2:00:00:00") / LLC() / (b"\0" * 38))
    return out


if __name__ == "__main__":
    path = pathlib.Path(__file__).with_name("lan.pcap")
    wrpcap(str(path), frames())
    print(f"wrote {path}")
