"""Small network tools the live tests run inside their namespaces
(`ip netns exec NS python tests/nettool.py COMMAND ...`), standard library
only. Each prints one JSON object on stdout and never runs unbounded.

    offload IFNAME                 turn TSO/GSO off (frames no bigger than the MTU)
    ping DST COUNT                 ICMP echo; replies with source, TTL, sequence
    udp-recv PORT COUNT SECONDS    datagrams received, with the TTL each arrived with
    udp-send DST PORT COUNT [FLOWS]  COUNT datagrams from FLOWS source ports
    tcp-server PORT SECONDS        accept one connection, answer sha256 of what came
    tcp-client DST PORT BYTES      send BYTES, read the server's sha256
"""

import ctypes
import fcntl
import hashlib
import json
import os
import socket
import struct
import sys
import time

SIOCETHTOOL = 0x8946
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)     # Linux; not every Python names it


def out(obj):
    print(json.dumps(obj), flush=True)


def offload(ifname):
    """A wire never carries 64 KiB TCP segments: with TSO/GSO on, a veth
    hands AF_PACKET one super-frame per burst."""
    for cmd in (ETHTOOL_STSO, ETHTOOL_SGSO):
        val = ctypes.create_string_buffer(struct.pack("II", cmd, 0), 8)
        ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(val)).ljust(40, b"\0")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, SIOCETHTOOL, ifr)
    out({"ok": True})


def _csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(dst, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(1.0)
    ident = os.getpid() & 0xFFFF
    replies = []
    for seq in range(count):
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"middlebox-live"
        body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
        s.sendto(body, (dst, 0))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                d, addr = s.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (d[0] & 15) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", d[ihl:ihl + 8])
            if typ == 0 and rid == ident and rseq == seq:
                replies.append({"src": addr[0], "ttl": d[8], "seq": seq})
                break
    out({"sent": count, "replies": replies})


def udp_recv(port, count, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    s.bind(("0.0.0.0", port))
    out({"ready": True})
    got = []
    end = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data, anc, _, addr = s.recvmsg(2048, socket.CMSG_SPACE(4))
        except socket.timeout:
            break
        ttl = next((struct.unpack("i", d[:4])[0] for lvl, typ, d in anc
                    if lvl == socket.IPPROTO_IP and typ == socket.IP_TTL), None)
        got.append({"data": data.decode(), "src": addr[0], "sport": addr[1], "ttl": ttl})
    out({"received": got})


def udp_send(dst, port, count, flows=1):
    socks = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        socks.append(s)
    for i in range(count):
        socks[i % flows].sendto(f"datagram {i}".encode(), (dst, port))
        if i % 16 == 15:
            time.sleep(0.002)     # stay far below any ring or queue limit
    out({"sent": count, "ports": [s.getsockname()[1] for s in socks]})


def tcp_server(port, seconds):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    s.settimeout(seconds)
    out({"ready": True})
    c, addr = s.accept()
    c.settimeout(seconds)
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.sendall(h.hexdigest().encode())
    c.close()
    out({"bytes": n, "peer": addr[0], "sha256": h.hexdigest()})


def tcp_client(dst, port, nbytes):
    data = os.urandom(nbytes)
    c = socket.create_connection((dst, port), timeout=10)
    c.settimeout(10)
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        d = c.recv(256)
        if not d:
            break
        answer += d
    out({"sent_sha256": hashlib.sha256(data).hexdigest(), "answer": answer.decode()})


def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "offload":
        offload(args[0])
    elif cmd == "ping":
        ping(args[0], int(args[1]))
    elif cmd == "udp-recv":
        udp_recv(int(args[0]), int(args[1]), float(args[2]))
    elif cmd == "udp-send":
        udp_send(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 1)
    elif cmd == "tcp-server":
        tcp_server(int(args[0]), float(args[1]))
    elif cmd == "tcp-client":
        tcp_client(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
